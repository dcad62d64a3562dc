"""The tenant-terms trace (flows/trace_terms.py) across two compiled hosts with security groups:
what an operator reads for an allowed packet, a packet a group drops, a spoofed one, an ARP the
host answers, a broadcast, and a host whose flows are not known."""

from __future__ import annotations

from typing import Any

import pytest

from flows import security_groups as sg
from flows import tables as t
from flows.compiler import arp_copy_guard_rule, compile_base, compile_network, dhcp_guard_rule
from flows.model import HostContext, LocalPort, NetworkView, RemotePort, Rule, Slice, match
from flows.trace import TraceError, make_packet
from flows.trace_terms import (
    Catalog,
    HostInfo,
    NetworkInfo,
    PortInfo,
    SgRuleInfo,
    follow,
)

HV = {"hv1": "198.51.100.1", "hv2": "198.51.100.2"}
TUNNEL = {"vxlan": 1}
NET = NetworkInfo(5, "net-web", "web", "vxlan", 5001)
VM1 = PortInfo("p1", "vm1", "fa:16:3e:00:00:01", 5, ("10.0.0.5",), "hv1",
               security_groups=("web",), num=11)  # fmt: skip
VM2 = PortInfo("p2", "vm2", "fa:16:3e:00:00:02", 5, ("10.0.0.6",), "hv2",
               security_groups=("db",), num=12)  # fmt: skip
OFPORT = {"p1": 7, "p2": 8}
RULES = {
    1: sg.SgRule(1, sg.EGRESS, sg.IPV4),
    2: sg.SgRule(2, sg.INGRESS, sg.IPV4, 6, 5432, 5432, remote_group_id="web"),
}
GROUPS = {
    "web": sg.SecurityGroup("web", (RULES[1],), sg.member_addresses(
        sg.FilteredPort("p1", 7, VM1.mac, 5, VM1.fixed_ips))),
    "db": sg.SecurityGroup("db", (RULES[2],), sg.member_addresses(
        sg.FilteredPort("p2", 8, VM2.mac, 5, VM2.fixed_ips))),
}  # fmt: skip
COOKIES = sg.SgCookies(static=t.owner_cookie(3, 1), shared=t.owner_cookie(3, 2))  # type: ignore[arg-type]


def host_state(host: str) -> Slice:
    ctx = HostContext(HV[host], TUNNEL)
    ports = [p for p in (VM1, VM2)]
    local = tuple(LocalPort(p.id, OFPORT[p.id], p.mac, p.fixed_ips, num=p.num)
                  for p in ports if p.host == host)  # fmt: skip
    remote = tuple(RemotePort(p.id, p.mac, HV[p.host or ""], num=p.num, fixed_ips=p.fixed_ips)
                   for p in ports if p.host != host)  # fmt: skip
    peers = tuple(HV[p.host or ""] for p in ports if p.host != host)
    net = compile_network(ctx, NetworkView(5, "vxlan", 5001, local, remote, peers))
    core = sg.plug(Slice(compile_base(ctx).rules | net.rules, net.groups),
                   {OFPORT[p.id] for p in ports if p.host == host})  # fmt: skip
    filtered = [sg.FilteredPort(p.id, OFPORT[p.id], p.mac, 5, p.fixed_ips,
                                groups=p.security_groups) for p in ports if p.host == host]
    sgs = sg.compile_host(filtered, GROUPS, COOKIES)
    return Slice(core.rules | sgs.rules, core.groups)


CAT = Catalog(
    ports={"p1": VM1, "p2": VM2},
    networks={5: NET},
    hosts={h: HostInfo(h, ip, TUNNEL, {p.id: OFPORT[p.id] for p in (VM1, VM2) if p.host == h})
           for h, ip in HV.items()},
    sg_rules={
        1: SgRuleInfo(1, "web", "egress"),
        2: SgRuleInfo(2, "db", "ingress", protocol="tcp", port_min=5432, port_max=5432,
                      remote_group="web"),
    },
)  # fmt: skip
STATES = {h: host_state(h) for h in HV}


