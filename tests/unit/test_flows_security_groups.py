"""The security-group compiler (flows/security_groups.py) on its own: shape, counts, stability.

What packets these flows let through is checked against real OVS by
tests/integration/test_sg_trace.py; here: port ranges become exactly the minimal masked matches,
flows grow with rules + members (never their product), the output does not depend on input
order (so a restart recompiles the same flows), the plug points touch only filtered ports, and
every new action survives the trip through os-ken's encoder and decoder unchanged.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.dataplane.state import PortRec
from controller.dataplane.views import local_port_of
from controller.southbound import ofp_codec as codec
from flows import security_groups as sg
from flows import tables as t
from flows.compiler import compile_base, compile_network
from flows.model import (
    Apply,
    Conjunction,
    Ct,
    GotoTable,
    HostContext,
    LocalPort,
    NetworkView,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    Slice,
    match,
)
from flows.sg_clauses import ClauseIndex
from flows.trace import make_packet, trace
from tests.unit.wire_switch import through_the_wire

COOKIES = sg.SgCookies(static=0x7E4E_0000_0000_0001, shared=0x7E4E_0000_0000_0002)


# ------------------------------------------------------------------------------- port ranges


def _greedy_cover(lo: int, hi: int) -> list[tuple[int, int]]:
    """Reference: largest aligned power-of-two block at ``lo`` that fits, repeatedly (this is
    the classic optimal prefix cover), as (start, size)."""
    out = []
    while lo <= hi:
        size = 1
        while lo % (size * 2) == 0 and lo + size * 2 - 1 <= hi:
            size *= 2
        out.append((lo, size))
        lo += size
    return out


def _block(m: int | tuple[int, int]) -> tuple[int, int]:
    value, mask = (m, 0xFFFF) if isinstance(m, int) else m
    size = (~mask & 0xFFFF) + 1
    assert value & ~mask & 0xFFFF == 0, f"value {value:#x} has bits outside mask {mask:#x}"
    assert size & (size - 1) == 0, f"mask {mask:#x} is not a prefix mask"
    return value, size


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_port_masks_cover_exactly_the_range_with_the_fewest_prefix_matches(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = sorted(_block(m) for m in sg.port_masks(lo, hi))
    assert blocks == _greedy_cover(lo, hi)


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [
        (22, 22, (22,)),
        (0, 0xFFFF, ((0, 0),)),
        (8080, 8081, ((8080, 0xFFFE),)),
        (1000, 1999, ((1000, 0xFFF8), (1008, 0xFFF0), (1024, 0xFE00), (1536, 0xFF00),
                      (1792, 0xFF80), (1920, 0xFFC0), (1984, 0xFFF0))),
    ],
)  # fmt: skip
def test_port_masks_known_values(lo: int, hi: int, want: tuple[object, ...]) -> None:
    assert sg.port_masks(lo, hi) == want


def test_port_masks_reject_out_of_range() -> None:
    with pytest.raises(ValueError):
        sg.port_masks(10, 70000)


def test_rule_clauses_port_ranges_icmp_and_prefix() -> None:
    tcp = sg.SgRule(1, sg.INGRESS, sg.IPV4, 6, 1000, 1999, remote_ip_prefix="10.1.0.0/16")
    clauses = sg.rule_clauses(tcp)
    assert len(clauses) == 7
    assert all(dict(m)["ipv4_src"] == ("10.1.0.0", "255.255.0.0") for m in clauses)
    # Neutron: 1-65535 is "any port", and so is no range
    assert sg.rule_clauses(sg.SgRule(2, sg.EGRESS, sg.IPV4, 17, 1, 65535)) == (
        (("eth_type", 0x800), ("ip_proto", 17)),
    )
    icmp6 = sg.SgRule(3, sg.EGRESS, sg.IPV6, 1, 128, 0, remote_ip_prefix="fd00::/64")
    assert sg.rule_clauses(icmp6) == (
        (("eth_type", 0x86DD), ("icmpv6_code", 0), ("icmpv6_type", 128), ("ip_proto", 58),
         ("ipv6_dst", ("fd00::", "ffff:ffff:ffff:ffff::"))),
    )  # fmt: skip
    any_v4 = sg.SgRule(4, sg.EGRESS, sg.IPV4, remote_ip_prefix="0.0.0.0/0")
    assert sg.rule_clauses(any_v4) == ((("eth_type", 0x800),),)


@pytest.mark.parametrize(
    "rule",
    [
        sg.SgRule(0, sg.INGRESS, sg.IPV4),
        sg.SgRule(1, "sideways", sg.IPV4),
        sg.SgRule(1, sg.INGRESS, "IPX"),
        sg.SgRule(1, sg.INGRESS, sg.IPV4, remote_ip_prefix="fd00::/8"),
        sg.SgRule(1, sg.INGRESS, sg.IPV4, remote_ip_prefix="10.0.0.0/8", remote_group_id="g"),
        sg.SgRule(1, sg.INGRESS, sg.IPV4, protocol=300),
    ],
)
def test_invalid_rules_are_refused(rule: sg.SgRule) -> None:
    with pytest.raises(ValueError):
        sg.rule_clauses(rule)


# ------------------------------------------------------------------------------------ counts


def _mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def _scenario(
    n_ports: int, n_remote_members: int, n_rules: int, nets: int = 1
) -> tuple[list[sg.FilteredPort], dict[str, sg.SecurityGroup]]:
    """Ports in group "web" (ingress tcp from members of "db", plus ``n_rules`` port rules),
    and a group "db" with ``n_remote_members`` members on the ports' networks."""
    ports = [
        sg.FilteredPort(f"p{i}", i + 1, _mac(i), 1 + i % nets, (f"10.0.{i >> 8}.{i & 0xFF}",),
                        groups=("web",))
        for i in range(n_ports)
    ]  # fmt: skip
    members = tuple(
        sg.MemberAddress(1 + i % nets, f"10.1.{i >> 8}.{i & 0xFF}", _mac(0x8000 + i))
        for i in range(n_remote_members)
    )
    rules = [
        sg.SgRule(100, sg.INGRESS, sg.IPV4, 6, 5432, 5432, remote_group_id="db"),
        sg.SgRule(101, sg.EGRESS, sg.IPV4),
    ]
    rules += [
        sg.SgRule(200 + i, sg.INGRESS, sg.IPV4, 6, 8000 + i, 8000 + i) for i in range(n_rules)
    ]
    groups = {
        "web": sg.SecurityGroup("web", tuple(rules)),
        "db": sg.SecurityGroup("db", (), members),
    }
    return ports, groups


