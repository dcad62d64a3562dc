"""The packet evaluator (flows/trace.py): OpenFlow semantics on small tables, then the real
compilers' output (core pipeline and security groups) against the project's reference models.

Its agreement with OVS itself is tests/integration/test_trace_vs_ovs.py.
"""

from __future__ import annotations

import random
from typing import Any

import netaddr
import pytest

from flows import tables as t
from flows.compiler import compile_base, compile_network
from flows.model import (
    Apply,
    Conjunction,
    Ct,
    GotoTable,
    GroupEntry,
    HostContext,
    LocalPort,
    Move,
    NetworkView,
    Output,
    OutputReg,
    RemotePort,
    Resubmit,
    Rule,
    SetField,
    Slice,
    ToGroup,
    WriteMetadata,
    match,
)
from flows.trace import (
    CT_DEFAULT,
    AmbiguousMatch,
    FlowTable,
    Unsupported,
    make_packet,
    ovs_flow_text,
    parse_ct_state,
    trace,
)
from tests.integration import test_sg_trace as sgt
from tests.unit.flow_sim import Cloud, Host, Net, VmPort

C = 0x7E4E_0000_0000_0000
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PKT = make_packet(A, B, ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=6, dst_port=22)


def rule(table: int, prio: int, m: tuple = (), *ins: object) -> Rule:
    return Rule(table, prio, m, tuple(ins), C)  # type: ignore[arg-type]


def out(port: int) -> Apply:
    return Apply((Output(port),))


# ------------------------------------------------------------------------ OpenFlow semantics


def test_highest_priority_wins_and_a_miss_or_an_empty_flow_drops() -> None:
    s = Slice(frozenset({
        rule(0, 10, match(eth_type=0x0800), out(2)),
        rule(0, 20, match(eth_type=0x0800, tcp_dst=22, ip_proto=6), out(3)),
        rule(0, 30, match(tcp_dst=23, ip_proto=6, eth_type=0x0800)),
    }))  # fmt: skip
    assert trace(s, 1, PKT).ports == [3]
    assert trace(s, 1, {**PKT, "tcp_dst": 80}).ports == [2]
    dropped = trace(s, 1, {**PKT, "tcp_dst": 23})
    assert dropped.dropped and dropped.steps[-1].kind == "drop"
    miss = trace(s, 1, make_packet(A, B, eth_type=0x88CC))
    assert miss.dropped and [x.kind for x in miss.steps] == ["miss"]


def test_goto_write_metadata_masked_and_fields_ovs_reads_as_zero() -> None:
    s = Slice(frozenset({
        rule(0, 1, match(in_port=1, vlan_vid=0), WriteMetadata(0x5, 0xF), GotoTable(4)),
        rule(4, 1, match(metadata=0x5, reg6=0, tunnel_id=0), out(9)),
    }))  # fmt: skip
    assert trace(s, 1, {**PKT, "metadata": 0xA0}).ports == []  # 0xa5 is not 0x5
    assert trace(s, 1, PKT).ports == [9]
    assert trace(s, 1, {**PKT, "vlan_vid": 0x1064}).dropped  # a tagged frame


def test_a_move_into_a_narrower_register_keeps_only_the_low_bits() -> None:
    s = Slice(frozenset({
        rule(0, 1, (), Apply((Move("metadata", "reg9"),)), GotoTable(3)),
        rule(3, 1, match(reg9=5), out(50)),
        rule(3, 1, match(reg9=0), out(40)),
        rule(3, 0, (), out(60)),
    }))  # fmt: skip
    tr = trace(s, 1, {**PKT, "metadata": 0x1_0000_0005})
    assert tr.ports == [50]
    left = dict(tr.outputs[0].fields)
    assert (left["reg9"], left["metadata"]) == (5, 0x1_0000_0005)  # the source is kept
    assert trace(s, 1, PKT).ports == [40]  # metadata nothing set reads as 0
    missing = Slice(frozenset({rule(0, 1, (), Apply((Move("arp_spa", "arp_tpa"),)))}))
    with pytest.raises(Unsupported, match="does not have"):
        trace(missing, 1, PKT)  # a TCP packet has no ARP fields


