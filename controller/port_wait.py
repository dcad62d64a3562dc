"""Block until ports reach a status: tenantnet's equivalent of OVN's ``--wait=hv``.

An orchestrator (or a benchmark) that must know when a port is wired would otherwise poll
``GET /v2.0/ports/<id>``, and every poll competes with the data plane for the same interpreter.
The waiter is woken by the store's change events instead.  It never reads the store while holding
its condition: the store publishes events under its own lock, so doing that could deadlock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from controller.events import ChangeEvent, EventBus


class WaitRequest(BaseModel):
    """Body of POST /tenantnet/wait."""

    model_config = ConfigDict(extra="forbid")
    port_ids: list[str] = Field(min_length=1, max_length=20000)
    status: Literal["ACTIVE", "DOWN"] = "ACTIVE"
    timeout: float = Field(default=10.0, gt=0, le=300)


class PortWaiter:
    def __init__(self, store: Any, bus: EventBus) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._seq = 0
        bus.subscribe(self._on_events)

    def _on_events(self, events: list[ChangeEvent]) -> None:
        if any(e.kind == "port" for e in events):
            with self._cond:
                self._seq += 1
                self._cond.notify_all()

    def wait(self, port_ids: list[str], status: str, timeout: float) -> list[str]:
        """Ids (of those given) not in `status` when the call returns; [] means all reached it.
        Unknown ids count as not reached."""
        deadline = time.monotonic() + timeout
        pending = set(port_ids)
        while True:
            with self._cond:
                seen = self._seq
            pending = {
                i for i in pending if (p := self.store.get_port(i)) is None or p["status"] != status
            }
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return sorted(pending)
            with self._cond:
                if self._seq == seen:
                    self._cond.wait(left)


def add_wait_route(app: FastAPI, waiter: PortWaiter) -> None:
    """POST /tenantnet/wait: ``{"done": bool, "pending": [ids not there yet]}``."""

    def wait_ports(body: WaitRequest) -> dict[str, Any]:
        pending = waiter.wait(body.port_ids, body.status, body.timeout)
        return {"done": not pending, "pending": pending}

    app.add_api_route(
        "/tenantnet/wait", wait_ports, methods=["POST"], tags=["tenantnet"],
        summary="Block until the given ports have a status (like ovn-nbctl --wait=hv)",
    )  # fmt: skip
