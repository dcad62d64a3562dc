"""When the OVSDB agent re-applies the switch's controller settings (OVS 3.1.0's 8 s backoff,
`OvsdbHost._settle_controller_settings`): once per OpenFlow session, and only once that session
is `SETTLE_AFTER_S` old, so that the vswitchd reconfiguration never competes with a controller
restart's read-back and reconcile.  The clock, the IDL and the transaction are faked; the
real-OVS behaviour is tests/integration/test_switch_backoff.py's."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from controller import config
from controller.southbound import ovsdb_host
from controller.southbound.ovsdb_host import SETTLE_AFTER_S, OvsdbHost

TARGET = "tcp:192.0.2.10:6653"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Any:
    clock = Clock()
    monkeypatch.setattr(ovsdb_host.time, "monotonic", clock)
    session: dict[str, int | None] = {"n": None}
    host = OvsdbHost(
        {"id": "hv1", "ovsdb": "tcp:192.0.2.1:6640", "tunnel_ip": "192.0.2.101"},
        TARGET,
        lambda *_: None,
        lambda *_: None,
        switch_session=lambda dpid: session["n"],
    )
    bridge = SimpleNamespace(controller=[SimpleNamespace(uuid="c1", target=TARGET)])
    monkeypatch.setattr(ovsdb_host.idlutils, "row_by_value", lambda *a: bridge)
    host._conn = SimpleNamespace(lock=threading.Lock(), idl=None)
    writes: list[tuple[Any, ...]] = []

    @contextmanager
    def transaction(check_error: bool = False) -> Any:
        yield SimpleNamespace(add=writes.append)

    host.api = SimpleNamespace(
        transaction=transaction, db_set=lambda table, row, *cols: (table, row, *cols)
    )
    return SimpleNamespace(host=host, clock=clock, session=session, writes=writes, bridge=bridge)


def test_settings_are_applied_once_per_session_once_it_is_settle_after_s_old(agent: Any) -> None:
    host, clock, writes = agent.host, agent.clock, agent.writes
    host._settle_controller_settings()
    assert writes == [] and host._settle_wait() == 1.0  # no session: the loop's tick
    agent.session["n"] = 7
    host._settle_controller_settings()  # first seen now: a restart's reconcile is under way
    assert writes == []
    clock.now += SETTLE_AFTER_S / 2
    assert host._settle_wait() == pytest.approx(SETTLE_AFTER_S / 2)  # wakes when it is due
    host._settle_controller_settings()
    assert writes == []
    clock.now += SETTLE_AFTER_S / 2
    host._settle_controller_settings()
    assert len(writes) == 1
    table, row, *cols = writes[0]
    assert (table, row) == ("Controller", "c1")
    assert dict(cols)["max_backoff"] == 1000
    assert ovsdb_host.SETTINGS_APPLIED in dict(cols)["external_ids"]
    clock.now += 10
    host._settle_controller_settings()  # the same session: nothing more
    assert len(writes) == 1 and host._settle_wait() == 1.0
    agent.session["n"] = 8  # the switch reconnected: a new session, applied once it is due
    host._settle_controller_settings()
    assert len(writes) == 1
    clock.now += SETTLE_AFTER_S
    host._settle_controller_settings()
    assert len(writes) == 2


def test_other_instances_rows_are_settled_once_per_connection_that_comes_up(agent: Any) -> None:
    """Several instances: a peer's connection that came up after vswitchd last reconfigured
    kept OVS 3.1.0's 8 s backoff (a restarted instance waited up to 8 s to be reconnected).
    Its row's settings are re-applied once vswitchd reports that connection up, and again
    after it went down and came back; our own row is left to the session rule above."""
    host, writes = agent.host, agent.writes
    host.peer_targets = ("tcp:192.0.2.11:6653", "tcp:192.0.2.12:6653")
    peers = [
        SimpleNamespace(uuid="p1", target=host.peer_targets[0], is_connected=False),
        SimpleNamespace(uuid="p2", target=host.peer_targets[1], is_connected=False),
    ]
    ours = SimpleNamespace(uuid="c1", target=TARGET, is_connected=True)
    agent.bridge.controller = [ours, *peers]
    host._settle_peer_settings()
    assert writes == []  # nobody connected: nothing to apply to
    peers[0].is_connected = True
    host._settle_peer_settings()
    host._settle_peer_settings()
    assert [w[:2] for w in writes] == [("Controller", "p1")]
    cols = writes[0][2:]
    assert dict(cols)["max_backoff"] == 1000 and dict(cols)["inactivity_probe"] == 5000
    assert ovsdb_host.SETTINGS_APPLIED in dict(cols)["external_ids"]
    peers[0].is_connected = False  # the instance was killed ...
    peers[1].is_connected = True
    host._settle_peer_settings()
    peers[0].is_connected = True  # ... and restarted: a new connection
    host._settle_peer_settings()
    assert [w[1] for w in writes] == ["p1", "p2", "p1"]


def test_the_settings_written_are_the_configured_ones(agent: Any) -> None:
    """switch_max_backoff_s / switch_inactivity_probe_s (whole seconds) become the rows'
    columns in milliseconds, for our row and the other instances' alike."""
    host, writes = agent.host, agent.writes
    settings = config.Settings(switch_max_backoff_s=2, switch_inactivity_probe_s=9)
    settings.validate()
    host.controller_settings = ovsdb_host.controller_settings(
        settings.switch_max_backoff_s, settings.switch_inactivity_probe_s
    )
    host.peer_targets = ("tcp:192.0.2.11:6653",)
    agent.bridge.controller = [
        SimpleNamespace(uuid="c1", target=TARGET, is_connected=True),
        SimpleNamespace(uuid="p1", target=host.peer_targets[0], is_connected=True),
    ]
    agent.session["n"] = 1
    host._settle_controller_settings()
    agent.clock.now += SETTLE_AFTER_S
    host._settle_controller_settings()
    host._settle_peer_settings()
    assert [w[1] for w in writes] == ["c1", "p1"]
    for w in writes:
        assert dict(w[2:])["max_backoff"] == 2000 and dict(w[2:])["inactivity_probe"] == 9000


@pytest.mark.parametrize(
    ("name", "value"),
    [("switch_max_backoff_s", 0), ("switch_max_backoff_s", 61), ("switch_inactivity_probe_s", 0)],
)
def test_switch_settings_outside_their_bounds_are_refused(name: str, value: int) -> None:
    with pytest.raises(config.ConfigError, match=name):
        config.Settings(**{name: value}).validate()
