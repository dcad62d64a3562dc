"""Tests of desired/installed reconciliation: diff, per-owner fragments and split_by_cookie."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import tables as t
from flows.compiler import (
    compile_base,
    compile_network,
    compile_network_owners,
    dhcp_guard_rule,
    local_port_rules,
    remote_port_rules,
)
from flows.diff import FlowDiff, diff, split_by_cookie
from flows.model import (
    Apply,
    GotoTable,
    GroupEntry,
    HostContext,
    LocalPort,
    NetworkView,
    Output,
    RemotePort,
    Rule,
    Slice,
    match,
)
from tests.unit.flow_sim import merge

CTX = HostContext("10.0.0.1", {"vxlan": 1, "gre": 2})


def view(key: int, ofport: int, seg_type: str = "vxlan") -> NetworkView:
    """A network with two local ports and one remote port."""
    return NetworkView(
        key,
        seg_type,
        1000 + key,
        (
            LocalPort(f"n{key}a", ofport, f"02:00:00:00:{key:02x}:01", ("10.0.0.5",), num=key * 10),
            LocalPort(
                f"n{key}b", ofport + 1, f"02:00:00:00:{key:02x}:02", ("10.0.0.6",), num=key * 10 + 1
            ),
        ),
        (RemotePort(f"n{key}r", f"02:00:00:00:{key:02x}:03", "10.0.0.2", num=key * 10 + 2),),
        ("10.0.0.2",),
    )


def rule(table: int = 2, prio: int = 100, port: int = 5, out: int = 9, key: int = 7) -> Rule:
    """A small rule whose match and action can be varied independently."""
    return Rule(table, prio, match(in_port=port), (Apply((Output(out),)),), t.network_cookie(key))


def with_rules(s: Slice, rules: set[Rule]) -> Slice:
    """``s`` with its rules replaced."""
    return Slice(frozenset(rules), s.groups)


NET7 = compile_network(CTX, view(7, 10))
NET8 = compile_network(CTX, view(8, 20, "gre"))
BASE = compile_base(CTX)


# ------------------------------------------------------------------------------------------- diff


def test_identical_slices_diff_to_nothing() -> None:
    d = diff(NET7, NET7)
    assert d.empty and len(d) == 0 and d == FlowDiff()
    assert diff(Slice(), Slice()).empty


def test_everything_is_added_to_an_empty_switch_and_deleted_from_a_full_one() -> None:
    d = diff(NET7, Slice())
    assert set(d.add_rules) == NET7.rules and set(d.add_groups) == NET7.groups
    assert d.del_rules == () and d.mod_groups == () and d.del_groups == ()
    assert len(d) == len(NET7.rules) + len(NET7.groups)
    gone = diff(Slice(), NET7)
    assert set(gone.del_rules) == NET7.rules
    assert gone.del_groups == tuple(sorted(g.group_id for g in NET7.groups))
    assert gone.add_rules == () and gone.add_groups == () and not gone.empty


def test_changed_actions_are_re_added_not_deleted() -> None:
    old, new = rule(out=9), rule(out=10)
    d = diff(Slice(frozenset({new})), Slice(frozenset({old})))
    assert d.add_rules == (new,)
    assert d.del_rules == ()  # OFPFC_ADD replaces in place; deleting would open a gap
    assert len(d) == 1


def test_changed_cookie_only_is_re_added() -> None:
    old, new = rule(key=7), rule(key=8)
    d = diff(Slice(frozenset({new})), Slice(frozenset({old})))
    assert d.add_rules == (new,) and d.del_rules == ()


def test_removed_rules_are_deleted_and_kept_ones_untouched() -> None:
    keep, drop = rule(port=5), rule(port=6)
    d = diff(Slice(frozenset({keep})), Slice(frozenset({keep, drop})))
    assert d.del_rules == (drop,) and d.add_rules == ()


def test_same_match_other_priority_is_a_different_flow() -> None:
    low, high = rule(prio=10), rule(prio=100)
    d = diff(Slice(frozenset({high})), Slice(frozenset({low})))
    assert d.add_rules == (high,) and d.del_rules == (low,)


def test_group_bucket_change_is_a_modify() -> None:
    old = GroupEntry(14, ((Output(10),), (Output(11),)))
    new = GroupEntry(14, ((Output(10),),))
    d = diff(Slice(groups=frozenset({new})), Slice(groups=frozenset({old})))
    assert d.mod_groups == (new,)
    assert d.add_groups == () and d.del_groups == ()
    assert len(d) == 1


def test_group_add_and_delete() -> None:
    a, b, c = GroupEntry(14, ()), GroupEntry(15, ()), GroupEntry(16, ((Output(1),),))
    d = diff(Slice(groups=frozenset({a, c})), Slice(groups=frozenset({a, b})))
    assert d.add_groups == (c,) and d.del_groups == (15,) and d.mod_groups == ()


def test_port_removal_touches_only_that_ports_flows_and_the_flood_groups() -> None:
    smaller = view(7, 10)
    smaller = NetworkView(
        smaller.key,
        smaller.seg_type,
        smaller.seg_id,
        smaller.local_ports[:1],
        smaller.remote_ports,
        smaller.peer_ips,
    )
    d = diff(compile_network(CTX, smaller), NET7)
    assert d.add_rules == ()
    assert d.del_rules, "the removed port's rules must go"
    gone = view(7, 10).local_ports[1]
    for r in d.del_rules:
        fields = dict(r.match)
        assert r.cookie == t.port_cookie(gone.num), r  # its own rules, nothing else
        assert (fields.get("in_port") == 11 or fields.get("eth_dst") == "02:00:00:00:07:02"
                or fields.get("arp_tpa") in gone.fixed_ips), r  # its ARP answers too
    assert {g.group_id for g in d.mod_groups} == {14, 15}


def test_order_is_deterministic_and_safe() -> None:
    """Adds go last table first, deletes first table first; groups sorted by id."""
    d = diff(merge([NET7, NET8]), Slice())
    tables = [r.table for r in d.add_rules]
    assert tables == sorted(tables, reverse=True)
    assert [g.group_id for g in d.add_groups] == sorted(g.group_id for g in d.add_groups)
    assert d == diff(merge([NET8, NET7]), Slice())
    gone = diff(Slice(), merge([NET7, NET8]))
    tables = [r.table for r in gone.del_rules]
    assert tables == sorted(tables)


def test_messages_in_order_put_groups_around_rules() -> None:
    """Groups are created before and deleted after the rules that use them."""
    g, r = GroupEntry(14, ()), rule()
    d = FlowDiff(add_groups=(g,), mod_groups=(g,), del_groups=(16,), add_rules=(r,), del_rules=(r,))
    kinds = [kind for kind, _ in d.messages_in_order()]
    assert kinds == ["add_groups", "mod_groups", "add_rules", "del_rules", "del_groups"]
    assert len(d) == len(d.messages_in_order()) == 5


def test_sorting_survives_mixed_match_value_types() -> None:
    """Masked and exact values of one field must not make sorting raise."""
    exact = Rule(0, 100, (("metadata", 7),), (GotoTable(1),), t.network_cookie(7))
    masked = Rule(0, 100, (("metadata", (7, 0xFF)),), (GotoTable(1),), t.network_cookie(7))
    d = diff(Slice(frozenset({exact, masked})), Slice())
    assert set(d.add_rules) == {exact, masked}
    assert d == diff(Slice(frozenset({masked, exact})), Slice())


# ------------------------------------------------------------------------------------------ split


OWNED = {
    t.BASE_COOKIE: BASE,
    **compile_network_owners(CTX, view(7, 10)),
    **compile_network_owners(CTX, view(8, 20, "gre")),
}


def test_split_by_cookie_cuts_a_dump_into_its_owners() -> None:
    assert split_by_cookie(merge([BASE, NET7, NET8])) == OWNED
    assert list(split_by_cookie(merge([NET8, BASE, NET7]))) == sorted(OWNED)
    kinds = {t.owner_kind(c) for c in OWNED}
    assert kinds == {t.OwnerKind.BASE, t.OwnerKind.NETWORK, t.OwnerKind.PORT}
    assert split_by_cookie(merge([BASE, NET7]))[t.port_cookie(71)].rules == (
        local_port_rules(view(7, 10).segment, view(7, 10).local_ports[1])
    )


def test_split_ignores_foreign_flows() -> None:
    foreign = Rule(0, 65535, match(in_port=99), (), 0x1234)
    parts = split_by_cookie(merge([BASE, NET7, Slice(frozenset({foreign}))]))
    assert parts == split_by_cookie(merge([BASE, NET7]))


def test_split_leaves_out_transient_drops_the_switch_expires_itself() -> None:
    """A flooding port's DHCP drop (hard timeout) is ours but no owner's desired state: were
    it in a slice, the next reconcile of that host would delete it before its time."""
    drop = dhcp_guard_rule(3, 71)
    assert t.is_ours(drop.cookie) and t.is_transient(drop.cookie)
    parts = split_by_cookie(merge([BASE, NET7, Slice(frozenset({drop}))]))
    assert parts == split_by_cookie(merge([BASE, NET7]))


def test_split_attributes_groups_without_rules_to_their_network() -> None:
    """A leftover group (its rules already gone) must still be found, so it can be deleted."""
    leftover = GroupEntry(t.flood_local_group_id(9), ((Output(3),),))
    parts = split_by_cookie(Slice(groups=frozenset({leftover})))
    assert parts == {t.network_cookie(9): Slice(groups=frozenset({leftover}))}
    assert diff(Slice(), parts[t.network_cookie(9)]).del_groups == (19,)


def test_the_layout_before_owners_is_told_apart() -> None:
    """Before owners, a network's flows had the cookie 0x7E4E0000_00000000 | key: kind 0 with a
    number, which no owner has (the base pipeline is number 0), so the data plane removes them
    as unknown owners while it re-adds the same flows under their owners (docs/architecture)."""
    old = t.COOKIE_BASE | 7
    assert t.is_ours(old) and (t.owner_kind(old), t.owner_num(old)) == (t.OwnerKind.BASE, 7)
    assert old != t.BASE_COOKIE and old not in OWNED
    assert t.describe_owner(old) == "base 7" and t.describe_owner(t.port_cookie(5)) == "port 5"


def test_cookie_fields_round_trip_and_refuse_what_does_not_fit() -> None:
    for kind in t.OwnerKind:
        for num in (0, 1, t.OWNER_NUM_MAX):
            c = t.owner_cookie(kind, num)
            assert t.is_ours(c) and (t.owner_kind(c), t.owner_num(c)) == (kind, num)
    try:
        t.port_cookie(t.OWNER_NUM_MAX + 1)
    except ValueError:
        pass
    else:
        raise AssertionError("a port number beyond 40 bits must be refused")


def test_per_owner_diffs_reconcile_a_whole_switch() -> None:
    """The data plane's loop: dump -> split -> diff each owner -> apply -> nothing left."""
    stale = NetworkView(9, "vxlan", 9, (LocalPort("x", 30, "02:00:00:00:09:01", num=90),))
    installed = merge([BASE, NET7, compile_network(CTX, stale)])
    desired = {
        t.BASE_COOKIE: BASE,
        **compile_network_owners(CTX, view(7, 10, "gre")),
        **compile_network_owners(CTX, view(8, 20, "gre")),
    }
    parts = split_by_cookie(installed)
    switch_rules, switch_groups = set(installed.rules), {g.group_id: g for g in installed.groups}
    for key in sorted(desired.keys() | parts.keys()):
        d = diff(desired.get(key, Slice()), parts.get(key, Slice()))
        for r in d.add_rules:
            switch_rules = {x for x in switch_rules if x.key != r.key} | {r}
        switch_rules -= set(d.del_rules)
        for g in (*d.add_groups, *d.mod_groups):
            switch_groups[g.group_id] = g
        for gid in d.del_groups:
            del switch_groups[gid]
    after = Slice(frozenset(switch_rules), frozenset(switch_groups.values()))
    assert after == merge(desired.values())
    assert split_by_cookie(after) == desired