def test_goto_backwards_is_refused() -> None:
    s = Slice(frozenset({rule(0, 1, (), GotoTable(2)), rule(2, 1, (), GotoTable(1))}))
    with pytest.raises(Unsupported):
        trace(s, 1, PKT)


def test_group_all_copies_skip_the_ingress_port_and_in_port_output_is_kept() -> None:
    s = Slice(
        frozenset({rule(0, 1, (), Apply((SetField("reg5", 7), ToGroup(4))))}),
        frozenset({GroupEntry(4, ((Output(1),), (Output(2),), (SetField("eth_dst", A),
                                                               Output(0xFFFFFFF8))))}),
    )  # fmt: skip
    tr = trace(s, 1, PKT)
    assert tr.ports == [1, 2]  # the IN_PORT copy, bucket 1; the plain output:1 is skipped
    assert [x.kind for x in tr.steps] == ["match", "group", "skip", "output", "output"]
    back = tr.outputs[1]
    assert back.branch == (2,) and dict(back.fields)["eth_dst"] == A
    assert dict(tr.outputs[0].fields)["eth_dst"] == B  # copies do not leak into each other


def test_resubmit_returns_with_its_changes_and_output_reg() -> None:
    s = Slice(frozenset({
        rule(0, 1, (), Apply((Resubmit(5), OutputReg("reg3")))),
        rule(5, 1, (), Apply((SetField("reg3", 42),))),
    }))  # fmt: skip
    assert trace(s, 1, PKT).ports == [42]


def test_conjunction_needs_every_clause_else_lower_priorities_decide() -> None:
    s = Slice(frozenset({
        rule(0, 100, match(reg5=1), Apply((Conjunction(7, 1, 2),))),
        rule(0, 100, match(tcp_dst=22, ip_proto=6, eth_type=0x0800),
             Apply((Conjunction(7, 2, 2), Conjunction(8, 2, 2)))),
        rule(0, 100, match(conj_id=7), out(70)),
        rule(0, 100, match(conj_id=8), out(80)),
        rule(0, 50, (), out(50)),
    }))  # fmt: skip
    tr = trace(s, 1, {**PKT, "reg5": 1})
    assert tr.ports == [70] and tr.steps[0].conj_ids == (7,)
    assert trace(s, 1, {**PKT, "reg5": 2}).ports == [50]  # clause 1 missing
    assert trace(s, 1, {**PKT, "reg5": 1, "tcp_dst": 80}).ports == [50]  # clause 2 missing


def test_ambiguity_and_foreign_actions_raise() -> None:
    two = Slice(frozenset({rule(0, 5, match(in_port=1), out(2)),
                           rule(0, 5, match(eth_type=0x0800), out(3))}))  # fmt: skip
    with pytest.raises(AmbiguousMatch):
        trace(two, 1, PKT)
    same = Slice(frozenset({rule(0, 5, match(in_port=1), out(2)),
                            rule(0, 5, match(eth_type=0x0800), out(2))}))  # fmt: skip
    assert trace(same, 1, PKT).ports == [2]  # a tie with equal actions is no ambiguity
    foreign = Slice(frozenset({rule(0, 5, (), Apply((SetField("__foreign__", "x"),)))}))
    with pytest.raises(Unsupported):
        trace(foreign, 1, PKT)
    after_ct = Slice(frozenset({rule(0, 5, (), Apply((Ct(table=3), Output(2))))}))
    with pytest.raises(Unsupported):
        trace(after_ct, 1, PKT)