def tcp(dport: int, src_ip: str = "10.0.0.5", src_mac: str = VM1.mac) -> dict:
    return make_packet(src_mac, VM2.mac, ip_src=src_ip, ip_dst="10.0.0.6", protocol=6,
                       src_port=40000, dst_port=dport)  # fmt: skip


def test_allowed_packet_reads_as_the_orchestrator_wrote_it() -> None:
    tr = follow(CAT, STATES.get, "p1", tcp(5432))
    assert tr.verdict == "delivered" and tr.delivered_to == ["p2"]
    (path,) = tr.paths
    text = "\n".join(path.steps)
    print(text)
    assert path.steps[0] == "port vm1 (10.0.0.5) on hv1 sends tcp 10.0.0.5:40000 -> 10.0.0.6:22"\
        .replace(":22", ":5432")
    for expected in (
        "hv1: port vm1 enters network web (vxlan 5001)",
        "hv1: port security: 10.0.0.5 is a fixed IP of port vm1",
        "hv1: security groups: allowed by rule IPv4 any protocol egress of group web",
        "hv1: L2: fa:16:3e:00:00:02 is port vm2 (10.0.0.6) on hv2 (tunnel key 5001 to "
        "198.51.100.2)",
        "hv1: tunnel vxlan 5001 to 198.51.100.2 (hv2)",
        "hv2: accepted from hv1 (198.51.100.1), a peer of network web (vxlan 5001)",
        "hv2: security groups: allowed by rule IPv4 tcp/5432 ingress from members of web of "
        "group db",
        "delivered to port vm2 (10.0.0.6) on hv2",
    ):
        assert expected in path.steps, f"{expected!r} not in\n{text}"
    assert [h.host for h in tr.hosts] == ["hv1", "hv2"]


def test_a_packet_no_rule_allows_names_the_group_and_the_packet() -> None:
    tr = follow(CAT, STATES.get, "p1", tcp(22))
    assert tr.verdict == "dropped"
    last = tr.paths[0].steps[-1]
    assert last == ("hv2: dropped: no security-group rule of group(s) db of port vm2 allows "
                    "tcp 10.0.0.5:40000 -> 10.0.0.6:22 ingress")  # fmt: skip


def test_spoofed_source_is_dropped_by_port_security_on_the_sender() -> None:
    tr = follow(CAT, STATES.get, "p1", tcp(5432, src_ip="10.0.0.9"))
    assert tr.verdict == "dropped" and [h.host for h in tr.hosts] == ["hv1"]
    assert tr.paths[0].steps[-1] == (
        "hv1: dropped: port security: 10.0.0.9 is neither a fixed IP nor an allowed address "
        "pair of port vm1 (10.0.0.5)")
    tr = follow(CAT, STATES.get, "p1", tcp(5432, src_mac="fa:16:3e:00:00:99"))
    assert "may not send from MAC fa:16:3e:00:00:99" in tr.paths[0].steps[-1]


def test_arp_is_answered_on_the_senders_host() -> None:
    ask = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="10.0.0.5", ip_dst="10.0.0.6",
                      arp_op=1)  # fmt: skip
    tr = follow(CAT, STATES.get, "p1", ask)
    assert tr.verdict == "answered", tr.paths
    assert "hv1: ARP: 10.0.0.6 is vm2 (10.0.0.6): answered on hv1" in tr.paths[0].steps


def test_broadcast_reaches_the_peer_and_stops_at_unknown_flows() -> None:
    bcast = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="10.0.0.5",
                        ip_dst="10.0.0.255", protocol=17, dst_port=9)  # fmt: skip
    tr = follow(CAT, STATES.get, "p1", bcast)
    assert tr.delivered_to == []  # db allows only tcp/5432 from web
    assert any("flooded to local ports and peers" in s for p in tr.paths for s in p.steps)
    assert {p.host for p in tr.paths} == {"hv2"}  # the copy to its own port is left out
    unknown = follow(CAT, {"hv1": STATES["hv1"]}.get, "p1", tcp(5432))
    assert unknown.verdict == "unknown" and unknown.paths[0].steps[-1] == (
        "hv2: its flows are not known")


