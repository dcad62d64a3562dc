"""Packet-ins from switches to one registered handler, on a bounded queue; its replies go back
out as PACKET_OUTs to the port the packet came from.

Why a queue and one worker: packet-ins are offered here by the receive thread of the switch
that sent them (`TenantnetOfpApp._send_event` takes them out of os-ken's one app event thread,
which would cost a thread hand-off per packet and put them in front of every switch's barrier
replies), and a slow handler (the DHCP responder reads views, builds a frame) on that thread
would stall its switch's barrier replies and flow dumps.  The queue is bounded (``maxsize``)
and never blocks the receive thread: when it is full the packet-in is dropped and counted,
exactly what a switch does with the packet-ins its meter refuses.  Several receive threads
offer at once, so the counters they touch are kept under a lock.  The
first line of defence is that meter (see `controller.southbound.ofp_codec.controller_meter`:
OpenFlow's ``OFPM_CONTROLLER`` meter, one per host, limits every packet-in the switch sends), so
one flooding VM costs its host's budget, not the controller's CPU, and the API and other hosts
are unaffected.

Answered where it arrives, when the controller is quiet: a packet-in offered while the queue
is empty, no answer is being worked out and no other packet-in came in the last ``QUIET_S`` is
answered right away on the receive thread that offered it, and its reply handed to the
connection's send thread from there.  On an idle controller
(DHCP leases, renewals) that saves the hand-off to the worker, a thread wake-up that costs
~0.15-0.3 ms of a ~2 ms answer on a loaded machine.  It is bounded so that a slow or hostile
host never holds its own receive thread (and so its barrier replies, flow dumps and the
liveness its watchdog reads) for long: per switch at most ``INLINE_BURST`` such answers in a
row and ``INLINE_PER_S`` a second (a token bucket; an answer costs well under 1 ms, so under
a flood that is a few ms, then under 10% of the thread); past that, and whenever anything is
queued or being answered, the packet-in takes the queue as before.  The quiet rule keeps a
load of many clients on the worker's path: answered one by one, their replies were one write
each, and os-ken's 16-write send queue overflowed again (bench, 6 clients renewing at once:
7-16 replies refused per 25,000 with the answers on the receive threads, 0-2 without).
The receive thread never waits to send its answer either: the switch's connection is held
(`TenantnetOfpApp.packet_outs`' ``sw.lock``) by whoever hands it messages, and the data plane
holds it while it encodes a whole bundle (thousands of flow-mods, tens of ms).  When it is
held the answer is queued, already worked out, and the worker sends it.
Only one answer is ever worked out at a time (the handler runs under one lock, taken without
waiting by the receive thread, so it never waits for the worker), and never ahead of a
packet-in queued before it.

The reply answered on a receive thread is also written from there when the connection's send
thread has nothing to write (`LiveDatapath.write_now`: under one lock with every producer,
non-blocking, what the socket does not take queued first, always queued on TLS), saving that
thread's wake-up on a quiet controller.  The worker's replies still go through the send thread:
under the bench's renewal load, writing them on the worker made the worker also do the
kernel's side of every write, which the send thread had been doing meanwhile, and the
exchanges per second fell by about a third (loaded machine, 3 VMs x 8 in flight, runs
alternated: 1,379 and 1,224/s against 1,992 and 1,471/s queued).

The worker takes what is queued in one go (up to ``MAX_BATCH``), answers it, and sends the
replies for one switch as one write (`PacketOutSender` gets them together): under a load of
many clients a reply per write meant one hand-off to the connection's send thread per reply,
and when that thread fell 16 writes behind (os-ken's send queue) further replies were refused
and counted as ``reply_failures`` although the switch was fine.  With one packet-in queued -
the usual case - a batch is that one packet and its reply leaves at once.  Joined writes still
fill that queue for a few ms when the answers take the CPU its send thread needs, so the worker
waits for room, bounded (`controller.southbound.ofp_app.REPLY_WAIT_S`, and within a wait
budget per switch, so that a switch that reads slowly or not at all cannot hold the worker, and
so every other switch's replies, for long: `LiveDatapath.take_room`), and a reply the receive
thread could not hand over goes to the worker rather than counting as failed.  The worker is
the only one that waits so (the data plane's gratuitous ARPs never do), and it waits before it
takes the switch's connection, so nobody waits behind it.

What the handler gets (`PacketIn`): the switch, the table and cookie of the flow that sent it
(so the core can tell its owner - e.g. the DHCP owner's punt flow - from anything else), the
``in_port`` and ``metadata`` (network key) from the packet-in's match, and the frame.  It
returns the reply frame or None.  The handler must not raise; if it does, the packet is counted
as a handler error and the worker carries on.  It must never wait on anything (it may run on a
switch's receive thread, see above); it is never called twice at once.  Work the handler can
leave until its replies are out (``after``) runs right after they are written, under the same
rule (the DHCP responder builds the ACKs its OFFERs will be asked for then, see
`controller.services.dhcp.DhcpResponder.build_ahead`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.throttle import Throttle

LOG = logging.getLogger(__name__)

MAX_FRAME = 9216
"""Packet-in payloads longer than a jumbo frame are not what any punt flow asks for; dropped."""
MAX_BATCH = 32
"""Packet-ins handled before their replies are sent: bounds how long a reply waits for the
others of its batch (32 answers take a few ms)."""
INLINE_BURST = 20
"""Packet-ins of one switch answered on its receive thread in a row (see the module doc)."""
INLINE_PER_S = 200.0
"""... and per second after that burst: past it they go through the queue."""
QUIET_S = 0.002
"""No packet-in (from any switch) for this long before one is answered on its receive thread."""
MAX_SWITCHES = 4096
"""Token buckets kept (one per switch that sent a packet-in); beyond, they start afresh."""
WORKER_THREAD = "packet-in"
"""The name of the thread that answers queued packet-ins (`PacketInQueue`)."""


@dataclass(frozen=True)
class PacketIn:
    """One packet-in as the handler sees it."""

    dpid: int
    table_id: int
    cookie: int
    reason: int
    in_port: int | None
    metadata: int | None
    data: bytes


PacketInHandler = Callable[[PacketIn], bytes | None]
PacketOutSender = Callable[[int, Sequence[tuple[int, bytes]], bool], bool | None]
"""(dpid, [(port, frame), ...], wait) -> sent: the frames go out to the switch in one write.
With ``wait`` False it never waits for the switch's connection: None if that is busy (another
thread is handing it messages, e.g. the data plane encoding a bundle), nothing sent.  With
``wait`` (the worker) it may wait, bounded, for room in the switch's send queue."""
_Answered = tuple[PacketIn, bytes | None]
"""A packet-in answered on a receive thread whose reply the worker sends (see `offer`)."""


