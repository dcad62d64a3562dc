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

The worker takes what is queued in one go (up to ``MAX_BATCH``), answers it, and sends the
replies for one switch as one write (`PacketOutSender` gets them together): under a load of
many clients a reply per write meant one hand-off to the connection's send thread per reply,
and when that thread fell 16 writes behind (os-ken's send queue) further replies were refused
and counted as ``reply_failures`` although the switch was fine.  With one packet-in queued -
the usual case - a batch is that one packet and its reply leaves at once.

What the handler gets (`PacketIn`): the switch, the table and cookie of the flow that sent it
(so the core can tell its owner - e.g. the DHCP owner's punt flow - from anything else), the
``in_port`` and ``metadata`` (network key) from the packet-in's match, and the frame.  It
returns the reply frame or None.  The handler must not raise; if it does, the packet is counted
as a handler error and the worker carries on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.throttle import Throttle

LOG = logging.getLogger(__name__)

MAX_FRAME = 9216
"""Packet-in payloads longer than a jumbo frame are not what any punt flow asks for; dropped."""
MAX_BATCH = 32
"""Packet-ins handled before their replies are sent: bounds how long a reply waits for the
others of its batch (32 answers take a few ms)."""


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
PacketOutSender = Callable[[int, Sequence[tuple[int, bytes]]], bool]
"""(dpid, [(port, frame), ...]) -> sent: the frames go out to the switch in one write."""


@dataclass
class PacketInCounters:
    received: int = 0
    queue_full: int = 0
    refused: int = 0  # unknown switch, foreign cookie, no in_port, oversized
    handler_errors: int = 0
    replies: int = 0
    reply_failures: int = 0  # the switch was gone or not reading


class PacketInQueue:
    """A bounded queue of packet-ins and the one thread that hands them to the handler."""

    def __init__(
        self, handler: PacketInHandler, send_out: PacketOutSender, maxsize: int = 256
    ) -> None:
        self._handler = handler
        self._send_out = send_out
        self._queue: queue.Queue[PacketIn | None] = queue.Queue(maxsize=maxsize)
        self.counters = PacketInCounters()
        self._count_lock = threading.Lock()  # offer/refuse run on every switch's thread
        self._log = Throttle()
        self._thread = threading.Thread(target=self._run, name="packet-in", daemon=True)
        self._thread.start()

    def offer(self, pkt: PacketIn) -> bool:
        """Queue a packet-in without ever blocking the caller (a switch's receive thread)."""
        with self._count_lock:
            self.counters.received += 1
        try:
            self._queue.put_nowait(pkt)
        except queue.Full:
            with self._count_lock:
                self.counters.queue_full += 1
                dropped = self.counters.queue_full
            if self._log("packet-in queue full") is not None:
                LOG.warning("packet-in queue full: dropping (%d dropped so far)", dropped)
            return False
        return True

    def refuse(self) -> None:
        with self._count_lock:
            self.counters.received += 1
            self.counters.refused += 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after what is queued (used by tests and shutdown)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            replies: dict[int, list[tuple[int, bytes]]] = {}
            for pkt in batch:
                if pkt is None:
                    break
                reply = self._answer(pkt)
                if reply is not None and pkt.in_port is not None:
                    replies.setdefault(pkt.dpid, []).append((pkt.in_port, reply))
            for dpid, frames in replies.items():
                if self._send_out(dpid, frames):
                    self.counters.replies += len(frames)
                else:
                    self.counters.reply_failures += len(frames)
            if batch[-1] is None:
                return

    def _answer(self, pkt: PacketIn) -> bytes | None:
        try:
            return self._handler(pkt)
        except Exception:
            self.counters.handler_errors += 1
            if self._log("packet-in handler error") is not None:
                LOG.exception("packet-in handler failed (switch %016x)", pkt.dpid)
            return None
