"""Block until ports reach a status: tenantnet's equivalent of OVN's ``--wait=hv``.

An orchestrator (or a benchmark) that must know when a port is wired would otherwise poll
``GET /v2.0/ports/<id>``, and every poll competes with the data plane for the same interpreter.
A wait is woken by the store's change events instead, which carry the new status, so the store is
read once per wait (one query, statuses compared inside SQLite) and never polled.

The HTTP route is ``async``: a wait costs the event loop a registration and a future, not a
worker thread per waiting client.  Profiling showed a blocking wait (thread hand-offs plus a
store read per wake-up) costing the data plane about a millisecond of interpreter time right
when it is wiring the port being waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
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


class _Wait:
    """One waiting client: the ports not (yet) in ``status``; ``wake`` runs once when none is
    left.  Updated under the waiter's lock, from the store's publishing thread."""

    def __init__(self, port_ids: list[str], status: str, wake: Callable[[], None]) -> None:
        self.pending = set(port_ids)
        self.status = status
        self.wake = wake
        self.heard: set[str] = set()  # ports an event told us about since registration
        self.woken = False

    def update(self, port_id: str, status: str | None) -> None:
        if status == self.status:
            self.pending.discard(port_id)
        else:
            self.pending.add(port_id)
        self._maybe_wake()

    def _maybe_wake(self) -> None:
        if not self.pending and not self.woken:
            self.woken = True
            self.wake()


class PortWaiter:
    def __init__(self, store: Any, bus: EventBus) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._waits: dict[str, list[_Wait]] = {}  # port id -> waits that include it
        bus.subscribe(self._on_events)

    def _on_events(self, events: list[ChangeEvent]) -> None:
        with self._lock:
            if not self._waits:
                return
            for ev in events:
                if ev.kind != "port":
                    continue
                rec = ev.new or ev.old
                assert rec is not None
                for w in self._waits.get(rec["id"], ()):
                    w.heard.add(rec["id"])
                    w.update(rec["id"], ev.new["status"] if ev.new else None)

    def _register(self, port_ids: list[str], status: str, wake: Callable[[], None]) -> _Wait:
        """Register first, then read the store: an event between the two is not lost, and a
        read older than an event never overrides it."""
        w = _Wait(port_ids, status, wake)
        with self._lock:
            for pid in w.pending:
                self._waits.setdefault(pid, []).append(w)
        current = self.store.port_statuses(list(w.pending))
        with self._lock:
            for pid in list(w.pending):
                if pid not in w.heard and current.get(pid) == status:
                    w.pending.discard(pid)
            w._maybe_wake()
        return w

    def _unregister(self, w: _Wait, port_ids: list[str]) -> list[str]:
        with self._lock:
            for pid in set(port_ids):
                waits = self._waits.get(pid, [])
                if w in waits:
                    waits.remove(w)
                if not waits:
                    self._waits.pop(pid, None)
            return sorted(w.pending)

    async def wait_async(self, port_ids: list[str], status: str, timeout: float) -> list[str]:
        """Ids (of those given) not in `status` when it returns; [] means all reached it.
        Unknown ids count as not reached."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        w = self._register(port_ids, status, wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, timeout)
        finally:
            pending = self._unregister(w, port_ids)
        return pending

    def wait(self, port_ids: list[str], status: str, timeout: float) -> list[str]:
        """The same for a caller on an ordinary thread."""
        event = threading.Event()
        w = self._register(port_ids, status, event.set)
        try:
            event.wait(timeout)
        finally:
            pending = self._unregister(w, port_ids)
        return pending


def add_wait_route(app: FastAPI, waiter: PortWaiter) -> None:
    """POST /tenantnet/wait: ``{"done": bool, "pending": [ids not there yet]}``."""

    async def wait_ports(body: WaitRequest) -> dict[str, Any]:
        pending = await waiter.wait_async(body.port_ids, body.status, body.timeout)
        return {"done": not pending, "pending": pending}

    app.add_api_route(
        "/tenantnet/wait", wait_ports, methods=["POST"], tags=["tenantnet"],
        summary="Block until the given ports have a status (like ovn-nbctl --wait=hv)",
    )  # fmt: skip
