"""Errors the store raises, named and worded like Neutron's.

The store is where the rules live (uniqueness, allocation, containment), so it is also where the
reason for a refusal is known best.  Each error carries the Neutron exception ``type`` and a message
an operator can act on; the API layer only maps the error's class to an HTTP status, which keeps the
data plane (which calls the store directly) and both API flavours reporting the same thing.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: ``type`` is the Neutron exception name a client may switch on."""

    type: str = "NeutronException"

    def __init__(self, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if type_ is not None:
            self.type = type_


class NotFound(StoreError):
    """The object named in the request does not exist (HTTP 404)."""

    type = "NotFound"


class Conflict(StoreError):
    """The request is well formed but clashes with the current state (HTTP 409)."""

    type = "Conflict"


class InvalidInput(StoreError):
    """The request is wrong whatever the state (HTTP 400)."""

    type = "InvalidInput"


class PreconditionFailed(StoreError):
    """An ``If-Match`` revision constraint did not hold (HTTP 412)."""

    type = "RevisionNumberConstraintFailed"


class StoreUnavailable(StoreError):
    """The store cannot commit now, e.g. its etcd cluster lost quorum (HTTP 503, retry later).

    Nothing of the request was kept: the write was not committed anywhere."""

    type = "ServiceUnavailable"


def not_found(kind: str, obj_id: str) -> NotFound:
    """Neutron's wording: ``Network X could not be found.`` with type ``NetworkNotFound``;
    the security-group extension words its own: ``Security group X does not exist``
    (``SecurityGroupNotFound``)."""
    type_ = "".join(part.capitalize() for part in kind.split("_")) + "NotFound"
    if kind.startswith("security_group"):
        return NotFound(f"{kind.replace('_', ' ').capitalize()} {obj_id} does not exist", type_)
    return NotFound(f"{kind.capitalize()} {obj_id} could not be found.", type_)


def invalid_attr(field: str, reason: str) -> InvalidInput:
    """Neutron's wording for a bad attribute value, naming the attribute."""
    return InvalidInput(f"Invalid input for {field}. Reason: {reason}.", "HTTPBadRequest")