RULES = st.builds(
    rule,
    st.sampled_from([1, 2]),
    st.sampled_from([10, 100]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from([7, 8]),
)


@settings(max_examples=100, deadline=None)
@given(desired=st.frozensets(RULES), installed=st.frozensets(RULES))
def test_applying_a_diff_reaches_the_desired_state(
    desired: frozenset[Rule], installed: frozenset[Rule]
) -> None:
    """Model a switch (one flow per key, ADD replaces) and check diff is exact and minimal."""
    # A switch holds at most one flow per key; so does compiled desired state.
    desired = frozenset({r.key: r for r in sorted(desired)}.values())
    installed = frozenset({r.key: r for r in sorted(installed)}.values())
    d = diff(Slice(desired), Slice(installed))
    switch = {r.key: r for r in installed}
    for r in d.add_rules:
        switch[r.key] = r
    for r in d.del_rules:
        assert switch.pop(r.key) == r
    assert frozenset(switch.values()) == desired
    assert len(d.add_rules) == len(desired - installed)  # unchanged flows are not re-sent
    assert diff(Slice(desired), Slice(frozenset(switch.values()))).empty


# ----------------------------------------------------------------------------- per-owner fragments


def _variants(key: int) -> list[LocalPort]:
    """Ways one port of network ``key`` can change (IP, MAC, admin state, pairs, ofport)."""
    base = LocalPort(f"n{key}x", 40, f"02:00:00:00:{key:02x}:44", ("10.0.0.44",), num=99)
    return [
        base,
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.45",), num=99),
        LocalPort(base.port_id, 41, base.mac, ("10.0.0.44",), num=99),
        LocalPort(base.port_id, 40, "02:00:00:00:07:55", ("10.0.0.44",), num=99),
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.44",), admin_up=False, num=99),
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.44",), port_security=False, num=99),
        LocalPort(
            base.port_id, 40, base.mac, ("10.0.0.44",),
            allowed_pairs=(("10.0.9.0/24", "02:00:00:00:07:66"),), num=99,
        ),
    ]  # fmt: skip


def _with_local(v: NetworkView, extra: list[LocalPort]) -> NetworkView:
    return NetworkView(v.key, v.seg_type, v.seg_id, v.local_ports + tuple(extra),
                       v.remote_ports, v.peer_ips)  # fmt: skip


def test_a_single_port_change_touches_its_owner_and_the_network_slice_only() -> None:
    """What the per-port path relies on: between two compiles that differ in one port, only
    that port's owner and the network's owner on the host change, and the port's slice is
    its fragment alone (absent -> variant, variant -> variant, -> absent)."""
    seg = view(7, 10).segment
    states: list[LocalPort | None] = [None, *_variants(7)]
    for before in states:
        for after in states:
            o0 = compile_network_owners(CTX, _with_local(view(7, 10), [before] if before else []))
            o1 = compile_network_owners(CTX, _with_local(view(7, 10), [after] if after else []))
            changed = {c for c in o0.keys() | o1.keys() if o0.get(c) != o1.get(c)}
            assert changed <= {t.port_cookie(99), t.network_cookie(7)}, (before, after)
            fragment = local_port_rules(seg, after) if after else frozenset()
            assert o1.get(t.port_cookie(99), Slice()).rules == fragment, (before, after)


def test_a_remote_port_owns_one_rule_per_mac_on_a_peer() -> None:
    seg = view(7, 10).segment
    r0 = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.2", ("02:00:00:00:07:78",), num=5)
    rules = remote_port_rules(CTX, seg, r0)
    assert len(rules) == 2 and {r.cookie for r in rules} == {t.port_cookie(5)}
    moved = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.3", ("02:00:00:00:07:78",), num=5)
    d = diff(Slice(remote_port_rules(CTX, seg, moved)), Slice(rules))
    assert len(d.add_rules) == 2 and d.del_rules == ()  # re-added in place, never deleted
    assert d.replaces_rules and not d.additive


def test_additive_only_when_nothing_installed_is_deleted_or_replaced() -> None:
    """Decides whether a diff may skip the atomic bundle (see FlowDiff.additive)."""
    grown = _with_local(view(7, 10), [_variants(7)[0]])
    assert diff(compile_network(CTX, grown), NET7).additive  # a new port: adds + group mods
    assert not diff(NET7, compile_network(CTX, grown)).additive  # its removal deletes
    moved = NetworkView(7, "vxlan", 1007, view(7, 10).local_ports,
                        (RemotePort("n7r", "02:00:00:00:07:03", "10.0.0.3"),),
                        ("10.0.0.2", "10.0.0.3"))  # fmt: skip
    d = diff(compile_network(CTX, moved), NET7)
    assert d.replaces_rules and not d.additive  # the remote MAC's rule now goes elsewhere
    assert diff(NET7, Slice()).additive and not diff(Slice(), NET7).additive


def test_security_group_cookies_name_their_part_and_never_collide() -> None:
    """Kind 3's number says which part of a host's firewall a flow is: the skeleton, a port's
    own flows, a member's address clauses or a rule's flows; the same number in two parts
    gives two cookies, and numbers that would spill into another part are refused."""
    cookies = {
        t.sg_host_cookie(t.SG_STATIC_NUM): ("host", 0),
        t.sg_port_cookie(5): ("port", 5),
        t.sg_member_cookie(5): ("member", 5),
        t.sg_rule_cookie(5): ("rule", 5),
        t.sg_net_cookie(5): ("network", 5),
    }
    assert len(cookies) == 5
    for cookie, part in cookies.items():
        assert t.owner_kind(cookie) == t.OwnerKind.SECURITY_GROUP
        assert t.sg_owner_part(cookie) == part
    assert t.describe_owner(t.sg_rule_cookie(12)) == "security_group rule 12"
    assert t.describe_owner(t.sg_member_cookie(3)) == "security_group member 3"
    assert t.describe_owner(t.sg_net_cookie(t.MAX_NETWORK_KEY)) == (
        f"security_group network {t.MAX_NETWORK_KEY}")
    top = t.SG_MEMBER_BIT - 1
    assert t.sg_owner_part(t.sg_port_cookie(top)) == ("port", top)
    assert t.sg_owner_part(t.sg_member_cookie(top)) == ("member", top)
    for bad in (lambda: t.sg_port_cookie(t.SG_MEMBER_BIT), lambda: t.sg_member_cookie(-1),
                lambda: t.sg_rule_cookie(0), lambda: t.sg_rule_cookie(t.SG_RULE_BIT),
                lambda: t.sg_net_cookie(t.MAX_NETWORK_KEY + 1)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()


def _walked(owners: dict[int, Slice]) -> tuple[int, int, int]:
    """The totals by walking every owner: what `Owners` must always agree with."""
    sg = t.OwnerKind.SECURITY_GROUP
    return (
        sum(len(s.rules) for s in owners.values()),
        sum(len(s.groups) for s in owners.values()),
        sum(len(s.rules) for c, s in owners.items() if t.owner_kind(c) == sg),
    )


_OWNER_COOKIES = [t.port_cookie(1), t.port_cookie(2), t.sg_port_cookie(1), t.sg_member_cookie(2)]


def _piece(cookie: int, n_rules: int, n_groups: int) -> Slice:
    return Slice(
        rules=frozenset(Rule(0, i, (), (), cookie) for i in range(n_rules)),
        groups=frozenset(GroupEntry(1000 + i, ()) for i in range(n_groups)),
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "pop", "del", "popitem", "setdefault", "update", "ior",
                             "clear"]),
            st.integers(0, len(_OWNER_COOKIES) - 1),
            st.integers(0, 4),
            st.integers(0, 2),
        ),
        max_size=30,
    )
)
def test_owner_totals_follow_every_change(ops: list[tuple[str, int, int, int]]) -> None:
    """`Owners` keeps its flow, group and security-group totals equal to a walk over its slices
    through any sequence of changes (so the status can read them in O(1)); it stays equal to
    the plain dict the same changes make."""
    from flows.diff import Owners

    owners, plain = Owners(), {}
    for op, i, n_rules, n_groups in ops:
        cookie = _OWNER_COOKIES[i]
        piece = _piece(cookie, n_rules, n_groups)
        for d in (owners, plain):
            if op == "set":
                d[cookie] = piece
            elif op == "pop":
                d.pop(cookie, None)
            elif op == "del" and cookie in d:
                del d[cookie]
            elif op == "popitem" and d:
                d.popitem()
            elif op == "setdefault":
                d.setdefault(cookie, piece)
            elif op == "update":
                d.update({cookie: piece})
            elif op == "ior":
                d |= {cookie: piece}
            elif op == "clear":
                d.clear()
        assert owners == plain
        assert (owners.flows, owners.groups, owners.sg_flows) == _walked(owners)
    for copied in (copy.copy(owners), copy.deepcopy(owners), pickle.loads(pickle.dumps(owners)),
                   owners.copy()):  # fmt: skip
        assert isinstance(copied, Owners) and copied == plain
        assert copied.totals == _walked(copied) == owners.totals


def test_split_by_cookie_counts_what_it_split() -> None:
    """A switch's dump cut by owner comes with its totals (ours only: a foreign flow is not
    counted), and the status reads them without walking the owners."""
    from controller.dataplane.reconciler import _installed_counts

    ours = [Rule(0, 1, (), (), t.port_cookie(1)), Rule(0, 2, (), (), t.sg_port_cookie(1)),
            Rule(0, 3, (), (), t.sg_port_cookie(1))]  # fmt: skip
    foreign = Rule(0, 4, (), (), 0x1234)
    owners = split_by_cookie(Slice(rules=frozenset([*ours, foreign])))
    assert (owners.flows, owners.groups, owners.sg_flows) == (3, 0, 2)

    class NoWalk(type(owners)):  # type: ignore[misc]
        def items(self):  # type: ignore[no-untyped-def]
            raise AssertionError("the status walked the owners")

        def values(self):  # type: ignore[no-untyped-def]
            raise AssertionError("the status walked the owners")

    counts = _installed_counts(NoWalk(dict.items(owners)))
    assert counts == {"flows": 3, "groups": 0, "sg_flows": 2}