def test_unbound_port_and_unknown_port_are_errors() -> None:
    cat = Catalog({**CAT.ports, "p3": PortInfo("p3", "vm3", "fa:16:3e:00:00:03", 5)},
                  CAT.networks, CAT.hosts)  # fmt: skip
    with pytest.raises(TraceError, match="not bound"):
        follow(cat, STATES.get, "p3", tcp(5432))
    with pytest.raises(KeyError):
        follow(cat, STATES.get, "nope", tcp(5432))


def test_a_dhcp_guard_drop_is_named() -> None:
    """The packet-in path's temporary drop (owner kind DHCP_GUARD, above the punt) as a
    switch would report it in installed mode."""
    guard = Rule(t.PORT_SECURITY, t.PRIO_DHCP_GUARD,
                 match(in_port=7, eth_type=0x0800, ip_proto=17, udp_src=68, udp_dst=67), (),
                 t.owner_cookie(t.OwnerKind.DHCP_GUARD, VM1.num))  # fmt: skip
    states = {**STATES, "hv1": Slice(STATES["hv1"].rules | {guard}, STATES["hv1"].groups)}
    dhcp = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="0.0.0.0", ip_dst="255.255.255.255",
                       protocol=17, src_port=68, dst_port=67)  # fmt: skip
    tr = follow(CAT, states.get, "p1", dhcp)
    assert tr.paths[0].steps[-1] == (
        "hv1: dropped: port vm1 flooded tenantnet with DHCP: its DHCP is dropped for a while")


def test_a_missing_membership_is_named() -> None:
    """tcp/5432 to vm2 from vm3 (port security off, in no group): db's rule allows the port,
    not the sender, and the drop says so."""
    vm3 = PortInfo("p3", "vm3", "fa:16:3e:00:00:03", 5, ("10.0.0.7",), "hv1",
                   port_security=False, num=13)  # fmt: skip
    hosts = {**CAT.hosts, "hv1": HostInfo("hv1", HV["hv1"], TUNNEL, {"p1": 7, "p3": 9})}
    cat = Catalog({"p1": VM1, "p2": VM2, "p3": vm3}, CAT.networks, hosts, CAT.sg_rules)
    ctx = HostContext(HV["hv1"], TUNNEL)
    local = (LocalPort("p1", 7, VM1.mac, VM1.fixed_ips, num=11),
             LocalPort("p3", 9, vm3.mac, vm3.fixed_ips, port_security=False, num=13))
    remote = (RemotePort("p2", VM2.mac, HV["hv2"], num=12, fixed_ips=VM2.fixed_ips),)
    net = compile_network(ctx, NetworkView(5, "vxlan", 5001, local, remote, (HV["hv2"],)))
    core = sg.plug(Slice(compile_base(ctx).rules | net.rules, net.groups), {7})
    filtered = [sg.FilteredPort("p1", 7, VM1.mac, 5, VM1.fixed_ips, groups=("web",))]
    hv1 = Slice(core.rules | sg.compile_host(filtered, GROUPS, COOKIES).rules, core.groups)
    pkt = make_packet(vm3.mac, VM2.mac, ip_src="10.0.0.7", ip_dst="10.0.0.6", protocol=6,
                      src_port=40000, dst_port=5432)  # fmt: skip
    tr = follow(cat, {"hv1": hv1, "hv2": STATES["hv2"]}.get, "p3", pkt)
    assert tr.verdict == "dropped"
    assert tr.paths[0].steps[-1] == (
        "hv2: dropped: no security-group rule of group(s) db of port vm2 allows tcp "
        "10.0.0.7:40000 -> 10.0.0.6:5432 ingress; rule IPv4 tcp/5432 ingress from members of "
        "web of group db would, but 10.0.0.7 is not an address of a member of web")
    assert "port security is off on port vm3: anything passes" in " ".join(tr.paths[0].steps)


