"""In-process change events: the one-way seam between the store and the data plane.

The store publishes one `ChangeEvent` per object it created, updated or deleted, *after* the
transaction committed.  The data plane subscribes; the API layer knows nothing about OpenFlow and
the data plane never calls the API.  Subscribers must be quick (enqueue and return): they run on
the thread that committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)

KINDS = (
    "network",
    "subnet",
    "port",
    "host",
    "security_group",
    "security_group_rule",
    "router",
)
"""A security group's event carries its complete ``security_group_rules``; a rule added or
removed publishes the rule and then its group (with a new revision).  A router's event carries
its API body (``routes`` as ``{destination, nexthop}`` pairs); its interfaces are ports
(``device_owner`` ``network:router_interface_distributed``, ``device_id`` the router), published
as port events, each followed by the router's own event (a new revision)."""


@dataclass(frozen=True)
class ChangeEvent:
    """One object changed: ``old`` is None on create, ``new`` is None on delete."""

    kind: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @property
    def obj_id(self) -> str:
        return (self.new or self.old or {}).get("id", "")


Subscriber = Callable[[list[ChangeEvent]], None]


class EventBus:
    """Fan-out of committed changes to subscribers, in commit order."""

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> None:
        with self._lock:
            self._subs.append(callback)

    def publish(self, events: list[ChangeEvent]) -> None:
        if not events:
            return
        with self._lock:
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(events)
            except Exception:  # a broken subscriber must not fail the API request
                LOG.exception("event subscriber %r failed", cb)
