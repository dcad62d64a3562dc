"""Packet-in plumbing of TenantnetOfpApp: packet-ins from tenantnet's flows reach the registered
handler with the table and cookie that sent them, on a bounded queue that never blocks the
switch's thread; replies leave as PACKET_OUT to the in_port; the host's packet-in meter is
OpenFlow's controller meter.  Messages are checked as bytes parsed back by os-ken."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_app, ofp_server, osken_packetin
from controller.southbound.ofp_app import _Switch
from controller.southbound.ofp_server import ConnectionLimits, ConnectionStats, LiveDatapath
from controller.southbound.packet_in import PacketIn, PacketInQueue
from flows.compiler import dhcp_guard_rule
from flows.tables import network_cookie
from tests.unit.conftest import new_ofp_app
from tests.unit.test_ofp_app import DPID, FakeDatapath, Outcome, _app, _Listener
from tests.unit.test_ofp_write_now import _read
from tests.unit.test_osken_packetin import FRAME as DHCP_FRAME
from tests.unit.test_osken_packetin import packet_in

OURS = network_cookie(7)
FRAME = b"\x01" * 64


def _event(dp: Any, cookie: int = OURS, in_port: int | None = 3, data: bytes = FRAME) -> Any:
    fields: dict[str, Any] = {"metadata": 7}
    if in_port is not None:
        fields["in_port"] = in_port
    msg = parser.OFPPacketIn(
        dp,
        buffer_id=ofp.OFP_NO_BUFFER,
        total_len=len(data),
        reason=ofp.OFPR_ACTION,
        table_id=1,
        cookie=cookie,
        match=parser.OFPMatch(**fields),
        data=data,
    )
    return SimpleNamespace(msg=msg)


def _event_of(dp: Any, **kw: Any) -> Any:
    """`_event` as os-ken's event class, the way the switch's receive thread delivers it."""
    return ofp_event.EventOFPPacketIn(_event(dp, **kw).msg)


def _sent(dp: FakeDatapath) -> list[bytes]:
    """Each message the switch reads (os-ken parses no PACKET_OUT or METER_MOD: its parsers
    for them are stubs, so the tests compare bytes with messages os-ken builds from explicit
    arguments)."""
    data, out = b"".join(dp.sent), []
    while data:
        _, _, length, _ = ofproto_parser.header(data)
        out.append(data[:length])
        data = data[length:]
    return out


def _bytes(msg: Any, like: bytes) -> bytes:
    msg.set_xid(ofproto_parser.header(like)[3])
    msg.serialize()
    return bytes(msg.buf)


def _wait(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_packet_in_reaches_the_handler_and_its_reply_goes_back_to_the_in_port() -> None:
    app, dp, _ = _app()
    seen: list[PacketIn] = []

    def handler(pkt: PacketIn) -> bytes:
        seen.append(pkt)
        return b"\x02" * 60

    queue = app.on_packet_in(handler)
    app._packet_in(_event(dp))
    _wait(lambda: queue.counters.replies == 1, "no reply sent")
    assert seen == [PacketIn(DPID, 1, OURS, ofp.OFPR_ACTION, 3, 7, FRAME)]
    (out,) = _sent(dp)
    want = parser.OFPPacketOut(
        dp,
        buffer_id=ofp.OFP_NO_BUFFER,
        in_port=ofp.OFPP_CONTROLLER,
        actions=[parser.OFPActionOutput(3, 0)],
        data=b"\x02" * 60,
    )
    assert out == _bytes(want, out)
    queue.close()


def test_what_is_not_ours_never_reaches_the_handler() -> None:
    app, dp, sw = _app()
    seen: list[PacketIn] = []
    queue = app.on_packet_in(lambda p: seen.append(p))  # type: ignore[func-returns-value]
    app._packet_in(_event(dp, cookie=0x1234))  # a foreign flow's
    app._packet_in(_event(dp, in_port=None))
    app._packet_in(_event(dp, data=b"x" * 10_000))
    app._packet_in(_event(FakeDatapath()))  # not this host's session
    sw.ready = False
    app._packet_in(_event(dp))  # not synced yet
    queue.close()
    assert seen == [] and queue.counters.refused == 5 and not dp.sent


def test_the_queue_is_bounded_and_never_blocks_the_switch_thread() -> None:
    app, dp, _ = _app()
    release = threading.Event()
    handled: list[int] = []

    def slow(pkt: PacketIn) -> None:
        release.wait(10)
        handled.append(pkt.in_port or 0)

    queue = app.on_packet_in(slow, maxsize=4)
    queue.inline_burst = 0  # the worker's path (answers on the receiving thread: below)
    app._packet_in(_event(dp, in_port=1))
    _wait(lambda: queue._queue.qsize() == 0, "the worker never took the first packet")
    for port in range(2, 12):  # 10 more while the handler is stuck: 4 queued, 6 dropped
        app._packet_in(_event(dp, in_port=port))
    assert queue.counters.queue_full == 6
    release.set()
    queue.close()
    assert handled == [1, 2, 3, 4, 5] and queue.counters.received == 11


def test_replies_to_what_queued_up_leave_in_one_write_per_switch() -> None:
    """Packet-ins that queued while the worker was answering are answered with it: their
    replies reach the switch in the same write as the one being answered (one hand-off to the
    connection's send thread, one slot of its bounded send queue), each a PACKET_OUT to its
    own in_port, in arrival order.  (Before: the first reply alone, then the five - two
    writes; under load one write per batch overflowed os-ken's send queue.)"""
    app, dp, _ = _app()
    release = threading.Event()

    def slow(pkt: PacketIn) -> bytes:
        release.wait(10)
        return bytes([pkt.in_port or 0]) * 60

    queue = app.on_packet_in(slow)
    queue.inline_burst = 0  # the worker's path (answers on the receiving thread: below)
    app._packet_in(_event(dp, in_port=1))
    _wait(lambda: queue._queue.qsize() == 0, "the worker never took the first packet")
    for port in range(2, 7):
        app._packet_in(_event(dp, in_port=port))
    release.set()
    queue.close()
    assert queue.counters.replies == 6 and queue.counters.reply_failures == 0
    assert len(dp.sent) == 1  # the five that queued while the first was answered join it
    outs = _sent(dp)
    for port, out in zip(range(1, 7), outs, strict=True):
        want = parser.OFPPacketOut(
            dp,
            buffer_id=ofp.OFP_NO_BUFFER,
            in_port=ofp.OFPP_CONTROLLER,
            actions=[parser.OFPActionOutput(port, 0)],
            data=bytes([port]) * 60,
        )
        assert out == _bytes(want, out)


def test_a_packet_in_flood_never_enters_the_event_queue_of_other_switches_replies() -> None:
    """os-ken hands each decoded message to the app on the switch's receive thread
    (`_send_event`); packet-ins are offered to the packet-in queue right there and never take
    a slot of os-ken's one app event queue (128 entries, shared by every switch, blocking the
    receive thread that finds it full).  So a host flooding packet-ins while the handler is
    stuck neither blocks its own receive thread nor delays another switch's barrier reply,
    which is answered at once on that switch's own thread (no event queue at all).  Counted:
    without the bypass the flood's 129th delivery blocks and 128 packet-ins stand in the
    queue the barrier reply then went through."""
    app, dp, _ = _app()
    other = FakeDatapath()
    other.id = DPID + 1
    app._switches[other.id] = _Switch(dp=other, ready=True)
    release = threading.Event()
    queue = app.on_packet_in(lambda p: release.wait(10) and None, maxsize=4)
    queue.inline_burst = 0  # the worker's path (answers on the receiving thread: below)
    app._send_event(_event_of(dp), MAIN_DISPATCHER)
    _wait(lambda: queue._queue.qsize() == 0, "the worker never took the first packet")

    def flood() -> None:
        for _ in range(500):
            app._send_event(_event_of(dp), MAIN_DISPATCHER)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    flooder.join(10)
    queued_events = app.events.qsize()
    release.set()
    assert queued_events == 0 and not flooder.is_alive()
    assert queue.counters.received == 501 and queue.counters.queue_full == 496
    answered: list[bool] = []
    app._switches[other.id].barriers[7] = lambda ok, why="": answered.append(ok)
    reply = parser.OFPBarrierReply(other)
    reply.xid = 7
    app._send_event(ofp_event.EventOFPBarrierReply(reply), MAIN_DISPATCHER)
    assert answered == [True] and app.events.qsize() == 0
    queue.close()


def test_an_idle_queue_answers_on_the_receiving_thread_up_to_its_budget() -> None:
    """With nothing queued and no packet-in for ``quiet_s``, a packet-in is answered on the
    thread that offers it (a switch's receive thread: no hand-off to the worker), at most
    ``inline_burst`` of one switch in a row and ``inline_per_s`` after that; the rest go to
    the worker, and so does one that follows another closer than ``quiet_s`` (a load of
    clients, whose replies the worker sends in one write).  Counted, on a fake clock."""
    app, dp, _ = _app()
    now = [100.0]
    where: list[tuple[int, str]] = []

    def handler(pkt: PacketIn) -> bytes:
        where.append((pkt.in_port or 0, threading.current_thread().name))
        return bytes([pkt.in_port or 0]) * 60

    app.packet_ins = queue = PacketInQueue(handler, app.packet_outs, clock=lambda: now[0])
    queue.inline_burst, queue.inline_per_s, queue.quiet_s = 3, 2.0, 0.001
    for port in range(1, 11):
        now[0] += 0.001
        app._packet_in(_event(dp, in_port=port))
    _wait(lambda: queue.counters.replies == 10, "not every packet-in was answered")
    here = threading.current_thread().name
    assert [p for p, t in where if t == here] == [1, 2, 3]
    assert [p for p, t in where if t == "packet-in"] == list(range(4, 11))
    now[0] += 0.5  # one token back: one more on the receiving thread, then the queue again
    _wait(lambda: queue._pending == 0, "the worker never finished")
    app._packet_in(_event(dp, in_port=11))
    now[0] += 0.001
    app._packet_in(_event(dp, in_port=12))
    _wait(lambda: queue._pending == 0, "the worker never finished")
    now[0] += 1.0  # tokens back, but the next one follows this one within quiet_s
    app._packet_in(_event(dp, in_port=13))
    app._packet_in(_event(dp, in_port=14))
    queue.close()
    assert where[-4:] == [(11, here), (12, "packet-in"), (13, here), (14, "packet-in")]
    assert queue.counters.answered_inline == 5 and queue.counters.replies == 14
    assert [out[-1] for out in _sent(dp)] == list(range(1, 15))  # each reply to its port


def test_a_packet_in_is_never_answered_ahead_of_one_queued_before_it() -> None:
    """One answer at a time, in arrival order: while one is worked out on a receive thread the
    next is queued (never waits for it), and while anything is queued a new packet-in queues
    behind it although the receiving thread has budget left."""
    app, dp, _ = _app()
    gates = {1: threading.Event(), 2: threading.Event()}
    order: list[tuple[int, str]] = []

    def handler(pkt: PacketIn) -> None:
        port = pkt.in_port or 0
        if port in gates:
            gates[port].wait(10)
        order.append((port, threading.current_thread().name))

    queue = app.on_packet_in(handler)
    first = threading.Thread(target=app._packet_in, args=(_event(dp, in_port=1),), name="rx-1")
    first.start()
    _wait(lambda: queue.counters.answered_inline == 1, "the first was not taken inline")
    app._packet_in(_event(dp, in_port=2))  # port 1 is being answered: queued, no waiting
    assert queue._pending == 1 and not order
    gates[1].set()
    first.join(10)
    app._packet_in(_event(dp, in_port=3))  # port 2 is queued or in the worker: behind it
    gates[2].set()
    queue.close()
    assert order == [(1, "rx-1"), (2, "packet-in"), (3, "packet-in")]
    assert queue.counters.answered_inline == 1 and queue.counters.received == 3


def test_a_receive_thread_never_waits_for_the_switch_held_by_another_thread() -> None:
    """The data plane holds the switch (`sw.lock`) while it encodes a whole bundle: a packet-in
    answered on the receive thread meanwhile must not wait for it (that thread also carries
    the switch's barrier replies and echoes).  Its answer goes to the worker, which sends it
    once the switch is free, in order with what comes after it."""
    app, dp, sw = _app()
    where: list[tuple[int, str]] = []

    def handler(pkt: PacketIn) -> bytes:
        where.append((pkt.in_port or 0, threading.current_thread().name))
        return bytes([pkt.in_port or 0]) * 60

    queue = app.on_packet_in(handler)
    held, release = threading.Event(), threading.Event()

    def encode_a_bundle() -> None:
        with sw.lock:
            held.set()
            release.wait(10)

    encoder = threading.Thread(target=encode_a_bundle, daemon=True)
    encoder.start()
    assert held.wait(5)
    receiver = threading.Thread(
        target=app._send_event, args=(_event_of(dp, in_port=1), MAIN_DISPATCHER), name="rx-1"
    )
    receiver.start()
    receiver.join(5)
    returned_while_held = not receiver.is_alive()
    app._packet_in(_event(dp, in_port=2))  # queued behind the first's reply
    sent_while_held = list(dp.sent)
    release.set()
    receiver.join(10)
    encoder.join(10)
    _wait(lambda: queue.counters.replies == 2, "the replies were never sent")
    queue.close()
    assert returned_while_held and not sent_while_held
    assert where == [(1, "rx-1"), (2, "packet-in")]
    assert [out[-1] for out in _sent(dp)] == [1, 2]
    assert queue.counters.answered_inline == 1 and queue.counters.reply_failures == 0


def test_a_reply_answered_on_the_receive_thread_is_written_from_there() -> None:
    """A packet-out answered on a receive thread goes to the connection's `write_now` (written
    there when os-ken's send thread is idle, `LiveDatapath.write_now`); the worker's replies
    and everything else go to its send queue as before."""
    app, dp, _ = _app()
    how: list[str] = []

    def write_now(buf: bytes) -> bool:
        how.append("direct")
        return dp.send_nowait(buf)

    dp.write_now = write_now  # type: ignore[attr-defined]
    queue = app.on_packet_in(lambda p: bytes([p.in_port or 0]) * 60)
    app._packet_in(_event(dp, in_port=1))  # quiet: answered on this thread
    queue.inline_burst = 0  # from now on: the worker
    app._packet_in(_event(dp, in_port=2))
    _wait(lambda: queue.counters.replies == 2, "no reply sent")
    queue.close()
    assert app.set_packet_in_meter(DPID, rate_pps=200, burst=50, on_done=Outcome())
    assert how == ["direct"] and queue.counters.answered_inline == 1
    assert [out[-1] for out in _sent(dp)[:2]] == [1, 2] and len(_sent(dp)) == 5


def test_a_packet_in_that_cannot_be_read_is_counted_and_the_receive_loop_goes_on() -> None:
    """An exception while classifying a packet-in must not end the switch's receive loop (the
    thread that delivered it): it is counted as refused."""
    app, dp, _ = _app()
    queue = app.on_packet_in(lambda p: None)
    app._send_event(ofp_event.EventOFPPacketIn(SimpleNamespace(datapath=dp)), MAIN_DISPATCHER)
    app._send_event(_event_of(dp), MAIN_DISPATCHER)
    queue.close()
    assert queue.counters.refused == 1 and queue.counters.received == 2


def test_a_handler_that_raises_is_counted_and_the_next_packet_is_handled() -> None:
    app, dp, _ = _app()

    def flaky(pkt: PacketIn) -> bytes:
        if pkt.in_port == 1:
            raise ValueError("bad frame")
        return b"ok"

    queue = app.on_packet_in(flaky)
    app._packet_in(_event(dp, in_port=1))
    app._packet_in(_event(dp, in_port=2))
    queue.close()
    assert queue.counters.handler_errors == 1 and queue.counters.replies == 1


def test_a_reply_to_a_switch_that_went_away_is_counted() -> None:
    app, dp, _ = _app()
    queue = app.on_packet_in(lambda p: b"late")
    dp.reading = False
    app._packet_in(_event(dp))
    queue.close()
    assert queue.counters.reply_failures == 1 and not app.packet_out(0x99, 1, b"x")
    assert not app.packet_outs(0x99, [(1, b"x"), (2, b"y")])


def test_the_packet_in_meter_is_the_controller_meter_in_packets_per_second() -> None:
    app, dp, sw = _app()
    done = Outcome()
    assert app.set_packet_in_meter(DPID, rate_pps=200, burst=50, on_done=done)
    delete, add, barrier = _sent(dp)
    want_delete = parser.OFPMeterMod(
        dp, command=ofp.OFPMC_DELETE, flags=0, meter_id=ofp.OFPM_CONTROLLER
    )
    want_add = parser.OFPMeterMod(
        dp,
        command=ofp.OFPMC_ADD,
        flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
        meter_id=ofp.OFPM_CONTROLLER,
        bands=[parser.OFPMeterBandDrop(rate=200, burst_size=50)],
    )
    assert delete == _bytes(want_delete, delete) and add == _bytes(want_add, add)
    barrier_xid = ofproto_parser.header(barrier)[3]
    assert ofproto_parser.header(barrier)[1] == ofp.OFPT_BARRIER_REQUEST
    assert barrier_xid in sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=barrier_xid)))
    assert done.got == [(True, "")]


