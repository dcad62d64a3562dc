"""Controller membership through etcd leases (controller/store/etcd_members.py) on the lab's
3-member cluster: members see each other, one that stops leaves at once, one that dies leaves
when its lease expires, and one that cannot renew its lease stops counting itself live."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controller.membership import MemberView
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_members import EtcdMembership
from controller.store.etcd_settings import EtcdSettings
from tests.unit.test_store_etcd import wait_for

pytestmark = pytest.mark.etcd
TTL = 2


@pytest.fixture
def members(etcd_settings: EtcdSettings) -> Iterator[Any]:
    started: list[EtcdMembership] = []

    def join(name: str, seen: list[MemberView] | None = None, ttl_s: int = TTL) -> EtcdMembership:
        m = EtcdMembership(
            etcd_settings, name, ttl_s, on_change=None if seen is None else seen.append
        )
        m.start()
        started.append(m)
        return m

    yield join
    for m in started:
        m.stop()


def test_members_see_each_other_and_agree_on_every_host_owner(members: Any) -> None:
    seen: list[MemberView] = []
    a = members("a", seen)
    b = members("b")
    wait_for(lambda: a.view.members == b.view.members == ("a", "b"), "both members listed")
    assert a.view.live and b.view.live
    hosts = [f"hv{i}" for i in range(20)]
    assert a.view.status(hosts)["host_owner"] == b.view.status(hosts)["host_owner"]
    assert sorted(a.view.owned(hosts) + b.view.owned(hosts)) == sorted(hosts)
    assert seen[-1].members == ("a", "b")  # told when the list changed
    assert a.lease_id is not None and a.lease_id != b.lease_id


def test_a_stopped_member_leaves_at_once_and_a_dead_one_after_its_ttl(members: Any) -> None:
    a = members("a")
    b = members("b")
    c = members("c")
    wait_for(lambda: a.view.members == ("a", "b", "c"), "three members")
    b.stop()  # revokes its lease: its key is gone when stop returns
    assert [k for k, _ in a._log.list_prefix("members/")[1]] == ["a", "c"]
    assert not b.current().live  # owns nothing at once, not a TTL later
    wait_for(lambda: a.view.members == ("a", "c"), "b gone")
    c._stopping.set()  # killed: no revoke, its lease is left to expire
    c._thread.join()
    wait_for(lambda: a.view.members == ("a",), "c gone when its lease expired")
    assert a.view.owned(["hv1", "hv2", "hv3"]) == ["hv1", "hv2", "hv3"]


SLOW = 600  # a TTL whose renewal (and the members' read with it) comes every 200 s


def test_members_see_a_join_a_leave_and_an_expiry_at_once_not_at_their_next_renewal(
    members: Any,
) -> None:
    """The members' keys are watched: with renewals 200 s apart, ``a`` still sees ``b`` join
    and leave within seconds, and ``c`` (killed) gone about its own 2 s TTL after its last
    renewal.  With the renewal's read alone (before the watch) each took up to a third of
    the TTL: 0.67 s of every failover with the default TTL, 200 s here."""
    a = members("a", ttl_s=SLOW)
    b = members("b", ttl_s=SLOW)
    wait_for(lambda: a.view.members == ("a", "b"), "b seen joining", timeout=5)
    b.stop()
    wait_for(lambda: a.view.members == ("a",), "b seen leaving", timeout=5)
    c = members("c")  # TTL 2
    wait_for(lambda: a.view.members == ("a", "c"), "c seen joining", timeout=5)
    c._stopping.set()  # killed: no revoke, its lease is left to expire
    c._changed.set()
    c._thread.join()
    # its lease expires within its TTL (etcd revokes expired leases on a 0.5 s tick)
    wait_for(lambda: a.view.members == ("a",), "c gone when its lease expired", timeout=8)
    assert a.view.live and a.view.owned(["hv1", "hv2"]) == ["hv1", "hv2"]


def test_a_members_watch_that_ended_is_replaced_at_the_next_renewal(members: Any) -> None:
    """A watch thread that ended (a bug in it: it logs why) is not left dead: the next renewal
    starts another from the revision it read, and changes are seen at once again."""
    a = members("a", ttl_s=SLOW)
    first = a._watch
    assert first is not None and first.alive
    first.stop()
    wait_for(lambda: not first.alive, "the watch ended")
    a._step()  # the renewal
    assert a._watch is not first and a._watch is not None and a._watch.alive
    members("b", ttl_s=SLOW)
    wait_for(lambda: a.view.members == ("a", "b"), "b seen joining", timeout=5)


def test_a_stopped_member_leaves_no_watch_running(members: Any) -> None:
    a = members("a")
    watch = a._watch
    assert watch is not None and watch.alive
    a.stop()
    wait_for(lambda: not watch.alive, "the members watch stopped with the member")
    a._keep_watching(a.view.revision)  # a renewal finishing after stop starts none
    assert a._watch is None


@pytest.mark.parametrize(
    "failure",
    [EtcdUnavailable("injected"), ValueError("injected: a malformed answer")],
    ids=["outage", "unexpected"],
)
def test_a_member_that_cannot_renew_its_lease_is_not_live_then_rejoins(
    members: Any, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    a = members("a")
    assert a.view.live
    assert a.view.lease == a.lease_id  # the lease the view was read under (DataPlane._note_owner)
    real = EtcdLog.keep_alive

    def unreachable(log: EtcdLog, lease_id: int) -> int:
        raise failure

    monkeypatch.setattr(EtcdLog, "keep_alive", unreachable)
    wait_for(lambda: not a.view.live, "a no longer live without its lease")
    assert a.view.owned(["hv1"]) == []
    lost = a.lease_id
    monkeypatch.setattr(EtcdLog, "keep_alive", real)
    wait_for(lambda: a.view.live, "a live again")
    assert a.lease_id != lost  # the old lease expired meanwhile: a new one
    assert a.view.lease == a.lease_id  # what a owned under the old one is void


def test_a_lease_granted_after_stop_is_revoked_not_left_to_expire(
    etcd_settings: EtcdSettings,
) -> None:
    """The renewal thread may be inside a grant when `stop` runs (a slow cluster outlives the
    join): the lease it gets must be revoked, not left holding the member key for a TTL."""
    m = EtcdMembership(etcd_settings, "late", ttl_s=30)
    m.stop()  # stop ran first; the grant below is the one that was still under way
    granted: list[int] = []
    real = EtcdLog.grant

    def grant(log: EtcdLog, ttl_s: int) -> int:
        granted.append(real(log, ttl_s))
        return granted[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EtcdLog, "grant", grant)
        m._step()
    assert len(granted) == 1
    assert m._log.keep_alive(granted[0]) <= 0  # revoked: etcd no longer knows it
    assert [k for k, _ in m._log.list_prefix("members/")[1]] == []
    assert m.lease_id is None


def test_a_member_whose_renewal_hangs_past_its_ttl_is_not_live_at_once(members: Any) -> None:
    """`current` stops counting the member live when its last renewal is a TTL old, without
    waiting for the hanging call to give up."""
    a = members("a")
    assert a.current().live
    a._renewed_at -= TTL  # the last renewal that succeeded is now a TTL old
    assert not a.current().live and a.current().owned(["hv1"]) == []


def test_instances_spread_over_the_etcd_members_by_rank(
    etcd_settings: EtcdSettings, tmp_path: Any
) -> None:
    """Three instances started one after the other as the service starts them (the store,
    then membership) each send their store's calls and watch to another etcd member, and a
    restarted one takes the member its rank gives.  Picked by the hash of the ids alone, all
    three of ctl-1, ctl-2, ctl-3 went to one member (CRC-32 modulo 3)."""
    from controller.events import EventBus
    from controller.store.replicated import EtcdStore

    stores: dict[str, EtcdStore] = {}
    joined: dict[str, EtcdMembership] = {}

    def start(name: str) -> None:
        stores[name] = EtcdStore(str(tmp_path / f"{name}.db"), EventBus(), etcd_settings,
                                 member_id=name)  # fmt: skip
        joined[name] = EtcdMembership(etcd_settings, name, TTL)
        joined[name].spread_over(stores[name].log)
        joined[name].start()

    def stop(name: str) -> None:
        joined.pop(name).stop()
        stores.pop(name).close()

    names = ("ctl-1", "ctl-2", "ctl-3")
    assert len({EtcdLog(etcd_settings, spread_by=n).current_member for n in names}) == 1
    try:
        for name in names:
            start(name)
        wait_for(lambda: all(m.view.members == names for m in joined.values()), "3 members")
        firsts = {n: s.log.current_member for n, s in stores.items()}
        assert sorted(firsts.values()) == [0, 1, 2], firsts
        assert {n: m._log.current_member for n, m in joined.items()} == firsts
        wait_for(lambda: all(s._watch is not None for s in stores.values()), "the watches")
        assert {n: s._watch.member for n, s in stores.items() if s._watch} == firsts
        stop("ctl-2")
        start("ctl-2")  # among ctl-1 and ctl-3: its rank is still 1
        assert stores["ctl-2"].log.current_member == firsts["ctl-2"]
        wait_for(lambda: stores["ctl-2"]._watch is not None, "the watch")
        watch = stores["ctl-2"]._watch
        assert watch is not None and watch.member == firsts["ctl-2"]
    finally:
        for name in list(joined):
            stop(name)


def test_a_member_whose_key_put_failed_after_the_grant_joins_at_its_next_renewal(
    etcd_settings: EtcdSettings,
) -> None:
    """The grant succeeds, the put of ``members/<id>`` under it fails (every etcd member
    refused for a moment).  The lease used to be kept and renewed at every step without the
    key ever being put again: the instance never became live (owned no host)."""
    a = EtcdMembership(etcd_settings, "a", TTL)
    real_put = a._log.put_leased
    failed: list[int] = []

    def put_once_refused(name: str, value: str, lease_id: int) -> None:
        if not failed:
            failed.append(lease_id)
            raise EtcdUnavailable("every member refused (test)", maybe_sent=False)
        real_put(name, value, lease_id)

    a._log.put_leased = put_once_refused  # type: ignore[method-assign]
    with pytest.raises(EtcdUnavailable):
        a._step()
    assert a.lease_id is None and a._log.keep_alive(failed[0]) <= 0  # dropped and revoked
    a._thread.start()
    try:
        wait_for(lambda: a.view.live, "a live at its next renewal", timeout=8)
    finally:
        a.stop()


def test_a_member_rejoining_after_its_lease_lapsed_is_not_live_on_its_old_view(
    etcd_settings: EtcdSettings,
) -> None:
    """A stalled past its TTL: its lease expired and B took every host.  On its next renewal A
    joins again and reads the members; meanwhile `current()` must not show the view from
    before the lapse (A owning its old hosts) as live."""
    a = EtcdMembership(etcd_settings, "a", TTL)
    b = EtcdMembership(etcd_settings, "b", TTL)
    a._step()  # joined; no renewal thread: the stall
    b.start()
    try:
        wait_for(lambda: b.view.members == ("a", "b"), "both")
        a._step()
        assert a.current().live and a.current().owned([f"hv{i}" for i in range(20)])
        assert a.lease_id is not None
        a._log.revoke(a.lease_id)  # the lease expires (revoked here to save the TTL)
        a._renewed_at -= 10  # and the clock moved on
        wait_for(lambda: b.view.members == ("b",), "b alone")
        entered, release = threading.Event(), threading.Event()
        real_list = a._log.list_prefix

        def slow_list(name: str) -> Any:  # the read after the join is slow
            entered.set()
            release.wait(10)
            return real_list(name)

        a._log.list_prefix = slow_list  # type: ignore[method-assign]
        t = threading.Thread(target=a._step)
        t.start()
        try:
            assert entered.wait(10)
            assert not a.current().live, "acting on the view from before the lapse"
        finally:
            release.set()
            t.join()
        assert a.current().live and a.current().members == ("a", "b")
    finally:
        b.stop()
        a.stop()


def test_a_member_whose_key_was_deleted_while_its_lease_lives_puts_it_again(
    members: Any,
) -> None:
    """``members/a`` deleted by hand (``etcdctl del``) while a's lease lives: a renewed the
    lease alone and stayed out of the members for good, owning nothing (found by a review).
    It puts its key again at its next renewal."""
    a = members("a")
    b = members("b")
    wait_for(lambda: b.view.members == ("a", "b"), "both members listed")
    a._log.client(0).delete(a._log.key("members/a"))

    def keys() -> list[str]:
        return [k for k, _ in b._log.list_prefix("members/")[1]]

    assert keys() == ["b"]
    wait_for(lambda: keys() == ["a", "b"], "a's key put again", timeout=8)
    wait_for(lambda: b.view.members == ("a", "b") and a.view.live, "both members listed again")
