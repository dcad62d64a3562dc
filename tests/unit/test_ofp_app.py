"""TenantnetOfpApp's barrier bookkeeping: every batch is answered - by its switch, by the
barrier timeout, or at once when the switch is not reading what it is sent.  And its error
replies: the log names the rule the switch refused, found by the xid the switch answers."""

from __future__ import annotations

import logging
import struct
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_app
from controller.southbound.ofp_app import TenantnetOfpApp, _Switch
from controller.southbound.ofp_server import Write
from flows.diff import FlowDiff
from flows.model import Apply, GotoTable, Output, Rule, match
from tests.unit.conftest import new_ofp_app

DPID = 0x42


class FakeDatapath(ofproto_protocol.ProtocolDesc):
    """Encodes like a real connection; `reading` says whether its send queue takes more."""

    def __init__(self) -> None:
        super().__init__(version=4)
        self.id = DPID
        self.xid = 0
        self.reading = True
        self.sent: list[bytes] = []
        self.ended = threading.Event()

    def end(self, reason: str) -> None:
        self.ended.set()

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_nowait(self, buf: bytes) -> bool:
        if self.reading:
            self.sent.append(buf)
        return self.reading


class Outcome:
    def __init__(self) -> None:
        self.got: list[tuple[bool, str]] = []
        self.event = threading.Event()

    def __call__(self, ok: bool, why: str = "") -> None:
        self.got.append((ok, why))
        self.event.set()


def _app(timeout_s: float = 5.0) -> tuple[TenantnetOfpApp, FakeDatapath, _Switch]:
    app = new_ofp_app()
    app.barrier_timeout_s = timeout_s
    dp = FakeDatapath()
    sw = _Switch(dp=dp, ready=True)
    app._switches[DPID] = sw
    return app, dp, sw


def test_a_barrier_reply_confirms_the_batch() -> None:
    app, dp, sw = _app()
    done = Outcome()
    assert app.apply(DPID, FlowDiff(), done)
    assert dp.sent and len(sw.barriers) == 1
    (xid,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert done.got == [(True, "")]


def test_an_unanswered_barrier_times_out() -> None:
    app, _, sw = _app(timeout_s=0.2)
    done = Outcome()
    assert app.apply(DPID, FlowDiff(), done)
    assert done.event.wait(5), "the barrier never timed out"
    assert done.got == [(False, "timeout")]
    assert not sw.barriers and app.counters.barrier_timeouts == 1


def test_stop_ends_the_barrier_thread_and_answers_the_batch_still_waiting() -> None:
    app, _, sw = _app()
    done = Outcome()
    assert app.apply(DPID, FlowDiff(), done)
    reaper = next(t for t in threading.enumerate() if t.name == ofp_app.BARRIER_THREAD)
    app.stop()
    assert not reaper.is_alive(), "the barrier thread outlived its app"
    assert done.got == [(False, "stopped")] and not sw.barriers
    assert ofp_app.BARRIER_THREAD not in {t.name for t in threading.enumerate()}


def test_a_batch_sent_after_stop_is_answered_as_failed() -> None:
    """No reaper runs after `stop`, so a barrier armed then (a batch the data plane sends
    while it shuts down, a re-read) is answered failed at once instead of never."""
    app, _, sw = _app()
    app.stop()
    late = Outcome()
    assert app.apply(DPID, FlowDiff(), late)
    assert late.event.wait(5), "a batch sent after stop was never answered"
    assert late.got == [(False, "stopped")] and not sw.barriers and not app._deadlines
    assert ofp_app.BARRIER_THREAD not in {t.name for t in threading.enumerate()}


def test_a_switch_that_stopped_reading_fails_the_batch_without_blocking() -> None:
    app, dp, sw = _app()
    dp.reading = False
    done = Outcome()
    assert app.apply(DPID, FlowDiff(), done)  # returns: the caller is never blocked
    assert done.event.wait(5)
    assert done.got == [(False, "timeout")] and not sw.barriers


class DirectDatapath(FakeDatapath):
    """A live connection's `write_now`: ``socket_ok`` False is a socket that fails (the
    connection is going), which takes nothing and queues nothing; ``loses`` True one that
    takes part of the buffer and has no place in the queue for the rest (`Write.LOST`)."""

    def __init__(self) -> None:
        super().__init__()
        self.socket_ok = True
        self.loses = False
        self.direct: list[tuple[bytes, str]] = []  # (buffer, the thread that wrote it)

    def write_now(self, buf: bytes) -> Write:
        if self.loses:
            self.direct.append((buf[:10], threading.current_thread().name))
            return Write.LOST
        if self.socket_ok:
            self.direct.append((buf, threading.current_thread().name))
        return Write.TAKEN if self.socket_ok else Write.REFUSED


def test_a_batch_is_written_on_the_data_planes_thread_not_handed_to_the_send_thread() -> None:
    """The bundle and its barrier go out as one direct write on the caller's thread (the
    data plane's), so the switch gets them while the step's other hosts are planned."""
    app, _, sw = _app()
    dp = DirectDatapath()
    sw.dp = dp
    done = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,)), done)
    assert [t for _, t in dp.direct] == [threading.current_thread().name] and not dp.sent
    (xid,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert done.got == [(True, "")]


def test_a_zone_flush_is_written_directly_so_the_diff_after_it_is_too() -> None:
    """A new port's zone is flushed right before its first flows (the data plane's order):
    the flush goes out as a direct write on the caller's thread like the diff, which a flush
    left in the send thread's queue would push into that queue behind it; a socket that
    refuses the direct write gets it queued."""
    app, _, sw = _app()
    dp = DirectDatapath()
    sw.dp = dp
    assert app.flush_ct_zones(DPID, [7, 8])
    assert [t for _, t in dp.direct] == [threading.current_thread().name] and not dp.sent
    dp.socket_ok = False
    assert app.flush_ct_zones(DPID, [9])
    assert len(dp.sent) == 1 and len(dp.direct) == 1


def test_a_direct_write_the_socket_refuses_is_queued_and_left_to_the_disconnect() -> None:
    """A socket error on the direct write (the connection is going) does not fail the batch
    as an unread switch ("timeout", which would mark the host degraded): the batch is queued
    as before, and the disconnect answers it."""
    app, _, sw = _app()
    dp = DirectDatapath()
    dp.socket_ok = False
    sw.dp = dp
    done = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,)), done)
    assert len(dp.sent) == 1 and not dp.direct and len(sw.barriers) == 1
    assert not done.event.wait(0.2)
    app._fail_barriers(sw)
    assert done.got == [(False, "disconnected")]


