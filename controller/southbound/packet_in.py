"""Packet-ins from switches to one registered handler, on a bounded queue; its replies go back
out as PACKET_OUTs to the port the packet came from.

Why a queue and one worker: os-ken delivers every message of a switch on that switch's receive
thread, so a slow handler (the DHCP responder reads views, builds a frame) would stall barrier
replies and flow dumps of that switch.  The queue is bounded (``maxsize``) and never blocks the
receive thread: when it is full the packet-in is dropped and counted, exactly what a switch does
with the packet-ins its meter refuses.  The first line of defence is that meter (see
`controller.southbound.ofp_codec.controller_meter`: OpenFlow's ``OFPM_CONTROLLER`` meter, one
per host, limits every packet-in the switch sends), so one flooding VM costs its host's budget,
not the controller's CPU, and the API and other hosts are unaffected.

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
from collections.abc import Callable
from dataclasses import dataclass

from controller.throttle import Throttle

LOG = logging.getLogger(__name__)

MAX_FRAME = 9216
"""Packet-in payloads longer than a jumbo frame are not what any punt flow asks for; dropped."""


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
PacketOutSender = Callable[[int, int, bytes], bool]  # (dpid, port, frame) -> sent


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
        self._log = Throttle()
        self._thread = threading.Thread(target=self._run, name="packet-in", daemon=True)
        self._thread.start()

    def offer(self, pkt: PacketIn) -> bool:
        """Queue a packet-in without ever blocking the caller (a switch's receive thread)."""
        self.counters.received += 1
        try:
            self._queue.put_nowait(pkt)
        except queue.Full:
            self.counters.queue_full += 1
            skipped = self._log("packet-in queue full")
            if skipped is not None:
                LOG.warning(
                    "packet-in queue full: dropping (%d dropped so far)", self.counters.queue_full
                )
            return False
        return True

    def refuse(self) -> None:
        self.counters.received += 1
        self.counters.refused += 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after what is queued (used by tests and shutdown)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            pkt = self._queue.get()
            if pkt is None:
                return
            try:
                reply = self._handler(pkt)
            except Exception:
                self.counters.handler_errors += 1
                if self._log("packet-in handler error") is not None:
                    LOG.exception("packet-in handler failed (switch %016x)", pkt.dpid)
                continue
            if reply is None or pkt.in_port is None:
                continue
            if self._send_out(pkt.dpid, pkt.in_port, reply):
                self.counters.replies += 1
            else:
                self.counters.reply_failures += 1
