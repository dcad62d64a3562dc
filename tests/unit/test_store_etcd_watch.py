"""`LogWatch` against a fake etcd member on loopback (no etcd needed): what a hostile or broken
member sends ends that stream as a failed member, never the watch's thread nor the memory."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from etcd3gw import exceptions as etcd_errors

from controller.store import etcd_auth, etcd_watch
from controller.store.etcd_log import EtcdLog, _b64
from controller.store.etcd_settings import EtcdSettings
from controller.store.etcd_watch import LogWatch, _shut
from tests.unit.test_store_etcd import wait_for

CREATED = b'{"result":{"created":true,"header":{"revision":"5"}}}\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeMember:
    """A loopback HTTP server; every request gets ``script(connection)``: raw bytes written
    on the socket (status line and headers included).  ``attempts`` counts requests."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.attempts = 0
        member = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                member.attempts += 1
                with contextlib.suppress(OSError):  # the client went away
                    script(self.connection)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settings(self, members: int = 1) -> EtcdSettings:
        port = self.server.server_address[1]
        return EtcdSettings(endpoints=(("127.0.0.1", port),) * members, timeout_s=2.0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chunked_200(sock: socket.socket, body: bytes) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


def hold(sock: socket.socket) -> None:
    """Keep the connection open until the client closes it."""
    sock.settimeout(30)
    while sock.recv(65536):
        pass


def watching(
    member: FakeMember,
    idle_s: float = 5.0,
    members: int = 1,
    cls: type[LogWatch] = LogWatch,
    entry: Callable[[int, bytes], None] | None = None,
) -> tuple[LogWatch, list[int]]:
    rings: list[int] = []
    log = EtcdLog(member.settings(members))
    return cls(log, 1, lambda: rings.append(1), entry, idle_s=idle_s), rings


def first_end(member: FakeMember, caplog: pytest.LogCaptureFixture) -> None:
    """Run a watch on ``member`` until its first stream ended (it rang); then stop both."""
    with caplog.at_level(logging.WARNING):
        watch, rings = watching(member, idle_s=2.0)
        try:
            wait_for(lambda: bool(rings), "the stream's end")
        finally:
            watch.stop()
            member.close()


def test_a_chunk_header_of_a_terabyte_is_a_failed_member_not_a_memory_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An HTTP chunk announced at 2^48 bytes: urllib3 read each chunk whole (``chunk_size=None``)
    and the allocation raised MemoryError, which ended the watch's thread with a traceback.
    Read in pieces, the stream ends (here the peer closes mid-chunk) as a member failure and
    the watch tries again."""
    member = FakeMember(lambda s: chunked_200(s, chunk(CREATED) + b"ffffffffffff\r\n" + b"{" * 100))
    with caplog.at_level(logging.WARNING):
        watch, _ = watching(member)
        try:
            wait_for(lambda: member.attempts >= 3, "the watch trying again")
            assert watch.alive
        finally:
            watch.stop()
            member.close()
    assert not [r for r in caplog.records if "etcd watch stopped" in r.getMessage()]
    assert any("etcd watch on" in r.getMessage() for r in caplog.records)


def test_a_line_over_the_bound_ends_the_stream_with_bounded_memory(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk announced at 1 GiB, then bytes without a newline: the stream ends once the line
    passes MAX_LINE_BYTES (here 256 KiB), having held at most that and one read; urllib3
    allocated the whole announced chunk before (1 GiB), then waited for it."""
    monkeypatch.setattr(etcd_watch, "MAX_LINE_BYTES", 256 * 1024)

    def script(s: socket.socket) -> None:
        chunked_200(s, chunk(CREATED) + b"3fffffff\r\n" + b"x" * (1024 * 1024))
        hold(s)

    member = FakeMember(script)
    tracemalloc.start()
    try:
        first_end(member, caplog)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert any("over 262144 bytes" in r.getMessage() for r in caplog.records)
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated for a 256 KiB line"


@pytest.mark.parametrize("status", [b"500 Oops", b"400 No"])
def test_an_error_answer_is_read_only_as_far_as_the_message_needs(
    caplog: pytest.LogCaptureFixture, status: bytes
) -> None:
    """A 500 (or a 400) announcing a body of 100 MB (then silent): the warning names the status
    and the start of the body at once; ``response.text`` read the whole body (here: until the
    idle timeout, which then was the reason logged).  The 400: the token hook (`etcd_auth`)
    looks into every 400/401 for etcd's auth errors, and read it whole, on the stream too."""

    def script(s: socket.socket) -> None:
        s.sendall(b"HTTP/1.1 %s\r\nContent-Length: 100000000\r\n\r\n" % status + b"e" * 1000)
        hold(s)

    first_end(FakeMember(script), caplog)
    warned = [r.getMessage() for r in caplog.records if "etcd watch on" in r.getMessage()]
    assert warned and f"HTTP {status[:3].decode()}: eeee" in warned[0]


PROGRESS = b'{"result":{"header":{"revision":"5"}}}\n'


@pytest.mark.parametrize("then", [b"", chunk(PROGRESS)], ids=["ends", "progress-then-ends"])
def test_a_member_that_confirms_each_watch_and_ends_it_gets_paced_retries(then: bytes) -> None:
    """Each stream is confirmed (``created``) and ends at once: that is a failed member too,
    so after a round of the members every attempt waits the pause.  The old watch counted a
    confirmed stream as a success and went round without pause: a tight loop of watch
    requests, each ringing the follower into a log read; and then still when the stream sent
    one progress notification before it ended.  Pauses are recorded, not waited."""
    member = FakeMember(lambda s: chunked_200(s, chunk(CREATED) + then + b"0\r\n\r\n"))
    pauses: list[int] = []

    class Recorded(LogWatch):
        def _pause(self) -> None:
            pauses.append(member.attempts)
            if len(pauses) == 3:
                self._stopping.set()

    watch, _ = watching(member, members=3, cls=Recorded)
    try:
        wait_for(lambda: not watch.alive or member.attempts >= 30, "three pauses")
    finally:
        watch.stop()
        member.close()
    assert pauses == [3, 4, 5]  # a round of three members, then after every attempt


def test_an_error_of_the_entry_callback_ends_the_thread_not_the_member(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A KeyError raised by the follower's callback is a bug on this side: the thread ends
    with a logged traceback (the follower starts another), as the docstring says; it was
    counted as a malformed response of the member, which was then left."""
    key = "/tenantnet/log/0000000000000001"
    event = (
        b'{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"%s","value":"%s",'
        b'"mod_revision":"6"}}]}}\n' % (_b64(key).encode(), _b64(b"entry").encode())
    )

    def script(s: socket.socket) -> None:
        chunked_200(s, chunk(CREATED) + chunk(event))
        hold(s)

    def entry(seq: int, value: bytes) -> None:
        raise KeyError("a bug (injected)")

    member = FakeMember(script)
    with caplog.at_level(logging.WARNING):
        watch, _ = watching(member, entry=entry)
        try:
            wait_for(lambda: not watch.alive, "the watch's thread to end")
        finally:
            watch.stop()
            member.close()
    stopped = [r for r in caplog.records if "etcd watch stopped" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].exc_info is not None
    assert not [r for r in caplog.records if "malformed" in r.getMessage()]
    assert watch.resyncs == 1 and member.attempts == 1


def test_restart_shuts_the_stream_s_own_socket_and_nothing_else() -> None:
    """`restart` ends a silent stream at once (through its socket object), and a response whose
    connection is closed shuts nothing: its descriptor number may be another socket's by now
    (here: an unrelated socket has it), which the old shutdown by number cut."""

    def script(s: socket.socket) -> None:
        chunked_200(s, chunk(CREATED))
        hold(s)

    member = FakeMember(script)
    watch, _ = watching(member, idle_s=60.0)
    try:
        wait_for(lambda: member.attempts == 1 and watch._response is not None, "the stream")
        watch.restart()
        wait_for(lambda: member.attempts == 2, "the watch on the next member")
    finally:
        watch.stop()
        member.close()

    unrelated, peer = socket.socketpair()
    closed = socket.socket()
    closed.close()
    raw = SimpleNamespace(_fp=SimpleNamespace(fileno=unrelated.fileno), _connection=None)
    response: Any = SimpleNamespace(raw=raw, close=lambda: None)
    for connection in (None, SimpleNamespace(sock=None), SimpleNamespace(sock=closed)):
        raw._connection = connection
        _shut(response)
    try:
        peer.sendall(b"x")
        assert unrelated.recv(1) == b"x"
        unrelated.sendall(b"y")
        assert peer.recv(1) == b"y"
    finally:
        unrelated.close()
        peer.close()


@pytest.mark.parametrize(
    "error",
    [
        etcd_errors.ConnectionTimeoutError("the member did not answer the authenticate"),
        etcd_auth.EtcdAuthError("etcd user 'u': authentication failed (rotated)"),
    ],
    ids=["renewal-timeout", "password-refused"],
)
def test_a_token_that_cannot_be_renewed_fails_the_member_not_the_thread(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """The token's renewal runs inside the stream's request (`etcd_auth`) and raises etcd3gw's
    errors (a slow member) or EtcdAuthError (a rotated password): the old watch caught neither
    and its thread ended with a traceback ("etcd watch stopped"), once per follower poll.  Now
    a failed member: paced retries, one line.  Pauses are recorded, not waited."""

    def renew(self: etcd_auth.TokenAuth, url: str, stale: str) -> str:
        raise error

    monkeypatch.setattr(etcd_auth.TokenAuth, "_renew", renew)
    member = FakeMember(hold)
    pauses: list[int] = []

    class Recorded(LogWatch):
        def _pause(self) -> None:
            pauses.append(1)
            if len(pauses) == 3:
                self._stopping.set()

    settings = dataclasses.replace(member.settings(2), user="u", password="p")
    with caplog.at_level(logging.WARNING):
        watch = Recorded(EtcdLog(settings), 1, lambda: None, idle_s=5.0)
        try:
            wait_for(lambda: not watch.alive, "three pauses")
        finally:
            watch.stop()
            member.close()
    assert len(pauses) == 3 and member.attempts == 0
    assert not [r for r in caplog.records if "etcd watch stopped" in r.getMessage()]
    lines = [r for r in caplog.records if "etcd watch on" in r.getMessage()]
    assert len(lines) == 1 and type(error).__name__ in lines[0].getMessage()
    refused = isinstance(error, etcd_auth.EtcdAuthError)
    assert lines[0].levelno == (logging.ERROR if refused else logging.WARNING)