def test_a_batch_whose_stream_a_partial_write_lost_is_not_taken_nor_queued_again() -> None:
    """Part of the batch went out and the rest had no place in the send queue: the switch holds
    half a message and the connection is ending.  The batch is not taken - `apply` says so, as
    for a switch that is gone, and its barrier is disarmed, so the caller's answer is the only
    one - and nothing is queued behind the half message.  The old code queued the whole
    buffer again and reported the batch taken."""
    app, _, sw = _app()
    dp = DirectDatapath()
    dp.loses = True
    sw.dp = dp
    done = Outcome()
    assert not app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), del_rules=(FLOW_B,)), done)
    assert not dp.sent and len(dp.direct) == 1
    assert not sw.barriers and not sw.bundle_in_flight
    assert not done.event.wait(0.2), "answered by the app as well as by the caller"


def test_a_zone_flush_whose_stream_a_partial_write_lost_is_not_taken() -> None:
    """The same for a conntrack zone flush: reported not taken (the data plane then holds
    back the diff it goes before), and not queued again behind its own first bytes (the old
    code did, and reported it taken)."""
    app, _, sw = _app()
    dp = DirectDatapath()
    dp.loses = True
    sw.dp = dp
    assert not app.flush_ct_zones(DPID, [7])
    assert not dp.sent and len(dp.direct) == 1


def test_a_switch_that_never_answers_its_read_back_is_disconnected() -> None:
    app, dp, sw = _app(timeout_s=0.2)
    app.resync(DPID)
    assert dp.sent and sw.pending_dumps == 2
    assert dp.ended.wait(5), "a switch that never answers its dump keeps its connection"


def test_a_read_back_answered_in_time_keeps_the_connection() -> None:
    app, dp, sw = _app(timeout_s=0.2)
    app.resync(DPID)
    sw.pending_dumps = 0  # what the two replies do (see _dump_part_done)
    (xid,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert not dp.ended.wait(0.5)


# ------------------------------------------------------------------ error replies name their rule

FLOW_A = Rule(3, 100, match(in_port=4, eth_dst="aa:bb:cc:00:00:01"), (Apply((Output(2),)),), 0x51)
FLOW_B = Rule(5, 200, match(metadata=(7, 0xFFFF)), (GotoTable(6),), 0x52)
ONF = 0x4F4E4600  # the ONF experimenter id of bundle errors


def _on_the_wire(dp: FakeDatapath) -> list[tuple[int, int, bytes]]:
    """(xid, type, message) of every message sent, as the switch reads them; a bundle-add is
    reported as the message it carries (which has the bundle-add's xid)."""
    data, out = b"".join(dp.sent), []
    while data:
        _, msg_type, length, xid = ofproto_parser.header(data)
        msg, data = data[:length], data[length:]
        if msg_type == ofp.OFPT_EXPERIMENTER and len(msg) > 24:  # ONF bundle-add: 24-byte head
            inner = msg[24:]
            _, msg_type, length, xid = ofproto_parser.header(inner)
            msg = inner[:length]
        out.append((xid, msg_type, msg))
    return out


def _flow_mod_xid(dp: FakeDatapath, rule: Rule) -> int:
    for xid, msg_type, msg in _on_the_wire(dp):
        if msg_type == ofp.OFPT_FLOW_MOD:
            fm = ofproto_parser.msg(dp, ofp.OFP_VERSION, msg_type, len(msg), xid, msg)
            if (fm.table_id, fm.priority, fm.cookie) == (rule.table, rule.priority, rule.cookie):
                return xid
    raise AssertionError(f"no flow-mod for {rule} was sent")


def _parsed_error(dp: FakeDatapath, error: Any, xid: int) -> Any:
    """The switch's error reply for ``xid``, encoded and parsed as os-ken would deliver it."""
    error.xid = xid
    error.serialize()
    _, msg_type, length, _ = ofproto_parser.header(error.buf)
    parsed = ofproto_parser.msg(dp, ofp.OFP_VERSION, msg_type, length, xid, bytes(error.buf))
    parsed.datapath = dp
    return parsed


def _switch_answers(app: TenantnetOfpApp, dp: FakeDatapath, error: Any, xid: int) -> None:
    """`_parsed_error`, handed to the app's error handler."""
    app._error(SimpleNamespace(msg=_parsed_error(dp, error, xid)))


def _refused(dp: FakeDatapath, type_: int, code: int) -> Any:
    return parser.OFPErrorMsg(dp, type_=type_, code=code, data=b"\x04\x0e\x00\x50")


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_error_reply_is_logged_with_the_rule_it_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, dp, sw = _app()
    done = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A, FLOW_B), replaces_rules=False), done)
    xid = _flow_mod_xid(dp, FLOW_B)
    with caplog.at_level(logging.ERROR):
        _switch_answers(app, dp, _refused(dp, ofp.OFPET_BAD_INSTRUCTION, 0), xid)
    (line,) = _error_lines(caplog)
    assert "add flow table=5 priority=200" in line and "metadata=0x7/0xffff" in line
    assert "goto_table:6" in line and "OFPET_BAD_INSTRUCTION" in line
    assert "table=3" not in line  # the other rule of the batch was not refused
    (barrier_xid,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=barrier_xid)))
    assert done.got == [(False, "rejected")]


def test_a_refused_batch_stays_refused_when_the_next_is_sent_before_its_barrier_reply() -> None:
    """Batch A is refused (the switch's error for it is handled), then the data plane sends
    batch B before A's barrier reply is handled: A is still reported rejected, and B, which
    the switch took, confirmed."""
    app, dp, sw = _app()
    a, b = Outcome(), Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), a)
    (barrier_a,) = sw.barriers
    _switch_answers(app, dp, _refused(dp, ofp.OFPET_FLOW_MOD_FAILED, 1), _flow_mod_xid(dp, FLOW_A))
    dp.sent.clear()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), b)
    (barrier_b,) = set(sw.barriers) - {barrier_a}
    for xid in (barrier_a, barrier_b):
        app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert a.got == [(False, "rejected")] and b.got == [(True, "")]


