"""An OVSDB agent replaced (host updated, moved to or from another instance, deleted and added
again) leaves nothing behind: no open file, no thread, no IDL.

Each agent runs on a thread of its own and builds a python-ovs IDL, whose constructor calls
``uuid.uuid1()``: CPython hands that to libuuid, which (without a ``uuidd`` daemon) opens
``/var/lib/libuuid/clock.txt`` once per calling thread and never closes it.  Built on the
agent's thread, every replaced agent left one open file for good (`ovsdb_host._build_idl`).

The agents here are real (`OvsdbHost.start`/`stop`, its real `_connect`), with the schema read
from the local file and ovsdbapp's Connection replaced by one that does not connect: no server
is needed, and an agent's whole life takes a few ms.

A host's ovsdb-server restarting (or its connection dropping) is not a new agent: the IDL's
python-ovs session reconnects in place, and the agent builds no new IDL, ovsdbapp Connection,
API class or thread for it (the last test, against a private ovsdb-server)."""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from controller.southbound import ovsdb_host
from controller.southbound.ovsdb_host import OvsdbHost
from tests.unit.private_ovsdb import (
    agents_without_server,
    reporting_agent,
    running_ovsdb,
    wait_until,
    without_vswitchd,
)

AGENTS = 30


@pytest.fixture
def agent_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], Any]:
    """One agent's whole life: started, IDL built, stopped; returns its IDL."""
    agents_without_server(monkeypatch)

    def live() -> Any:
        host = OvsdbHost(
            # nothing listens there: the early read fails at once, as against a host down
            {"id": "hv1", "ovsdb": f"unix:{tmp_path / 'none.sock'}", "tunnel_ip": "192.0.2.1"},
            "tcp:127.0.0.1:6653",
            lambda *_: None,
            lambda *_: None,
        )
        host.start()
        deadline = time.monotonic() + 5
        while host._conn is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert host._conn is not None, "the agent did not build its IDL"
        idl = host._conn.idl
        host.stop()
        assert host._thread is not None and not host._thread.is_alive()
        return idl

    return live


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _uuid1_keeps_a_file_per_thread() -> bool:
    """Whether this platform's ``uuid.uuid1()`` leaves a file open for each thread that calls
    it (libuuid without uuidd): the hazard the first test guards against."""
    before = _open_fds()
    for _ in range(2):
        t = threading.Thread(target=uuid.uuid1)
        t.start()
        t.join()
    return _open_fds() - before >= 2


def test_agents_replaced_leave_no_open_file_no_thread_and_no_idl(
    agent_lives: Callable[[], Any],
) -> None:
    """Measured on the code before the fix: one more open file per agent, for good."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to count open files")
    if not _uuid1_keeps_a_file_per_thread():
        pytest.skip("uuid.uuid1() keeps no file per thread here (uuidd running, or no libuuid)")
    agent_lives()  # the first one may start what is shared (the IDL builder's thread)
    gc.collect()
    fds, threads = _open_fds(), threading.active_count()
    idls = [weakref.ref(agent_lives()) for _ in range(AGENTS)]
    gc.collect()
    assert _open_fds() - fds <= 2, f"{_open_fds() - fds} more open files after {AGENTS} agents"
    assert threading.active_count() == threads
    assert sum(r() is not None for r in idls) == 0, "old agents' IDLs are still referenced"


def test_idls_are_not_built_on_the_agents_own_threads(
    agent_lives: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on any platform: python-ovs's ``uuid.uuid1()`` calls (at IDL construction)
    all come from one thread, however many agents come and go."""
    callers: list[threading.Thread] = []  # the threads themselves: an ident is reused
    uuid1 = uuid.uuid1

    def recording_uuid1(*args: Any, **kwargs: Any) -> uuid.UUID:
        callers.append(threading.current_thread())
        return uuid1(*args, **kwargs)

    monkeypatch.setattr(uuid, "uuid1", recording_uuid1)
    for _ in range(5):
        agent_lives()
    assert callers, "python-ovs no longer calls uuid.uuid1(): this test guards nothing"
    distinct = {id(t): t for t in callers}
    assert len(distinct) == 1, [t.name for t in distinct.values()]


RESTARTS = 20


def _census() -> dict[str, int]:
    """What an agent's reconnects could leave behind, counted after a full collection."""
    gc.collect()
    objects = gc.get_objects()
    return {
        "threads": threading.active_count(),
        "open files": _open_fds() if os.path.isdir("/proc/self/fd") else 0,
        "IDLs": sum(isinstance(o, ovsdb_host._NotifyingIdl) for o in objects),
        "Connections": sum(isinstance(o, connection.Connection) for o in objects),
        "IDL rows": sum(isinstance(o, ovs_idl.Row) for o in objects),
        "API classes": len(impl_idl.OvsdbIdl.__subclasses__()),  # one per agent (_connect)
    }


def test_ovsdb_server_restarts_build_nothing_new_and_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's ovsdb-server restarted RESTARTS times; each time the agent reports the loss,
    then the session back (its `ensure_config` ran again).  It is still on the IDL it built
    first, and nothing grew: IDLs, ovsdbapp Connections, IDL rows (the old dumps' are freed),
    API classes, threads and open files are no more than after the first restart.

    Measured with a throwaway script: 50 restarts and 100 forced reconnects of one agent left
    all of these unchanged."""
    without_vswitchd(monkeypatch)
    built: list[weakref.ref[Any]] = []
    build = ovsdb_host._build_idl

    def counted_build(*args: Any) -> Any:
        idl = build(*args)
        built.append(weakref.ref(idl))
        return idl

    monkeypatch.setattr(ovsdb_host, "_build_idl", counted_build)
    states: list[bool] = []
    with running_ovsdb(tmp_path) as db:
        agent = reporting_agent(db, states)
        agent.start()
        try:
            wait_until(lambda: states == [True], "the agent's first connect")
            conn, api_cls = agent._conn, type(agent.api)
            assert conn is not None
            idl = conn.idl
            # Timing only: python-ovs waits at least 1 s before it reconnects (backoff; now it
            # retries without a pause while the server is down, a few ms here)
            idl._session.reconnect.set_backoff_free_tries(1 << 30)

            def restart() -> None:
                seen = len(states)
                db.stop()
                wait_until(lambda: states[seen:] == [False], "the loss reported")
                db.serve()
                wait_until(lambda: states[seen:] == [False, True], "the session back")

            restart()  # whatever a first reconnect may start for good
            before = _census()
            for _ in range(RESTARTS):
                restart()
            assert len(built) == 1, f"{len(built)} IDLs built for one agent"
            assert agent._conn is conn and conn.idl is idl and type(agent.api) is api_cls
            # (fewer is fine: what other tests left may have ended meanwhile)
            grown = {k: (before[k], n) for k, n in _census().items() if n > before[k]}
            assert not grown, f"grew over {RESTARTS} restarts (before, after): {grown}"
        finally:
            agent.stop()
