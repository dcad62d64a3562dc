"""``GET /readyz`` and ``tenantnet_store_quorum`` while the store's etcd cluster has no quorum
(controller/api/health.py, `EtcdStore.quorum_lost_for`, `EtcdMembership.quorum_lost_for`):
every write answers 503 then, so the controller is not ready, says why, answers at once even
while etcd hangs, and is ready again by itself once quorum is back."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.api import ApiSettings, create_app
from controller.events import EventBus
from controller.store import Store
from controller.store.etcd_members import EtcdMembership
from controller.store.etcd_settings import EtcdSettings
from controller.store.replicated import EtcdStore
from tests.unit.conftest import ClientFactory, TestClient
from tests.unit.test_store_etcd import restore_members, wait_for  # noqa: F401  (a fixture)

ANSWER_BOUND_S = 1.0  # /readyz never waits for etcd: far below any etcd timeout


def quorum_gauge(text: bytes) -> list[float]:
    """The samples of ``tenantnet_store_quorum`` in an exposition (none: not exported)."""
    return [
        s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "tenantnet_store_quorum"
    ]


def timed_readyz(client: TestClient) -> tuple[int, dict[str, Any]]:
    """/readyz's (status, body), failing if it took longer than ``ANSWER_BOUND_S``."""
    t0 = time.monotonic()
    r = client.get("/readyz")
    took = time.monotonic() - t0
    assert took < ANSWER_BOUND_S, f"/readyz took {took:.2f} s"
    return r.status_code, r.json()


