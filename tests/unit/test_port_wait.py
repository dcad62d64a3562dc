"""POST /tenantnet/wait: blocks until ports reach a status, woken by store events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from controller.api.app import create_app
from controller.api.settings import ApiSettings
from controller.events import EventBus
from controller.port_wait import PortWaiter, add_wait_route
from controller.store import Store


class CountingStore(Store):
    """Counts status reads: a wait woken by the store's events reads statuses once (when it
    registers); a wait that polls (on a timer) reads again on every tick."""

    status_reads = 0

    def port_statuses(self, port_ids):  # type: ignore[no-untyped-def]
        self.status_reads += 1
        return super().port_statuses(port_ids)


def _setup(tmp_path: Path) -> tuple[CountingStore, PortWaiter, TestClient]:
    bus = EventBus()
    store = CountingStore(str(tmp_path / "db.sqlite"), bus)
    waiter = PortWaiter(store, bus)
    app = create_app(store, ApiSettings())
    add_wait_route(app, waiter)
    return store, waiter, TestClient(app)


def test_wait_returns_when_the_data_plane_marks_ports_active(tmp_path: Path) -> None:
    store, waiter, _ = _setup(tmp_path)
    net = store.create_network({})
    ports = [store.create_port({"network_id": net["id"]})["id"] for _ in range(3)]

    def wire() -> None:
        time.sleep(0.2)
        store.set_ports_observed(statuses={p: "ACTIVE" for p in ports})

    threading.Thread(target=wire).start()
    store.status_reads = 0
    assert waiter.wait(ports, "ACTIVE", timeout=30) == []
    assert store.status_reads == 1, "woken by the event, not by polling the store"


def test_wait_times_out_with_the_ports_still_pending(tmp_path: Path) -> None:
    store, waiter, client = _setup(tmp_path)
    net = store.create_network({})
    p = store.create_port({"network_id": net["id"]})["id"]
    assert waiter.wait([p, "no-such-port"], "ACTIVE", timeout=0.2) == sorted([p, "no-such-port"])
    r = client.post("/tenantnet/wait", json={"port_ids": [p], "status": "DOWN", "timeout": 1})
    assert r.status_code == 200 and r.json() == {"done": True, "pending": []}


def test_wait_rejects_bad_bodies_with_a_400_naming_the_field(tmp_path: Path) -> None:
    _, _, client = _setup(tmp_path)
    r = client.post("/tenantnet/wait", json={"port_ids": [], "timeout": 1})
    assert r.status_code == 400 and "port_ids" in r.json()["NeutronError"]["message"]
    r = client.post("/tenantnet/wait", json={"port_ids": ["x"], "timeout": 1000})
    assert r.status_code == 400 and "timeout" in r.json()["NeutronError"]["message"]


def test_route_is_woken_by_the_status_event_and_ignores_other_ports(tmp_path: Path) -> None:
    store, _, client = _setup(tmp_path)
    net = store.create_network({})
    a, b = (store.create_port({"network_id": net["id"]})["id"] for _ in range(2))

    def wire() -> None:
        time.sleep(0.1)
        store.set_ports_observed(statuses={b: "ACTIVE"})  # not the one waited for
        time.sleep(0.1)
        store.set_ports_observed(statuses={a: "ACTIVE"})

    threading.Thread(target=wire).start()
    store.status_reads = 0
    r = client.post("/tenantnet/wait", json={"port_ids": [a], "timeout": 30})
    assert r.status_code == 200 and r.json() == {"done": True, "pending": []}
    assert store.status_reads == 1, "woken by a's event, not by polling the store"


def test_a_port_that_flaps_back_is_pending_again(tmp_path: Path) -> None:
    store, waiter, _ = _setup(tmp_path)
    net = store.create_network({})
    a, b = (store.create_port({"network_id": net["id"]})["id"] for _ in range(2))

    def flap() -> None:
        time.sleep(0.05)
        store.set_ports_observed(statuses={a: "ACTIVE"})
        store.set_ports_observed(statuses={a: "DOWN"})  # before b is ready: a no longer counts

    threading.Thread(target=flap).start()
    assert waiter.wait([a, b], "ACTIVE", timeout=0.4) == sorted([a, b])
