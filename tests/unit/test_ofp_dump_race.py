"""A switch's read-back (`TenantnetOfpApp._start_dump`) started again by `resync` (the data
plane's thread) while the previous one is still being answered on the switch's connection
thread: the previous one's late replies and barrier are that read-back's, not the new one's.

Old code reset the read-back (lists, the count of dumps unanswered, ``ready``) outside
``sw.lock`` and counted a reply outside it too, and the barrier after a dump read the count of
whichever read-back was current: the previous read-back's barrier reply then found the new
one's two dumps unanswered and closed a healthy switch ("a barrier reply before the end of the
flow/group dump"), and a reply being handled across the resync was counted as the new one's."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_codec as codec
from controller.southbound.ofp_app import TenantnetOfpApp, _Switch
from flows.model import Slice
from tests.unit.test_ofp_app import DPID, FakeDatapath, _app, _Listener


class _ReadyListener(_Listener):
    """Also keeps what each switch_ready reported."""

    def __init__(self) -> None:
        super().__init__()
        self.installed: list[Slice] = []

    def switch_ready(self, dpid: int, installed: Any) -> None:
        super().switch_ready(dpid, installed)
        self.installed.append(installed)


ENTRY = parser.OFPFlowStats(
    table_id=0, priority=1, cookie=0, match=parser.OFPMatch(in_port=1), instructions=[]
)


def _reply(dp: FakeDatapath, xid: int, body: list[Any] | None = None) -> SimpleNamespace:
    return SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid, flags=0, body=body or []))


def _started(app: TenantnetOfpApp, sw: _Switch) -> tuple[int, int, int]:
    """Start a read-back (as `resync` does); its (flows xid, groups xid, barrier xid)."""
    before = set(sw.barriers)
    app.resync(DPID)
    flows_xid, groups_xid = sorted(sw.dump_xids)
    (barrier_xid,) = set(sw.barriers) - before
    return flows_xid, groups_xid, barrier_xid


def _answer(app: TenantnetOfpApp, dp: FakeDatapath, xids: tuple[int, int, int]) -> None:
    """The switch answers a read-back: both dumps empty, then the barrier after them."""
    app._flow_stats(_reply(dp, xids[0]))
    app._group_desc(_reply(dp, xids[1]))
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xids[2])))


def test_the_previous_read_backs_barrier_does_not_close_the_switch_after_a_resync() -> None:
    """Read-back A's dumps answered (the switch is ready and reported), the data plane re-reads
    the switch at once (e.g. an ownership change) - before A's barrier reply, already on the
    wire behind them, is handled.  Old code: that barrier found B's two dumps unanswered and
    closed the connection."""
    app, dp, sw = _app()
    listener = _ReadyListener()
    app.listener = listener
    a = _started(app, sw)
    app._flow_stats(_reply(dp, a[0]))
    app._group_desc(_reply(dp, a[1]))
    assert sw.ready and listener.ready == [DPID]
    b = _started(app, sw)  # the data plane's thread
    assert not sw.ready
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=a[2])))
    assert not dp.ended.is_set(), "read-back A's barrier closed the switch during read-back B"
    _answer(app, dp, b)
    assert sw.ready and listener.ready == [DPID, DPID] and not dp.ended.is_set()


def test_a_reply_handled_across_a_resync_is_not_counted_as_the_new_read_backs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read-back A's flow reply is being handled on the connection thread (held while it is
    decoded) when `resync` starts read-back B on another thread.  A's reply, then A's group
    reply and barrier, must change nothing of B: B is ready only with both of its own dumps,
    with what they hold, and the switch stays connected.  Old code: A's reply counted as one
    of B's two dumps (B then ready after B's flows alone, without its groups), and A's barrier
    found B unanswered and closed the switch."""
    app, dp, sw = _app()
    listener = _ReadyListener()
    app.listener = listener
    a = _started(app, sw)
    decoding, resynced = threading.Event(), threading.Event()
    decode = codec.decode_flow_stats

    def decode_held(stats: Any) -> Any:
        if not resynced.is_set():
            decoding.set()
            resynced.wait(5)
        return decode(stats)

    monkeypatch.setattr(codec, "decode_flow_stats", decode_held)
    errors: list[BaseException] = []

    def handle() -> None:
        try:
            app._flow_stats(_reply(dp, a[0], [ENTRY]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=handle, name="switch connection")
    thread.start()
    assert decoding.wait(5), "read-back A's reply was never decoded"
    b = _started(app, sw)  # the data plane's thread, while A's reply is in its handler
    resynced.set()
    thread.join(5)
    assert not thread.is_alive() and not errors
    app._group_desc(_reply(dp, a[1]))
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=a[2])))
    assert not dp.ended.is_set(), "read-back A's barrier closed the switch during read-back B"
    assert not sw.ready and sw.pending_dumps == 2, "read-back A's replies counted as B's"
    app._flow_stats(_reply(dp, b[0]))
    assert not sw.ready and listener.ready == [], "ready without read-back B's groups"
    app._group_desc(_reply(dp, b[1]))
    assert sw.ready and listener.installed == [Slice(frozenset(), frozenset())]
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=b[2])))
    assert not dp.ended.is_set()


def _refused(app: TenantnetOfpApp, dp: FakeDatapath, xid: int) -> None:
    """The switch answers message ``xid`` with an error (as one without group support would)."""
    from os_ken.ofproto import ofproto_v1_3 as ofp

    err = parser.OFPErrorMsg(dp, type_=ofp.OFPET_BAD_REQUEST, code=ofp.OFPBRC_BAD_TYPE, data=b"")
    err.xid = xid
    app._error(SimpleNamespace(msg=err))


def test_a_switch_that_answers_its_read_back_with_an_error_is_closed() -> None:
    """Its barrier says "rejected" with the group dump unanswered: old code took only a
    timeout or a barrier before the dumps as a failure, so the switch stayed connected,
    never ready (never programmed) and nothing said why, until it reconnected by itself."""
    app, dp, sw = _app()
    app.listener = _ReadyListener()
    xids = _started(app, sw)
    app._flow_stats(_reply(dp, xids[0]))
    _refused(app, dp, xids[1])
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xids[2])))
    assert not sw.ready
    assert dp.ended.is_set(), "a switch that refused its read-back stayed connected, unsynced"


def test_an_error_in_a_replaced_read_back_does_not_close_the_switch() -> None:
    """The same error in a read-back a resync replaced: the new one judges the switch."""
    app, dp, sw = _app()
    app.listener = _ReadyListener()
    a = _started(app, sw)
    _refused(app, dp, a[1])
    b = _started(app, sw)
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=a[2])))
    assert not dp.ended.is_set()
    _answer(app, dp, b)
    assert sw.ready and not dp.ended.is_set()
