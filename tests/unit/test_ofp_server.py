"""southbound/ofp_server: OpenFlow connections end, the accept loop survives, caps hold.

These run the real listener and os-ken's real Datapath on loopback, without the OpenFlow app:
a connection that never completes the handshake is exactly what a port scanner or a flood of
idle clients looks like.  (Liveness after the handshake, with real switches and a fake one, is
tested in tests/integration/test_faults.py; the watchdog's own rule, on a session put in the
state the handshake leaves it in, is tested here.)
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from os_ken.controller.handler import MAIN_DISPATCHER
from os_ken.ofproto import ofproto_v1_3 as ofp

from controller.southbound.ofp_server import (
    ConnectionLimits,
    ConnectionStats,
    Listener,
    LiveDatapath,
)
from controller.throttle import MAX_KEYS, Throttle

OFP_HEADER = 8


class Server:
    def __init__(self, limits: ConnectionLimits, wrap: Callable[[Any], Any] = lambda s: s) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.stats = ConnectionStats(max_connections=limits.max_connections)
        self.listener = Listener(limits, self.stats)
        self.thread = threading.Thread(
            target=self.listener.serve, args=(wrap(self.sock),), daemon=True
        )
        self.thread.start()

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", self.port))
        return s

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**kw: Any) -> Server:
        wrap = kw.pop("wrap", lambda s: s)
        servers.append(Server(ConnectionLimits(**kw), wrap))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _until(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def _hello_then_eof(s: socket.socket) -> tuple[bytes, bytes]:
    """What the server sent first (its HELLO), then what it sent when it closed (b"")."""
    hello = s.recv(OFP_HEADER)
    return hello, s.recv(100)


def test_closed_connections_release_their_threads_and_sockets(make_server: Any) -> None:
    srv = make_server(max_per_source=1000)
    baseline = threading.active_count()
    for _ in range(200):
        srv.connect().close()
    assert _until(lambda: srv.stats.accepted == 200), "not every connection was accepted"
    assert _until(lambda: srv.stats.open == 0 and threading.active_count() <= baseline), (
        f"{threading.active_count() - baseline} threads and {srv.stats.open} connections left"
    )


def test_connections_that_never_complete_the_handshake_are_closed(
    make_server: Any, caplog: Any
) -> None:
    srv = make_server(handshake_timeout_s=0.5)
    idle = [srv.connect() for _ in range(5)]
    for s in idle:
        hello, rest = _hello_then_eof(s)
        assert len(hello) == OFP_HEADER and hello[1] == 0  # an OpenFlow HELLO
        assert rest == b"", "the server should have closed the idle connection"
        s.close()
    assert _until(lambda: srv.stats.open == 0)
    assert srv.stats.handshake_timeouts == 5
    logged = [r for r in caplog.records if "no OpenFlow handshake" in r.getMessage()]
    assert len(logged) == 1, "a flood of idle connections must not flood the log"


def test_caps_per_source_and_in_total(make_server: Any) -> None:
    srv = make_server(max_per_source=2, max_connections=3, handshake_timeout_s=30)
    kept = [srv.connect("127.0.0.1"), srv.connect("127.0.0.1")]
    for s in kept:
        assert s.recv(OFP_HEADER)  # served: HELLO
    refused = srv.connect("127.0.0.1")
    assert refused.recv(OFP_HEADER) == b"", "a third connection from one source was served"
    other = srv.connect("127.0.0.2")  # another source still gets in ...
    assert other.recv(OFP_HEADER)
    over = srv.connect("127.0.0.3")  # ... until the total cap
    assert over.recv(OFP_HEADER) == b""
    assert srv.stats.refused_source_cap == 1 and srv.stats.refused_total_cap == 1
    for s in kept:
        s.close()
    assert _until(lambda: srv.stats.open == 1)
    again = srv.connect("127.0.0.1")  # load gone: accepted again
    assert again.recv(OFP_HEADER)
    for s in (refused, other, over, again):
        s.close()


class FailingAccept:
    """A listening socket whose accept() fails like a process out of file descriptors."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self.sock = sock
        self.failures = failures

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def fileno(self) -> int:
        return self.sock.fileno()


def test_accept_errors_are_survived(make_server: Any, caplog: Any) -> None:
    srv = make_server(wrap=lambda s: FailingAccept(s, failures=5))
    s = srv.connect()
    assert s.recv(OFP_HEADER), "the listener did not recover from EMFILE"
    assert srv.stats.accept_errors == 5
    logged = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(logged) == 1, "one line per outage, not one per failed accept"
    s.close()