def test_readyz_is_503_with_the_reason_without_quorum_and_200_once_it_is_back(
    store: Store, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for the etcd store's signal: no quorum for 9 s -> 503 saying so; back -> 200."""
    lost: list[float | None] = [None]
    monkeypatch.setattr(store, "quorum_lost_for", lambda: lost[0], raising=False)
    client = make_client()
    assert timed_readyz(client) == (200, {"status": "ready"})
    lost[0] = 9.2
    code, body = timed_readyz(client)
    assert code == 503, body
    assert body["reason"] == (
        "store: etcd cluster has no quorum or cannot be reached (writes answer 503) for 9 s"
    )
    lost[0] = None
    assert timed_readyz(client) == (200, {"status": "ready"})


def test_sqlite_readiness_is_unchanged(client: TestClient) -> None:
    assert not hasattr(Store, "quorum_lost_for")
    assert timed_readyz(client) == (200, {"status": "ready"})


class HangingLog:
    """The membership's etcd calls, in memory; ``hang`` set: the keep-alive hangs (a cluster
    without quorum whose members take the request and answer nothing) until ``release``."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.hang = threading.Event()
        self.release = threading.Event()
        self.keep_alives = 0

    def grant(self, ttl_s: int) -> int:
        return 0x1234

    def put_leased(self, key: str, body: str, lease: int) -> None:
        pass

    def keep_alive(self, lease: int) -> int:
        self.keep_alives += 1
        if self.hang.is_set():
            release = self.release
            release.wait(30)  # the one it was when the call came (a test may replace it)
        return 2

    def list_prefix(self, prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        return 7, [("a", b"{}")]

    def revoke(self, lease: int) -> None:
        pass

    def spread(self, rank: int) -> None:
        pass


@pytest.fixture
def hanging_member(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EtcdMembership, HangingLog]]:
    """A real `EtcdMembership` (TTL 2 s, writes give up after 2 s) on a `HangingLog`."""
    settings = EtcdSettings((("127.0.0.1", 9),), timeout_s=1.0, call_timeout_s=2.0)
    monkeypatch.setattr(EtcdMembership, "_keep_watching", lambda self, revision: None)
    member = EtcdMembership(settings, "a", ttl_s=2)
    log = HangingLog(settings)
    member._log = log  # type: ignore[assignment]
    member._spread = []
    member.start()
    yield member, log
    log.release.set()
    member.stop()


def test_readyz_answers_at_once_while_the_lease_renewal_hangs_then_says_no_quorum(
    store: Store,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    hanging_member: tuple[EtcdMembership, HangingLog],
) -> None:
    """The renewal hangs: /readyz keeps answering within its bound, stays ready for a gap
    shorter than a write's 503 bound (no flap on one slow call), then says no quorum; the
    renewal returning makes it ready again by itself."""
    member, log = hanging_member
    assert member.quorum_bound_s == 2.0
    monkeypatch.setattr(store, "quorum_lost_for", member.quorum_lost_for, raising=False)
    client = make_client()
    assert timed_readyz(client)[0] == 200
    log.hang.set()
    hung_at = time.monotonic()
    seen: list[tuple[float, int, dict[str, Any]]] = []
    while time.monotonic() - hung_at < 6:
        code, body = timed_readyz(client)
        seen.append((time.monotonic() - hung_at, code, body))
        if code == 503:
            break
        time.sleep(0.05)
    at, code, body = seen[-1]
    assert code == 503, seen
    assert "etcd cluster has no quorum" in body["reason"] and "writes answer 503" in body["reason"]
    # the last renewal that succeeded was sent at most TTL/3 before the hang began
    assert at >= member.quorum_bound_s - member.ttl_s / 3 - 0.1, seen
    assert timed_readyz(client)[0] == 503  # stays so while it hangs
    log.release.set()
    wait_for(lambda: timed_readyz(client)[0] == 200, "ready again once a renewal succeeds", 5)


def test_the_quorum_gauge_follows_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tenantnet_store_quorum`` (from the status document): 1, 0 without quorum, 1 again;
    absent on SQLite."""
    from controller.config import Settings
    from controller.service import Controller

    ctl = Controller(Settings())
    assert quorum_gauge(ctl.metrics.exposition()) == []  # no store yet
    ctl.store = SimpleNamespace()  # SQLite's: nothing to judge
    assert quorum_gauge(ctl.metrics.exposition()) == []
    lost: list[float | None] = [None]
    ctl.store = SimpleNamespace(quorum_lost_for=lambda: lost[0])
    assert quorum_gauge(ctl.metrics.exposition()) == [1.0]
    lost[0] = 12.0
    assert quorum_gauge(ctl.metrics.exposition()) == [0.0]
    lost[0] = None
    assert quorum_gauge(ctl.metrics.exposition()) == [1.0]


@pytest.mark.etcd
def test_readyz_on_a_real_cluster_that_loses_quorum_and_gets_it_back(
    tmp_path: Path,
    restore_members: Any,  # noqa: F811  (the fixture imported above)
    etcd_settings: EtcdSettings,
) -> None:
    """Two of the three members killed: /readyz turns 503 within the write's 503 bound plus
    a renewal, answering within its own bound meanwhile; the members back, 200 by itself.
    An instance without membership (tools) judges by its follower's reads, the same way."""
    cluster = restore_members
    settings = dataclasses.replace(etcd_settings, timeout_s=1.0, call_timeout_s=3.0)
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), settings, member_id="a")
    bare = EtcdStore(str(tmp_path / "b.db"), EventBus(), settings, poll_s=0.5)
    member = EtcdMembership(settings, "a", ttl_s=2)
    client = TestClient(create_app(store, ApiSettings()))
    try:
        member.spread_over(store.log)
        member.start()
        store.quorum_signal = member.quorum_lost_for
        assert timed_readyz(client) == (200, {"status": "ready"})
        assert bare.quorum_lost_for() is None
        cluster.stop_member(cluster.members[0])
        cluster.stop_member(cluster.members[1])
        stopped = time.monotonic()
        seen: list[tuple[int, dict[str, Any]]] = []

        def not_ready() -> bool:
            seen.append(timed_readyz(client))
            return seen[-1][0] == 503

        wait_for(not_ready, "/readyz saying not ready without quorum", timeout=20)
        took = time.monotonic() - stopped
        assert "etcd cluster has no quorum" in seen[-1][1]["reason"], seen[-1]
        assert took >= member.quorum_bound_s - member.ttl_s / 3 - 0.1, took
        wait_for(lambda: bare.quorum_lost_for() is not None, "the follower seeing no quorum")
        for m in cluster.members[:2]:
            cluster.start_member(m)
        cluster.wait_healthy(60)
        wait_for(lambda: timed_readyz(client)[0] == 200, "/readyz ready again", timeout=30)
        wait_for(lambda: bare.quorum_lost_for() is None, "the follower reading again", 30)
    finally:
        client.close()
        member.stop()
        bare.close()
        store.close()


def test_a_slow_renewal_that_succeeds_makes_it_ready_at_once(
    hanging_member: tuple[EtcdMembership, HangingLog],
) -> None:
    """A renewal answered after longer than the bound, but answered: the cluster has its
    quorum, so the instance is ready as soon as it succeeded, not a renewal later (judged from
    when it was sent, a working cluster whose renewals are slow would flap at every one)."""
    member, log = hanging_member
    wait_for(lambda: log.keep_alives >= 1 and member.quorum_lost_for() is None, "joined", 5)
    log.hang.set()
    wait_for(lambda: member.quorum_lost_for() is not None, "the hung renewal reported", 6)
    calls = log.keep_alives
    answered, log.release = log.release, threading.Event()
    answered.set()  # the slow renewal succeeds; the next one hangs on the new event
    wait_for(lambda: log.keep_alives > calls, "the next renewal sent", 5)
    assert member.quorum_lost_for() is None