def test_conntrack_recirculates_in_freeze_order_with_the_supplied_states() -> None:
    """Two copies are frozen by one group (zones 1 and 2); their recirculations consume the
    supplied states in that order, after the first pass, like ``ofproto/trace --ct-next``."""
    s = Slice(
        frozenset({
            rule(0, 1, (), Apply((ToGroup(1),))),
            rule(3, 10, match(ct_state=(0x22, 0x22)), out(20)),  # +trk+est
            rule(3, 5, match(ct_state=(0x21, 0x21)), Apply((Ct(commit=True, zone_reg="reg5",
                                                               mark=1), OutputReg("reg5")))),
        }),
        frozenset({GroupEntry(1, ((SetField("reg5", 1), Ct(zone_reg="reg5", table=3)),
                                  (SetField("reg5", 2), Ct(zone_reg="reg5", table=3))))}),
    )  # fmt: skip
    tr = trace(s, 9, PKT, ["est", "new"])
    cts = [x for x in tr.steps if x.kind == "ct"]
    assert [(c.zone, c.ct_state) for c in cts] == [(1, 0x22), (2, 0x21)]
    assert tr.ports == [2, 20]
    commit = next(x for x in tr.steps if x.kind == "commit")
    assert (commit.zone, commit.mark, commit.branch) == (2, 1, (1,))
    assert trace(s, 9, PKT).ports == [1, 2]  # states used up: trk,new as ofproto/trace
    assert parse_ct_state("new") == CT_DEFAULT and parse_ct_state("+est+rpl") == 0x2A


# ------------------------------------------------------------------------- compiler output


def test_agrees_with_the_test_suites_pipeline_model_on_random_packets() -> None:
    """The core pipeline (three hosts, two networks with the same addresses) against
    tests/unit/flow_sim.py, the model the compiler's tests use, copy by copy."""
    cloud = Cloud(
        hosts=[Host("h1", "192.0.2.1"), Host("h2", "192.0.2.2"), Host("h3", "192.0.2.3")],
        nets=[Net(1, "vxlan", 5001), Net(2, "gre", 5001)],
        ports=[VmPort(f"p{i}", 1 + i % 2, f"h{1 + i % 3}", 10 + i, f"02:00:00:00:01:{i:02x}",
                      (f"10.0.0.{i // 2 + 1}",), port_security=i != 4) for i in range(9)],
    )  # fmt: skip
    rng = random.Random(17)
    macs = [p.mac for p in cloud.ports] + ["ff:ff:ff:ff:ff:ff", "02:99:00:00:00:01"]
    ips = [f"10.0.0.{i}" for i in range(1, 7)]
    compared = {"delivered": 0, "dropped": 0}
    for _ in range(300):
        src = rng.choice(cloud.ports)
        mac = src.mac if rng.random() < 0.8 else rng.choice(macs)
        ip = src.fixed_ips[0] if rng.random() < 0.8 else rng.choice(ips)
        if rng.random() < 0.3:
            pkt = make_packet(mac, rng.choice(macs), ip_src=ip, ip_dst=rng.choice(ips),
                              arp_op=rng.choice([1, 2]))  # fmt: skip
        else:
            pkt = make_packet(mac, rng.choice(macs), ip_src=ip, ip_dst=rng.choice(ips),
                              protocol=rng.choice([1, 6, 17]), dst_port=80)  # fmt: skip
        host = cloud.host(src.host)
        state = cloud.host_state(src.host)
        mine = trace(state, src.ofport, pkt)
        try:
            theirs = cloud.switch(src.host).process(src.ofport, pkt)
        except AssertionError:  # flow_sim refuses same-priority ties even with equal actions
            continue
        assert mine.ports == sorted(e.port for e in theirs), pkt
        for step in mine.outputs:
            f = dict(step.fields)
            if step.port in host.tunnel_ofports.values():
                assert (f["tunnel_id"], f["tun_ipv4_dst"]) in {
                    (e.tunnel_id, e.tun_ipv4_dst) for e in theirs if e.port == step.port}
        compared["delivered" if mine.outputs else "dropped"] += 1
    assert min(compared.values()) > 20, compared