def test_an_arp_for_the_dhcp_server_is_answered_by_the_network() -> None:
    ctx = HostContext(HV["hv1"], TUNNEL)
    view = NetworkView(5, "vxlan", 5001, (LocalPort("p1", 7, VM1.mac, VM1.fixed_ips, num=11),),
                       (RemotePort("p2", VM2.mac, HV["hv2"], num=12, fixed_ips=VM2.fixed_ips),),
                       (HV["hv2"],), service_answers=(("10.0.0.2", "fa:16:3e:99:99:99"),))
    net = compile_network(ctx, view)
    hv1 = Slice(compile_base(ctx).rules | net.rules, net.groups)
    ask = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="10.0.0.5", ip_dst="10.0.0.2",
                      arp_op=1)  # fmt: skip
    tr = follow(CAT, {"hv1": hv1}.get, "p1", ask)
    assert tr.verdict == "answered"
    assert ("hv1: ARP: 10.0.0.2 is tenantnet's DHCP server (fa:16:3e:99:99:99): answered on "
            "hv1") in tr.paths[0].steps


def _vm1_with_pair(vip: str, extra: frozenset[Rule] | set[Rule] = frozenset()) -> Any:
    """Both hosts' tables, vm1 (ofport 7 on hv1, DHCP served) with ``vip`` as an allowed
    address pair of its own MAC, in group web; ``extra`` rules added on hv1."""
    ctx = HostContext(HV["hv1"], TUNNEL)
    local = (LocalPort("p1", 7, VM1.mac, VM1.fixed_ips, allowed_pairs=((vip, VM1.mac),),
                       num=11, dhcp=True),)  # fmt: skip
    remote = (RemotePort("p2", VM2.mac, HV["hv2"], num=12, fixed_ips=VM2.fixed_ips),)
    net = compile_network(ctx, NetworkView(5, "vxlan", 5001, local, remote, (HV["hv2"],)))
    core = sg.plug(Slice(compile_base(ctx).rules | net.rules, net.groups), {7})
    filtered = [sg.FilteredPort("p1", 7, VM1.mac, 5, VM1.fixed_ips, groups=("web",))]
    hv1 = Slice(core.rules | sg.compile_host(filtered, GROUPS, COOKIES).rules | extra,
                core.groups)
    return {"hv1": hv1, "hv2": STATES["hv2"]}.get


def test_a_punt_is_named_by_the_rule_that_sent_it() -> None:
    """The reason a packet goes to tenantnet is the punting rule's (table and priority), not
    the wording of the step before it: a virtual IP's announcement, a DHCP request."""
    vip = "10.0.0.50"
    tables = _vm1_with_pair(vip)
    garp = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src=vip, ip_dst=vip, arp_op=1)
    punted = [p.steps for p in follow(CAT, tables, "p1", garp).paths if p.verdict == "punted"]
    assert [s[-1] for s in punted] == [
        "hv1: sent to tenantnet (its ARP says who holds the virtual IP)"
    ], punted
    dhcp = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="0.0.0.0", ip_dst="255.255.255.255",
                       protocol=17, src_port=68, dst_port=67)  # fmt: skip
    punted = [p.steps for p in follow(CAT, tables, "p1", dhcp).paths if p.verdict == "punted"]
    assert [s[-1] for s in punted] == ["hv1: sent to tenantnet (DHCP)"], punted


def test_a_guard_drop_says_which_guard_and_why() -> None:
    """A packet dropped by a flood guard's transient rule is named as that guard's drop: the
    DHCP guard's, and the gratuitous-ARP guard's for a virtual IP (which the port may send
    from, so "not an allowed address pair" would send the operator the wrong way)."""
    vip = "10.0.0.50"
    tables = _vm1_with_pair(vip, {arp_copy_guard_rule(7, VM1.mac, vip, 11), dhcp_guard_rule(7, 11)})
    garp = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src=vip, ip_dst=vip, arp_op=1)
    tr = follow(CAT, tables, "p1", garp)
    assert [p.steps[-1] for p in tr.paths] == [
        f"hv1: dropped: port vm1 announced virtual IP {vip} too often: its gratuitous ARPs "
        "for it are dropped for a while"
    ], tr.paths
    dhcp = make_packet(VM1.mac, "ff:ff:ff:ff:ff:ff", ip_src="0.0.0.0", ip_dst="255.255.255.255",
                       protocol=17, src_port=68, dst_port=67)  # fmt: skip
    tr = follow(CAT, tables, "p1", dhcp)
    assert [p.steps[-1] for p in tr.paths] == [
        "hv1: dropped: port vm1 flooded tenantnet with DHCP: its DHCP is dropped for a while"
    ], tr.paths