def test_replies_are_handled_on_their_switchs_thread_in_the_order_it_sent_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A switch's replies (error, barrier, dumps, role) are not queued behind other switches'
    events: os-ken hands each to the app on the switch's receive thread (`_send_event`), and
    they are handled right there, in the switch's order.  So the barrier that closes a batch
    sees the error the switch sent before it (the batch is "rejected", not confirmed), nothing
    enters the app's shared event queue, and a handler that fails is logged without ending
    the receive loop (the next reply is still handled)."""
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER

    app, dp, sw = _app()
    done = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), done)
    refused = _refused(dp, ofp.OFPET_FLOW_MOD_FAILED, 1)
    parsed = _parsed_error(dp, refused, _flow_mod_xid(dp, FLOW_A))
    (barrier_xid,) = sw.barriers
    reply = parser.OFPBarrierReply(dp)
    reply.xid = barrier_xid
    with caplog.at_level(logging.ERROR):
        app._send_event(ofp_event.EventOFPErrorMsg(parsed), MAIN_DISPATCHER)
        app._send_event(ofp_event.EventOFPBarrierReply(reply), MAIN_DISPATCHER)
    assert done.got == [(False, "rejected")] and app.events.qsize() == 0

    def broken(ev: Any) -> None:
        raise RuntimeError("handler bug")

    later = Outcome()
    sw.barriers[barrier_xid + 100] = later
    app._role_reply = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        app._send_event(ofp_event.EventOFPRoleReply(parser.OFPRoleReply(dp)), MAIN_DISPATCHER)
    assert any("could not be handled" in line for line in _error_lines(caplog))
    reply = parser.OFPBarrierReply(dp)
    reply.xid = barrier_xid + 100
    app._send_event(ofp_event.EventOFPBarrierReply(reply), MAIN_DISPATCHER)
    assert later.got == [(True, "")] and app.events.qsize() == 0
    for ev_cls, name in ofp_app._REPLIES.items():  # the states their registration names
        assert set(getattr(TenantnetOfpApp, name).callers[ev_cls].dispatchers) == {
            CONFIG_DISPATCHER,
            MAIN_DISPATCHER,
        }


def test_the_same_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    app, dp, _ = _app()
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            dp.sent.clear()
            assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), Outcome())
            xid = _flow_mod_xid(dp, FLOW_A)
            _switch_answers(app, dp, _refused(dp, ofp.OFPET_FLOW_MOD_FAILED, 1), xid)
    (line,) = _error_lines(caplog)
    assert "table=3 priority=100" in line and "OFPFMFC_TABLE_FULL" in line
    assert app.counters.errors == 3


def test_a_refused_rule_inside_a_bundle_is_named_and_bundles_stay_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, dp, sw = _app()
    diff = FlowDiff(add_rules=(FLOW_B,), del_rules=(FLOW_A,))  # replaces: one atomic bundle
    assert app.apply(DPID, diff, Outcome())
    wire = _on_the_wire(dp)
    commit_xid = wire[-2][0]  # open, two bundle-adds, commit, barrier
    assert len(wire) == 5
    with caplog.at_level(logging.ERROR):
        # What OVS does: the refused message's own error (its xid), then the commit's.
        _switch_answers(app, dp, _refused(dp, ofp.OFPET_BAD_ACTION, 4), _flow_mod_xid(dp, FLOW_B))
        _switch_answers(
            app,
            dp,
            parser.OFPErrorExperimenterMsg(
                dp, exp_type=ofp.ONFERR_ET_FAILED, experimenter=ONF, data=b""
            ),
            commit_xid,
        )
    (line,) = _error_lines(caplog)
    assert "add flow table=5 priority=200" in line and f"in bundle {sw.bundle_id}" in line
    assert sw.bundles, "one refused rule turned bundles off for the switch"


def test_a_switch_that_refuses_bundles_gets_ordered_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, dp, sw = _app()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), del_rules=(FLOW_A,)), Outcome())
    open_xid = _on_the_wire(dp)[0][0]
    with caplog.at_level(logging.WARNING):
        _switch_answers(app, dp, _refused(dp, ofp.OFPET_BAD_REQUEST, 3), open_xid)
    assert not sw.bundles
    assert any("refused open bundle" in line for line in _error_lines(caplog))
    dp.sent.clear()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), del_rules=(FLOW_B,)), Outcome())
    sent = [msg_type for _, msg_type, _ in _on_the_wire(dp)]
    assert sent == [ofp.OFPT_FLOW_MOD, ofp.OFPT_FLOW_MOD, ofp.OFPT_BARRIER_REQUEST]


def test_only_the_last_messages_are_remembered(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ofp_app, "RECENT_MESSAGES", 4)
    app, dp, sw = _app()
    rules = tuple(FLOW_A._replace(priority=p) for p in range(100, 106))
    assert app.apply(DPID, FlowDiff(add_rules=rules, replaces_rules=False), Outcome())
    assert len(sw.sent) == 4
    with caplog.at_level(logging.ERROR):
        first = _flow_mod_xid(dp, rules[0])
        _switch_answers(app, dp, _refused(dp, ofp.OFPET_FLOW_MOD_FAILED, 1), first)
    (line,) = _error_lines(caplog)
    assert "not among the last 4 sent" in line and "OFPT_FLOW_MOD" in line


class _Listener:
    """Admits every connection; records the switches reported ready."""

    def __init__(self) -> None:
        self.ready: list[int] = []

    def admit(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
        return None

    def switch_ready(self, dpid: int, installed: Any) -> None:
        self.ready.append(dpid)

    def switch_gone(self, dpid: int) -> None:
        pass


def _sent_types(dp: FakeDatapath) -> list[tuple[int, int | None]]:
    """(message type, multipart type or None) of everything sent, in order."""
    out = []
    for buf in dp.sent:
        while buf:
            _, msg_type, length, _ = ofproto_parser.header(buf)
            mp = None
            if msg_type == ofp.OFPT_MULTIPART_REQUEST:
                mp = int.from_bytes(buf[ofp.OFP_HEADER_SIZE : ofp.OFP_HEADER_SIZE + 2], "big")
            out.append((msg_type, mp))
            buf = buf[length:]
    return out


def test_a_new_session_is_read_back_at_features_once() -> None:
    """The read-back of a new connection's flows starts when it is admitted (FEATURES), not
    after os-ken's port description round trip; the move to MAIN does not start a second one,
    and replies that come while os-ken still says CONFIG complete it."""
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER

    app = new_ofp_app()
    listener = _Listener()
    app.attach(listener)
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    dumps = [
        (ofp.OFPT_MULTIPART_REQUEST, ofp.OFPMP_FLOW),
        (ofp.OFPT_MULTIPART_REQUEST, ofp.OFPMP_GROUP_DESC),
        (ofp.OFPT_BARRIER_REQUEST, None),
    ]
    assert _sent_types(dp) == dumps
    dp.state = MAIN_DISPATCHER
    app._state_change(SimpleNamespace(datapath=dp, state=MAIN_DISPATCHER))
    assert _sent_types(dp) == dumps, "the read-back was started twice"
    for handler, ev_cls in ((app._flow_stats, ofp_event.EventOFPFlowStatsReply),
                            (app._group_desc, ofp_event.EventOFPGroupDescStatsReply),
                            (app._barrier, ofp_event.EventOFPBarrierReply)):  # fmt: skip
        assert CONFIG_DISPATCHER in handler.callers[ev_cls].dispatchers
    _finish_read_back(app, dp)
    assert listener.ready == [DPID]


def test_the_role_is_asked_first_on_a_new_session_and_a_refusal_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several controllers (docs/ha.md): the role set for a switch is the first message of each
    of its sessions (before the read-back), a change is sent at once to a connected switch, and
    a switch's refusal of a role request reaches ``on_role_refused`` with its generation.  Each
    role request is remembered by its xid (an error reply to it names it) and logged."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    caplog.set_level(logging.INFO, logger=ofp_app.LOG.name)
    app = new_ofp_app()
    app.packet_in_meter = (100, 10)
    refused: list[tuple[int, int]] = []
    app.on_role_refused = lambda dpid, gen: refused.append((dpid, gen))
    app.attach(_Listener())
    app.set_role(DPID, False, 5)  # not connected yet: remembered
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    sent = _on_the_wire(dp)
    assert sent[0][1] == ofp.OFPT_ROLE_REQUEST
    # os-ken parses only what switches send: the body read with its own layout
    body = struct.unpack_from(ofp.OFP_ROLE_REQUEST_PACK_STR, sent[0][2], ofp.OFP_HEADER_SIZE)
    assert body == (ofp.OFPCR_ROLE_SLAVE, 5)
    app._switches[DPID].ready = True
    dp.sent.clear()
    app.set_role(DPID, True, 9)  # taken over: master now, and its packet-in meter follows
    types = [t for _, t, _ in _on_the_wire(dp)]
    assert types[0] == ofp.OFPT_ROLE_REQUEST and ofp.OFPT_METER_MOD in types
    role_xid = _on_the_wire(dp)[0][0]
    assert app._switches[DPID].sent[role_xid] == ofp_app.Sent("master role", 9)
    assert _role_lines(caplog) == [
        "switch 0000000000000042: slave role asked (generation 5)",
        "switch 0000000000000042: master role asked (generation 9)",
    ]
    _switch_answers(app, dp, _refused(dp, ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE),
                    role_xid)  # fmt: skip
    assert refused == [(DPID, 9)]
    # stepping down (a refused SLAVE while no instance is live): EQUAL, which carries no
    # generation for the switch to compare; the session answers no packet-in from then on
    app.set_role(DPID, False, 9)
    dp.sent.clear()
    app.step_down(DPID)
    [(xid, kind, raw)] = _on_the_wire(dp)
    body = struct.unpack_from(ofp.OFP_ROLE_REQUEST_PACK_STR, raw, ofp.OFP_HEADER_SIZE)
    assert kind == ofp.OFPT_ROLE_REQUEST and body[0] == ofp.OFPCR_ROLE_EQUAL
    assert not app._switches[DPID].master
    assert app._switches[DPID].sent[xid] == ofp_app.Sent("equal role request", 0)
    assert _role_lines(caplog)[-2:] == [
        "switch 0000000000000042: slave role asked (generation 9)",
        "switch 0000000000000042: equal role asked (a slave role was refused as stale)",
    ]


def test_a_role_change_during_a_new_sessions_first_request_is_sent_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session's first role request (`_read_back`, a switch thread) and a change of role
    (`set_role`, the data plane) may run at once.  The first read the role (SLAVE 5), the
    change then sent MASTER 9, and the first wrote SLAVE 5 after it: the switch refuses that
    as stale, keeps the session MASTER, and the app, counting it refused, answered no
    packet-in of the host it owns; nothing asked again (the role did not change).  The
    request for the latest role must be the last on the wire."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    app = new_ofp_app()
    app.attach(_Listener())
    app.set_role(DPID, False, 5)
    real = ofp_app.codec.role_request
    changes: list[threading.Thread] = []

    def role_request(dp: Any, master: bool, generation: int) -> Any:
        if not changes:  # the session's first request: the data plane changes the role now
            changes.append(threading.Thread(target=app.set_role, args=(DPID, True, 9)))
            changes[0].start()
            changes[0].join(0.5)  # done at once, unless it waits for this request's lock
        return real(dp, master, generation)

    monkeypatch.setattr(ofp_app.codec, "role_request", role_request)
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    changes[0].join(5)
    roles = [
        struct.unpack_from(ofp.OFP_ROLE_REQUEST_PACK_STR, raw, ofp.OFP_HEADER_SIZE)
        for _, kind, raw in _on_the_wire(dp)
        if kind == ofp.OFPT_ROLE_REQUEST
    ]
    assert roles[-1] == (ofp.OFPCR_ROLE_MASTER, 9), roles


def _role_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for r in caplog.records if " role asked " in (m := r.getMessage())]


def _role_reply(app: TenantnetOfpApp, dp: FakeDatapath, role: int) -> None:
    """The switch's ROLE_REPLY, encoded and parsed as os-ken would deliver it."""
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import MAIN_DISPATCHER

    assert MAIN_DISPATCHER in app._role_reply.callers[ofp_event.EventOFPRoleReply].dispatchers
    body = struct.pack(ofp.OFP_ROLE_REQUEST_PACK_STR, role, 9)
    length = ofp.OFP_HEADER_SIZE + len(body)
    buf = struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION, ofp.OFPT_ROLE_REPLY, length, 1)
    msg = ofproto_parser.msg(dp, ofp.OFP_VERSION, ofp.OFPT_ROLE_REPLY, length, 1, buf + body)
    msg.datapath = dp
    app._role_reply(SimpleNamespace(msg=msg))


