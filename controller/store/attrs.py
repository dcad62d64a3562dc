"""Neutron's standard attributes shared by every resource: project, timestamps, revision, tags.

Kept in one place so that every kind gets the same rules: ``revision_number`` starts at 1 and
grows by one per effective change (even a status-only change, like Neutron), ``updated_at`` moves
with it, and ``If-Match: revision_number=N`` is checked inside the write transaction so that the
check and the write cannot be separated by another writer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from controller.store.errors import InvalidInput, PreconditionFailed, invalid_attr
from controller.store.values import as_str, as_str_list


def utc_now() -> str:
    """ISO 8601 UTC with a ``Z``, second precision, as Neutron renders timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def project_of(body: dict[str, Any], default: str = "") -> str:
    """The owning project from ``project_id`` or its legacy alias ``tenant_id`` (must agree)."""
    project = body.get("project_id")
    tenant = body.get("tenant_id")
    if project is not None and tenant is not None and project != tenant:
        raise InvalidInput(
            "Invalid input for operation: 'project_id' and 'tenant_id' do not match.",
            "InvalidInput",
        )
    chosen = project if project is not None else tenant
    return default if chosen is None else as_str(chosen, "project_id")


def standard_attrs(body: dict[str, Any]) -> dict[str, Any]:
    """The standard attributes of a new object, taken from its create request."""
    now = utc_now()
    project = project_of(body)
    return {
        "project_id": project,
        "tenant_id": project,
        "description": as_str(body.get("description", ""), "description"),
        "tags": as_tags(body.get("tags", [])),
        "created_at": now,
        "updated_at": now,
        "revision_number": 1,
    }


MAX_TAG_LEN = 60  # Neutron's


def as_tags(value: Any) -> list[str]:
    """Tags: at most 100, each 1-60 characters without a comma (commas separate tags in the
    ``tags``/``tags-any`` filters, so a tag containing one could never be matched).

    Tags are a set (Neutron keeps one row per tag and resource), so a repeated tag is kept once,
    in first-seen order, as ``PUT .../tags`` does: stored twice, it was shown twice, and adding
    that tag again (a no-op) rewrote the list and bumped the revision."""
    tags = as_str_list(value, "tags", max_len=MAX_TAG_LEN)
    for tag in tags:
        if not tag or "," in tag:
            raise InvalidInput(
                f"Invalid input for tags. Reason: '{tag}' is not a valid tag.", "HTTPBadRequest"
            )
    return list(dict.fromkeys(tags))


def check_revision(current: dict[str, Any], expected: int | None) -> None:
    """Refuse with 412 when the client's ``If-Match`` revision is not the stored one."""
    if expected is not None and current.get("revision_number") != expected:
        raise PreconditionFailed(
            f"Constrained to {expected}, but current revision is {current.get('revision_number')}"
        )


def check_read_only(
    current: dict[str, Any], changes: dict[str, Any], read_only: Iterable[str]
) -> None:
    """An update may repeat a read-only attribute's value (CloudStack PUTs whole objects) but
    not change it."""
    for name in read_only:
        if name in changes and changes[name] != current.get(name):
            raise InvalidInput(f"Cannot update read-only attribute {name}", "HTTPBadRequest")


def updated_common(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the standard attributes a client may change applied."""
    new = dict(current)
    if "project_id" in changes or "tenant_id" in changes:
        project = project_of(changes, current["project_id"])
        if project != current["project_id"]:
            raise InvalidInput("Cannot update read-only attribute project_id", "HTTPBadRequest")
    for name in ("name", "description"):
        if name in changes:
            new[name] = as_str(changes[name], name)
    if "tags" in changes:
        new["tags"] = as_tags(changes["tags"])
    return new


def bump(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with revision and ``updated_at`` advanced, if it differs from ``old`` at all."""
    if new == old:
        return old
    bumped = dict(new)
    bumped["revision_number"] = old["revision_number"] + 1
    bumped["updated_at"] = utc_now()
    return bumped


def reject_unknown(body: dict[str, Any], known: Iterable[str]) -> None:
    """Neutron refuses attributes it does not know rather than silently dropping them."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        names = ", ".join(unknown)
        raise InvalidInput(f"Unrecognized attribute(s) '{names}'", "HTTPBadRequest")


def null_only(body: dict[str, Any], names: Iterable[str]) -> None:
    """Attributes Neutron has that tenantnet does not implement may only be null."""
    for name in names:
        if body.get(name) is not None:
            raise invalid_attr(name, "not supported by tenantnet")


def require(body: dict[str, Any], name: str) -> Any:
    """A mandatory attribute, or Neutron's 400 naming it."""
    if body.get(name) is None:
        raise InvalidInput(
            f"Failed to parse request. Required attribute '{name}' not specified",
            "HTTPBadRequest",
        )
    return body[name]
