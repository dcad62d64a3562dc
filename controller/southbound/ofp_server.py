"""OpenFlow connections that end: switch liveness, a bounded accept loop, no leaked threads.

os-ken 4.2.2 with its native-thread hub (the default since 4.0, and the only hub that runs on
current Python) has three faults this module works around without copying os-ken's protocol code:

* **A closed connection never finishes.**  ``Datapath.serve`` ends its receive loop, then calls
  ``hub.kill`` on the send thread - a no-op on the native hub - and joins it; but that thread is
  blocked on ``send_q.get()`` and nothing ever wakes it.  So the connection thread and the send
  thread live for good, ``Datapath.close()`` (and so ``DEAD_DISPATCHER``) never comes, and the
  controller never hears that the switch went away.  500 connect/close cycles leaked 1,000
  threads.  `LiveDatapath.serve` wakes the send thread with os-ken's own "close" queue entry and
  joins it with a bound.
* **Nobody notices a switch that stops answering.**  os-ken's echo loop is off by default
  (``maximum_unreplied_echo_requests=0``) and, when on, counts only echo replies at the echo
  interval and then merely half-closes the socket.  A stopped (SIGSTOP), frozen or cut-off switch
  keeps its connection, and its ports stay ACTIVE.  `LiveDatapath` runs one watchdog thread per
  connection: an echo request once nothing was received for ``echo_interval_s``, and the
  connection is closed once nothing at all (any message counts) came for ``dead_after_s``, or the
  HELLO/FEATURES handshake did not complete within ``handshake_timeout_s``.  Closing shuts the
  socket down both ways, which wakes the receive loop at once; ``DEAD_DISPATCHER`` follows.
* **The accept loop dies on the first error.**  ``StreamServer.serve_forever`` has no ``try``:
  one ``EMFILE`` (too many open files) and the listener is gone for the life of the process.
  `TenantnetOpenFlowController.server_loop` logs accept errors (throttled), backs off and goes on,
  and caps connections in total and per source address, so that a flood of idle connections can
  neither exhaust the process's file descriptors nor lock out the real switches.

It is installed by `install` (called by the service before os-ken's apps start), which points
``os_ken.controller.ofp_handler.OpenFlowController`` - the class os-ken's ``OFPHandler.start``
instantiates - at the subclass below.  Everything else (handshake handlers, message parsing,
events) is os-ken's.

What upstream would need (proposed fix): in ``Datapath.serve``'s ``finally``, put
``(b"", True)`` on ``send_q`` (or close the socket) before ``joinall``, since ``hub.kill`` cannot
stop a native thread; have ``_echo_request_loop`` count any received message as liveness and
``close()`` shut the socket down both ways instead of ``SHUT_WR`` only (a dead peer never closes
its side); a handshake timeout; and wrap ``StreamServer.serve_forever``'s ``accept`` in a ``try``
that logs and backs off on ``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from os_ken import cfg
from os_ken.base import app_manager  # noqa: F401 - first: os-ken's modules import circularly
from os_ken.controller import controller as osken_controller
from os_ken.controller import ofp_handler
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.lib import hub

from controller.throttle import Throttle

LOG = logging.getLogger(__name__)

# Accept errors that mean "out of a resource right now": wait, then accept again.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_MAX_ACCEPT_PAUSE_S = 1.0
# How long a finished connection may take to join its helper threads before we say so.
_JOIN_S = 5.0


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a switch may be silent, and how many connections the listener takes."""

    echo_interval_s: float = 1.0
    dead_after_s: float = 3.0
    handshake_timeout_s: float = 5.0
    max_connections: int = 1024
    max_per_source: int = 16


@dataclass
class ConnectionStats:
    """Totals since start, for /tenantnet/status and the fault tests."""

    open: int = 0
    accepted: int = 0
    refused_total_cap: int = 0
    refused_source_cap: int = 0
    accept_errors: int = 0
    handshake_timeouts: int = 0
    declared_dead: int = 0
    malformed_messages: int = 0  # connections ended for a message os-ken cannot walk (osken_guard)
    unparsed_messages: int = 0  # messages os-ken's parser raised on, dropped (osken_guard)
    max_connections: int = 0  # the cap in force (the setting, lowered to fit the fd limit)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


WAIT_BUDGET_S = 0.05
"""Seconds per second a switch's full send queue may keep a thread waiting for room
(`LiveDatapath.take_room`); beyond it, sends to it fail at once."""
_MIN_WAIT_S = 0.005  # budget left below this: no wait (a thread wake-up for nothing)
READ_AHEAD = 65536
"""Bytes a connection's receive loop reads at once (see `_WatchedSocket.recv`)."""


