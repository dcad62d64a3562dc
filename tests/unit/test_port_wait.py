"""POST /tenantnet/wait: blocks until ports reach a status, woken by store events."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
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


def _limited(tmp_path: Path, **limits: int) -> tuple[Store, TestClient]:
    bus = EventBus()
    store = Store(str(tmp_path / "db.sqlite"), bus)
    app = create_app(store, ApiSettings())
    add_wait_route(app, PortWaiter(store, bus, **limits))
    return store, TestClient(app)


def test_too_many_ids_is_a_400_naming_port_ids(tmp_path: Path) -> None:
    _, client = _limited(tmp_path, max_ports=3)
    r = client.post("/tenantnet/wait", json={"port_ids": ["a", "b", "c", "d"], "timeout": 1})
    assert r.status_code == 400
    assert "port_ids" in r.json()["NeutronError"]["message"]
    r = client.post("/tenantnet/wait", json={"port_ids": ["a", "b", "c"], "timeout": 0.01})
    assert r.status_code == 200 and r.json()["done"] is False


def test_waits_beyond_the_limit_get_429_and_the_slot_comes_back(tmp_path: Path) -> None:
    store, _ = _limited(tmp_path)
    bus = EventBus()
    waiter = PortWaiter(store, bus, max_waits=2)
    app = create_app(store, ApiSettings())
    add_wait_route(app, waiter)
    results: list[list[str]] = []

    def hold() -> None:
        results.append(waiter.wait(["never"], "ACTIVE", timeout=30))

    held = [threading.Thread(target=hold) for _ in range(2)]
    for t in held:
        t.start()
    deadline = time.monotonic() + 10
    while waiter._active < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with TestClient(app) as client:
        r = client.post("/tenantnet/wait", json={"port_ids": ["x"], "timeout": 0.01})
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["NeutronError"]["type"] == "TooManyWaits"
        # End the two waits (as if their port had become ACTIVE): there is room again.
        for w in list(waiter._waits.get("never", [])):
            w.update("never", "ACTIVE")
        for t in held:
            t.join(10)
        assert results == [[], []]
        r = client.post("/tenantnet/wait", json={"port_ids": ["x"], "timeout": 0.01})
        assert r.status_code == 200, r.text


def test_a_wait_never_reads_the_store_on_the_event_loop(tmp_path: Path) -> None:
    """While another thread holds the store (a long bulk create), a wait is in progress and
    ``GET /`` still answers: the wait's store read is not on the loop."""
    from tests.unit.conftest import live_server

    store, _ = _limited(tmp_path)
    waiter = PortWaiter(store, EventBus())
    app = create_app(store, ApiSettings())
    add_wait_route(app, waiter)
    net = store.create_network({})
    port = store.create_port({"network_id": net["id"]})["id"]
    with live_server(app) as (api_port, _):
        base = f"http://127.0.0.1:{api_port}"
        store._lock.acquire()  # what a 10,000-port bulk does for a while
        try:
            wait_result: list[Any] = []
            waiting = threading.Thread(
                target=lambda: wait_result.append(
                    httpx.post(
                        f"{base}/tenantnet/wait",
                        json={"port_ids": [port], "status": "DOWN", "timeout": 20},
                        timeout=30,
                    )
                )
            )
            waiting.start()
            deadline = time.monotonic() + 10
            while port not in waiter._waits and time.monotonic() < deadline:
                time.sleep(0.01)  # registered: its store read comes next and blocks
            assert port in waiter._waits and not wait_result
            r = httpx.get(f"{base}/", timeout=10)
            assert r.status_code == 200
            assert waiting.is_alive(), "the wait is still blocked on the store"
        finally:
            store._lock.release()
        waiting.join(30)
        assert wait_result[0].json() == {"done": True, "pending": []}


def test_a_wait_is_matched_before_the_collection_routes(tmp_path: Path) -> None:
    """The wait is the first route the router tries: it does not pay a regex match for every
    Neutron route first (it was added last, after ~130 of them), and the routes after it
    still answer."""
    _, _, client = _setup(tmp_path)
    tried: list[Any] = []
    for route in client.app.router.routes:  # type: ignore[attr-defined]

        def counting(scope: Any, route: Any = route, matches: Any = route.matches) -> Any:
            tried.append(route)
            return matches(scope)

        route.matches = counting
    r = client.post("/tenantnet/wait", json={"port_ids": ["x"], "status": "DOWN", "timeout": 0.01})
    assert r.status_code == 200 and r.json() == {"done": False, "pending": ["x"]}
    assert [getattr(t, "path", None) for t in tried] == ["/tenantnet/wait"]
    tried.clear()
    assert client.get("/v2.0/networks").status_code == 200
    assert len(tried) > 1
