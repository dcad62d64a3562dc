"""The controller's own OVSDB session to a host retries at most ``max_backoff_s`` apart.

python-ovs's reconnect FSM doubles its wait up to 8 s by default, so a host whose ovsdb-server
restarted could be re-read up to 8 s late.  These tests build the IDL the way `OvsdbHost` does
(its real `_connect`, with the schema read from the local file instead of a server) and drive
the session's own FSM with explicit clock values: deterministic, no sleeping.  The fault on
real OVS (an ovsdb-server restart) is in tests/integration/test_faults.py."""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovs.jsonrpc
import ovs.stream
import pytest
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import idlutils

from controller import config
from controller.southbound import ovsdb_host
from controller.southbound.ovsdb_host import OvsdbHost
from tests.unit.private_ovsdb import (
    SCHEMA,
    PrivateOvsdb,
    agents_without_server,
    reporting_agent,
    running_ovsdb,
    wait_until,
    without_vswitchd,
)


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Any:
    agents_without_server(monkeypatch)

    def connect(**kwargs: Any) -> Any:
        host = OvsdbHost(
            {"id": "hv1", "ovsdb": "tcp:127.0.0.1:9", "tunnel_ip": "192.0.2.1"},
            "tcp:127.0.0.1:6653",
            lambda *_: None,
            lambda *_: None,
            **kwargs,
        )
        # _connect retries whatever fails until stopped: a broken set-up fails here, not hangs
        worker = threading.Thread(target=host._connect, daemon=True)
        worker.start()
        worker.join(timeout=20)
        host._stop.set()
        assert host._conn is not None, "OvsdbHost._connect did not build its IDL"
        return host._conn.idl._session.reconnect

    return connect


def _waits_after_failures(fsm: Any, failures: int) -> list[int]:
    """Milliseconds the FSM waits before each next attempt, over ``failures`` failed connects
    (each attempt fails at once, as against a host whose ovsdb-server is down)."""
    now, waits = 1_000_000, []
    for _ in range(failures):
        fsm.connect_failed(now, errno.ECONNREFUSED)
        wait = fsm.timeout(now)
        waits.append(wait)
        now += wait
        assert fsm.run(now) == "connect"
        fsm.connecting(now)
    return waits


def test_a_host_is_retried_at_least_every_second_by_default(connect: Any) -> None:
    fsm = connect()
    assert fsm.get_max_backoff() == 1000
    assert max(_waits_after_failures(fsm, 10)) == 1000


def test_the_bound_is_configurable(connect: Any) -> None:
    waits = _waits_after_failures(connect(max_backoff_s=3), 10)
    assert waits[:3] == [1000, 2000, 3000] and max(waits) == 3000


def test_python_ovs_alone_would_wait_up_to_8_s(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: without the bound, the same session backs off to python-ovs's 8 s."""
    monkeypatch.setattr(ovsdb_host, "bound_reconnect_backoff", lambda *_: None)
    assert max(_waits_after_failures(connect(), 10)) == 8000


@pytest.mark.parametrize("value", ["0.5", "0", "-1", "7200"])
def test_a_bound_python_ovs_cannot_honour_is_refused(value: str) -> None:
    with pytest.raises(config.ConfigError, match="ovsdb_max_backoff_s"):
        config.Settings(ovsdb_max_backoff_s=float(value)).validate()


def test_an_ovsdb_server_that_accepts_and_never_answers_does_not_hold_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung or stopped ovsdb-server (the kernel still completes the TCP handshake), or a
    hostile peer: ovsdbapp's schema fetch waits for good, so the agent's thread was stuck
    there, never retried, and outlived `stop` with its socket.  The fetch is bounded by the
    agent's timeout and retried; `stop` ends the thread."""
    monkeypatch.setattr(ovsdb_host, "POKE_TIMEOUT_S", 0.3)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # accepts (in the kernel), never answers
    host = OvsdbHost(
        {"id": "hv1", "ovsdb": f"tcp:127.0.0.1:{srv.getsockname()[1]}", "tunnel_ip": "192.0.2.1"},
        "tcp:127.0.0.1:6653",
        lambda *_: None,
        lambda *_: None,
        timeout=0.5,
    )
    try:
        host.start()
        time.sleep(2.0)  # the poke's timeout, then several of the agent's own
        host.stop()
        assert host._thread is not None and not host._thread.is_alive()
    finally:
        srv.close()


@pytest.fixture
def untimed_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PrivateOvsdb, OvsdbHost, list[bool]]]:
    """An agent on a private ovsdb-server whose loop has no tick (60 s: only the IDL's wakes
    make it look); (server, agent, what it reported) once it reported the first connect."""
    without_vswitchd(monkeypatch)
    monkeypatch.setattr(OvsdbHost, "_settle_wait", lambda self: 60.0)
    states: list[bool] = []
    with running_ovsdb(tmp_path) as db:
        agent = reporting_agent(db, states)
        agent.start()
        try:
            wait_until(lambda: states == [True], "the first connect")
            yield db, agent, states
        finally:
            agent.stop()


def test_a_lost_session_wakes_the_agent_not_its_next_tick(untimed_agent: Any) -> None:
    """A host's ovsdb-server that dies changes no row (the IDL keeps them until the resync),
    so nothing woke the agent: it heard of the loss at its next 1 s tick.  The IDL now wakes
    it when its session goes down or up (`_NotifyingIdl.run`): with no tick, the loss and
    the session's return are still reported (fails on the old code)."""
    db, _agent, states = untimed_agent
    db.stop()
    wait_until(lambda: states == [True, False], "the loss reported", timeout=5)
    db.serve()
    wait_until(lambda: states == [True, False, True], "the session back reported")


