"""An OVSDB agent replaced (host updated, moved to or from another instance, deleted and added
again) leaves nothing behind: no open file, no thread, no IDL.

Each agent runs on a thread of its own and builds a python-ovs IDL, whose constructor calls
``uuid.uuid1()``: CPython hands that to libuuid, which (without a ``uuidd`` daemon) opens
``/var/lib/libuuid/clock.txt`` once per calling thread and never closes it.  Built on the
agent's thread, every replaced agent left one open file for good (`ovsdb_host._build_idl`).

The agents here are real (`OvsdbHost.start`/`stop`, its real `_connect`), with the schema read
from the local file and ovsdbapp's Connection replaced by one that does not connect: no server
is needed, and an agent's whole life takes a few ms.  The restart of a host's ovsdb-server
(the IDL's own session reconnects, no new IDL or thread) was measured not to grow anything."""

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

from controller.southbound.ovsdb_host import OvsdbHost
from tests.unit.private_ovsdb import agents_without_server

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