def test_tunnel_packets_are_accepted_only_from_peers_of_the_network() -> None:
    ctx = HostContext("192.0.2.2", {"vxlan": 1})
    net = NetworkView(3, "vxlan", 5003, (LocalPort("v", 5, B, ("10.0.0.2",), num=9),),
                      (RemotePort("u", A, "192.0.2.1", num=8),), ("192.0.2.1",))  # fmt: skip
    state = Slice(compile_base(ctx).rules | compile_network(ctx, net).rules,
                  compile_network(ctx, net).groups)
    ok = trace(state, 1, {**PKT, "tunnel_id": 5003, "tun_ipv4_src": "192.0.2.1"})
    assert ok.ports == [5] and ok.steps[0].rule is not None
    assert ok.steps[0].rule.cookie == t.network_cookie(3)
    forged = trace(state, 1, {**PKT, "tunnel_id": 5003, "tun_ipv4_src": "192.0.2.77"})
    assert forged.dropped and forged.steps[-1].table == t.CLASSIFY


def test_arp_answer_goes_back_to_the_asker_rewritten() -> None:
    ctx = HostContext("192.0.2.2", {"vxlan": 1})
    net = NetworkView(3, "vxlan", 5003, (LocalPort("v", 5, B, ("10.0.0.2",), num=9),),
                      (RemotePort("u", A, "192.0.2.1", num=8, fixed_ips=("10.0.0.1",)),),
                      ("192.0.2.1",))  # fmt: skip
    s = compile_network(ctx, net)
    state = Slice(compile_base(ctx).rules | s.rules, s.groups)
    ask = make_packet(B, "ff:ff:ff:ff:ff:ff", ip_src="10.0.0.2", ip_dst="10.0.0.1", arp_op=1)
    tr = trace(state, 5, ask)
    assert tr.ports == [5]
    f = dict(tr.outputs[0].fields)
    assert (f["eth_src"], f["eth_dst"], f["arp_op"], f["arp_spa"], f["arp_tha"]) == (
        A, B, 2, "10.0.0.1", B)


# ------------------------------------------------------------------------- security groups


def _names(tr_ports: list[int]) -> set[str]:
    by_ofport = {p.ofport: p.name for p in sgt.PORTS if p.ofport is not None}
    return {"tunnel" if p == sgt.TUNNEL_OFPORT else by_ofport[p] for p in tr_ports}


def sg_packet(pkt: sgt.Pkt) -> tuple[int, dict[str, Any]]:
    """The SG trace test's packet as the evaluator reads it: (in_port, fields)."""
    src = pkt.src
    dst_mac = pkt.dst.mac if pkt.dst is not None else sgt.BCAST
    kind = {"arp": None, "dhcp": 17, "dhcp_server": 17, "nd": 58}.get(pkt.kind, pkt.proto)
    if pkt.kind == "arp":
        fields = make_packet(src.mac, dst_mac, ip_src=pkt.ip_src, ip_dst=pkt.ip_dst, arp_op=1)
    else:
        ip_src = pkt.ip_src or str(netaddr.EUI(src.mac).ipv6_link_local())
        ip_dst = pkt.ip_dst if pkt.kind != "nd" else "ff02::1"
        sport, dport = {"dhcp": (68, 67), "dhcp_server": (67, 68)}.get(pkt.kind,
                                                                        (40000, pkt.dport))
        fields = make_packet(src.mac, dst_mac, ip_src=ip_src, ip_dst=ip_dst, protocol=kind,
                             src_port=sport, dst_port=dport, icmp_type=pkt.icmp_type,
                             icmp_code=pkt.icmp_code, ct_mark=1 if pkt.mark else 0)  # fmt: skip
        if pkt.kind == "nd":
            fields.update(icmpv6_type=pkt.icmp_type, icmpv6_code=0)
    if src.local:
        assert src.ofport is not None
        return src.ofport, fields
    fields.update(tunnel_id=sgt.SEGS[src.net], tun_ipv4_src=sgt.PEER)
    return sgt.TUNNEL_OFPORT, fields


