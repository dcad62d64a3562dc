"""Tests of desired/installed reconciliation: diff, patch and split_by_cookie."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flows import tables as t
from flows.compiler import (
    compile_base,
    compile_network,
    flood_groups,
    local_port_rules,
    remote_port_rules,
)
from flows.diff import FlowDiff, diff, patch, split_by_cookie
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
            LocalPort(f"n{key}a", ofport, f"02:00:00:00:{key:02x}:01", ("10.0.0.5",)),
            LocalPort(f"n{key}b", ofport + 1, f"02:00:00:00:{key:02x}:02", ("10.0.0.6",)),
        ),
        (RemotePort(f"n{key}r", f"02:00:00:00:{key:02x}:03", "10.0.0.2"),),
        ("10.0.0.2",),
    )


def rule(table: int = 2, prio: int = 100, port: int = 5, out: int = 9, key: int = 7) -> Rule:
    """A small rule whose match and action can be varied independently."""
    return Rule(table, prio, match(in_port=port), (Apply((Output(out),)),), t.cookie_for(key))


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
    for r in d.del_rules:
        fields = dict(r.match)
        assert fields.get("in_port") == 11 or fields.get("eth_dst") == "02:00:00:00:07:02", r
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
    exact = Rule(0, 100, (("metadata", 7),), (GotoTable(1),), t.cookie_for(7))
    masked = Rule(0, 100, (("metadata", (7, 0xFF)),), (GotoTable(1),), t.cookie_for(7))
    d = diff(Slice(frozenset({exact, masked})), Slice())
    assert set(d.add_rules) == {exact, masked}
    assert d == diff(Slice(frozenset({masked, exact})), Slice())


# ------------------------------------------------------------------------------------------ split


def test_split_by_cookie_round_trips_merge() -> None:
    assert split_by_cookie(merge([BASE, NET7, NET8])) == {0: BASE, 7: NET7, 8: NET8}
    assert list(split_by_cookie(merge([NET8, BASE, NET7]))) == [0, 7, 8]


def test_split_ignores_foreign_flows() -> None:
    foreign = Rule(0, 65535, match(in_port=99), (), 0x1234)
    parts = split_by_cookie(merge([BASE, NET7, Slice(frozenset({foreign}))]))
    assert parts == {0: BASE, 7: NET7}


def test_split_attributes_groups_without_rules_to_their_network() -> None:
    """A leftover group (its rules already gone) must still be found, so it can be deleted."""
    leftover = GroupEntry(t.flood_local_group_id(9), ((Output(3),),))
    parts = split_by_cookie(Slice(groups=frozenset({leftover})))
    assert parts == {9: Slice(groups=frozenset({leftover}))}
    assert diff(Slice(), parts[9]).del_groups == (19,)


def test_per_network_diffs_reconcile_a_whole_switch() -> None:
    """The southbound's loop: dump -> split -> diff each network -> apply -> nothing left."""
    stale = NetworkView(9, "vxlan", 9, (LocalPort("x", 30, "02:00:00:00:09:01"),))
    installed = merge([BASE, NET7, compile_network(CTX, stale)])
    desired = {0: BASE, 7: compile_network(CTX, view(7, 10, "gre")), 8: NET8}
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
    assert all(diff(s, split_by_cookie(after).get(k, Slice())).empty for k, s in desired.items())


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


# ------------------------------------------------------------------------------------------ patch


def _variants(key: int) -> list[LocalPort]:
    """Ways one port of network ``key`` can change (IP, MAC, admin state, pairs, ofport)."""
    base = LocalPort(f"n{key}x", 40, f"02:00:00:00:{key:02x}:44", ("10.0.0.44",))
    return [
        base,
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.45",)),
        LocalPort(base.port_id, 41, base.mac, ("10.0.0.44",)),
        LocalPort(base.port_id, 40, "02:00:00:00:07:55", ("10.0.0.44",)),
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.44",), admin_up=False),
        LocalPort(base.port_id, 40, base.mac, ("10.0.0.44",), port_security=False),
        LocalPort(
            base.port_id, 40, base.mac, ("10.0.0.44",),
            allowed_pairs=(("10.0.9.0/24", "02:00:00:00:07:66"),),
        ),
    ]  # fmt: skip