def _count(n_ports: int, members: int, rules: int, nets: int = 1) -> int:
    ports, groups = _scenario(n_ports, members, rules, nets)
    return len(sg.compile_host(ports, groups, COOKIES).rules)


def test_flows_grow_with_rules_plus_members_not_their_product() -> None:
    base = _count(10, 100, 5)
    static = len(sg.static_rules(1))
    # every member address: one clause-3 flow, whatever the number of rules and ports
    assert _count(10, 200, 5) - base == 100
    assert _count(10, 200, 50) - _count(10, 100, 50) == 100
    assert _count(40, 200, 5) - _count(40, 100, 5) == 100
    # every single-port rule: its clause-2 flow and its conj_id flow, whatever the members
    assert _count(10, 100, 6) - base == 2
    assert _count(10, 1000, 6) - _count(10, 1000, 5) == 2
    # every port: its two clause-1 flows (ingress, egress) and its hairpin drop
    assert _count(11, 100, 5) - base == 3
    # the whole thing: static + 3/port + 2/rule (+ the remote rule's) + 1/member
    assert base == static + 3 * 10 + 2 * 5 + (2 + 2) + 100


def test_member_addresses_only_for_networks_of_ports_that_use_the_rule() -> None:
    ports, groups = _scenario(4, 10, 1, nets=2)  # ports and members on networks 1 and 2
    only_net1 = [p for p in ports if p.network_key == 1]
    s = sg.compile_host(only_net1, groups, COOKIES)
    addr = [r for r in s.rules if any(k == "ipv4_src" and "10.1." in str(v) for k, v in r.match)]
    assert len(addr) == 5 and all(dict(r.match)[t.REG_SG_NET] == 1 for r in addr)
    # no port in a group whose rules reference "db": none of db's addresses at all
    plain = [sg.FilteredPort("x", 1, _mac(1), 1, ("10.0.0.1",), groups=("db",))]
    s = sg.compile_host(plain, groups, COOKIES)
    assert not [r for r in s.rules if "10.1." in repr(r.match)]


