"""`LiveDatapath.write_now`: a buffer written on the calling thread only when os-ken's send thread
has nothing queued or in hand, never ahead of what was queued before it, never blocking, and
never leaving half a message behind (a real TCP connection on loopback, os-ken's real send
loop); and the receive side's read-ahead (`_WatchedSocket.recv`)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controller.southbound.ofp_server import (
    ConnectionLimits,
    ConnectionStats,
    LiveDatapath,
    Write,
    _WatchedSocket,
)


class _HeldSocket:
    """A socket whose blocking ``sendall`` (the send thread's) waits until ``go`` is set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.taken, self.go = sock, threading.Event(), threading.Event()

    def sendall(self, buf: bytes) -> None:
        self.taken.set()
        assert self.go.wait(10)
        self.sock.sendall(buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.fixture
def pair() -> Iterator[tuple[LiveDatapath, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))  # TCP, as a switch's connection
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    ours, _ = listener.accept()
    listener.close()
    dp = LiveDatapath(ours, ("127.0.0.1", 1), ConnectionLimits(), ConnectionStats())
    yield dp, peer
    dp.end("test over")
    ours.close()
    peer.close()


def _start_sender(dp: LiveDatapath) -> threading.Thread:
    thread = threading.Thread(target=dp._send_loop, daemon=True)
    thread.start()
    return thread


def _read(peer: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = peer.recv(n - len(got))
        assert chunk, "closed early"
        got += chunk
    return got


def _nothing_waiting(peer: socket.socket) -> bool:
    """Nothing to read (loopback TCP delivers a write before the writing call returns)."""
    return not select.select([peer], [], [], 0)[0]


def test_with_nothing_queued_it_writes_on_the_calling_thread(pair: Any) -> None:
    dp, peer = pair  # no send thread running: only a direct write can reach the peer
    assert dp.write_now(b"reply")
    assert _read(peer, 5) == b"reply"


def test_it_never_overtakes_what_is_queued_or_being_written(pair: Any) -> None:
    dp, peer = pair
    held = _HeldSocket(dp._watched._sock)
    dp._watched._sock = held
    assert dp.send_nowait(b"first")  # queued: no send thread yet
    assert dp.write_now(b"second") and _nothing_waiting(peer)  # behind it, not written
    _start_sender(dp)
    assert held.taken.wait(5)  # the send thread holds "first", nothing queued any more
    assert dp.write_now(b"third") and _nothing_waiting(peer)
    held.go.set()
    assert _read(peer, len(b"firstsecondthird")) == b"firstsecondthird"
    assert dp.write_now(b"fourth") and _read(peer, 6) == b"fourth"  # idle again: direct


def test_what_the_socket_does_not_take_at_once_is_queued_first(pair: Any) -> None:
    dp, peer = pair  # the peer reads nothing yet: the kernel's buffers fill up
    big = bytes(range(256)) * 40_000  # 10 MB, far more than loopback TCP buffers
    assert dp.write_now(big)  # returns without blocking, part written, the rest queued
    assert dp._unwritten == 1
    assert dp.write_now(b"after")  # queued behind the rest
    sender = _start_sender(dp)
    assert _read(peer, len(big) + 5) == big + b"after"
    assert sender.is_alive() and dp._unwritten == 0


class _CountingSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reads = sock, 0

    def recv(self, n: int) -> bytes:
        self.reads += 1
        return self.sock.recv(n)


def test_the_receive_loop_reads_what_arrived_together_in_one_system_call() -> None:
    """os-ken's receive loop asks for each message's header, then its rest: served from one
    read of what arrived together, byte for byte, then EOF as the socket says it."""
    ours, peer = socket.socketpair()
    counting = _CountingSocket(ours)
    watched = _WatchedSocket(counting)  # type: ignore[arg-type]
    messages = [bytes([i]) * 8 + bytes([i + 100]) * (40 + i) for i in range(5)]
    peer.sendall(b"".join(messages))
    got = [watched.recv(8) + watched.recv(40 + i) for i in range(5)]
    assert got == messages and counting.reads == 1
    peer.sendall(b"x" * 3)
    assert watched.recv(8) == b"xxx" and counting.reads == 2  # what there is, as recv
    peer.close()
    assert watched.recv(8) == b"" and counting.reads == 3
    ours.close()


def test_a_full_socket_buffer_queues_the_buffer_instead_of_waiting_on_the_socket(
    pair: tuple[LiveDatapath, socket.socket],
) -> None:
    """os-ken's socket has a timeout, under which Python's ``send`` waits for room before it
    tries (``MSG_DONTWAIT`` notwithstanding): with the kernel's buffer full and nothing counted
    as queued (the send thread handed everything over), the direct write must take nothing and
    queue the buffer, not wait out the timeout and drop it (the old code raised TimeoutError
    inside, and write_now returned False with nothing sent or queued)."""
    dp, _peer = pair
    ours = dp.socket._sock
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"f" * 65536)
    ours.settimeout(0.3)  # os-ken's is 5 s; short, so the old code fails fast
    assert dp._watched.send_now(b"x" * 100) == 0
    assert dp.write_now(b"y" * 100)
    assert dp._unwritten, "the buffer was neither written nor queued"


class _CutSocket:
    """A socket whose ``sendall`` writes the first ``n`` bytes, then raises (a send timeout or
    a reset in the middle of a message)."""

    def __init__(self, sock: socket.socket, n: int) -> None:
        self.sock, self.n = sock, n

    def sendall(self, buf: bytes) -> None:
        self.sock.sendall(buf[: self.n])
        raise TimeoutError("timed out")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_a_connection_whose_send_raised_is_never_written_to_directly(pair: Any) -> None:
    """os-ken's send thread takes a buffer off the queue and its ``sendall`` raises with half of
    it on the wire; os-ken closes the queue only once the exception reaches its loop.  A
    direct write in that moment must not follow the half message (the old `sendall` counted
    the buffer as written in a ``finally``, so the connection looked idle and "second" went
    out right behind "fir")."""
    dp, peer = pair
    assert dp.send_nowait(b"first")
    buf, _ = dp.send_q.get()  # what os-ken's send loop does, up to its sendall
    dp._send_q_sem.release()
    real = dp._watched._sock
    dp._watched._sock = _CutSocket(real, 3)
    with pytest.raises(TimeoutError):
        dp._watched.sendall(buf)
    dp._watched._sock = real
    assert _read(peer, 3) == b"fir"
    dp.write_now(b"second")
    assert _nothing_waiting(peer), "a direct write followed a truncated message"


def test_a_partial_write_whose_rest_cannot_be_queued_loses_the_stream(pair: Any) -> None:
    """The socket takes part of a buffer and the send queue has no place for the rest (every
    place taken by producers about to queue, `take_room`): half a message is on the wire, so
    `write_now` says the stream is lost - not merely refused, which tells the caller it may
    queue the whole buffer again - shuts the connection down, and takes nothing more: a
    reservation's buffer, a later write."""
    dp, peer = pair  # the peer reads nothing yet: the kernel's buffers fill up
    while dp._send_q_sem.acquire(blocking=False):
        pass  # every place in the queue reserved
    big = bytes(range(256)) * 40_000  # 10 MB, far more than loopback TCP buffers
    assert dp.write_now(big) is Write.LOST
    assert dp.end_reason
    assert not dp.put_taken(b"after")  # its place given back
    assert dp.write_now(b"later") is Write.REFUSED and not dp.send_nowait(b"later")
    assert not dp._unwritten
    got = b""
    peer.settimeout(5)
    while chunk := peer.recv(1 << 20):
        got += chunk
    assert 0 < len(got) < len(big) and big.startswith(got), "more than the prefix arrived"