def test_the_log_throttle_stays_bounded_under_many_sources() -> None:
    throttle = Throttle(every_s=0.0)
    for i in range(3 * MAX_KEYS):
        assert throttle(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0
    assert len(throttle._last) <= MAX_KEYS
    quiet = Throttle(every_s=60)
    assert quiet("a") == 0 and quiet("a") is None and quiet("a") is None


def _session(
    limits: ConnectionLimits, stats: ConnectionStats
) -> tuple[LiveDatapath, socket.socket]:
    """A LiveDatapath on a loopback TCP connection, as the handshake leaves it (OpenFlow 1.3,
    MAIN_DISPATCHER), and the switch's end of the connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    switch = socket.create_connection(srv.getsockname())
    sock, addr = srv.accept()
    srv.close()
    dp = LiveDatapath(sock, addr, limits, stats)
    dp.set_version(ofp.OFP_VERSION)
    dp.state = MAIN_DISPATCHER
    return dp, switch


def _receive_loop(dp: LiveDatapath) -> None:
    """What os-ken's receive loop does with the socket: read until it is shut down."""
    while True:
        try:
            if not dp.socket.recv(8):
                return
        except OSError:
            return


def test_a_silent_switch_is_closed_after_the_dead_time_and_one_that_sends_anything_is_not() -> None:
    """Liveness (``--ofp-dead-after-s``): echo requests go out once the switch is quiet, but
    only what the switch sends counts as an answer - an echo request sent is no sign of life,
    and any message received (not only an echo reply) is one.  A switch that stops sending
    is closed after the dead time, counted in ``declared_dead``."""
    limits = ConnectionLimits(echo_interval_s=0.1, dead_after_s=0.8)
    stats = ConnectionStats()
    dp, switch = _session(limits, stats)
    reader = threading.Thread(target=_receive_loop, args=(dp,), daemon=True)
    reader.start()
    talking = threading.Event()
    talking.set()

    def talk() -> None:  # any message will do: a port status, here a bare header
        while talking.is_set():
            with contextlib.suppress(OSError):
                switch.sendall(bytes([ofp.OFP_VERSION, ofp.OFPT_PORT_STATUS, 0, 8, 0, 0, 0, 1]))
            time.sleep(0.05)

    talker = threading.Thread(target=talk, daemon=True)
    talker.start()
    watch = threading.Thread(target=dp._watch, daemon=True)
    watch.start()
    try:
        watch.join(2.5 * limits.dead_after_s)
        assert watch.is_alive() and not dp.end_reason, f"closed while sending: {dp.end_reason}"
        assert stats.declared_dead == 0
        talking.clear()  # the switch falls silent
        talker.join(1)
        silent_at = time.monotonic()
        watch.join(10)
        assert not watch.is_alive(), "a silent switch was never declared dead"
        waited = time.monotonic() - silent_at
        assert limits.dead_after_s - 0.1 <= waited < limits.dead_after_s + 1.0, waited
        assert dp.end_reason.startswith("no answer for"), dp.end_reason
        assert stats.declared_dead == 1
        assert dp.send_q.qsize() >= 1, "no echo request was sent to the quiet switch"
        reader.join(5)
        assert not reader.is_alive(), "the connection was not shut down"
    finally:
        talking.clear()
        dp.end("test over")
        switch.close()
        dp.socket.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_start_that_failed_after_the_bind_does_not_hold_the_port_for_the_next() -> None:
    """`ofp_server.bind` runs first in a start; a start that fails after it (the store, the
    TLS files) never gets to os-ken, which would have taken the socket.  A later start in
    the same process (tests, the demo) must still be able to listen there."""
    from controller.southbound import ofp_server

    port = _free_port()
    try:
        ofp_server.bind("127.0.0.1", port)  # ... and that start failed
        ofp_server.bind("127.0.0.1", port)  # the next start
    finally:
        left = ofp_server.TenantnetOpenFlowController.listening.pop(port, None)
        if left is not None:
            left.close()


def test_two_controllers_started_in_one_process_each_serve_their_own_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two starts in one process bind two ports before either's os-ken loop runs: each loop
    serves the port it was started for, not whichever was bound last."""
    from controller.southbound import ofp_server

    served: list[int] = []

    class Serving:
        def __init__(self, *args: Any) -> None:
            pass

        def serve(self, server: socket.socket, tls: Any) -> None:
            served.append(server.getsockname()[1])
            server.close()

    monkeypatch.setattr(ofp_server, "Listener", Serving)
    monkeypatch.setattr(ofp_server, "_tls_context", lambda conf: None)
    first, second = _free_port(), _free_port()
    ofp_server.bind("127.0.0.1", first)
    ofp_server.bind("127.0.0.1", second)
    loop = ofp_server.TenantnetOpenFlowController.server_loop
    controller = object.__new__(ofp_server.TenantnetOpenFlowController)
    loop(controller, first, None)
    loop(controller, second, None)
    assert served == [first, second]