def test_shared_address_and_clause_flows_carry_every_conjunction() -> None:
    rule_a = sg.SgRule(7, sg.INGRESS, sg.IPV4, 6, 22, 22, remote_group_id="r")
    rule_b = sg.SgRule(9, sg.INGRESS, sg.IPV4, 6, 22, 22, remote_group_id="r")
    groups = {
        "a": sg.SecurityGroup("a", (rule_a,)),
        "b": sg.SecurityGroup("b", (rule_b,)),
        "r": sg.SecurityGroup("r", (), (sg.MemberAddress(1, "10.9.0.1", _mac(9)),)),
    }
    ports = [
        sg.FilteredPort("pa", 1, _mac(1), 1, groups=("a",)),
        sg.FilteredPort("pb", 2, _mac(2), 1, groups=("b",)),
    ]
    rules = sg.compile_host(ports, groups, COOKIES).rules
    by_match = {(r.table, r.match): r for r in rules}
    both = (Apply((Conjunction(7, 2, 3), Conjunction(9, 2, 3))),)
    tcp22 = (("eth_type", 0x800), ("ip_proto", 6), ("tcp_dst", 22))
    assert by_match[(t.SG_INGRESS_RULES, tcp22)].instructions == both
    addr = (("eth_type", 0x800), ("ipv4_src", "10.9.0.1"), (t.REG_SG_NET, 1))
    assert by_match[(t.SG_INGRESS_RULES, addr)].instructions == (
        Apply((Conjunction(7, 3, 3), Conjunction(9, 3, 3))),
    )
    assert by_match[(t.SG_INGRESS_RULES, (("reg5", 1),))].instructions == (
        Apply((Conjunction(7, 1, 3),)),
    )
    # a switch holds one flow per (table, priority, match): the slice must not have two
    keys = [r.key for r in rules]
    assert len(keys) == len(set(keys))


def test_two_rules_with_one_key_are_refused() -> None:
    groups = {
        "a": sg.SecurityGroup("a", (sg.SgRule(5, sg.INGRESS, sg.IPV4),)),
        "b": sg.SecurityGroup("b", (sg.SgRule(5, sg.EGRESS, sg.IPV4),)),
    }
    ports = [sg.FilteredPort("p", 1, _mac(1), 1, groups=("a", "b"))]
    with pytest.raises(ValueError, match="key 5"):
        sg.compile_host(ports, groups, COOKIES)


# --------------------------------------------------------------------------------- stability


def test_output_does_not_depend_on_input_order_and_zones_are_the_ofports() -> None:
    ports, groups = _scenario(30, 40, 5, nets=3)
    first = sg.compile_host(ports, groups, COOKIES)
    rng = random.Random(4)
    for _ in range(5):
        shuffled = ports[:]
        rng.shuffle(shuffled)
        items = list(groups.items())
        rng.shuffle(items)
        shuffled_groups = {
            k: sg.SecurityGroup(g.id, tuple(rng.sample(g.rules, len(g.rules))),
                                tuple(rng.sample(g.members, len(g.members))), g.stateful)
            for k, g in items
        }  # fmt: skip
        assert sg.compile_host(shuffled, shuffled_groups, COOKIES) == first
    # the zone is never written as a number: always the register holding the ofport
    cts = [a for r in first.rules for i in r.instructions if isinstance(i, Apply)
           for a in i.actions if isinstance(a, Ct)]  # fmt: skip
    assert cts and all(a.zone_reg == t.REG_SG_PORT and a.zone == 0 for a in cts)
    assert [sg.zone_of(p.ofport) for p in ports] == [p.ofport for p in ports]
    with pytest.raises(ValueError):
        sg.zone_of(0xFF00)


def test_duplicate_ofports_are_refused() -> None:
    ports = [sg.FilteredPort("a", 3, _mac(1), 1), sg.FilteredPort("b", 3, _mac(2), 1)]
    with pytest.raises(ValueError, match="ofport"):
        sg.compile_host(ports, {}, COOKIES)


def test_cookies_per_owner() -> None:
    ports, groups = _scenario(3, 2, 1)
    cookies = sg.SgCookies(static=11, shared=22, ports={"p1": 33})
    s = sg.compile_host(ports, groups, cookies)
    assert {r.cookie for r in s.rules if r.match == (("reg5", 2),)} == {33}
    assert {r.cookie for r in s.rules if r.match == (("reg5", 1),)} == {22}  # no own cookie
    assert {r.cookie for r in s.rules if r.match == ()} == {11}  # table misses
    assert {r.cookie for r in s.rules if dict(r.match).get("conj_id")} == {22}