def test_packet_ins_are_answered_only_by_the_owner_as_confirmed_master() -> None:
    """Several controllers (docs/ha.md): a refused role request leaves the session EQUAL, which
    still gets packet-ins; a former owner must not answer DHCP/ARP for a host another instance
    serves.  Packet-ins count (dropped, ``not_owner``) unless the host is owned and the switch
    confirmed this session MASTER; one controller answers them whatever its role."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    from flows.tables import COOKIE_BASE

    app = new_ofp_app()
    owned = {DPID: True}
    app.owns = lambda dpid: owned.get(dpid, False)
    handled: list[int] = []

    def handler(pkt: Any) -> None:
        handled.append(pkt.in_port)

    queue = app.on_packet_in(handler)
    queue.inline_burst = 0  # every one through the worker: all seen once it is closed
    app.attach(_Listener())
    app.set_role(DPID, True, 9)
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    app._switches[DPID].ready = True

    def punt(in_port: int) -> None:
        msg = SimpleNamespace(datapath=dp, cookie=COOKIE_BASE, match={"in_port": in_port},
                              data=b"\xff" * 60, table_id=0, reason=0)  # fmt: skip
        app._packet_in(SimpleNamespace(msg=msg))

    punt(1)  # asked MASTER, not confirmed yet
    role_xid = _on_the_wire(dp)[0][0]
    _switch_answers(app, dp, _refused(dp, ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE),
                    role_xid)  # fmt: skip
    punt(2)  # refused: the session stays EQUAL
    _role_reply(app, dp, ofp.OFPCR_ROLE_MASTER)  # asked again and taken
    punt(3)
    owned[DPID] = False  # the view moved on; the data plane has not asked SLAVE yet
    punt(4)
    owned[DPID] = True
    app.set_role(DPID, False, 10)
    punt(5)
    _role_reply(app, dp, ofp.OFPCR_ROLE_MASTER)  # a late reply to the MASTER request
    punt(6)
    queue.close()
    assert handled == [3]
    assert (queue.counters.not_owner, queue.counters.refused) == (5, 0)
    # one controller (no ownership): no role asked, every packet-in answered
    app.owns, app._roles = None, {}
    handled.clear()
    queue = app.on_packet_in(handler)
    punt(7)
    queue.close()
    assert handled == [7] and queue.counters.not_owner == 0


def _role_answer(app: TenantnetOfpApp, dp: FakeDatapath, role: int, xid: int) -> None:
    """The switch's ROLE_REPLY to request ``xid``, encoded and parsed as os-ken delivers it."""
    body = struct.pack(ofp.OFP_ROLE_REQUEST_PACK_STR, role, 9)
    length = ofp.OFP_HEADER_SIZE + len(body)
    buf = struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION, ofp.OFPT_ROLE_REPLY, length, xid)
    msg = ofproto_parser.msg(dp, ofp.OFP_VERSION, ofp.OFPT_ROLE_REPLY, length, xid, buf + body)
    msg.datapath = dp
    app._role_reply(SimpleNamespace(msg=msg))