def sg_verdict(state: FlowTable, in_port: int, fields: dict[str, Any],
               states: tuple[str, ...]) -> tuple[set[str], list[int]]:  # fmt: skip
    """What the evaluator says of a packet on the SG bridge: (ports reached by name,
    "tunnel" for the peer; zones whose connection is marked denied)."""
    tr = trace(state, in_port, fields, list(states))
    by_ofport = {p.ofport: p.name for p in sgt.PORTS if p.ofport is not None}
    names = {"tunnel" if p == sgt.TUNNEL_OFPORT else by_ofport[p] for p in tr.ports}
    marked = [s.zone for s in tr.steps if s.kind == "commit" and s.mark == t.CT_MARK_DENIED]
    return names, [z for z in marked if z is not None]


def _sg_trace(state: FlowTable, pkt: sgt.Pkt) -> tuple[set[str], list[int]]:
    return sg_verdict(state, *sg_packet(pkt), pkt.states)


def test_security_group_flows_agree_with_the_neutron_model() -> None:
    """The SG compiler's whole output (ct, conjunctions, stateless ports, flood copies through
    the ingress filter) against the Neutron-semantics model of test_sg_trace, on its random
    packets: same receivers, same connections marked denied."""
    state = FlowTable(sgt.compile_state("10.99.0.1"))
    rng = random.Random(sgt.SEED)
    pkts = [p for p in (sgt.random_packet(rng) for _ in range(800)) if p is not None][:400]
    delivered = dropped = marks = 0
    for pkt in pkts:
        want, passes = sgt.Neutron().deliveries(pkt)
        got, marked = _sg_trace(state, pkt)
        assert got == want, (sgt.flow_text(pkt), pkt.states)
        expect = [sgt.BY_NAME[n].ofport for n, st in zip(passes, pkt.states, strict=False)
                  if st == "est" and not pkt.mark and not sgt.Neutron().passes(
                      sgt.BY_NAME[n], "egress" if sgt.BY_NAME[n] is pkt.src else "ingress", pkt,
                      st)]  # fmt: skip
        assert sorted(marked) == sorted(expect), sgt.flow_text(pkt)
        delivered += bool(got)
        dropped += not got
        marks += bool(marked)
    assert delivered > 50 and dropped > 50 and marks > 0, (delivered, dropped, marks)


def test_a_dropped_sg_packet_ends_in_the_rules_table_miss() -> None:
    """a (web) -> b (db) tcp/5433: b's ingress has no rule for it; the drop is the table miss
    of SG_INGRESS_RULES, after a's egress accepted it (conjunction of rule 1)."""
    state = FlowTable(sgt.compile_state("10.99.0.1"))
    a, b = sgt.BY_NAME["a"], sgt.BY_NAME["b"]
    pkt = make_packet(a.mac, b.mac, ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=6,
                      src_port=40000, dst_port=5433)  # fmt: skip
    tr = trace(state, a.ofport or 0, pkt, ["new", "new"])
    assert tr.dropped
    last = tr.steps[-1]
    assert (last.kind, last.table) == ("drop", t.SG_INGRESS_RULES) and last.rule is not None
    assert last.rule.priority == t.PRIO_MISS
    egress = [s for s in tr.steps if s.table == t.SG_EGRESS_RULES and s.kind == "match"]
    assert egress and egress[0].conj_ids == (1,)
    ok = trace(state, a.ofport or 0, {**pkt, "tcp_dst": 5432}, ["new", "new"])
    assert ok.ports == [b.ofport]
    assert [s.conj_ids for s in ok.steps
            if s.table == t.SG_INGRESS_RULES and s.kind == "match"] == [(11,)]


def test_ovs_flow_text_puts_prerequisites_first_and_keeps_the_vlan() -> None:
    pkt = {**make_packet(A, B, ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=17, dst_port=53),
           "vlan_vid": 0x1007, "tunnel_id": 5001, "tun_ipv4_src": "192.0.2.1"}
    text = ovs_flow_text(1, pkt)
    assert text.startswith("in_port=1,")
    parts = text.split(",")
    assert "dl_vlan=7" in parts and "tun_id=0x1389" in parts and "tun_src=192.0.2.1" in parts
    order = [p.split("=")[0] for p in parts]
    assert order.index("dl_type") < order.index("nw_src") < order.index("nw_proto") < order.index(
        "udp_dst")