def _with_local(v: NetworkView, extra: list[LocalPort]) -> NetworkView:
    return NetworkView(v.key, v.seg_type, v.seg_id, v.local_ports + tuple(extra),
                       v.remote_ports, v.peer_ips)  # fmt: skip


def test_patch_equals_a_full_diff_for_every_single_port_change() -> None:
    """Swapping one port's fragment gives the same messages' effect and the same slice as
    recompiling the network and diffing it: absent -> variant, variant -> variant, -> absent."""
    seg = view(7, 10).segment
    states: list[LocalPort | None] = [None, *_variants(7)]
    for before in states:
        for after in states:
            v0 = _with_local(view(7, 10), [before] if before else [])
            v1 = _with_local(view(7, 10), [after] if after else [])
            installed, desired = compile_network(CTX, v0), compile_network(CTX, v1)
            old = local_port_rules(seg, before) if before else frozenset()
            new = local_port_rules(seg, after) if after else frozenset()
            d, result = patch(
                installed, old, new, flood_groups(CTX, seg, v1.local_ports, ["10.0.0.2"])
            )
            assert result == desired, (before, after)
            full = diff(desired, installed)
            assert set(d.add_rules) == set(full.add_rules), (before, after)
            assert set(d.del_rules) == set(full.del_rules), (before, after)
            assert (d.add_groups, d.mod_groups, d.del_groups) == (
                full.add_groups, full.mod_groups, full.del_groups)  # fmt: skip


def test_patch_of_a_remote_port_touches_one_rule_per_mac() -> None:
    seg = view(7, 10).segment
    r0 = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.2")
    r1 = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.3")  # moved to another host
    d, after = patch(NET7, frozenset(), remote_port_rules(CTX, seg, r0))
    assert len(d) == 1 and len(after.rules) == len(NET7.rules) + 1
    d2, after2 = patch(after, remote_port_rules(CTX, seg, r0), remote_port_rules(CTX, seg, r1))
    assert len(d2.add_rules) == 1 and d2.del_rules == ()  # re-added in place, never deleted
    assert len(after2.rules) == len(after.rules)


def test_patch_does_not_delete_what_the_switch_does_not_have() -> None:
    seg = view(7, 10).segment
    port = _variants(7)[0]
    d, after = patch(NET7, local_port_rules(seg, port), frozenset())
    assert d.empty and after == NET7


def test_additive_only_when_nothing_installed_is_deleted_or_replaced() -> None:
    """Decides whether a diff may skip the atomic bundle (see FlowDiff.additive)."""
    seg = view(7, 10).segment
    grown = _with_local(view(7, 10), [_variants(7)[0]])
    assert diff(compile_network(CTX, grown), NET7).additive  # a new port: adds + group mods
    assert not diff(NET7, compile_network(CTX, grown)).additive  # its removal deletes
    moved = NetworkView(7, "vxlan", 1007, view(7, 10).local_ports,
                        (RemotePort("n7r", "02:00:00:00:07:03", "10.0.0.3"),),
                        ("10.0.0.2", "10.0.0.3"))  # fmt: skip
    d = diff(compile_network(CTX, moved), NET7)
    assert d.replaces_rules and not d.additive  # the remote MAC's rule now goes elsewhere
    assert diff(NET7, Slice()).additive and not diff(Slice(), NET7).additive
    r0 = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.2")
    r1 = RemotePort("n7q", "02:00:00:00:07:77", "10.0.0.3")
    added, after = patch(NET7, frozenset(), remote_port_rules(CTX, seg, r0))
    assert added.additive
    replaced, _ = patch(after, remote_port_rules(CTX, seg, r0), remote_port_rules(CTX, seg, r1))
    assert replaced.replaces_rules and not replaced.additive
