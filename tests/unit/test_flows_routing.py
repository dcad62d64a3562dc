"""The distributed router's compiler (flows/routing.py), walked with the packet evaluator
(flows/trace.py) through two hosts' whole tables: the core's flows, the router's, the base."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flows import tables as t
from flows.compiler import compile_base, compile_network_owners
from flows.model import HostContext, LocalPort, NetworkView, RemotePort, Segment, Slice
from flows.routing import Interface, RoutedPort, RouterView, compile_router, routed_port_rules
from flows.trace import Trace, make_packet, trace
from tests.unit.wire_switch import through_the_wire

HA, HB = "192.168.0.1", "192.168.0.2"
TUN = 9
CTX = {HA: HostContext(HA, {"vxlan": TUN}), HB: HostContext(HB, {"vxlan": TUN})}
IF1 = Interface(21, Segment(1, "vxlan", 101), "fa:16:3e:00:00:01", "10.0.1.1", "10.0.1.0/24")
IF2 = Interface(22, Segment(2, "vxlan", 102), "fa:16:3e:00:00:02", "10.0.2.1", "10.0.2.0/24")
# vm: (num, network key, host, ofport, mac, ip)
VMS = {
    "vm1": (11, 1, HA, 1, "02:00:00:00:00:01", "10.0.1.5"),
    "vm2": (12, 2, HB, 1, "02:00:00:00:00:02", "10.0.2.5"),
    "vm3": (13, 2, HA, 2, "02:00:00:00:00:03", "10.0.2.6"),
    # another tenant, the same CIDR as net 1, no router
    "other": (14, 3, HA, 3, "02:00:00:00:00:04", "10.0.1.5"),
}
SEGS = {1: 101, 2: 102, 3: 103}


def net_view(key: int, host: str, vms: dict[str, Any]) -> NetworkView:
    mine = [v for v in vms.values() if v[1] == key]
    local = tuple(LocalPort(f"p{n}", of, mac, (ip,), num=n) for n, _k, h, of, mac, ip in mine
                  if h == host)  # fmt: skip
    remote = tuple(RemotePort(f"p{n}", mac, h, num=n, fixed_ips=(ip,))
                   for n, _k, h, _of, mac, ip in mine if h != host)  # fmt: skip
    peers = tuple(sorted({v[2] for v in mine} - {host}))
    return NetworkView(key, "vxlan", SEGS[key], local, remote, peers)


def router_view(host: str, vms: dict[str, Any], ifaces: tuple[Interface, ...] = (IF1, IF2),
                routes: tuple[tuple[str, str], ...] = ()) -> RouterView:  # fmt: skip
    keys = {i.segment.key for i in ifaces}
    routed = [v for v in vms.values() if v[1] in keys]
    return RouterView(
        interfaces=ifaces,
        ports=tuple(
            RoutedPort(n, Segment(k, "vxlan", SEGS[k]), mac, ip, h)
            for n, k, h, _of, mac, ip in routed
        ),
        hosts=tuple(sorted({v[2] for v in routed})),
        local_keys=frozenset(v[1] for v in routed if v[2] == host),
        routes=routes,
    )


def host_table(host: str, vms: dict[str, Any] = VMS, **kw: Any) -> Slice:
    owners: dict[int, Slice] = {t.BASE_COOKIE: compile_base(CTX[host])}
    for key in SEGS:
        owners.update(compile_network_owners(CTX[host], net_view(key, host, vms)))
    owners.update(compile_router(CTX[host], router_view(host, vms, **kw)))
    return Slice(rules=frozenset(r for s in owners.values() for r in s.rules),
                 groups=frozenset(g for s in owners.values() for g in s.groups))  # fmt: skip


def send(vm: str, dst_ip: str, eth_dst: str = IF1.mac, ttl: int = 64, **kw: Any) -> Trace:
    _n, _k, host, ofport, mac, ip = VMS[vm]
    pkt = make_packet(mac, eth_dst, ip_src=ip, ip_dst=dst_ip, **kw)
    pkt["nw_ttl"] = ttl
    return trace(host_table(host), ofport, pkt)


def test_routed_across_hosts_rewrites_and_tunnels_with_the_destination_key() -> None:
    tr = send("vm1", "10.0.2.5", protocol=6, dst_port=22)
    [out] = tr.outputs
    f = dict(out.fields)
    assert out.port == TUN
    assert (f["tunnel_id"], f["tun_ipv4_dst"]) == (102, HB)
    assert (f["eth_src"], f["eth_dst"], f["nw_ttl"]) == (IF2.mac, VMS["vm2"][4], 63)
    # the receiver accepts it from the router host and delivers it to vm2 only
    inner = {k: v for k, v in f.items()
             if k not in ("in_port", "metadata", "tunnel_id", "tun_ipv4_dst")}  # fmt: skip
    inner.update(tunnel_id=102, tun_ipv4_src=HA)
    assert trace(host_table(HB), TUN, inner).ports == [1]


def test_routed_on_the_same_host_is_delivered_locally() -> None:
    tr = send("vm1", "10.0.2.6", protocol=17, dst_port=53)
    [out] = tr.outputs
    assert out.port == 2
    assert dict(out.fields)["eth_dst"] == VMS["vm3"][4]


def test_ttl_one_goes_to_the_controller_and_an_unknown_address_is_dropped() -> None:
    expired = send("vm1", "10.0.2.5", ttl=1, protocol=6)
    assert expired.punted and not expired.outputs  # answered ICMP time exceeded there
    # addressed to the router itself: answered whatever the TTL
    assert send("vm1", "10.0.2.1", ttl=1, protocol=1, icmp_type=8).ports == [1]
    assert send("vm1", "10.0.2.99", protocol=6).dropped  # no port holds it: nothing to learn
    assert send("vm1", "10.9.0.1", protocol=6).dropped  # no subnet of the router


def test_gateway_echo_answered_in_flows() -> None:
    for gw in ("10.0.1.1", "10.0.2.1"):
        tr = send("vm1", gw, protocol=1, icmp_type=8)
        [out] = tr.outputs
        f = dict(out.fields)
        assert out.port == 1
        assert (f["ipv4_src"], f["ipv4_dst"], f["icmpv4_type"]) == (gw, "10.0.1.5", 0)
        assert (f["eth_src"], f["eth_dst"]) == (IF1.mac, VMS["vm1"][4])


def test_gateway_arp_answered() -> None:
    _n, _k, host, ofport, mac, ip = VMS["vm1"]
    pkt = make_packet(mac, "ff:ff:ff:ff:ff:ff", ip_src=ip, ip_dst="10.0.1.1", arp_op=1)
    [out] = trace(host_table(host), ofport, pkt).outputs
    f = dict(out.fields)
    assert (out.port, f["arp_op"], f["arp_sha"], f["arp_spa"]) == (1, 2, IF1.mac, "10.0.1.1")


def test_other_tenant_with_the_same_cidr_is_not_routed() -> None:
    # it uses the router's MAC as its gateway: its network has no interface of that router
    tr = send("other", "10.0.2.5", protocol=6)
    assert all(s.port not in (TUN, 1, 2) for s in tr.outputs)


def test_tunnel_ingress_only_from_router_hosts() -> None:
    pkt = make_packet(IF2.mac, VMS["vm2"][4], ip_src="10.0.1.5", ip_dst="10.0.2.5", protocol=6)
    ok = {**pkt, "tunnel_id": 102, "tun_ipv4_src": HA}
    assert trace(host_table(HB), TUN, ok).ports == [1]
    forged = {**pkt, "tunnel_id": 102, "tun_ipv4_src": "192.168.0.9"}
    assert trace(host_table(HB), TUN, forged).dropped
    # vm3 gone: HA is no longer a host of net 2, but still routes into it from net 1
    vms = {k: v for k, v in VMS.items() if k != "vm3"}
    assert trace(host_table(HB, vms), TUN, ok).ports == [1]
    # vm1 gone too: HA has nothing of the router, HB no longer accepts net 2 from it
    vms = {k: v for k, v in vms.items() if k != "vm1"}
    assert trace(host_table(HB, vms), TUN, ok).dropped


def test_a_port_change_is_one_rule_per_router_host_under_its_own_owner() -> None:
    """A routed port owns its neighbour rule (not its subnet's interface): a port change
    touches one owner of one rule per router host, and the whole compile holds exactly the
    per-port function's rules for it (one definition)."""
    more = {**VMS, "vm5": (15, 2, HB, 2, "02:00:00:00:00:05", "10.0.2.7")}
    vm5 = RoutedPort(15, Segment(2, "vxlan", 102), "02:00:00:00:00:05", "10.0.2.7", HB)
    for host in (HA, HB):
        before = compile_router(CTX[host], router_view(host, VMS))
        after = compile_router(CTX[host], router_view(host, more))
        changed = {c for c in before.keys() | after.keys() if before.get(c) != after.get(c)}
        assert changed == {t.router_cookie(15)}
        assert len(after[t.router_cookie(15)].rules) == 1
        assert after[t.router_cookie(15)].rules == routed_port_rules(CTX[host], [vm5])


def test_removing_an_interface_cuts_the_path_and_touches_only_the_router() -> None:
    assert send("vm1", "10.0.2.5", protocol=6).outputs
    _n, _k, host, ofport, mac, ip = VMS["vm1"]
    pkt = make_packet(mac, IF1.mac, ip_src=ip, ip_dst="10.0.2.5", protocol=6)
    assert trace(host_table(host, ifaces=(IF1,)), ofport, pkt).dropped
    owners = compile_router(CTX[HA], router_view(HA, VMS, ifaces=(IF1,)))
    assert set(owners) == {t.router_cookie(IF1.num), t.router_cookie(11)}  # vm1: still routed


def test_no_local_port_no_router_flows() -> None:
    vms = {"vm2": VMS["vm2"]}
    assert compile_router(CTX[HA], router_view(HA, vms)) == {}


def test_router_flows_survive_the_wire_unchanged() -> None:
    # encoded as flow-mods (dec_ttl, masked nw_dst, moves, resubmit) and decoded back equal:
    # a restart diffs them to nothing
    for host in (HA, HB):
        state = host_table(host)
        assert through_the_wire(state) == state


ROUTES = (("10.0.99.0/24", "10.0.2.6"), ("10.0.98.0/24", "10.0.2.5"), ("10.0.97.0/24", "10.9.9.9"),
          ("10.0.99.0/24", "10.0.2.7"))  # fmt: skip


def test_extra_routes_go_to_their_nexthop_port_locally_or_through_the_tunnel() -> None:
    _n, _k, host, ofport, mac, ip = VMS["vm1"]

    def send_to(dst: str) -> Trace:
        pkt = make_packet(mac, IF1.mac, ip_src=ip, ip_dst=dst, protocol=6, dst_port=22)
        return trace(host_table(host, routes=ROUTES), ofport, pkt)

    [local] = send_to("10.0.99.7").outputs  # via vm3, on vm1's host (one nexthop: the first)
    f = dict(local.fields)
    assert (local.port, f["eth_dst"], f["eth_src"], f["nw_ttl"]) == (2, VMS["vm3"][4], IF2.mac, 63)
    [remote] = send_to("10.0.98.1").outputs  # via vm2, on the other host
    f = dict(remote.fields)
    assert (remote.port, f["tun_ipv4_dst"], f["eth_dst"]) == (TUN, HB, VMS["vm2"][4])
    assert send_to("10.0.97.1").dropped  # its nexthop is no port: not routed
    state = host_table(host, routes=ROUTES)
    assert through_the_wire(state) == state


def test_a_default_route_matches_no_destination_field_not_an_all_zero_mask() -> None:
    """An extra route for 0.0.0.0/0 compiled to ``ipv4_dst=0.0.0.0/0.0.0.0``, which OVS stores
    as no match on the field: its dump shows another rule, so every reconcile replaced it
    (found by a review).  The rule has no ``ipv4_dst``, routes any destination no longer
    prefix takes, and still routes the longer prefixes by theirs."""
    _n, _k, host, ofport, mac, ip = VMS["vm1"]
    routes = (("0.0.0.0/0", "10.0.2.5"), ("10.0.99.0/24", "10.0.2.6"))
    state = host_table(host, routes=routes)
    assert not any(
        isinstance(v, tuple) and v[1] == "0.0.0.0" for r in state.rules for _, v in r.match
    )
    default = [r for r in state.rules if r.priority == min(x.priority for x in state.rules
                                                           if x.table == t.L3_ROUTING)]  # fmt: skip
    assert default and all("ipv4_dst" not in dict(r.match) for r in default)

    def send_to(dst: str) -> Trace:
        pkt = make_packet(mac, IF1.mac, ip_src=ip, ip_dst=dst, protocol=6, dst_port=22)
        return trace(state, ofport, pkt)

    [anywhere] = send_to("192.0.2.1").outputs  # the default route: via vm2, on the other host
    assert dict(anywhere.fields)["eth_dst"] == VMS["vm2"][4]
    [longer] = send_to("10.0.99.7").outputs  # the /24: via vm3
    assert dict(longer.fields)["eth_dst"] == VMS["vm3"][4]
    assert through_the_wire(state) == state


def test_the_ttl_rule_puts_eth_type_before_nw_ttl_on_the_wire() -> None:
    """OVS checks a field's prerequisites in wire order (OFPBMC_BAD_PREREQ otherwise), and
    os-ken's field numbers would put the Nicira nw_ttl first."""
    from controller.southbound import ofp_codec as codec

    [rule] = [r for r in host_table(HA).rules if dict(r.match).get("nw_ttl") == 1][:1]
    names = [name for name, _value in codec.encode_match(rule.match)._fields2]
    assert names.index("eth_type") < names.index("nw_ttl")


def two_routers_on_ha(vms: dict[str, Any], *routers: tuple[Interface, ...]) -> Any:
    """HA's base, network and router flows (one router per interface tuple), after checking
    that no two owners' rules share a match (one flow with two owners), through the codec."""
    owners: dict[int, Slice] = {t.BASE_COOKIE: compile_base(CTX[HA])}
    for key in SEGS:
        owners.update(compile_network_owners(CTX[HA], net_view(key, HA, vms)))
    rules = [r for s in owners.values() for r in s.rules]
    for ifaces in routers:
        rules += [r for s in compile_router(CTX[HA], router_view(HA, vms, ifaces)).values()
                  for r in s.rules]  # fmt: skip
    seen: dict[tuple[int, int, Any], Any] = {}
    for r in rules:
        assert seen.setdefault((r.table, r.priority, r.match), r) == r, r
    return through_the_wire(Slice(rules=frozenset(rules)))


@pytest.mark.parametrize("nums", [(21, 22, 23, 24), (5, 2**32 + 9, 2**32 + 5, 2**33 + 5)])
def test_a_network_on_two_routers_keeps_their_marks_apart(nums: tuple[int, ...]) -> None:
    """Network 1 is on router A (with network 2) through IF1 and on router B (with network 3)
    through IF3: a packet sent to IF1 reaches network 2's subnet and not network 3's, one sent
    to IF3 the reverse; each router's gateways answer pings with the MAC the VM sent to (the
    echo reply's source MAC is chosen by the mark of the router it came through), and the two
    routers' rules never share a match (two owners of one flow).  Also with marks that differ
    in their high 32 bits only (reg4), through the codec and back."""
    if1 = replace(IF1, num=nums[0])
    if2 = replace(IF2, num=nums[1])
    if3 = Interface(nums[2], Segment(1, "vxlan", 101), "fa:16:3e:00:00:03", "10.0.9.1",
                    "10.0.9.0/24")  # fmt: skip
    if4 = Interface(nums[3], Segment(3, "vxlan", 103), "fa:16:3e:00:00:04", "10.0.3.1",
                    "10.0.3.0/24")  # fmt: skip
    vms = {**VMS, "vm4": (15, 3, HA, 4, "02:00:00:00:00:05", "10.0.3.5")}
    vms.pop("other")
    table = two_routers_on_ha(vms, (if1, if2), (if3, if4))
    _n, _k, _host, ofport, mac, ip = vms["vm1"]

    def from_vm1(gw_mac: str, dst: str, **kw: Any) -> Trace:
        return trace(table, ofport, make_packet(mac, gw_mac, ip_src=ip, ip_dst=dst, **kw))

    assert from_vm1(IF1.mac, "10.0.2.6", protocol=6).ports == [2]  # vm3, through A
    assert from_vm1(IF1.mac, "10.0.3.5", protocol=6).dropped  # network 3 is B's
    assert from_vm1(if3.mac, "10.0.3.5", protocol=6).ports == [4]  # vm4, through B
    assert from_vm1(if3.mac, "10.0.2.6", protocol=6).dropped  # network 2 is A's
    for gw_mac, gw, answers in (
        (IF1.mac, "10.0.2.1", True),
        (if3.mac, "10.0.3.1", True),
        (IF1.mac, "10.0.3.1", False),
        (if3.mac, "10.0.2.1", False),
    ):
        tr = from_vm1(gw_mac, gw, protocol=1, icmp_type=8)
        if not answers:
            assert not tr.outputs, (gw_mac, gw)
            continue
        [out] = tr.outputs
        f = dict(out.fields)
        assert out.port == ofport
        assert (f["eth_src"], f["eth_dst"], f["ipv4_src"], f["icmpv4_type"]) == (gw_mac, mac, gw, 0)


def test_a_network_on_two_routers_across_hosts_gives_each_ingress_rule_one_owner() -> None:
    """Network 1 is on router A (IF1, with network 2) and router B (IF3, with network 3),
    and HB is a host of both (vm2 in network 2, vm5 in network 3) without a port of network
    1: on HA, each router accepts network 1's key from HB.  Those tunnel ingress rules must
    not share a match (two owners of one flow: whichever owner wrote last holds it, and the
    other's removal deletes it under the survivor); matching the interface's own MAC as the
    source keeps them apart, and lets in only what HB routed into network 1 (no flood of
    anything else HB sends with network 1's key)."""
    if3 = Interface(23, Segment(1, "vxlan", 101), "fa:16:3e:00:00:03", "10.0.9.1",
                    "10.0.9.0/24")  # fmt: skip
    if4 = Interface(24, Segment(3, "vxlan", 103), "fa:16:3e:00:00:04", "10.0.3.1",
                    "10.0.3.0/24")  # fmt: skip
    vms = {**VMS, "vm5": (15, 3, HB, 2, "02:00:00:00:00:05", "10.0.3.5")}
    vms.pop("other")
    table = two_routers_on_ha(vms, (IF1, IF2), (if3, if4))
    vm1_mac = VMS["vm1"][4]
    for gw_mac, src in ((IF1.mac, "10.0.2.5"), (if3.mac, "10.0.3.5")):  # routed by A, by B
        pkt = make_packet(gw_mac, vm1_mac, ip_src=src, ip_dst="10.0.1.5", protocol=6)
        assert trace(table, TUN, {**pkt, "tunnel_id": 101, "tun_ipv4_src": HB}).ports == [1]
    bcast = make_packet("02:00:00:00:00:05", "ff:ff:ff:ff:ff:ff", ip_src="10.0.1.9",
                        ip_dst="10.0.1.255", protocol=17)  # fmt: skip
    assert trace(table, TUN, {**bcast, "tunnel_id": 101, "tun_ipv4_src": HB}).dropped
