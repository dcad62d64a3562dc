"""Durable state of tenant networks (SQLite): networks, subnets, ports, hosts.

`Store` is the only way in; it publishes a `controller.events.ChangeEvent` per changed object
after each commit.  Errors are `StoreError` subclasses worded like Neutron's.
"""

from controller.store.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)
from controller.store.store import KINDS, Store

__all__ = [
    "KINDS",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PreconditionFailed",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