def _kinds(dp: FakeDatapath) -> list[int]:
    return [kind for _, kind, _ in _on_the_wire(dp)]


def test_a_session_whose_master_request_is_refused_is_sent_no_flow_mod() -> None:
    """Several controllers (docs/ha.md): a session starts EQUAL and one whose MASTER request
    the switch refuses as stale stays EQUAL, which takes flow-mods like a master.  A fenced-off
    instance that reconnects and asks MASTER with an old generation must not get its flows in
    behind that request: the batch the data plane sends right after it is held until the
    switch answers, failed when it refuses (after the refusal is reported, so the data plane
    knows why), and later batches on the EQUAL session are not taken at all."""
    app, dp, _ = _app()
    events: list[str] = []
    app.on_role_refused = lambda dpid, gen: events.append(f"refused {gen}")
    app.set_role(DPID, True, 9)
    [role_xid] = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]

    def done(ok: bool, why: str = "") -> None:
        events.append(f"batch {ok} {why}")

    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), done)
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp) and events == []
    _switch_answers(app, dp, _refused(dp, ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE),
                    role_xid)  # fmt: skip
    assert events == ["refused 9", "batch False role refused"]
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), Outcome()) is False
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp)


def test_batches_held_for_the_master_reply_go_out_in_order_when_it_comes() -> None:
    """A role change mid-session (this instance took the host over): the batches sent before
    the switch confirmed MASTER go out, in the order they were given, as soon as it does; each
    is answered by its own barrier.  A SLAVE request (the host moved on again) fails what is
    still held, and so does a session that ends or a switch that answers the barrier after
    the request but never the request."""
    app, dp, sw = _app()
    app.set_role(DPID, True, 9)
    [role_xid] = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]
    first, second = Outcome(), Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), first)
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), second)
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp)
    _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, role_xid)
    assert sw.master and not sw.held
    flow_mods = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_FLOW_MOD]
    assert flow_mods == [_flow_mod_xid(dp, FLOW_A), _flow_mod_xid(dp, FLOW_B)]
    assert flow_mods[0] < flow_mods[1]
    for xid in sorted(sw.barriers):
        app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert first.got == [(True, "")] and second.got == [(True, "")]
    # the host moved to another instance and back: held again, then given up as slave
    app.set_role(DPID, False, 10)
    app.set_role(DPID, True, 11)
    again = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), again)
    app.set_role(DPID, False, 12)
    assert again.got == [(False, "not master")] and not sw.held
    # asked MASTER; the switch answers the barrier behind the request, never the request
    app.set_role(DPID, True, 13)
    silent = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), silent)
    role_barrier = max(sw.barriers)
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=role_barrier)))
    assert silent.got == [(False, "no role reply")]
    # asked MASTER again; the session ends before the answer
    app.set_role(DPID, False, 14)
    app.set_role(DPID, True, 15)
    ended = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), ended)
    app._fail_barriers(sw)
    assert ended.got == [(False, "disconnected")] and not sw.held


def test_a_forgotten_role_is_gone_and_its_session_answers_nothing() -> None:
    """Host deleted (`DataPlane._remove_host`): the role kept for its datapath id goes, and a
    session still connected stops answering its packet-ins."""
    app, _, sw = _app()
    app.owns = lambda dpid: True
    app.set_role(DPID, True, 9)
    sw.master = True
    assert app._answers_for(sw)
    app.forget_role(DPID)
    assert DPID not in app._roles and not app._answers_for(sw)