def test_a_transient_drop_is_one_flow_mod_with_its_hard_timeout() -> None:
    app, dp, _ = _app()
    rule = dhcp_guard_rule(3, 42)
    assert app.add_transient_flow(DPID, rule, hard_timeout=20)
    (sent,) = _sent(dp)
    mod = ofproto_parser.msg(dp, *ofproto_parser.header(sent), sent)
    assert isinstance(mod, parser.OFPFlowMod) and mod.command == ofp.OFPFC_ADD
    assert (mod.hard_timeout, mod.idle_timeout, mod.cookie) == (20, 0, rule.cookie)
    assert (mod.table_id, mod.priority, mod.instructions) == (rule.table, rule.priority, [])
    assert not app.add_transient_flow(0x99, rule, hard_timeout=20)  # no such switch


def test_a_transient_drop_does_not_wait_for_the_switchs_lock() -> None:
    """Bans are sent from packet-in handlers (the switch's receive thread, the shared
    worker), which must not wait behind the data plane encoding a batch under the switch's
    lock: the receive thread's barrier replies waited with them (found by a review).  A lock
    held longer than a few ms makes the ban fail (the flood is then dropped in the
    controller)."""
    import threading
    import time

    app, dp, sw = _app()
    rule = dhcp_guard_rule(3, 42)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sw.lock:
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    began = time.monotonic()
    try:
        sent = app.add_transient_flow(DPID, rule, hard_timeout=20)
    finally:
        release.set()
        holder.join()
    assert not sent and time.monotonic() - began < 0.5 and not _sent(dp)
    assert app.add_transient_flow(DPID, rule, hard_timeout=20)  # free again: sent