def test_stateless_ports_skip_conntrack_and_stateful_ports_do_not() -> None:
    rule = sg.SgRule(1, sg.INGRESS, sg.IPV4)
    groups = {
        "on": sg.SecurityGroup("on", (rule,)),
        "off": sg.SecurityGroup("off", (sg.SgRule(2, sg.EGRESS, sg.IPV4),), stateful=False),
    }
    stateful = sg.port_rules(sg.FilteredPort("a", 1, _mac(1), 1, groups=("on",)), groups, 5)
    stateless = sg.port_rules(sg.FilteredPort("b", 2, _mac(2), 1, groups=("off",)), groups, 5)
    mixed = sg.port_rules(sg.FilteredPort("c", 3, _mac(3), 1, groups=("off", "on")), groups, 5)
    entries = {t.SG_EGRESS, t.SG_INGRESS}
    assert not [r for r in stateful if r.table in entries and r.priority == t.PRIO_SG_STATELESS]
    skip = [r for r in stateless if r.priority == t.PRIO_SG_STATELESS]
    assert {(r.table, dict(r.match)["eth_type"]) for r in skip} == {
        (e, et) for e in entries for et in (0x800, 0x86DD)
    }
    for r in skip:
        rules_table = t.SG_EGRESS_RULES if r.table == t.SG_EGRESS else t.SG_INGRESS_RULES
        assert r.instructions == (Apply((SetField("reg6", 1), sg.TO_NET)), GotoTable(rules_table))
    assert not [r for r in mixed if r.priority == t.PRIO_SG_STATELESS]  # stateful wins


def test_port_without_groups_gets_no_clause_and_so_allows_no_ip() -> None:
    rules = sg.port_rules(sg.FilteredPort("a", 1, _mac(1), 1), {}, 5)
    assert {r.table for r in rules} == {t.SG_INGRESS}  # only the hairpin drop


# ------------------------------------------------------------------------------- plug points

CTX = HostContext("192.0.2.1", {"vxlan": 100})


def _core() -> Slice:
    ports = (
        LocalPort("a", 1, _mac(1), ("10.0.0.1",)),
        LocalPort("b", 2, _mac(2), ("10.0.0.2",)),
        LocalPort("c", 3, _mac(3), ("10.0.0.3",), port_security=False),
    )
    return compile_network(CTX, NetworkView(7, "vxlan", 5007, ports, (), ("192.0.2.2",)))


def test_plug_rewrites_only_the_filtered_ports_rules_and_buckets() -> None:
    core = _core()
    plugged = sg.plug(core, {1})
    changed = core.rules - plugged.rules
    assert changed, "nothing plugged"
    for r in changed:
        m = dict(r.match)
        assert m.get("in_port") == 1 or r.instructions == (Apply((Output(1),)),), r
    new = plugged.rules - core.rules
    assert len(new) == len(changed)
    for r in new:
        if r.table == t.PORT_SECURITY:
            assert r.instructions == sg.egress_hook(1)
        else:
            assert r.table in (t.L2_FROM_PORT, t.L2_FROM_TUNNEL)
            assert r.instructions == sg.ingress_hook(1)
    buckets = [b for g in plugged.groups for b in g.buckets]
    assert sg.ingress_bucket(1) in buckets and (Output(1),) not in buckets
    assert (Output(2),) in buckets and (Output(3),) in buckets
    assert sg.plug(core, ()) == core


