"""Shared fixtures: a fresh store on a temporary file (every published event recorded) and API
clients over it."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api import ApiSettings, create_app
from controller.events import ChangeEvent, EventBus
from controller.store import Store

with warnings.catch_warnings():
    # Starlette nudges towards httpx2; the httpx-based TestClient still works and is what the
    # project depends on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def events(bus: EventBus) -> list[ChangeEvent]:
    """Every event the bus publishes, in order."""
    seen: list[ChangeEvent] = []
    bus.subscribe(seen.extend)
    return seen


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tenantnet.db")


@pytest.fixture
def store(db_path: str, bus: EventBus, events: list[ChangeEvent]) -> Iterator[Store]:
    s = Store(db_path, bus)
    yield s
    s.close()


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(store: Store) -> Iterator[ClientFactory]:
    """Build a TestClient over the fixture store with the given ApiSettings fields."""
    clients: list[TestClient] = []

    def build(raise_server_exceptions: bool = True, **settings: Any) -> TestClient:
        app = create_app(store, ApiSettings(**settings))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        clients.append(client)
        return client

    yield build
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """An open (no auth) API client."""
    return make_client()


@contextlib.contextmanager
def live_server(app: Any, **limits: Any) -> Iterator[tuple[int, Any]]:
    """``app`` behind the controller's real HTTP server (uvicorn with its limits) on a free
    loopback port, in a thread: for what only a real socket shows (slow clients, the event
    loop staying free)."""
    from controller.api import server

    sock = server.bind("127.0.0.1", 0)
    options = {"max_connections": 1000, "header_timeout": 10.0, "keepalive": 5.0, **limits}
    srv = server.make_server(app, **options)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1], srv
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


_OFP_APPS: list[Any] = []


def new_ofp_app() -> Any:
    """A `TenantnetOfpApp` (no os-ken event loop) that is stopped when the test ends: its
    barrier reaper would otherwise outlive the test and report, seconds later, a batch of a
    fake switch that no one answers any more."""
    from controller.southbound.ofp_app import TenantnetOfpApp

    app = TenantnetOfpApp()
    _OFP_APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def _ofp_apps_stopped() -> Iterator[None]:
    """Every app `new_ofp_app` made is stopped, and no app's thread started by the test
    outlives it (one left by an earlier test is that test's failure, not this one's)."""
    before = set(_app_threads())
    yield
    apps = list(_OFP_APPS)
    _OFP_APPS.clear()
    for app in apps:
        app.stop()
    left = [t.name for t in _app_threads() if t not in before]
    assert not left, f"an OpenFlow app's thread outlived its test: {left}"


def _app_threads() -> list[threading.Thread]:
    """The threads an app starts and `TenantnetOfpApp.stop` ends: its barrier reaper and its
    packet-in worker (also a `PacketInQueue` a test made and did not close)."""
    names = set()
    for module, name in (
        ("controller.southbound.ofp_app", "BARRIER_THREAD"),
        ("controller.southbound.packet_in", "WORKER_THREAD"),
    ):
        if module in sys.modules:
            names.add(getattr(sys.modules[module], name))
    return [t for t in threading.enumerate() if t.name in names]