def test_a_packet_in_taken_from_the_parser_is_answered_as_its_event_would_be() -> None:
    """An admitted switch's packet-ins go from os-ken's parser straight to the app (the
    datapath's ``packet_in_sink``, set at admission; no message, no event): the handler gets
    the same `PacketIn` and the switch the same PACKET_OUT, byte for byte but the xid, as
    through os-ken's message and event.  Before the session's main state the parser returns
    the message as before and the sink answers nothing."""
    app = new_ofp_app()
    app.attach(_Listener())
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    app._switches[DPID].ready = True
    seen: list[PacketIn] = []
    queue = app.on_packet_in(lambda p: seen.append(p) or bytes(reversed(p.data)))
    wire = packet_in(parser.OFPMatch(in_port=3, metadata=7), DHCP_FRAME, cookie=OURS)
    args = (ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(wire), 9, bytearray(wire))
    osken_packetin.install()
    try:
        msg = ofproto_parser.msg(dp, *args)  # CONFIG: os-ken's message, the sink not asked
        assert type(msg) is parser.OFPPacketIn and queue.counters.received == 0
        dp.state = MAIN_DISPATCHER
        assert ofproto_parser.msg(dp, *args) is None  # taken and answered: no message
        assert queue.counters.received == 1 and queue.counters.answered_inline == 1
    finally:
        osken_packetin.uninstall()
    app._send_event(ofp_event.EventOFPPacketIn(msg), MAIN_DISPATCHER)  # the event path
    _wait(lambda: queue.counters.replies == 2, "not both answered")
    queue.close()
    assert seen[0] == seen[1] == PacketIn(DPID, 1, OURS, ofp.OFPR_ACTION, 3, 7, DHCP_FRAME)
    fast, slow = _sent(dp)[-2:]
    assert fast[:4] + fast[8:] == slow[:4] + slow[8:]
    assert fast.endswith(bytes(reversed(DHCP_FRAME)))