def test_a_port_the_network_owns_is_not_filtered_as_in_neutron() -> None:
    """A ``network:dhcp`` port (a DHCP server's, port security on by its network's default and
    no group, as Neutron gives such ports) sends a DHCP offer to a VM: Neutron trusts
    ``network:*`` ports (no firewall, no anti-spoofing), so it arrives.  Filtered, the offer
    was dropped twice over: no group allows any IP, and a filtered port may send no DHCP
    server replies.  The record the data plane compiles from says so for both the l2 hooks and
    the sg service (`PortRec.port_security`)."""

    def rec(num: int, owner: str, groups: list[str]) -> PortRec:
        return PortRec.from_store({
            "id": owner, "_num": num, "network_id": "n", "mac_address": _mac(num),
            "fixed_ips": [{"ip_address": f"10.0.0.{num}"}], "admin_state_up": True,
            "port_security_enabled": True, "device_owner": owner, "security_groups": groups,
        })  # fmt: skip

    dhcp, vm = rec(1, "network:dhcp", []), rec(2, "compute:nova", ["g"])
    local = (local_port_of(dhcp, 1), local_port_of(vm, 2))
    core = compile_network(CTX, NetworkView(7, "vxlan", 5007, local, (), ("192.0.2.2",)))
    core = sg.plug(Slice(compile_base(CTX).rules | core.rules, core.groups),
                   sg.filtered_ofports(local))  # fmt: skip
    filtered = [sg.FilteredPort(p.id, o, p.mac, 7, p.fixed_ips, p.pairs, p.groups)
                for p, o in ((dhcp, 1), (vm, 2)) if p.port_security]  # fmt: skip
    groups = {"g": sg.SecurityGroup("g", (sg.SgRule(1, sg.EGRESS, sg.IPV4),))}
    table = Slice(core.rules | sg.compile_host(filtered, groups, COOKIES).rules, core.groups)
    offer = make_packet(_mac(1), _mac(2), ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=17,
                        src_port=67, dst_port=68)  # fmt: skip
    assert trace(table, 1, offer, ["new"]).ports == [2]
    assert not dhcp.port_security and [f.port_id for f in filtered] == [vm.id]
    ping = make_packet(_mac(1), _mac(2), ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=1,
                       icmp_type=8)  # fmt: skip
    assert trace(table, 1, ping, ["new"]).ports == []  # the VM's own ingress filter still holds


def test_hooks_load_the_port_register_then_enter_the_sg_tables() -> None:
    assert sg.egress_hook(4) == (Apply((SetField("reg5", 4),)), GotoTable(t.SG_EGRESS))
    assert sg.ingress_hook(4) == (Apply((SetField("reg5", 4),)), GotoTable(t.SG_INGRESS))
    assert sg.ingress_bucket(4) == (SetField("reg5", 4), Resubmit(t.SG_INGRESS))


# ------------------------------------------------------------------------------------- codec


def test_every_sg_flow_survives_the_wire_unchanged() -> None:
    """Encoded with ofp_codec, serialised and parsed by os-ken, decoded again: equal values,
    so the diff against a switch's dump is empty (a restart sends no flow-mod)."""
    ports, groups = _scenario(5, 6, 3, nets=2)
    groups["db"] = sg.SecurityGroup(
        "db",
        (sg.SgRule(300, sg.EGRESS, sg.IPV6, 58, 128, 0, remote_ip_prefix="fd00::/64"),),
        (*groups["db"].members, sg.MemberAddress(1, "10.7.0.0/24", _mac(77)),
         sg.MemberAddress(1, "0.0.0.0/0", _mac(78))),
        stateful=False,
    )  # fmt: skip
    ports.append(sg.FilteredPort("s", 50, _mac(50), 1, groups=("db",)))
    state = Slice(
        sg.compile_host(ports, groups, COOKIES).rules | sg.plug(_core(), {1, 2}).rules,
        sg.plug(_core(), {1, 2}).groups,
    )
    assert through_the_wire(state) == state


def _wire(action: object) -> bytes:
    buf = bytearray()
    action.serialize(buf, 0)  # type: ignore[attr-defined]
    return bytes(buf)


