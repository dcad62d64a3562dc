"""Rendezvous hashing of hosts over live controller instances (controller/membership.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from controller.membership import MemberView, owner_of

HOSTS = [f"hv{i}" for i in range(300)]
names = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=12)


def test_no_members_no_owner() -> None:
    assert owner_of("hv1", []) is None
    assert MemberView("a").owned(HOSTS) == []


@given(st.lists(names, min_size=1, max_size=6, unique=True), st.randoms())
def test_every_instance_computes_the_same_owner_whatever_the_order(
    members: list[str], rnd: object
) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    for host in HOSTS[:20]:
        owner = owner_of(host, members)
        assert owner in members and owner_of(host, shuffled) == owner


def test_each_host_has_exactly_one_owner_and_the_load_is_spread() -> None:
    views = [MemberView(m, ("a", "b", "c")) for m in ("a", "b", "c")]
    owned = [set(v.owned(HOSTS)) for v in views]
    assert set().union(*owned) == set(HOSTS) and sum(map(len, owned)) == len(HOSTS)
    assert min(map(len, owned)) > len(HOSTS) // 6  # not all on one member (300 hosts, 3 members)


def test_a_member_leaving_moves_only_its_hosts_and_joining_takes_only_some() -> None:
    before = {h: owner_of(h, ["a", "b", "c"]) for h in HOSTS}
    after = {h: owner_of(h, ["a", "c"]) for h in HOSTS}
    moved = {h for h in HOSTS if before[h] != after[h]}
    assert moved == {h for h in HOSTS if before[h] == "b"}
    joined = {h: owner_of(h, ["a", "b", "c", "d"]) for h in HOSTS}
    assert all(joined[h] in (before[h], "d") for h in HOSTS)
    assert Counter(joined.values())["d"] < len(HOSTS) // 2


def test_an_instance_that_is_not_live_owns_nothing() -> None:
    view = MemberView("a", ("b", "c"))
    assert not view.live and view.owned(HOSTS) == []
    status = view.status(["hv2", "hv1"])
    assert list(status["host_owner"]) == ["hv1", "hv2"]
    assert set(status["host_owner"].values()) <= {"b", "c"} and status["live"] is False


def test_peer_targets_are_the_other_live_members_and_none_while_not_live() -> None:
    """What an owner lists as a bridge's other controllers: the targets of the other live
    members, sorted; not its own, not those of members whose lease is gone, and none at all
    while this instance is not live (it must not rewrite a bridge then)."""
    targets = (("a", "tcp:192.0.2.1:6653"), ("b", "tcp:192.0.2.2:6653"),
               ("c", "tcp:192.0.2.3:6653"), ("d", "tcp:192.0.2.4:6653"))  # fmt: skip
    live = MemberView("a", ("a", "c", "d"), targets=targets)
    assert live.peer_targets() == ("tcp:192.0.2.3:6653", "tcp:192.0.2.4:6653")
    assert MemberView("a", ("b", "c"), targets=targets).peer_targets() == ()
    assert MemberView("a", ("a",), targets=targets).peer_targets() == ()