class Write(enum.Enum):
    """What `LiveDatapath.write_now` did with a buffer.  Only `TAKEN` is true, so a caller
    that asks "sent?" reads it as it read the old bool; one that would queue a refused buffer
    itself must tell `REFUSED` (nothing of it went out: the stream is whole) from `LOST`."""

    TAKEN = "taken"  # written, or queued behind what is queued (the send thread writes it)
    REFUSED = "refused"  # nothing of it written or queued: the queue is full or closed
    LOST = "lost"
    """Part of it was written and the rest could not be queued: the switch holds half a
    message, so the stream is unusable.  The connection is shut down (nothing more reaches
    the switch) and ends; the caller reports the buffer not taken, as for a switch that is
    gone, and the switch is read again when it reconnects."""

    def __bool__(self) -> bool:
        return self is Write.TAKEN


class _WatchedSocket:
    """The connection's socket, noting when anything was last received (liveness) and when
    os-ken's send thread finished writing a buffer it took off the send queue (`written`,
    see `LiveDatapath.write_now`)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.last_rx = time.monotonic()
        self.written: Callable[[], None] = lambda: None
        self._ahead = b""  # read, not yet handed to os-ken's receive loop, from _at on
        self._at = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes, like ``socket.recv``, from one read of whatever has arrived.

        Why read ahead: os-ken's receive loop asks for each message's 8-byte header, then
        for the rest of it: two system calls per message, each giving up the GIL and waiting
        to take it back from the thread at work (under a load of packet-ins, the packet-in
        worker).  One read of up to `READ_AHEAD` bytes serves every message that came with it.
        """
        if self._at >= len(self._ahead):
            data = self._sock.recv(max(n, READ_AHEAD))
            if not data:
                return data
            self.last_rx = time.monotonic()
            if len(data) <= n:
                return data
            self._ahead, self._at = data, 0
        out = self._ahead[self._at : self._at + n]
        self._at += len(out)
        return out

    def send_now(self, buf: bytes) -> int:
        """Write what the kernel takes without waiting (`LiveDatapath.write_now`): 0 when the
        socket is not writable.  Only this thread writes while the answer is used (nothing is
        queued or in the send thread's hands).

        os-ken gives the socket a timeout (``socket_timeout``, 5 s), and on such a socket
        Python's ``send`` waits up to that long for room before it tries, ``MSG_DONTWAIT`` or
        not - a full buffer would hold the answering thread, and with it ``_order`` and the
        data plane's next send to the switch.  A socket in timeout mode is non-blocking at the
        OS level (Python's socket documentation, "Notes on socket timeouts"), so one plain
        ``write`` of its descriptor takes what fits and never waits.  Why not poll first and
        then ``send``: that was two polls (ours and Python's) before every reply written
        here, ~15-40 us of the receive thread's answer (stamps in the running controller).
        A blocking socket (no timeout: not os-ken's) is polled as before."""
        if self._sock.gettimeout() is not None:
            try:
                return os.write(self._sock.fileno(), buf)
            except BlockingIOError:
                return 0
        ready = select.poll()
        ready.register(self._sock.fileno(), select.POLLOUT)
        if not ready.poll(0):
            return 0
        try:
            return self._sock.send(buf, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def sendall(self, buf: bytes) -> None:
        """os-ken's send thread writes each queued buffer with this (only it).

        A buffer counts as written only once all of it was: a ``sendall`` that raises may have
        left part of it on the wire (a timeout, a reset), and os-ken's send loop closes the
        queue only after the exception reaches it.  Counted as written, the buffer would let
        `LiveDatapath.write_now` see an idle connection in that moment and write a message
        behind the truncated one.  Not counted, the connection never looks idle again, so it
        is never written to directly afterwards (what is queued then is dropped with the
        queue)."""
        self._sock.sendall(buf)
        self.written()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_HANDSHAKE_LOG = Throttle()
_MALFORMED_LOG = Throttle()
_UNPARSED_LOG = Throttle()


class LiveDatapath(osken_controller.Datapath):
    """os-ken's Datapath whose connection ends: see the module docstring."""

    def __init__(
        self, sock: socket.socket, address: Any, limits: ConnectionLimits, stats: ConnectionStats
    ) -> None:
        self._watched = _WatchedSocket(sock)
        super().__init__(self._watched, address)
        self.limits = limits
        self._stats = stats
        self.max_unreplied_echo_requests = 0  # os-ken's own echo loop stays off: see _watch
        self.opened_at = time.monotonic()
        self._ended = threading.Event()
        self._closing = threading.Lock()
        self.end_reason = ""
        # Buffers handed to the send queue and not yet written (queued, or in the send
        # thread's hands), counted under _order: see write_now.
        self._order = threading.Lock()
        self._unwritten = 0
        self._watched.written = self._one_written
        self._direct = not isinstance(sock, ssl.SSLSocket)
        self._lost = False  # a partial write broke the stream: nothing more is taken (write_now)
        # Waiting for room in the send queue, bounded per switch: see take_room.
        self.clock: Callable[[], float] = time.monotonic
        self._wait_lock = threading.Lock()
        self._wait_budget = WAIT_BUDGET_S
        self._wait_at = self.clock()

    @property
    def last_rx(self) -> float:
        return self._watched.last_rx

    def serve(self) -> None:
        send_thr = hub.spawn(self._send_loop)
        self.send_msg(self.ofproto_parser.OFPHello(self))
        watch_thr = hub.spawn(self._watch)
        try:
            self._recv_loop()  # closes the socket when it ends
        finally:
            self._ended.set()
            self._wake_sender()
            for thr in (send_thr, watch_thr):
                thr.join(_JOIN_S)
                if thr.is_alive():
                    LOG.error("connection from %s: a helper thread did not end", self.address)
            self.is_active = False

    def end(self, reason: str) -> None:
        """Close the connection now (any thread): the receive loop wakes and the connection
        finishes as if the switch had closed it.  The first reason is kept; the socket is
        shut down by every call, so that nothing is written to it once any call returns (one
        that came second must not rely on the first having got that far: see write_now)."""
        with self._closing:
            if not self.end_reason:
                self.end_reason = reason
        with contextlib.suppress(OSError):  # already closed
            self.socket.shutdown(socket.SHUT_RDWR)

    def refuse_input(self, reason: str) -> None:
        """End the connection over a message that must not be parsed (`osken_guard`), with one
        log line per source and interval: the sender may be any peer, retrying."""
        self._stats.malformed_messages += 1
        self._give_up(reason, quiet=_MALFORMED_LOG)

    def drop_input(self, reason: str) -> None:
        """A message os-ken's parser raised on, although its lengths walk (`osken_guard`):
        dropped with one log line per source and interval, the connection kept.  Ending it
        would make a switch holding one flow os-ken cannot parse (someone's, added by hand)
        reconnect at every read of its flows; os-ken logged a stack trace and a hex dump of
        the whole message instead, per message."""
        self._stats.unparsed_messages += 1
        source = _host(self.address)
        skipped = _UNPARSED_LOG(source)
        if skipped is not None:
            dpid = f"{self.id:016x}" if self.id is not None else "(no datapath id yet)"
            more = f" ({skipped} more like it not logged)" if skipped else ""
            LOG.warning("switch %s at %s: %s; message dropped%s", dpid, source, reason, more)

    def _wake_sender(self) -> None:
        """os-ken's send loop waits on its queue for good: hand it the "close" entry.  If the
        queue is full the send thread is busy writing, and the closed socket ends it."""
        if self.send_q is not None and self._send_q_sem.acquire(blocking=False):
            with self._order:
                self._put(b"", True)

    def send_nowait(self, buf: bytes) -> bool:
        """``Datapath.send`` that never waits: False if the send queue is full (the switch
        stopped reading) or closed.  The watchdog and the data plane must never block on one
        switch; upstream ``send`` waits on the queue's semaphore for as long as it takes."""
        if not self._send_q_sem.acquire(blocking=False):
            return False
        with self._order:
            return self._put(buf, False)

    def take_room(self, timeout: float) -> bool:
        """Take one place in the send queue, waiting up to ``timeout`` for it - within this
        switch's wait budget: False if there was none by then.  `put_taken` then queues a
        buffer in that place, or `give_back_room` returns it.

        Why wait: os-ken's send queue holds 16 buffers, and under a load of packet-ins the
        answering thread can fill it faster than the connection's send thread (which needs the
        GIL and the CPU the answers take) empties it, although the switch reads everything:
        replies dropped for a queue that is full for a few ms.  Waiting gives the send thread
        the CPU.  Why a budget (``WAIT_BUDGET_S`` of waiting per second, a token bucket, any
        thread): a switch that reads slowly or not at all would otherwise cost the waiting
        thread - the packet-in worker, which answers every switch - a wait on every reply; its
        replies beyond the budget fail at once and are counted.  (The watchdog only ends a
        switch that sends nothing; one that sends but does not read is bounded only here.)"""
        if self._send_q_sem.acquire(blocking=False):
            return True
        with self._wait_lock:  # the wait is paid for before it starts: no overdraft
            now = self.clock()
            budget = self._wait_budget + (now - self._wait_at) * WAIT_BUDGET_S
            self._wait_budget, self._wait_at = min(WAIT_BUDGET_S, budget), now
            grant = min(timeout, self._wait_budget)
            if grant < min(timeout, _MIN_WAIT_S):  # not worth a thread wake-up: fail now
                return False
            self._wait_budget -= grant
        room = self._send_q_sem.acquire(timeout=grant)
        if room:  # what was not waited goes back
            with self._wait_lock:
                self._wait_budget += max(0.0, grant - (self.clock() - now))
        return room

    def put_taken(self, buf: bytes) -> bool:
        """Queue ``buf`` in the place `take_room` took: False if the queue is closed."""
        with self._order:
            return self._put(buf, False)

    def give_back_room(self) -> None:
        """Return a place `take_room` took and nothing was queued in."""
        self._send_q_sem.release()

    def send(self, buf: bytes, close_socket: bool = False) -> bool:
        """os-ken's ``Datapath.send`` (``send_msg`` uses it), counted for `write_now`."""
        self._send_q_sem.acquire()
        with self._order:
            return self._put(buf, close_socket)

    def _put(self, buf: bytes, close_socket: bool) -> bool:
        """Queue a buffer (the queue's semaphore taken, ``_order`` held): False if the queue
        is closed or the stream lost.  Never blocks: the semaphore bounds the queue."""
        q = self.send_q
        if q is None or self._lost:
            self._send_q_sem.release()
            return False
        self._unwritten += 1
        q.put((buf, close_socket))
        return True

    def _one_written(self) -> None:
        with self._order:
            self._unwritten -= 1

    def write_now(self, buf: bytes) -> Write:
        """Write ``buf`` on the calling thread when nothing is queued or being written, else
        queue it like `send_nowait`: `Write.TAKEN` if it was, `Write.REFUSED` if nothing of it
        went out, `Write.LOST` if part of it did and the rest could not be queued.

        Why: handing a buffer to os-ken's send thread costs a thread wake-up and a GIL hand-off,
        a good part of the controller's time for a DHCP answer.  The stream's order and
        integrity stay those of one writer: the check that nothing is queued or in the send
        thread's hands, the write, and the queueing of whatever the socket did not take happen
        under ``_order``, which every producer takes to queue (so anything queued after is
        written after), and the write never blocks (``MSG_DONTWAIT``): what the kernel did not
        take at once is queued first, for the send thread.  A TLS connection takes no partial
        writes: there it always queues.

        A socket that raised is never written to directly again (its stream may have lost
        bytes: see `_WatchedSocket.sendall` for the send thread's writes).  A lost stream is
        shut down before ``_order`` is let go and takes nothing more (queued or written), so
        nothing reaches the switch behind the half message, and no later send of the ending
        connection counts as taken.  The caller must not queue the buffer again.
        """
        if not self._direct or not self._order.acquire(blocking=False):
            return Write.TAKEN if self.send_nowait(buf) else Write.REFUSED
        try:
            if self._unwritten or self.send_q is None or self.state == DEAD_DISPATCHER:
                queued = self._send_q_sem.acquire(blocking=False) and self._put(buf, False)
                return Write.TAKEN if queued else Write.REFUSED
            try:
                sent = self._watched.send_now(buf)
            except OSError:  # nothing written; the connection is going, its receive loop ends it
                self._direct = False
                return Write.REFUSED
            if sent == len(buf):
                return Write.TAKEN
            if self._send_q_sem.acquire(blocking=False) and self._put(buf[sent:], False):
                return Write.TAKEN
            if not sent:
                return Write.REFUSED
            self._direct, self._lost = False, True  # half a message out, the rest nowhere
            self.end("a partly written message could not be completed")
            return Write.LOST
        finally:
            self._order.release()

    def _watch(self) -> None:
        """Until the handshake is done only its timeout applies (echoes need a negotiated
        version); from then on, liveness."""
        lim = self.limits
        last_echo = 0.0
        while not self._ended.is_set():
            now = time.monotonic()
            if self.state == DEAD_DISPATCHER:
                return
            if self.state != MAIN_DISPATCHER:
                left = self.opened_at + lim.handshake_timeout_s - now
                if left <= 0:
                    self._stats.handshake_timeouts += 1
                    self._give_up(
                        f"no OpenFlow handshake within {lim.handshake_timeout_s:g} s",
                        quiet=_HANDSHAKE_LOG,
                    )
                    return
                self._ended.wait(min(left, lim.echo_interval_s))
                continue
            silent = now - self.last_rx
            if silent >= lim.dead_after_s:
                self._stats.declared_dead += 1
                self._give_up(f"no answer for {silent:.1f} s (dead after {lim.dead_after_s:g} s)")
                return
            if (
                silent >= lim.echo_interval_s
                and now - last_echo >= lim.echo_interval_s
                and self._echo()
            ):
                last_echo = now
            wake = min(
                self.last_rx + lim.dead_after_s,
                max(self.last_rx, last_echo) + lim.echo_interval_s,
            )
            self._ended.wait(max(0.01, wake - time.monotonic()))

    def _echo(self) -> bool:
        echo = self.ofproto_parser.OFPEchoRequest(self)
        self.set_xid(echo)
        echo.serialize()
        return self.send_nowait(bytes(echo.buf))

    def _give_up(self, reason: str, quiet: Throttle | None = None) -> None:
        """Close with one log line (per source and interval, for `quiet` ones: a flood of idle
        connections must not flood the log)."""
        source = _host(self.address)
        skipped = quiet(source) if quiet is not None else 0
        if skipped is not None:
            dpid = f"{self.id:016x}" if self.id is not None else "(no datapath id yet)"
            more = f" ({skipped} more like it not logged)" if skipped else ""
            LOG.warning("switch %s at %s: %s; closing the connection%s", dpid, source, reason, more)
        self.end(reason)


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else "?"


class Listener:
    """The accept loop and the life of each connection, with caps per source and in total."""

    def __init__(self, limits: ConnectionLimits, stats: ConnectionStats) -> None:
        self.limits = limits
        self.stats = stats
        self._lock = threading.Lock()
        self._by_source: Counter[str] = Counter()
        self._throttle = Throttle()

    def serve(self, server: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Accept for good: errors are logged and waited out, never fatal."""
        pause = 0.0
        while True:
            try:
                sock, addr = server.accept()
            except OSError as exc:
                if server.fileno() < 0:
                    return  # the listening socket was closed: shutting down
                self.stats.accept_errors += 1
                if exc.errno in _EXHAUSTED:
                    pause = min(_MAX_ACCEPT_PAUSE_S, pause * 2 or 0.05)
                    self._log_throttled(
                        "accept",
                        logging.ERROR,
                        "OpenFlow listener cannot accept (%s); retrying",
                        exc,
                    )
                    time.sleep(pause)
                elif exc.errno not in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN):
                    self._log_throttled(
                        "accept", logging.ERROR, "OpenFlow listener: accept failed (%s)", exc
                    )
                    time.sleep(0.05)
                continue
            pause = 0.0
            source = _host(addr)
            if not self._admit(source):
                _close(sock)
                continue
            try:
                threading.Thread(
                    target=self._connection,
                    args=(sock, addr, tls),
                    name=f"ofp-{source}",
                    daemon=True,
                ).start()
            except RuntimeError as exc:  # can't start new thread
                self._release(source)
                _close(sock)
                self._log_throttled(
                    "spawn", logging.ERROR, "OpenFlow connection from %s dropped: %s", source, exc
                )

    def _admit(self, source: str) -> bool:
        """Per-source and total caps.  (Who the switch is - its certificate or address - is
        checked once it says so, in the app's features handler.)"""
        lim, st = self.limits, self.stats
        with self._lock:
            if st.open >= st.max_connections:
                st.refused_total_cap += 1
                why = f"{st.max_connections} OpenFlow connections open (the total cap)"
            elif self._by_source[source] >= lim.max_per_source:
                st.refused_source_cap += 1
                why = f"{lim.max_per_source} connections open from it (the per-source cap)"
            else:
                st.open += 1
                st.accepted += 1
                self._by_source[source] += 1
                return True
        self._log_throttled(
            f"refuse {source}",
            logging.WARNING,
            "refusing OpenFlow connections from %s: %s",
            source,
            why,
        )
        return False

    def _release(self, source: str) -> None:
        with self._lock:
            self.stats.open -= 1
            self._by_source[source] -= 1
            if self._by_source[source] <= 0:
                del self._by_source[source]

    def _connection(self, sock: socket.socket, addr: Any, tls: ssl.SSLContext | None) -> None:
        """One switch connection, start to end, on its own thread."""
        source = _host(addr)
        try:
            if tls is not None:
                sock.settimeout(self.limits.handshake_timeout_s)
                sock = tls.wrap_socket(sock, server_side=True)
            dp = LiveDatapath(sock, addr, self.limits, self.stats)
            try:
                dp.serve()
            finally:
                dp.close()  # DEAD_DISPATCHER: the app hears the switch is gone
        except Exception as exc:
            # Refused TLS handshakes (plain TCP, no or a foreign certificate) end here: one line
            # per source and interval, so a client retrying every second does not flood the log.
            self._log_throttled(
                f"error {source}",
                logging.WARNING,
                "OpenFlow connection from %s ended with an error: %s",
                source,
                exc,
            )
        finally:
            _close(sock)
            self._release(source)

    def _log_throttled(self, key: str, level: int, msg: str, *args: Any) -> None:
        skipped = self._throttle(key)
        if skipped is not None:
            suffix = f" ({skipped} more like it not logged)" if skipped else ""
            LOG.log(level, msg + suffix, *args)


class TenantnetOpenFlowController(osken_controller.OpenFlowController):
    """What os-ken's OFPHandler starts once `install` ran: its own switch-address client loops
    (unused here), and our `Listener` instead of ``StreamServer``."""

    limits = ConnectionLimits()
    stats = ConnectionStats()
    # Bound by `bind` on the thread that starts us, by port: each controller started in one
    # process takes its own (a shared slot was taken by whichever loop ran first).
    listening: ClassVar[dict[int, socket.socket]] = {}

    def server_loop(self, ofp_tcp_listen_port: int, ofp_ssl_listen_port: int | None) -> None:
        conf = cfg.CONF
        tls = _tls_context(conf)
        port = (ofp_ssl_listen_port or ofp_tcp_listen_port) if tls else ofp_tcp_listen_port
        server = self.listening.pop(port, None)
        if server is None:  # os-ken started without `bind` (nothing in tenantnet does that)
            server = _listen(conf.ofp_listen_host, port)
        Listener(self.limits, self.stats).serve(server, tls)


class ListenError(RuntimeError):
    """The OpenFlow listener cannot listen where it was told to; the message is the reason."""


def bind(host: str, port: int) -> None:
    """Bind the OpenFlow listening socket now, for `TenantnetOpenFlowController.server_loop`.

    Why here and not in that loop: os-ken runs the loop on a thread of its own, where a port
    already taken (or an address not on this machine) only logged a traceback, and the
    controller ran on with its API up and no switch able to connect.  Bound on the thread that
    starts the controller, the failure stops the start with one line (`ListenError`)."""
    # One bound by a start that failed before os-ken took it would hold the port for good:
    # every later start in this process was refused as "in use".
    left = TenantnetOpenFlowController.listening.pop(port, None)
    if left is not None:
        _close(left)
    try:
        TenantnetOpenFlowController.listening[port] = _listen(host, port)
    except OSError as exc:
        raise ListenError(f"OpenFlow cannot listen on {host}:{port}: {exc.strerror}") from None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return hub.listen((host, port), family=family, backlog=128)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _tls_context(conf: Any) -> ssl.SSLContext | None:
    """The same TLS server settings os-ken's own server loop builds from its options."""
    if conf.ctl_privkey is None or conf.ctl_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_SSLv3 | ssl.OP_NO_SSLv2
    if conf.ciphers is not None:
        ctx.set_ciphers(conf.ciphers)
    ctx.load_cert_chain(conf.ctl_cert, conf.ctl_privkey)
    if conf.ca_certs is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(conf.ca_certs)
    return ctx


def install(limits: ConnectionLimits, fd_budget: int | None = None) -> None:
    """Make os-ken's OFPHandler start this module's controller (call before apps start).

    The total cap is lowered to ``fd_budget``, the descriptors the OpenFlow listener may hold
    (`controller.limits.listener_budget`), so OpenFlow connections alone can never exhaust them.
    """
    cap = limits.max_connections
    if fd_budget is not None:
        cap = max(1, min(cap, fd_budget))
        if cap < limits.max_connections:
            LOG.warning("OpenFlow connection cap lowered to %d to fit the open files limit", cap)
    TenantnetOpenFlowController.limits = limits
    TenantnetOpenFlowController.stats = ConnectionStats(max_connections=cap)
    ofp_handler.OpenFlowController = TenantnetOpenFlowController