def test_the_handlers_work_after_its_replies_runs_once_they_are_written() -> None:
    """``after`` (the DHCP responder's ACKs built ahead) runs after the replies are handed to
    the switch, on the receive thread and on the worker alike, before the next packet is
    answered; if it raises, that is counted and the next packet-in is still answered."""
    events: list[str] = []

    def send_out(dpid: int, frames: Any, wait: bool) -> bool:
        events.append(f"sent {len(frames)}")
        return True

    def after() -> None:
        events.append("after")
        if len(events) > 6:
            raise RuntimeError("after failed")

    queue = PacketInQueue(lambda p: events.append("answer") or b"r", send_out, after=after)
    pkt = PacketIn(DPID, 1, OURS, 1, 3, 7, FRAME)
    assert queue.offer(pkt)  # quiet: on this thread
    assert events == ["answer", "sent 1", "after"]
    queue.inline_burst = 0  # the worker from now on
    queue.offer(pkt)
    _wait(lambda: queue._pending == 0, "the worker never finished")
    queue.offer(pkt)
    queue.close()
    assert events[3:] == ["answer", "sent 1", "after", "answer", "sent 1", "after"]
    assert queue.counters.handler_errors == 1 and queue.counters.replies == 3


def test_dhcp_through_the_parsers_fast_path_is_answered_as_through_the_event() -> None:
    """The real DHCP handler behind the parser's fast path: a DISCOVER and its REQUEST get
    the same PACKET_OUTs, byte for byte but the xid, as the same packet-ins through os-ken's
    message and event (answered by a second, fresh handler); malformed DHCP frames taken on
    the fast path get nothing and are counted, and the next good one is answered."""
    from controller.services.dhcp import DISCOVER, REQUEST
    from flows import tables as t
    from tests.unit.test_dataplane_dhcp import MAC, _world
    from tests.unit.test_dhcp_responder import client_frame

    def wired(frame: bytes) -> bytearray:
        return bytearray(packet_in(parser.OFPMatch(in_port=3, metadata=7), frame,
                                   cookie=t.port_cookie(42)))  # fmt: skip

    lease = [wired(client_frame(DISCOVER, MAC, xid=5)),
             wired(client_frame(REQUEST, MAC, requested="10.0.0.5", server_id="10.0.0.1",
                                xid=5))]  # fmt: skip
    garbage = [wired(b"\xff" * 300), wired(client_frame(DISCOVER, MAC)[:100])]
    outs = []
    for fast in (True, False):
        punt, _ = _world()
        punt.source.by_dpid = {DPID: "hv1"}
        app = new_ofp_app()
        app.attach(_Listener())
        dp = FakeDatapath()
        dp.address, dp.socket, dp.is_active = ("192.0.2.1", 1), None, True
        dp.state = CONFIG_DISPATCHER
        app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
        app._switches[DPID].ready = True
        dp.state = MAIN_DISPATCHER
        queue = app.on_packet_in(punt.handle, after_replies=punt.after_replies)
        queue.quiet_s = 0.0  # each one answered and written on this thread, in turn
        osken_packetin.install()
        try:
            for buf in lease + (garbage + lease[:1] if fast else []):
                args = (ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(buf), 9, buf)
                if fast:
                    assert ofproto_parser.msg(dp, *args) is None  # taken by the sink
                else:
                    dp.packet_in_sink = None  # os-ken's message and event, as before
                    app._send_event(ofp_event.ofp_msg_to_ev(ofproto_parser.msg(dp, *args)),
                                    MAIN_DISPATCHER)  # fmt: skip
        finally:
            osken_packetin.uninstall()
            queue.close()
        assert queue.counters.answered_inline == queue.counters.received
        outs.append([m[:4] + m[8:] for m in _sent(dp) if m[1] == ofp.OFPT_PACKET_OUT])
        if fast:
            assert punt.status()["drops"]["malformed"] == len(garbage)
    fast_outs, slow_outs = outs
    assert len(fast_outs) == 3 and fast_outs[:2] == slow_outs
    assert fast_outs[2] == slow_outs[0]  # the good DISCOVER after the garbage


