"""TenantnetOfpApp's barrier bookkeeping: every batch is answered - by its switch, by the
barrier timeout, or at once when the switch is not reading what it is sent."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from os_ken.ofproto import ofproto_protocol

from controller.southbound.ofp_app import TenantnetOfpApp, _Switch
from flows.diff import FlowDiff

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
    app = TenantnetOfpApp()
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


def test_a_switch_that_stopped_reading_fails_the_batch_without_blocking() -> None:
    app, dp, sw = _app()
    dp.reading = False
    done = Outcome()
    assert app.apply(DPID, FlowDiff(), done)  # returns: the caller is never blocked
    assert done.event.wait(5)
    assert done.got == [(False, "timeout")] and not sw.barriers


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