def test_a_connection_waiting_for_attach_counts_as_the_switchs_session() -> None:
    """The fast reconnect asks `has_session` before it rewrites a switch's target: a switch
    whose own retry connected just before the data plane was attached must not be made to drop
    that connection.  Once attached, it is admitted and read back as any other."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    app = new_ofp_app()
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    assert app.has_session(DPID) and not app.has_session(DPID + 1)
    assert not dp.sent  # nothing sent before it is admitted
    app.attach(_Listener())
    assert app.has_session(DPID) and dp.sent  # admitted: its read-back started


def test_switches_admitted_early_are_read_back_before_attach_and_reported_by_it() -> None:
    """After a restart the switches reconnect while the API is built: `admit_early` admits them
    from the registered hosts and reads their flows back then, so the data plane gets them the
    moment it is attached.  An unproven connection is still refused and closed; nothing but the
    read-back is sent before `attach` (no packet-in meter: the data plane's, sent by attach)."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    app = new_ofp_app()
    app.packet_in_meter = (100, 10)
    app.admit_early(lambda dpid, ip, cn: None if ip == "192.0.2.1" else f"not from {ip}")
    impostor = FakeDatapath()
    impostor.address, impostor.is_active = ("192.0.2.66", 1), True
    impostor.state, impostor.socket = CONFIG_DISPATCHER, None
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=impostor, datapath_id=DPID)))
    assert impostor.ended.is_set() and not impostor.sent and app.counters.refused == 1
    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active, dp.state = ("192.0.2.1", 1), None, True, CONFIG_DISPATCHER
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    dumps = [
        (ofp.OFPT_MULTIPART_REQUEST, ofp.OFPMP_FLOW),
        (ofp.OFPT_MULTIPART_REQUEST, ofp.OFPMP_GROUP_DESC),
        (ofp.OFPT_BARRIER_REQUEST, None),
    ]
    assert _sent_types(dp) == dumps, "not read back before attach"
    _finish_read_back(app, dp)
    assert _sent_types(dp) == dumps, "something besides the read-back sent before attach"
    listener = _Listener()
    app.attach(listener)
    assert listener.ready == [DPID]
    assert (ofp.OFPT_METER_MOD, None) in _sent_types(dp)[len(dumps) :]


def _admitted_early() -> tuple[TenantnetOfpApp, FakeDatapath, threading.Event]:
    """An app admitting every switch early, and a switch it admitted (not read back yet);
    the event is set when its connection is ended."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    app = new_ofp_app()
    app.admit_early(lambda dpid, ip, cn: None)
    dp = FakeDatapath()
    dp.address, dp.is_active, dp.state = ("192.0.2.1", 1), True, CONFIG_DISPATCHER
    dp.socket = None
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=dp, datapath_id=DPID)))
    return app, dp, dp.ended


def _finish_read_back(app: TenantnetOfpApp, dp: FakeDatapath) -> None:
    """The switch answers the read-back's two dumps (empty) and its barrier, by their xids."""
    sent = [(xid, t) for xid, t, _ in _on_the_wire(dp)]
    xids = [x for x, t in sent if t == ofp.OFPT_MULTIPART_REQUEST][-2:]
    barrier = [x for x, t in sent if t == ofp.OFPT_BARRIER_REQUEST][-1]
    handlers = (app._flow_stats, app._group_desc, app._barrier)
    for handler, xid in zip(handlers, (*xids, barrier), strict=True):
        handler(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid, flags=0, body=[])))