class _SeenWaiting:
    """os-ken's send-queue semaphore, noting when a caller waits for room."""

    def __init__(self, sem: Any) -> None:
        self.sem, self.waiting = sem, threading.Event()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if blocking:
            self.waiting.set()
        return bool(self.sem.acquire(blocking, timeout))

    def release(self) -> None:
        self.sem.release()


def _live_switch(app: Any) -> tuple[LiveDatapath, socket.socket]:
    """A real connection (os-ken's Datapath on loopback TCP) as an admitted switch; its send
    thread is not running yet."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    ours, _ = listener.accept()
    listener.close()
    dp = LiveDatapath(ours, ("127.0.0.1", 1), ConnectionLimits(), ConnectionStats())
    dp.set_version(ofp.OFP_VERSION)
    dp.id = DPID
    app._switches[DPID] = _Switch(dp=dp, ready=True)
    return dp, peer


def _read_message(peer: socket.socket) -> bytes:
    head = _read(peer, 8)
    return head + _read(peer, ofproto_parser.header(head)[2] - 8)


def test_replies_wait_for_room_in_a_full_send_queue_of_a_switch_that_reads(
    monkeypatch: Any,
) -> None:
    """os-ken's send queue (16 buffers) is full while the switch reads everything - under load
    the answering thread fills it faster than the connection's send thread empties it.  Replies
    are not dropped for that: the one answered on the receive thread goes to the worker, the
    worker waits for room, and both reach the switch behind what was queued, none counted as
    failed.  (Old code: both refused and counted in reply_failures, renewals lost under the
    bench's load.)"""
    monkeypatch.setattr(ofp_app, "REPLY_WAIT_S", 10.0)  # the send thread starts when it waits
    monkeypatch.setattr(ofp_server, "WAIT_BUDGET_S", 10.0)
    app = new_ofp_app()
    dp, peer = _live_switch(app)
    sem = dp._send_q_sem = _SeenWaiting(dp._send_q_sem)  # type: ignore[assignment]
    for _ in range(16):
        assert dp.send_nowait(b"q")
    assert not dp.send_nowait(b"q")  # full
    queue = app.on_packet_in(lambda p: bytes([p.in_port or 0]) * 60)
    app._packet_in(_event(dp, in_port=1))  # quiet: answered on this thread
    queue.inline_burst = 0
    app._packet_in(_event(dp, in_port=2))  # the worker's
    sem.waiting.wait(5)  # (the old code never waits: its replies are dropped by then)
    threading.Thread(target=dp._send_loop, daemon=True).start()
    _wait(lambda: queue.counters.replies + queue.counters.reply_failures == 2, "no outcome")
    queue.close()
    try:
        assert queue.counters.reply_failures == 0 and queue.counters.replies == 2
        assert _read(peer, 16) == b"q" * 16
        outs = [_read_message(peer) for _ in range(2)]
        assert [ofproto_parser.header(out)[1] for out in outs] == [ofp.OFPT_PACKET_OUT] * 2
        assert [out[-60:] for out in outs] == [b"\x01" * 60, b"\x02" * 60]
    finally:
        dp.end("test over")
        peer.close()


def test_a_switch_that_stopped_reading_costs_one_wait_and_its_replies_are_counted(
    monkeypatch: Any,
) -> None:
    """A real overload: the switch reads nothing and its send queue stays full.  The worker
    waits once (bounded), counts the reply as failed, and does not wait again for that
    switch until its queue takes a buffer: the next replies are counted at once."""
    monkeypatch.setattr(ofp_app, "REPLY_WAIT_S", 0.05)
    app = new_ofp_app()
    dp, peer = _live_switch(app)
    waits: list[float | None] = []
    real = dp._send_q_sem

    class _Counting(_SeenWaiting):
        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            if blocking:
                waits.append(timeout)
            return bool(self.sem.acquire(blocking, timeout))

    dp._send_q_sem = _Counting(real)  # type: ignore[assignment]
    for _ in range(16):
        assert dp.send_nowait(b"q")
    queue = app.on_packet_in(lambda p: bytes([p.in_port or 0]) * 60)
    queue.inline_burst = 0
    for port in (1, 2, 3):
        app._packet_in(_event(dp, in_port=port))
        _wait(lambda: queue._pending == 0, "not answered")
    queue.close()
    try:
        assert queue.counters.reply_failures == 3 and queue.counters.replies == 0
        assert waits == [0.05]
        dp.send_q.get_nowait()  # room again, as os-ken's send thread takes a buffer:
        real.release()  # the next reply goes without a wait
        assert app.packet_outs(DPID, [(5, b"x" * 60)]) and waits == [0.05]
    finally:
        dp.end("test over")
        peer.close()


def _full_live_switch(app: Any) -> tuple[LiveDatapath, socket.socket, _SeenWaiting, list[Any]]:
    """`_live_switch` with its send queue full; the blocking acquires of its semaphore (the
    timeouts of those who wait for room) are noted."""
    dp, peer = _live_switch(app)
    waits: list[Any] = []

    class _Noting(_SeenWaiting):
        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            if blocking:
                waits.append(timeout)
            return super().acquire(blocking, timeout)

    sem = dp._send_q_sem = _Noting(dp._send_q_sem)  # type: ignore[assignment]
    for _ in range(16):
        assert dp.send_nowait(b"q")
    return dp, peer, sem, waits


def test_the_data_planes_packet_outs_never_wait_for_room() -> None:
    """The data plane (one thread serving every host) sends gratuitous ARPs with
    `packet_outs`' defaults: a switch whose send queue is full fails them at once, without
    waiting for room.  (Old code: it waited up to REPLY_WAIT_S, holding the switch.)"""
    app = new_ofp_app()
    dp, peer, _, waits = _full_live_switch(app)
    try:
        assert app.packet_outs(DPID, [(1, b"g" * 60)]) is False
        assert waits == []
    finally:
        dp.end("test over")
        peer.close()


def test_the_worker_waits_for_room_without_holding_the_switch(monkeypatch: Any) -> None:
    """While the packet-in worker waits for room in a switch's full send queue, the switch's
    lock is free: the data plane can hand it a batch meanwhile.  (Old code: the worker waited
    holding `sw.lock`.)"""
    monkeypatch.setattr(ofp_app, "REPLY_WAIT_S", 10.0)
    monkeypatch.setattr(ofp_server, "WAIT_BUDGET_S", 10.0)
    app = new_ofp_app()
    dp, peer, sem, _ = _full_live_switch(app)
    queue = app.on_packet_in(lambda p: b"r" * 60)
    queue.inline_burst = 0
    app._packet_in(_event(dp, in_port=2))
    try:
        assert sem.waiting.wait(5), "the worker never waited"
        lock = app._switches[DPID].lock
        assert lock.acquire(blocking=False), "the worker waits holding the switch"
        lock.release()
        threading.Thread(target=dp._send_loop, daemon=True).start()
        _wait(lambda: queue.counters.replies == 1, "the reply never left")
    finally:
        queue.close()
        dp.end("test over")
        peer.close()


def test_a_slowly_draining_switch_costs_the_worker_at_most_its_wait_budget() -> None:
    """A switch that reads, but only one buffer every 0.19 s: the worker's waits for room in
    its send queue add up to at most ``WAIT_BUDGET_S`` a second (plus one budget), whatever
    the rate of replies; the rest fail at once and are counted, so every other switch's
    replies are held back at most that long.  (Old code: each stall ended with the buffer
    taken, so the worker waited on nearly every reply, ~95% of the time.)  Fake clock."""
    app = new_ofp_app()
    dp, peer = _live_switch(app)
    now = [0.0]
    dp.clock = lambda: now[0]  # type: ignore[method-assign]
    dp._wait_at = 0.0

    class _Draining:
        next_drain = 0.19

        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            if not blocking or timeout is None:
                return False
            if now[0] + timeout >= self.next_drain:
                now[0] = self.next_drain
                self.next_drain += 0.19
                return True
            now[0] += timeout
            return False

        def release(self) -> None:
            pass

    dp._send_q_sem = _Draining()  # type: ignore[assignment]
    dp.send_q = __import__("queue").Queue()  # nothing reads it: the drain is simulated
    queue = app.on_packet_in(lambda p: None)
    waited, sent = 0.0, 0
    try:
        for _ in range(300):
            now[0] += 0.01  # the worker's other work between batches
            before = now[0]
            sent += bool(queue._send_out(DPID, [(1, b"r" * 60)], True))
            waited += now[0] - before
    finally:
        queue.close()
        dp.end("test over")
        peer.close()
    assert 0 < sent < 300
    assert waited <= ofp_server.WAIT_BUDGET_S * (1 + now[0]) + 1e-9, (waited, now[0])


def test_a_reply_the_receive_thread_could_not_hand_over_runs_after_once_after_it() -> None:
    """Answered on the receive thread, its switch's connection busy: the worker sends the
    reply, and ``after`` runs once, after that write.  (Old code: also on the receive thread,
    before the reply had left.)"""
    events: list[str] = []

    def send_out(dpid: int, frames: Any, wait: bool) -> bool | None:
        events.append(f"sent wait={wait}" if wait else "busy")
        return True if wait else None

    queue = PacketInQueue(lambda p: b"r", send_out, after=lambda: events.append("after"))
    assert queue.offer(PacketIn(DPID, 1, OURS, 1, 3, 7, FRAME))  # quiet: on this thread
    _wait(lambda: queue._pending == 0, "the worker never sent it")
    queue.close()
    assert events == ["busy", "sent wait=True", "after"]
    assert queue.counters.replies == 1 and queue.counters.reply_failures == 0


def test_a_reply_that_fails_to_go_out_never_ends_the_worker() -> None:
    """The worker sends every queued reply: an exception from the packet-out (a bug, a
    connection torn down under it) used to end its thread, and no packet-in of any switch was
    answered again."""
    sent: list[int] = []

    def send_out(dpid: int, frames: Any, wait: bool) -> bool:
        if not sent:
            sent.append(-1)
            raise OSError("the connection went away (test)")
        sent.extend(port for port, _ in frames)
        return True

    queue = PacketInQueue(lambda pkt: b"reply", send_out, maxsize=8)
    queue.inline_burst = 0  # every one through the worker
    for port in (1, 2):
        queue.offer(PacketIn(DPID, 1, OURS, 0, port, 7, FRAME))
        _wait(lambda: queue._pending == 0, "the worker took it")
    queue.close()
    assert sent == [-1, 2] and queue.counters.reply_failures == 1 and queue.counters.replies == 1