@pytest.mark.parametrize(
    ("action", "reference"),
    [
        (Conjunction(10, 2, 3), parser.NXActionConjunction(1, 3, 10)),
        (OutputReg("reg5"), parser.NXActionOutputReg(nicira_ext.ofs_nbits(0, 31), "reg5", 0)),
        (Resubmit(20), parser.NXActionResubmitTable(0xFFF8, 20)),
        (Ct(zone_reg="reg5", table=11),
         parser.NXActionCT(0, "reg5", nicira_ext.ofs_nbits(0, 15), 11, 0, [])),
        (Ct(commit=True, zone=7),
         parser.NXActionCT(nicira_ext.NX_CT_F_COMMIT, "", 7, 0xFF, 0, [])),
        (Ct(commit=True, zone_reg="reg5", mark=1),
         parser.NXActionCT(nicira_ext.NX_CT_F_COMMIT, "reg5", nicira_ext.ofs_nbits(0, 15), 0xFF,
                           0, [parser.OFPActionSetField(ct_mark=1)])),
    ],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_nicira_actions_encode_like_os_ken_and_decode_back(action: Any, reference: Any) -> None:
    (encoded,) = codec.encode_actions([action])
    assert _wire(encoded) == _wire(reference)
    assert codec.decode_actions([reference]) == (action,)


def test_ct_actions_tenantnet_never_writes_decode_as_foreign() -> None:
    nat = parser.NXActionCT(nicira_ext.NX_CT_F_COMMIT, "", 1, 0xFF, 0, [parser.NXActionNAT(0)])
    alg = parser.NXActionCT(0, "", 1, 0xFF, 21, [])
    for act in (nat, alg):
        (decoded,) = codec.decode_actions([act])
        assert isinstance(decoded, SetField) and decoded.field == "__foreign__"


def test_a_member_joining_or_leaving_changes_one_flow_per_address() -> None:
    ports, groups = _scenario(20, 50, 5)
    before = sg.compile_host(ports, groups, COOKIES).rules
    db = groups["db"]
    joined = sg.MemberAddress(1, "10.1.9.9", _mac(0x999))
    groups_after = {**groups, "db": sg.SecurityGroup("db", db.rules, (*db.members, joined))}
    after = sg.compile_host(ports, groups_after, COOKIES).rules
    assert len(after - before) == 1 and not before - after
    (added,) = after - before
    assert dict(added.match)["ipv4_src"] == "10.1.9.9"
    left = {**groups, "db": sg.SecurityGroup("db", db.rules, db.members[1:])}
    assert len(before - sg.compile_host(ports, left, COOKIES).rules) == 1


def test_clause_index_merges_by_match_and_hands_a_flow_to_its_smallest_contributor() -> None:
    """One flow per (table, match) with every contributor's conjunction; its cookie is the
    smallest contributor's and moves when that one leaves; a contribution made twice must be
    taken back twice; taking back what was never given is refused."""
    index = ClauseIndex()
    m = match(eth_type=0x0800, ip_proto=6)
    index.add(9, t.SG_INGRESS_RULES, m, Conjunction(9, 2, 2))
    index.add(4, t.SG_INGRESS_RULES, m, Conjunction(4, 2, 3))
    index.add(4, t.SG_INGRESS_RULES, m, Conjunction(4, 2, 3))  # e.g. a fixed IP and a pair
    (flow,) = index.rules()
    assert flow.cookie == 4 and flow.instructions == (
        Apply((Conjunction(4, 2, 3), Conjunction(9, 2, 2))),
    )
    assert index.touched == {4, 9} and index.slice_of(9) == Slice()
    index.touched.clear()
    index.remove(4, t.SG_INGRESS_RULES, m, Conjunction(4, 2, 3))
    assert next(iter(index.rules())).cookie == 4  # one of its two contributions is left
    index.remove(4, t.SG_INGRESS_RULES, m, Conjunction(4, 2, 3))
    (flow,) = index.slice_of(9).rules
    assert flow.cookie == 9 and flow.instructions == (Apply((Conjunction(9, 2, 2),)),)
    assert index.touched == {4, 9} and index.slice_of(4) == Slice()
    with pytest.raises(KeyError):
        index.remove(4, t.SG_INGRESS_RULES, m, Conjunction(4, 2, 3))
    index.remove(9, t.SG_INGRESS_RULES, m, Conjunction(9, 2, 2))
    assert list(index.rules()) == [] and index.owners() == set()


def test_a_stored_dccp_or_udplite_port_range_allows_nothing_not_every_port() -> None:
    """Open vSwitch cannot match DCCP or UDP-Lite ports: such a rule compiled without its
    range allowed the whole protocol (found by a review).  The API refuses the range now; a
    rule stored before has no clause (it allows nothing), while the protocol without a range
    still allows all of it."""
    for proto in (33, 136):
        assert sg.rule_clauses(sg.SgRule(9, sg.INGRESS, sg.IPV4, proto, 80, 80)) == ()
        assert sg.rule_clauses(sg.SgRule(9, sg.INGRESS, sg.IPV4, proto)) == (
            match(eth_type=0x0800, ip_proto=proto),
        )