def test_a_switch_admitted_early_is_asked_again_by_attach_and_dropped_if_refused() -> None:
    """`admit_early` answers from the hosts read at start-up; a host deleted (or its address
    changed) before the data plane starts must not keep the session admitted then: `attach`
    asks the data plane again, closes a session it refuses and does not report it."""
    app, dp, closed = _admitted_early()
    _finish_read_back(app, dp)
    assert app.connected_dpids() == {DPID} and not closed.is_set()

    class Refusing(_Listener):
        def admit(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
            return f"{peer_ip} is not the host's address"

    listener = Refusing()
    app.attach(listener)
    assert listener.ready == [], "refused switch reported ready"
    assert closed.is_set() and app.counters.refused == 1
    assert not app.has_session(DPID) and app.connected_dpids() == set()
    # A switch the data plane still admits is kept and reported as before
    app, dp, closed = _admitted_early()
    _finish_read_back(app, dp)
    kept = _Listener()
    app.attach(kept)
    assert kept.ready == [DPID] and not closed.is_set()


def test_a_switch_read_back_while_attach_runs_is_reported_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read-back finishing and `attach` on two threads: `attach` is made to run at the
    read-back's log line, between the switch becoming ready and the listener being looked at.
    Reported twice, the data plane would diff and send the switch's flows (and meter) twice."""
    app, dp, _ = _admitted_early()
    listener = _Listener()
    info = ofp_app.LOG.info

    def attach_meanwhile(msg: str, *args: Any) -> None:
        info(msg, *args)
        if "read %d flows" in msg:
            app.attach(listener)

    monkeypatch.setattr(ofp_app.LOG, "info", attach_meanwhile)
    _finish_read_back(app, dp)
    assert listener.ready == [DPID]


def test_a_batch_that_does_not_encode_raises_and_is_never_answered_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group-mod that os-ken cannot serialise: `apply` raises to the caller (the data plane
    then re-reads the host) and that is the batch's only answer - no barrier is left armed, so
    the barrier reaper never answers it as well, and the switch takes the next batch.  (Old
    code: the barrier was registered before the group-mods were encoded; it timed out later
    and the data plane counted the batch done a second time.)"""
    app, dp, sw = _app(timeout_s=0.05)
    real = parser.OFPGroupMod.serialize

    def serialize(self: Any) -> Any:
        raise ValueError("cannot encode")

    monkeypatch.setattr(parser.OFPGroupMod, "serialize", serialize)
    done = Outcome()
    with pytest.raises(ValueError, match="cannot encode"):
        app.apply(DPID, FlowDiff(del_groups=(7,)), done)
    assert not sw.barriers and not sw.bundle_in_flight and not dp.sent
    monkeypatch.setattr(parser.OFPGroupMod, "serialize", real)
    after = Outcome()  # its barrier expires after the one the failed batch would have had
    assert app.apply(DPID, FlowDiff(del_groups=(7,)), after)
    assert after.event.wait(5) and after.got == [(False, "timeout")]
    assert done.got == []


def test_dump_replies_nobody_asked_for_are_not_kept() -> None:
    """Flow-stats and group-desc replies whose xid is neither a read_all's nor the read-back's
    under way (unsolicited, or late from an earlier read-back) used to be appended to the
    session's tables for good, and a last part counted as the read-back's."""
    app, dp, sw = _app()
    entry = parser.OFPFlowStats(
        table_id=0, priority=1, cookie=0, match=parser.OFPMatch(in_port=1), instructions=[]
    )
    for i in range(100):
        msg = SimpleNamespace(datapath=dp, xid=10_000 + i, flags=0, body=[entry] * 50)
        app._flow_stats(SimpleNamespace(msg=msg))
        app._group_desc(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=i, flags=0, body=[])))
    assert sw.flows == [] and sw.groups == [] and sw.pending_dumps == 0


def test_a_read_back_barrier_answered_without_its_dumps_ends_the_session() -> None:
    """A switch answers in order, so a barrier reply after the read-back's dumps with a dump
    unanswered means it lies or a reply was lost (os-ken drops one it cannot parse): the
    session would never be ready and would hold the host's datapath id."""
    app, dp, sw = _app()
    app.resync(DPID)
    (xid,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert not sw.ready and dp.ended.is_set()


def test_a_read_back_larger_than_the_bound_ends_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ofp_app, "MAX_READ_FLOWS", 120)
    app, dp, sw = _app()
    app.resync(DPID)
    flows_xid = min(sw.dump_xids)
    entry = parser.OFPFlowStats(
        table_id=0, priority=1, cookie=0, match=parser.OFPMatch(in_port=1), instructions=[]
    )
    for _ in range(3):
        msg = SimpleNamespace(
            datapath=dp, xid=flows_xid, flags=ofp.OFPMPF_REPLY_MORE, body=[entry] * 50
        )
        app._flow_stats(SimpleNamespace(msg=msg))
    assert len(sw.flows) == 100 and dp.ended.is_set() and not sw.ready


def _connection() -> FakeDatapath:
    """A new connection from the switch's address, in os-ken's CONFIG state."""
    from os_ken.controller.handler import CONFIG_DISPATCHER

    dp = FakeDatapath()
    dp.address, dp.socket, dp.is_active = ("192.0.2.1", 1), None, True
    dp.state = CONFIG_DISPATCHER
    return dp


def test_a_session_that_ends_is_reported_gone_before_the_next_one_is_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A switch replaced its own connection: the second one came while the first was alive
    and is decided again on a timer thread (`_admit_later`).  The first one's end is handled
    on os-ken's event thread; here the timer fires in the middle of it, right after the
    session was let go, and the second session is read back at once.  Its switch_ready must
    reach the data plane after the first one's switch_gone: the other way round the data
    plane takes the late gone for the new session and holds the host down until the switch
    reconnects again (the old code told switch_gone after letting go of the lock)."""
    from os_ken.controller.handler import DEAD_DISPATCHER

    class Recorder(_Listener):
        def __init__(self) -> None:
            super().__init__()
            self.told: list[str] = []

        def switch_ready(self, dpid: int, installed: Any) -> None:
            self.told.append("ready")

        def switch_gone(self, dpid: int) -> None:
            self.told.append("gone")

    app = new_ofp_app()
    listener = Recorder()
    app.attach(listener)
    first, second = _connection(), _connection()
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=first, datapath_id=DPID)))
    _finish_read_back(app, first)
    assert listener.told == ["ready"]

    fail_barriers = app._fail_barriers

    def second_session_meanwhile(sw: _Switch, why: str = "disconnected") -> None:
        if sw.dp is first:  # the timer thread, while the event thread handles the end
            app._admit_later(second, DPID)
            _finish_read_back(app, second)
        fail_barriers(sw, why)

    monkeypatch.setattr(app, "_fail_barriers", second_session_meanwhile)
    first.is_active, first.state = False, DEAD_DISPATCHER
    app._state_change(SimpleNamespace(datapath=first, state=DEAD_DISPATCHER))
    assert app.connected_dpids() == {DPID}, "the second session was not read back"
    assert listener.told == ["ready", "gone", "ready"]


def test_a_session_replaced_before_its_end_was_handled_is_reported_gone_first() -> None:
    """The next session's FEATURES is handled before the end of the last one (its receive
    loop ended, its DEAD state change still queued behind the FEATURES): the new session
    takes its place, and the DEAD event later finds it and says nothing.  The data plane must
    hear that the old session is gone before its batch in flight fails ("disconnected") and
    before the new session is ready: the old code never told it, so it took the failure for
    the session it had recorded and re-read the switch - the new session, in the middle of
    its read-back, which a second dump makes close at its first dump's barrier."""
    from os_ken.controller.handler import DEAD_DISPATCHER

    told: list[str] = []

    class Recorder(_Listener):
        def switch_ready(self, dpid: int, installed: Any) -> None:
            told.append("ready")

        def switch_gone(self, dpid: int) -> None:
            told.append("gone")

    app = new_ofp_app()
    app.attach(Recorder())
    first, second = _connection(), _connection()
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=first, datapath_id=DPID)))
    _finish_read_back(app, first)
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,)), lambda ok, why="": told.append(why))
    first.is_active = False  # its receive loop ended; its DEAD event is not handled yet
    app._features(SimpleNamespace(msg=SimpleNamespace(datapath=second, datapath_id=DPID)))
    _finish_read_back(app, second)
    first.state = DEAD_DISPATCHER
    app._state_change(SimpleNamespace(datapath=first, state=DEAD_DISPATCHER))
    assert told == ["ready", "gone", "disconnected", "ready"]
    assert app.connected_dpids() == {DPID} and not second.ended.is_set()