def test_a_loss_while_the_agent_was_busy_is_still_reported(untimed_agent: Any) -> None:
    """The session dropped and came back while the agent did something else (a transaction
    can hold it for seconds, and python-ovs reconnects meanwhile on the connection's thread):
    both looks see the session up.  The IDL counts the losses, so the agent still reports
    the loss, then the session back, and reads the host again (fails without the count).
    Busy is made here by the IDL waking a new event while the agent waits on the old one."""
    db, agent, states = untimed_agent
    idl = agent._conn.idl
    idl._session.reconnect.set_backoff_free_tries(1 << 30)  # timing only
    busy, idl.changed = idl.changed, threading.Event()
    db.stop()
    wait_until(lambda: idl.losses == 1, "the session to drop")
    db.serve()
    wait_until(lambda: idl.synced, "the session back")
    assert states == [True]  # the agent saw nothing yet
    busy.set()
    wait_until(lambda: states == [True, False, True], "the loss and the return reported")


def test_a_session_is_synced_only_once_the_servers_dump_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reconnected, the IDL still holds the previous session's rows until the server's dump
    arrives: the agent reported the host up (and read it) on the old rows.  `synced` - what
    the agent calls up - needs the session connected *and* the dump read (MONITORING), and
    each change of it wakes the agent.  python-ovs's own step is stubbed: the session's state
    is set by hand."""
    monkeypatch.setattr(ovs_idl.Idl, "run", lambda self: False)
    with open(SCHEMA) as f:
        helper = idlutils.create_schema_helper(json.load(f))
    helper.register_all()
    idl = ovsdb_host._build_idl("unix:/nonexistent.sock", helper)
    idl.changed = threading.Event()
    connected = [False]
    monkeypatch.setattr(idl._session, "is_connected", lambda: connected[0])
    try:
        steps = []
        for is_connected, state in (
            (True, ovs_idl.Idl.IDL_S_DATA_MONITOR_COND_SINCE_REQUESTED),  # socket up, no dump
            (True, ovs_idl.Idl.IDL_S_MONITORING),  # the dump read
            (True, ovs_idl.Idl.IDL_S_MONITORING),  # nothing new
            (False, ovs_idl.Idl.IDL_S_MONITORING),  # lost
        ):
            connected[0], idl.state = is_connected, state
            idl.changed.clear()
            idl.run()
            steps.append((idl.synced, idl.changed.is_set()))
        assert steps == [(False, False), (True, True), (True, False), (False, True)]
    finally:
        idl.close()


class _RefusingOvsdb:
    """A server on ``sock`` that answers echoes and the Open_vSwitch schema, and refuses every
    other request (the monitor among them) with an error that is not "unknown method": a
    restarted server gone wrong, or a peer that lies.  Counts the monitor requests refused."""

    def __init__(self, sock: Path) -> None:
        sock.unlink(missing_ok=True)
        err, self._passive = ovs.stream.PassiveStream.open(f"punix:{sock}")
        assert not err, err
        with open(SCHEMA) as f:
            self._schema = json.load(f)
        self.monitors_refused = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            _err, stream = self._passive.accept()
            if stream is None:
                time.sleep(0.01)
                continue
            worker = threading.Thread(target=self._serve, args=(stream,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, stream: Any) -> None:
        conn = ovs.jsonrpc.Connection(stream)
        try:
            while not self._stop.is_set():
                err, msg = conn.recv_block()
                if err or msg is None:
                    return
                if msg.type != ovs.jsonrpc.Message.T_REQUEST:
                    continue
                if msg.method == "echo":
                    conn.send(ovs.jsonrpc.Message.create_reply(msg.params, msg.id))
                elif msg.method == "get_schema" and msg.params == ["Open_vSwitch"]:
                    conn.send(ovs.jsonrpc.Message.create_reply(self._schema, msg.id))
                else:
                    self.monitors_refused += msg.method.startswith("monitor")
                    conn.send(ovs.jsonrpc.Message.create_error("not today", msg.id))
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._passive.close()
        for thread in self._threads:
            thread.join(timeout=5)


def test_a_server_that_refuses_the_monitor_is_reconnected_not_waited_for(
    untimed_agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """python-ovs waits for good on a session whose server answers its echoes but refuses the
    monitor request (anything but "unknown method"): after its server came back like that,
    a host stayed down with no reason logged.  A session that has not had the server's dump
    within the agent's timeout is reconnected, with one warning; the host is up again once
    a sound server answers (fails on the old code: one monitor request, never retried)."""
    db, agent, states = untimed_agent
    agent._conn.idl.sync_deadline_s = 0.3
    db.stop()
    wait_until(lambda: states == [True, False], "the loss reported")
    caplog.set_level(logging.DEBUG, logger=ovsdb_host.__name__)
    liar = _RefusingOvsdb(db.sock)
    try:
        wait_until(lambda: liar.monitors_refused >= 3, "three sessions refused", timeout=8)
    finally:
        liar.close()
    warnings = [
        r for r in caplog.records
        if "without the database's contents" in r.getMessage() and r.levelno == logging.WARNING
    ]  # fmt: skip
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert states == [True, False]  # never up on a session without its dump
    db.serve()
    wait_until(lambda: states == [True, False, True], "the host up again on a sound server")