@dataclass
class PacketInCounters:
    received: int = 0
    queue_full: int = 0
    refused: int = 0  # unknown switch, foreign cookie, no in_port, oversized
    not_owner: int = 0  # several controllers: another instance's host, or the session not master
    handler_errors: int = 0
    replies: int = 0
    reply_failures: int = 0  # the switch was gone or not reading
    answered_inline: int = 0  # on the receive thread that offered them (see the module doc)


class PacketInQueue:
    """A bounded queue of packet-ins and the one thread that hands them to the handler."""

    def __init__(
        self,
        handler: PacketInHandler,
        send_out: PacketOutSender,
        maxsize: int = 256,
        clock: Callable[[], float] = time.monotonic,
        after: Callable[[], None] | None = None,
    ) -> None:
        self._handler = handler
        self._after = after
        self._send_out = send_out
        self._queue: queue.Queue[PacketIn | _Answered | None] = queue.Queue(maxsize=maxsize)
        self.counters = PacketInCounters()
        self.inline_burst = INLINE_BURST  # 0: every packet-in through the queue
        self.inline_per_s = INLINE_PER_S
        self.quiet_s = QUIET_S
        self._last_offer = float("-inf")
        self._clock = clock
        self._count_lock = threading.Lock()  # offer/refuse run on every switch's thread
        self._pending = 0  # queued or in the worker's batch, not yet answered
        self._tokens: dict[int, tuple[float, float]] = {}  # dpid -> (tokens, at)
        self._handling = threading.Lock()  # held while the handler works something out
        self._log = Throttle()
        self._thread = threading.Thread(target=self._run, name=WORKER_THREAD, daemon=True)
        self._thread.start()

    def offer(self, pkt: PacketIn) -> bool:
        """Answer a packet-in now or queue it, without ever blocking the caller (a switch's
        receive thread): see the module doc."""
        with self._count_lock:
            self.counters.received += 1
            now = self._clock()
            quiet, self._last_offer = now - self._last_offer >= self.quiet_s, now
            inline = quiet and self._pending == 0 and self._take_token(pkt.dpid, now)
        if inline and self._handling.acquire(blocking=False):
            try:
                with self._count_lock:
                    self.counters.answered_inline += 1
                reply = self._answer(pkt)
                if self._send([pkt], [reply], wait=False):
                    self._after_replies()
                    return True
                # Not handed over: the worker sends it, then runs `after` (once, after it).
                item: PacketIn | _Answered = (pkt, reply)
            finally:
                self._handling.release()
        else:
            item = pkt
        with self._count_lock:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.counters.queue_full += 1
                dropped = self.counters.queue_full
            else:
                self._pending += 1
                return True
        if self._log("packet-in queue full") is not None:
            LOG.warning("packet-in queue full: dropping (%d dropped so far)", dropped)
        return False

    def refuse(self, not_owner: bool = False) -> None:
        with self._count_lock:
            self.counters.received += 1
            if not_owner:
                self.counters.not_owner += 1
            else:
                self.counters.refused += 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after what is queued (used by tests and shutdown)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _take_token(self, dpid: int, now: float) -> bool:
        """One of the switch's inline answers (called under ``_count_lock``)."""
        if self.inline_burst <= 0:
            return False
        if dpid not in self._tokens and len(self._tokens) >= MAX_SWITCHES:
            self._tokens.clear()
        tokens, at = self._tokens.get(dpid, (float(self.inline_burst), now))
        tokens = min(float(self.inline_burst), tokens + (now - at) * self.inline_per_s)
        if tokens < 1.0:
            self._tokens[dpid] = (tokens, now)
            return False
        self._tokens[dpid] = (tokens - 1.0, now)
        return True

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            self._take_queued(batch)
            pkts: list[PacketIn] = []
            answers: list[bytes | None] = []
            with self._handling:  # waits for at most one answer on a receive thread
                done = 0
                while done < len(batch):
                    # what arrived while these were answered joins their write
                    for item in batch[done:]:
                        if item is not None:
                            pkts.append(item[0] if isinstance(item, tuple) else item)
                            answers.append(
                                item[1] if isinstance(item, tuple) else self._answer(item)
                            )
                    done = len(batch)
                    self._take_queued(batch)
                if pkts:  # (not for the stop entry alone)
                    self._send(pkts, answers, wait=True)
                    self._after_replies()
            with self._count_lock:
                self._pending -= len(pkts)
            if batch[-1] is None:
                return

    def _take_queued(self, batch: list[PacketIn | _Answered | None]) -> None:
        """Add what is queued to ``batch``, without waiting, up to ``MAX_BATCH`` (and never
        past the stop entry).

        Why again after answering: under a load of many clients the packet-ins that arrive
        while a batch is answered would each make the next batch, one write each; the faster
        the answers, the more writes, and os-ken's send queue (16 writes) overflowed - replies
        refused and counted as ``reply_failures`` (bench, 6 clients renewing: none in 6 runs
        before the responder's header cache, up to 29 per run of ~25,000 in 5 of 6 after).
        Taking them into the write that is about to go keeps one write per batch of whatever
        came in (after: 0, 1 and 0 in 3 runs)."""
        while len(batch) < MAX_BATCH and (not batch or batch[-1] is not None):
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _send(self, pkts: Sequence[PacketIn], answers: Sequence[bytes | None], wait: bool) -> bool:
        """The replies, one write per switch, in arrival order.  Without ``wait`` (one packet,
        on a receive thread): False, nothing sent nor counted, if its switch's connection is
        busy or its send queue full, so that the worker sends the reply instead of the receive
        thread waiting; the worker waits a little for room (`ofp_app.REPLY_WAIT_S`) before a
        reply counts as failed: the queue fills for a few ms under load while the switch reads
        everything (bench: 18 and 19 renewals lost per run when such replies were dropped)."""
        replies: dict[int, list[tuple[int, bytes]]] = {}
        for pkt, reply in zip(pkts, answers, strict=True):
            if reply is not None and pkt.in_port is not None:
                replies.setdefault(pkt.dpid, []).append((pkt.in_port, reply))
        for dpid, frames in replies.items():
            try:
                sent = self._send_out(dpid, frames, wait)
            except Exception:  # a bug or a connection torn down under it: never the worker's end
                sent = None
                if self._log("packet-out error") is not None:
                    LOG.exception("packet-out to switch %016x failed", dpid)
            if not sent and not wait:
                return False  # busy or its send queue full: the worker sends it, waiting
            with self._count_lock:
                if sent:
                    self.counters.replies += len(frames)
                else:
                    self.counters.reply_failures += len(frames)
        return True

    def _after_replies(self) -> None:
        """The handler's work that waits until its replies are out (``after``: e.g. the DHCP
        ACKs built ahead for the DISCOVERs just answered), so that it never delays them.  Run
        under the handling lock, like the handler, before anything else is answered."""
        if self._after is None:
            return
        try:
            self._after()
        except Exception:
            with self._count_lock:
                self.counters.handler_errors += 1
            if self._log("packet-in after-replies error") is not None:
                LOG.exception("packet-in handler's work after its replies failed")

    def _answer(self, pkt: PacketIn) -> bytes | None:
        try:
            return self._handler(pkt)
        except Exception:
            with self._count_lock:
                self.counters.handler_errors += 1
            if self._log("packet-in handler error") is not None:
                LOG.exception("packet-in handler failed (switch %016x)", pkt.dpid)
            return None