def test_a_master_reply_crossing_a_change_to_slave_does_not_make_the_session_master() -> None:
    """The switch's MASTER reply is handled on its receive thread while the data plane sets
    the host's role to SLAVE (the host moved to another instance).  `set_role` demotes the
    session at once: the late reply must not make it master again.  The old code read the
    role before taking the switch's lock; here `set_role` runs right there (the lock's
    first taker runs it), and the session stayed master until the switch answered the
    SLAVE request - `apply` wrote batches straight to it meanwhile."""
    app, dp, sw = _app()
    app.set_role(DPID, True, 9)
    [role_xid] = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]

    class CrossedLock:
        """The switch's lock, whose first taker lets `set_role` run first."""

        def __init__(self, lock: Any) -> None:
            self.lock, self.crossed = lock, False

        def __enter__(self) -> Any:
            if not self.crossed:
                self.crossed = True
                app.set_role(DPID, False, 10)  # the data plane's thread, meanwhile
            return self.lock.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self.lock.__exit__(*exc)

        def acquire(self, *args: Any, **kwargs: Any) -> bool:
            return bool(self.lock.acquire(*args, **kwargs))

        def release(self) -> None:
            self.lock.release()

    sw.lock = CrossedLock(sw.lock)  # type: ignore[assignment]
    _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, role_xid)
    assert sw.lock.crossed and app._roles[DPID] == (False, 10)
    assert not sw.master, "a reply to the old MASTER request made the session master again"
    done = Outcome()
    assert not app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), done)
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp)


def test_a_reply_to_an_earlier_master_request_lets_no_batch_pass_the_held_ones() -> None:
    """Two MASTER requests in flight (a newer generation asked before the first was
    answered): batches given meanwhile are held for the later one.  The reply to the earlier
    request must not confirm the session: confirmed there, the next batch went out at once,
    and the held one only with the later reply - after it, and after its barrier."""
    app, dp, sw = _app()
    app.set_role(DPID, True, 9)
    app.set_role(DPID, True, 10)
    first, second = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]
    held, later = Outcome(), Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), held)
    _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, first)
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), replaces_rules=False), later)
    _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, second)
    assert sw.master and not sw.held
    flow_mods = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_FLOW_MOD]
    assert flow_mods == [_flow_mod_xid(dp, FLOW_A), _flow_mod_xid(dp, FLOW_B)]
    for xid in sorted(sw.barriers):
        app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert held.got == [(True, "")] and later.got == [(True, "")]


def test_batches_held_when_the_host_is_deleted_are_failed_and_never_sent() -> None:
    """Host deleted (`forget_role`) while batches wait for the switch's MASTER reply: they are
    the deleted host's, answered now as failed.  Kept, the host registered again (a new
    MASTER request) had them sent with its reply, after the delete's `remove_all`."""
    app, dp, sw = _app()
    app.set_role(DPID, True, 9)
    held = Outcome()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), held)
    app.remove_all(DPID, [], Outcome())
    app.forget_role(DPID)
    assert held.got == [(False, "not master")] and not sw.held and sw.role_asked is None
    app.set_role(DPID, True, 10)  # registered again
    for xid in [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]:
        _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, xid)
    assert sw.master
    assert (FLOW_A.table, FLOW_A.priority, FLOW_A.cookie) not in _sent_rules(dp)
    assert held.got == [(False, "not master")]


def _sent_rules(dp: FakeDatapath) -> list[tuple[int, int, int]]:
    """(table, priority, cookie) of every flow-mod that adds a rule."""
    out = []
    for xid, msg_type, msg in _on_the_wire(dp):
        if msg_type == ofp.OFPT_FLOW_MOD:
            fm = ofproto_parser.msg(dp, ofp.OFP_VERSION, msg_type, len(msg), xid, msg)
            if fm.command == ofp.OFPFC_ADD:
                out.append((fm.table_id, fm.priority, fm.cookie))
    return out


def test_a_host_delete_sends_its_flow_deletes_only_on_a_session_confirmed_master() -> None:
    """Several controllers: the delete of every flow of a deleted host goes through the fence
    like any batch.  On a session the switch has not confirmed MASTER (its request unanswered,
    or a SLAVE one) nothing is sent - an EQUAL session takes deletes like a master, and a
    stale instance's late delete would empty the host registered again under a new owner.
    Once the switch confirms MASTER, the same call deletes them."""
    app, dp, sw = _app()
    app.set_role(DPID, True, 9)
    assert not app.remove_all(DPID, [7], Outcome())
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp) and ofp.OFPT_GROUP_MOD not in _kinds(dp)
    app.set_role(DPID, False, 10)
    assert not app.remove_all(DPID, [7], Outcome())
    assert ofp.OFPT_FLOW_MOD not in _kinds(dp) and ofp.OFPT_GROUP_MOD not in _kinds(dp)
    app.set_role(DPID, True, 11)
    asked = [x for x, kind, _ in _on_the_wire(dp) if kind == ofp.OFPT_ROLE_REQUEST]
    _role_answer(app, dp, ofp.OFPCR_ROLE_MASTER, asked[-1])
    assert sw.master
    assert app.remove_all(DPID, [7], Outcome())
    assert ofp.OFPT_FLOW_MOD in _kinds(dp) and ofp.OFPT_GROUP_MOD in _kinds(dp)


def test_a_host_delete_on_a_single_controller_is_sent_at_once() -> None:
    """One controller asks no role: the delete goes out on the session as it is."""
    app, dp, _ = _app()
    assert app.remove_all(DPID, [7], Outcome())
    assert ofp.OFPT_FLOW_MOD in _kinds(dp) and ofp.OFPT_GROUP_MOD in _kinds(dp)


def test_errors_of_ever_new_codes_or_from_peers_not_admitted_are_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The throttle's key held the error's code, which the switch picks: 2,000 errors of new
    codes from a peer (admitted or not: any peer may send errors during its handshake) were
    2,000 log lines (found by a review).  Now a switch's errors are keyed by the protocol's
    error type and cause, and every connection not admitted shares one key; all are counted."""
    app, dp, _ = _app()
    stranger = FakeDatapath()
    stranger.id = 0x42  # claims an id; never admitted
    with caplog.at_level(logging.WARNING):
        for code in range(200):
            refused = _refused(stranger, ofp.OFPET_BAD_REQUEST, code)
            app._error(SimpleNamespace(msg=_parsed_error(stranger, refused, 1000 + code)))
            _switch_answers(app, dp, _refused(dp, ofp.OFPET_BAD_REQUEST, code), 90_000 + code)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert any("not admitted" in line and "0000000000000042" in line for line in lines)
    assert any("not among the last" in line for line in lines)
    assert app.counters.errors == 400
