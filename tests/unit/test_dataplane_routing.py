"""The routing service (controller/dataplane/services/routing.py) in the data-plane actor, with a
real Store and faked switches: routed packets walked through what the switches hold (the
evaluator, flows/trace.py), the owners a change touches, and a restart that sends nothing."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from os_ken.lib.packet import arp, ethernet, packet

from controller.southbound.ovsdb_host import datapath_id_for
from controller.tracer import Request, Tracer, catalog, snapshot
from controller.tracer import _desired as desired_tables
from flows import tables as t
from flows.trace import Trace, make_packet, trace
from flows.trace_terms import follow
from tests.unit.test_dataplane import TUNNELS, Cloud, FakeAgent, restart

RIF = "network:router_interface_distributed"
TUN = TUNNELS["vxlan"]
pytest_plugins = ["tests.unit.test_dataplane"]  # the `cloud` fixture


class Routed:
    """Two networks of one project joined by a router; a third network with the same CIDR as
    the first, in another project, with no router."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.router = str(uuid.uuid4())
        cloud.start(hosts=3)
        self.net1, self.sub1 = self.network("10.0.1.0/24", "p1")
        self.net2, self.sub2 = self.network("10.0.2.0/24", "p1")
        self.net3, self.sub3 = self.network("10.0.1.0/24", "p2")
        # ingress: TCP 22 from the project's address range (no remote group: see the README)
        self.groups = {p: self.group(p) for p in ("p1", "p2")}
        self.if1 = self.interface(self.net1, self.sub1)
        self.if2 = self.interface(self.net2, self.sub2)
        self.vms: dict[str, tuple[dict[str, Any], str, int]] = {}
        self.vm("v1", self.net1, "hv1", 1)
        self.vm("v2", self.net2, "hv2", 1)
        self.vm("v3", self.net2, "hv1", 2)
        self.vm("x1", self.net3, "hv1", 3)
        cloud.idle()

    def network(self, cidr: str, project: str) -> tuple[dict[str, Any], dict[str, Any]]:
        net = self.cloud.store.create_network({"project_id": project})
        sub = self.cloud.store.create_subnet(
            {"network_id": net["id"], "cidr": cidr, "ip_version": 4, "project_id": project}
        )
        return net, sub

    def group(self, project: str) -> str:
        store = self.cloud.store
        gid = str(store.create("security_group", [{"name": "ssh", "project_id": project}])[0]["id"])
        rule = {"security_group_id": gid, "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                "remote_ip_prefix": "10.0.0.0/16", "project_id": project}  # fmt: skip
        store.create("security_group_rule", [rule])
        return gid

    def interface(self, net: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
        """The router's port on the subnet (its gateway address), made as the API makes it."""
        store = self.cloud.store
        if store.get("router", self.router) is None:
            store.create("router", [{"id": self.router, "project_id": net["project_id"]}])
        answer = store.router_interface(self.router, {"subnet_id": sub["id"]}, add=True)
        port = store.get_port(answer["port_id"])
        assert port is not None and port["device_owner"] == RIF
        return port

    def vm(self, name: str, net: dict[str, Any], host: str, ofport: int) -> dict[str, Any]:
        project = net["project_id"]
        port = self.cloud.store.create_port(
            {"network_id": net["id"], "project_id": project,
             "security_groups": [self.groups[project]]}
        )  # fmt: skip
        FakeAgent.instances[host].plug(port["id"], ofport)
        self.vms[name] = (port, host, ofport)
        return port

    def ip(self, name: str) -> str:
        return str(self.vms[name][0]["fixed_ips"][0]["ip_address"])

    def send(self, src: str, dst_ip: str, gw: dict[str, Any], **kw: Any) -> Trace:
        port, host, ofport = self.vms[src]
        pkt = make_packet(port["mac_address"], gw["mac_address"], ip_src=self.ip(src),
                          ip_dst=dst_ip, **kw)  # fmt: skip
        # a new connection all the way (egress and ingress conntrack: the default groups allow
        # egress to anywhere, ingress from the group's members)
        return trace(self.cloud.flows(host), ofport, pkt, ["new", "new"])

    def arrive(self, host: str, fields: dict[str, Any], src_host_ip: str) -> Trace:
        inner = {k: v for k, v in fields.items()
                 if k not in ("in_port", "metadata", "tun_ipv4_dst", "ct_state", "ct_zone",
                              "ct_mark") and not k.startswith("reg")}  # fmt: skip
        inner["tun_ipv4_src"] = src_host_ip
        return trace(self.cloud.flows(host), TUN, inner, ["new"])


@pytest.fixture
def routed(cloud: Cloud) -> Iterator[Routed]:
    yield Routed(cloud)


def router_rules(cloud: Cloud, host: str) -> set[Any]:
    kind = t.OwnerKind.ROUTER
    return {r for r in cloud.flows(host).rules if t.owner_kind(r.cookie) == kind}


def test_routed_across_hosts_and_on_one_host(routed: Routed) -> None:
    v2 = routed.vms["v2"][0]
    tr = routed.send("v1", routed.ip("v2"), routed.if1, protocol=6, dst_port=22)
    [out] = tr.outputs
    f = dict(out.fields)
    assert (out.port, f["tun_ipv4_dst"], f["eth_dst"]) == (TUN, "10.9.0.2", v2["mac_address"])
    assert f["eth_src"] == routed.if2["mac_address"]
    assert routed.arrive("hv2", f, "10.9.0.1").ports == [1]
    local = routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22)
    assert local.ports == [2]
    # hv3 has no port of the router's networks: nothing of it
    assert router_rules(routed.cloud, "hv3") == set()


def test_security_groups_filter_routed_traffic_at_the_receiver(routed: Routed) -> None:
    ok = routed.send("v1", routed.ip("v2"), routed.if1, protocol=6, dst_port=22)
    [out] = ok.outputs
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.1").ports == [1]
    denied = routed.send("v1", routed.ip("v2"), routed.if1, protocol=6, dst_port=23)
    [out] = denied.outputs  # egress allows everything: it leaves hv1
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.1").dropped
    # on one host: egress at v1's port, routing, ingress at v3's
    assert routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22).ports == [2]
    assert routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=23).dropped


def test_other_project_with_the_same_cidr_is_not_routed(routed: Routed) -> None:
    tr = routed.send("x1", routed.ip("v2"), routed.if1, protocol=6, dst_port=22)
    assert TUN not in tr.ports and 2 not in tr.ports


def test_a_new_port_is_one_neighbour_rule_per_router_host(routed: Routed) -> None:
    cloud = routed.cloud
    before = {h: router_rules(cloud, h) for h in ("hv1", "hv2", "hv3")}
    v4 = routed.vm("v4", routed.net2, "hv2", 2)
    cloud.idle()
    for h in ("hv1", "hv2"):
        added = router_rules(cloud, h) - before[h]
        assert len(added) == 1 and not before[h] - router_rules(cloud, h)
        (rule,) = added
        assert rule.table == t.L3_NEIGHBOURS and rule.cookie == t.router_cookie(v4["_num"])
    assert router_rules(cloud, "hv3") == set()


def test_removing_the_interface_cuts_the_path(routed: Routed) -> None:
    cloud = routed.cloud
    assert routed.send("v1", routed.ip("v2"), routed.if1, protocol=6).outputs
    cloud.store.router_interface(routed.router, {"port_id": routed.if2["id"]}, add=False)
    cloud.idle()
    assert not [
        s for s in routed.send("v1", routed.ip("v2"), routed.if1, protocol=6).outputs
        if s.port == TUN
    ]  # fmt: skip
    cookies = {r.cookie for h in ("hv1", "hv2") for r in router_rules(cloud, h)}
    v1 = routed.vms["v1"][0]
    assert cookies == {t.router_cookie(routed.if1["_num"]), t.router_cookie(v1["_num"])}
    # hv2 has no port of net 1: it is no router host any more
    assert router_rules(cloud, "hv2") == set()


def test_restart_sends_nothing(routed: Routed) -> None:
    assert router_rules(routed.cloud, "hv1")
    before = len(routed.cloud.switches.packets)
    restart(routed.cloud)
    assert routed.cloud.dp.stats.flow_mods == 0 and routed.cloud.dp.stats.group_mods == 0
    assert routed.cloud.switches.packets[before:] == []  # nor a gratuitous ARP


def test_an_interface_the_switches_missed_is_announced_when_they_get_it(routed: Routed) -> None:
    """The interface re-added (a new MAC) while no controller ran: the switches hold the old
    interface's flows and get the new ones from the restarted controller's first diff, so its
    ports hear of the new MAC then, as they would have at the add."""
    cloud = routed.cloud
    before = len(cloud.switches.packets)
    made: dict[str, Any] = {}

    def readd() -> None:
        cloud.store.router_interface(routed.router, {"subnet_id": routed.sub2["id"]}, add=False)
        made.update(routed.interface(routed.net2, routed.sub2))

    restart(cloud, while_down=readd)
    assert made["mac_address"] != routed.if2["mac_address"]
    gw = (made["mac_address"], "10.0.2.1")
    assert announced(cloud, before) == [("hv1", 2, *gw), ("hv2", 1, *gw)]


def test_routed_port_changes_leave_the_switches_as_a_whole_compile(routed: Routed) -> None:
    """Ports of the routed networks created, readdressed, made the nexthop of an extra route
    and moved (between router hosts: patched, its route follows), created on a host that was
    no router host (the router compiled whole) and deleted: the switches then hold exactly
    what a fresh controller compiles whole (a restart sends nothing)."""
    cloud, store = routed.cloud, routed.cloud.store
    v4 = routed.vm("v4", routed.net2, "hv2", 2)
    cloud.idle()
    fixed = [{"subnet_id": routed.sub2["id"], "ip_address": "10.0.2.77"}]
    store.update("port", v4["id"], {"fixed_ips": fixed})
    cloud.idle()
    routes = {"routes": [{"destination": "10.0.99.0/24", "nexthop": "10.0.2.77"}]}
    store.router_routes(routed.router, routes, add=True)
    cloud.idle()

    def via() -> tuple[int, str | None]:
        [out] = routed.send("v1", "10.0.99.7", routed.if1, protocol=6, dst_port=22).outputs
        assert dict(out.fields)["eth_dst"] == v4["mac_address"]
        return out.port, dict(out.fields).get("tun_ipv4_dst")

    assert via() == (TUN, "10.9.0.2")
    FakeAgent.instances["hv2"].unplug(v4["id"])
    FakeAgent.instances["hv1"].plug(v4["id"], 5)  # hv1 and hv2 stay the router's hosts
    cloud.idle()
    assert via() == (5, None)
    v5 = routed.vm("v5", routed.net1, "hv3", 6)  # hv3: a router host from now on
    cloud.idle()
    assert router_rules(cloud, "hv3")
    store.delete("port", v5["id"])
    cloud.idle()
    assert not router_rules(cloud, "hv3")
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


def test_tenant_trace_follows_a_routed_packet_and_names_its_steps(routed: Routed) -> None:
    tracer = Tracer(routed.cloud.store, lambda: routed.cloud.dp, lambda: None)
    v1, v2 = routed.vms["v1"][0], routed.vms["v2"][0]
    doc = tracer.trace(Request(v1["id"], destination_ip=routed.ip("v2"), protocol="tcp",
                               destination_l4_port=22))  # fmt: skip
    assert doc["delivered_to"] == [v2["id"]]
    (path,) = doc["paths"]
    text = "\n".join(path["steps"])
    assert "routed on hv1" in text and "TTL 64 -> 63" in text and "tunnelled to 10.9.0.2" in text
    assert f"routed from network {routed.net1['id']}" in text, text  # the sender's, not net 2's
    assert "a host that routes into network" in text or "a peer of network" in text
    expired = tracer.trace(Request(v1["id"], destination_ip=routed.ip("v2"), protocol="tcp",
                                   destination_l4_port=23))  # fmt: skip
    assert expired["delivered_to"] == [] and "no security-group rule" in str(expired["paths"])
    # a ping of the other subnet's gateway: answered by the router on hv1, in two passes
    gw2 = str(routed.if2["fixed_ips"][0]["ip_address"])
    echo = tracer.trace(Request(v1["id"], destination_ip=gw2, protocol="icmp"))
    text = "\n".join(s for p in echo["paths"] for s in p["steps"])
    assert f"router interface {gw2} answers the ping" in text, echo
    assert f"leaves from interface {routed.if1['mac_address']}" in text, echo


def test_random_packets_never_cross_projects_and_routed_ones_reach_exactly_their_port(
    routed: Routed,
) -> None:
    """Seeded random packets from every VM (its gateway's MAC, the other gateway's, the other
    project's gateway-like MACs, random and foreign addresses, TTL 1..3), walked through the
    switches as the data plane left them (the tenant trace's `follow`, across tunnels): a copy
    is only ever delivered to a port of the sender's project, and a packet to the sender's own
    gateway for the address of a port in the router's other subnet reaches exactly that port
    (TTL > 1, port 22 which the groups let in) or nothing (TTL 1)."""
    cloud = routed.cloud
    rng = random.Random(0x7E4E16)
    store = cloud.store
    every = store.list_ports()
    snap = cloud.dp.on_actor(lambda d: snapshot(d, [p["id"] for p in every]), 5)
    cat = catalog(store, store.list_networks(), every, snap)
    tables = desired_tables(snap)
    by_ip = {routed.ip(n): n for n in routed.vms if n != "x1"}
    project = {n: ("p2" if n == "x1" else "p1") for n in routed.vms}
    ids = {routed.vms[n][0]["id"]: n for n in routed.vms}
    gws = [routed.if1["mac_address"], routed.if2["mac_address"], "fa:16:3e:00:00:99"]
    targets = [*by_ip, "10.0.1.1", "10.0.2.1", "10.0.2.99", "10.0.3.5", "10.0.1.5"]
    own_gw = {"v1": routed.if1, "v2": routed.if2, "v3": routed.if2}
    routed_ok = 0
    for _ in range(150):
        src = rng.choice(sorted(routed.vms))
        port = routed.vms[src][0]
        dst_ip, gw, ttl = rng.choice(targets), rng.choice(gws), rng.choice((1, 2, 3, 64))
        pkt = make_packet(port["mac_address"], gw, ip_src=routed.ip(src), ip_dst=dst_ip,
                          protocol=6, dst_port=22)  # fmt: skip
        pkt["nw_ttl"] = ttl
        # every network and port named, so a copy delivered anywhere is seen (a tenant trace
        # names only the sender's networks and those its routers reach)
        result = follow(cat, tables, port["id"], pkt, ["new"] * 4)
        assert all(p.port in ids for p in result.paths if p.verdict == "delivered"), result
        delivered = {ids[p] for p in result.delivered_to}
        assert all(project[d] == project[src] for d in delivered), (src, dst_ip, gw, delivered)
        target = by_ip.get(dst_ip)
        if (
            src in own_gw
            and gw == own_gw[src]["mac_address"]
            and target is not None
            and target != src
            and routed.vms[target][0]["network_id"] != port["network_id"]
        ):
            assert delivered == ({target} if ttl > 1 else set()), (src, dst_ip, ttl, delivered)
            routed_ok += ttl > 1
    assert routed_ok > 5  # the generator does exercise routing


def test_extra_route_and_admin_state_from_the_router_record(routed: Routed) -> None:
    store, cloud = routed.cloud.store, routed.cloud
    v3 = routed.vms["v3"][0]
    routes = {"routes": [{"destination": "10.0.99.0/24", "nexthop": routed.ip("v3")}]}
    store.router_routes(routed.router, routes, add=True)
    cloud.idle()
    [out] = routed.send("v1", "10.0.99.7", routed.if1, protocol=6, dst_port=22).outputs
    assert (out.port, dict(out.fields)["eth_dst"]) == (2, v3["mac_address"])
    # a restart reads the router (its routes) back before it plans: nothing to send
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0
    store = cloud.store
    store.router_routes(routed.router, routes, add=False)
    cloud.idle()
    assert routed.send("v1", "10.0.99.7", routed.if1, protocol=6, dst_port=22).dropped
    # admin down: the router routes nothing and answers nothing; up again: as before
    store.update("router", routed.router, {"admin_state_up": False})
    cloud.idle()
    assert not router_rules(cloud, "hv1") and not router_rules(cloud, "hv2")
    store.update("router", routed.router, {"admin_state_up": True})
    cloud.idle()
    assert routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22).ports == [2]


def test_time_exceeded_answered_for_the_port_the_switch_names(routed: Routed) -> None:
    """The packet-in handler (controller/dataplane/ttl.py) over the data plane's state."""
    from os_ken.lib.packet import ethernet, icmp, ipv4, packet, udp

    from controller.dataplane.ttl import TtlExpired
    from controller.southbound.ovsdb_host import datapath_id_for
    from controller.southbound.packet_in import PacketIn

    dp = routed.cloud.dp
    handler = TtlExpired(dp.mirror, dp.bindings, dp.hosts, dp.by_dpid)
    v1 = routed.vms["v1"][0]
    probe = packet.Packet()
    probe.add_protocol(ethernet.ethernet(dst=routed.if1["mac_address"], src=v1["mac_address"]))
    probe.add_protocol(ipv4.ipv4(src=routed.ip("v1"), dst=routed.ip("v2"), ttl=1, proto=17))
    probe.add_protocol(udp.udp(src_port=40000, dst_port=33434))
    probe.add_protocol(b"traceroute")
    probe.serialize()

    def packet_in(in_port: int, cookie: int = t.router_cookie(routed.if1["_num"]),
                  host: str = "hv1") -> bytes | None:  # fmt: skip
        return handler.handle(PacketIn(datapath_id_for(host), t.L3_ROUTING, cookie, 0, in_port,
                                       None, bytes(probe.data)))  # fmt: skip

    reply = packet.Packet(packet_in(1))
    eth, ip, err = (reply.get_protocol(c) for c in (ethernet.ethernet, ipv4.ipv4, icmp.icmp))
    assert (eth.src, eth.dst) == (routed.if1["mac_address"], v1["mac_address"])
    assert (ip.src, ip.dst, err.type, err.code) == ("10.0.1.1", routed.ip("v1"), 11, 0)
    assert err.data.data == bytes(probe.data)[14 : 14 + 20 + 8]  # the IP header + 8 bytes
    # who asks is the switch's word: another port's ofport, another host, a port's cookie
    assert packet_in(3) is None and packet_in(1, host="hv2") is None
    assert packet_in(1, cookie=t.port_cookie(v1["_num"])) is None
    assert handler.status() == {"answered": 1, "unmatched": 3, "malformed": 0}


def _probe(routed: Routed, src: str, dst: str) -> bytes:
    """A TTL-1 UDP packet from VM ``src`` to its gateway's MAC for ``dst``'s address."""
    from os_ken.lib.packet import ethernet, ipv4, packet, udp

    port = routed.vms[src][0]
    probe = packet.Packet()
    probe.add_protocol(ethernet.ethernet(dst=routed.if1["mac_address"], src=port["mac_address"]))
    probe.add_protocol(ipv4.ipv4(src=routed.ip(src), dst=routed.ip(dst), ttl=1, proto=17))
    probe.add_protocol(udp.udp(src_port=40000, dst_port=33434))
    probe.serialize()
    return bytes(probe.data)


class CountedBindings(dict[str, int]):
    """An observation's bindings that count how often they are walked."""

    walks = 0

    def items(self) -> Any:
        CountedBindings.walks += 1
        return super().items()


def test_time_exceeded_finds_the_sender_by_ofport_not_by_a_scan(routed: Routed) -> None:
    """The asking port is looked up by in_port in an index of the host's observation, built
    once per observation: 50 packet-ins from a host with 500 bindings walk them once (the
    old handler walked them per packet); a new observation (the port re-plugged elsewhere)
    is indexed again."""
    from types import SimpleNamespace

    from controller.dataplane.ttl import TtlExpired
    from controller.southbound.ovsdb_host import HostObservation, datapath_id_for
    from controller.southbound.packet_in import PacketIn

    dp = routed.cloud.dp
    v1 = routed.vms["v1"][0]
    bindings = CountedBindings({f"other-{i}": 100 + i for i in range(500)})
    bindings[v1["id"]] = 1
    hv1 = SimpleNamespace(obs=HostObservation(bindings, {}))
    handler = TtlExpired(dp.mirror, dp.bindings, {"hv1": hv1}, dp.by_dpid)
    data = _probe(routed, "v1", "v2")
    cookie = t.router_cookie(routed.if1["_num"])

    def ask(in_port: int) -> bytes | None:
        pkt = PacketIn(datapath_id_for("hv1"), t.L3_ROUTING, cookie, 0, in_port, None, data)
        return handler.handle(pkt)

    CountedBindings.walks = 0
    assert all(ask(1) is not None for _ in range(50))
    assert CountedBindings.walks == 1 and handler.answered == 50
    moved = CountedBindings({**bindings, v1["id"]: 7})
    hv1.obs = HostObservation(moved, {})
    assert ask(1) is None and ask(7) is not None
    assert CountedBindings.walks == 2


def test_an_interface_whose_router_is_unknown_routes_and_answers_nothing(routed: Routed) -> None:
    """Events reordered: the router's record goes (or has not arrived yet) while its interfaces
    stay.  Without it nothing is routed or answered (no entry, ARP or echo answer, no ICMP time
    exceeded), as for a router that is admin down; the record back, all is back."""
    from controller.dataplane.ttl import TtlExpired
    from controller.events import ChangeEvent
    from controller.southbound.ovsdb_host import datapath_id_for
    from controller.southbound.packet_in import PacketIn

    cloud = routed.cloud
    record = cloud.store.get("router", routed.router)
    assert record is not None and router_rules(cloud, "hv1")
    dp = cloud.dp
    handler = TtlExpired(dp.mirror, dp.bindings, dp.hosts, dp.by_dpid)
    cookie = t.router_cookie(routed.if1["_num"])
    pkt = PacketIn(datapath_id_for("hv1"), t.L3_ROUTING, cookie, 0, 1, None,
                   _probe(routed, "v1", "v2"))  # fmt: skip
    assert handler.handle(pkt) is not None
    cloud.bus.publish([ChangeEvent("router", record, None)])  # the store still has it
    cloud.idle()
    assert not router_rules(cloud, "hv1") and not router_rules(cloud, "hv2")
    assert routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22).dropped
    assert handler.handle(pkt) is None
    cloud.bus.publish([ChangeEvent("router", None, record)])
    cloud.idle()
    assert routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22).ports == [2]
    assert handler.handle(pkt) is not None


def default_group(cloud: Cloud, project: str) -> str:
    """The project's default group (made by the store: ingress from its own members only,
    egress anywhere)."""
    cloud.store.create_network({"project_id": project})  # makes sure the project has one
    [gid] = [g["id"] for g in cloud.store.list_all("security_group")
             if g["name"] == "default" and g["project_id"] == project]  # fmt: skip
    return str(gid)


def member_flows(cloud: Cloud, host: str, port: dict[str, Any]) -> set[Any]:
    cookie = t.sg_member_cookie(port["_num"])
    return {r for r in cloud.flows(host).rules if r.cookie == cookie}


def test_default_group_admits_routed_members_and_only_them(routed: Routed) -> None:
    """Issue 14 x 16: two VMs in different subnets behind one router, both only in their
    project's default group (ingress from its members), reach each other; a VM of another
    project with the same address does not; the router's interface removed, the routed keys'
    address flows go.  A member's address flows are under its own network's key (REG_SG_NET,
    which the receiver's entry takes from the domain's scope flows for a routed packet)."""
    cloud = routed.cloud
    routed.groups = {p: default_group(cloud, p) for p in ("p1", "p2")}
    a = routed.vm("a", routed.net1, "hv1", 4)
    b = routed.vm("b", routed.net2, "hv2", 2)
    cloud.idle()
    # a -> b: egress on hv1 (a's network key), ingress on hv2 (b's key, a's address)
    [out] = routed.send("a", routed.ip("b"), routed.if1, protocol=6, dst_port=80).outputs
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.1").ports == [2]
    [back] = routed.send("b", routed.ip("a"), routed.if2, protocol=1).outputs
    assert routed.arrive("hv1", dict(back.fields), "10.9.0.2").ports == [4]
    # a VM of project p2 with a's address (same CIDR, no router): not a member anywhere here
    store = cloud.store
    y = store.create_port({"network_id": routed.net3["id"], "project_id": "p2",
                           "security_groups": [routed.groups["p2"]],
                           "fixed_ips": [{"subnet_id": routed.sub3["id"],
                                          "ip_address": routed.ip("a")}]})  # fmt: skip
    FakeAgent.instances["hv3"].plug(y["id"], 1)
    cloud.idle()
    forged = dict(out.fields) | {"eth_src": y["mac_address"]}
    assert routed.arrive("hv2", forged, "10.9.0.3").dropped  # hv3 is no peer of net 2
    # a's address flows on hv2 are under net 1's key, not under the router's L3 domain (its
    # address is in net 1's subnet, which the domain's scope flows name) nor net 3's key
    on_hv2 = member_flows(cloud, "hv2", a)
    assert on_hv2 and {(dict(r.match).get(t.REG_SG_NET), dict(r.match).get(t.REG_SG_DOMAIN))
                       for r in on_hv2} == {(routed.net1["_key"], None)}  # fmt: skip
    assert not member_flows(cloud, "hv2", y) and not member_flows(cloud, "hv1", y)
    # the interface removed: the routed address flows go on both sides
    store.router_interface(routed.router, {"port_id": routed.if2["id"]}, add=False)
    cloud.idle()
    assert not member_flows(cloud, "hv2", a) and not member_flows(cloud, "hv1", b)
    # back: the same flows as before, and a restart (whole-host compile) sends nothing
    routed.if2 = routed.interface(routed.net2, routed.sub2)
    cloud.idle()
    assert member_flows(cloud, "hv2", a) == on_hv2
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


def test_a_members_pair_outside_the_subnets_is_admitted_across_the_router(routed: Routed) -> None:
    """A member's allowed address pair outside every subnet of the router's networks (a VIP):
    the domain's scope flows cannot name its network, so that address alone is matched under
    the L3 domain as well as under its network's key.  A packet from the VIP reaches a member
    of the default group across the router; a VM outside the group, with a VIP of its own, is
    still refused there; the interface removed and added again, a restart sends nothing."""
    cloud, store = routed.cloud, routed.cloud.store
    routed.groups = {p: default_group(cloud, p) for p in ("p1", "p2")}
    a = routed.vm("a", routed.net1, "hv1", 4)
    routed.vm("b", routed.net2, "hv2", 2)
    ssh_only = routed.group("p1")  # TCP 22 from 10.0.0.0/16: nothing of a's default group
    e = store.create_port({"network_id": routed.net1["id"], "project_id": "p1",
                           "security_groups": [ssh_only]})  # fmt: skip
    FakeAgent.instances["hv1"].plug(e["id"], 5)
    routed.vms["e"] = (e, "hv1", 5)
    for port, vip in ((a, "192.168.50.5"), (e, "192.168.60.6")):
        store.update("port", port["id"], {"allowed_address_pairs": [{"ip_address": vip}]})
    cloud.idle()

    def from_vip(name: str, vip: str) -> Trace:
        port, host, ofport = routed.vms[name]
        pkt = make_packet(port["mac_address"], routed.if1["mac_address"], ip_src=vip,
                          ip_dst=routed.ip("b"), protocol=6, dst_port=80)  # fmt: skip
        [out] = trace(cloud.flows(host), ofport, pkt, ["new", "new"]).outputs
        return routed.arrive("hv2", dict(out.fields), "10.9.0.1")

    assert from_vip("a", "192.168.50.5").ports == [2]
    assert from_vip("e", "192.168.60.6").dropped
    on_hv2 = member_flows(cloud, "hv2", a)
    scopes = {(dict(r.match).get("ipv4_src"), dict(r.match).get(t.REG_SG_NET),
               dict(r.match).get(t.REG_SG_DOMAIN)) for r in on_hv2}  # fmt: skip
    domain = min(routed.if1["_num"], routed.if2["_num"])
    key = routed.net1["_key"]
    assert scopes == {(routed.ip("a"), key, None), ("192.168.50.5", key, None),
                      ("192.168.50.5", None, domain)}, scopes  # fmt: skip
    store.router_interface(routed.router, {"port_id": routed.if2["id"]}, add=False)
    cloud.idle()
    routed.if2 = routed.interface(routed.net2, routed.sub2)
    cloud.idle()
    assert member_flows(cloud, "hv2", a) == on_hv2
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


def announced(cloud: Cloud, since: int) -> list[tuple[str, int, str, str]]:
    """(host, port, sender MAC, sender IP) of the gratuitous ARPs sent since ``since``."""
    hosts = {datapath_id_for(f"hv{n}"): f"hv{n}" for n in range(1, 4)}
    out = []
    for dpid, port, data in cloud.switches.packets[since:]:
        pkt = packet.Packet(data)
        eth, req = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(arp.arp)
        assert eth.dst == "ff:ff:ff:ff:ff:ff" and req.opcode == arp.ARP_REQUEST
        assert req.dst_ip == req.src_ip and eth.src == req.src_mac
        out.append((hosts[dpid], port, req.src_mac, req.src_ip))
    return sorted(out)


def test_an_interface_that_reappears_is_announced_once_to_its_networks_ports(
    routed: Routed,
) -> None:
    """A re-added interface comes back with another MAC: each port of its network, on the host
    holding it, gets one gratuitous ARP for the gateway at the new MAC; nothing else does, and
    nothing is announced again without a new appearance."""
    cloud, store = routed.cloud, routed.cloud.store
    store.router_interface(routed.router, {"subnet_id": routed.sub2["id"]}, add=False)
    cloud.idle()
    before = len(cloud.switches.packets)
    again = routed.interface(routed.net2, routed.sub2)
    cloud.idle()
    assert again["mac_address"] != routed.if2["mac_address"]
    gw = (again["mac_address"], "10.0.2.1")
    # v2 on hv2 (ofport 1), v3 on hv1 (ofport 2); not v1 (net1) nor x1 (another project)
    assert announced(cloud, before) == [("hv1", 2, *gw), ("hv2", 1, *gw)]
    before = len(cloud.switches.packets)
    store.update("port", again["id"], {"name": "renamed"})
    store.update("router", routed.router, {"name": "r"})
    cloud.idle()
    assert cloud.switches.packets[before:] == []


def test_a_router_set_admin_up_again_announces_its_interfaces_and_a_down_one_nothing(
    routed: Routed,
) -> None:
    """While a router is down its gateways' ARP answers are gone (a VM asking then gets the
    DHCP server's MAC or nothing), so setting it up again announces every interface to its
    network's ports; an interface added while the router is down routes nothing and is not
    announced then."""
    cloud, store = routed.cloud, routed.cloud.store
    store.update("router", routed.router, {"admin_state_up": False})
    cloud.idle()
    before = len(cloud.switches.packets)
    store.router_interface(routed.router, {"subnet_id": routed.sub2["id"]}, add=False)
    cloud.idle()
    again = routed.interface(routed.net2, routed.sub2)
    cloud.idle()
    assert cloud.switches.packets[before:] == []
    store.update("router", routed.router, {"admin_state_up": True})
    cloud.idle()
    gw1 = (routed.if1["mac_address"], "10.0.1.1")
    gw2 = (again["mac_address"], "10.0.2.1")
    # v1 (net1) on hv1 (ofport 1); v2 (net2) on hv2 (ofport 1), v3 (net2) on hv1 (ofport 2)
    assert announced(cloud, before) == sorted(
        [("hv1", 1, *gw1), ("hv2", 1, *gw2), ("hv1", 2, *gw2)]
    )
    before = len(cloud.switches.packets)
    store.update("router", routed.router, {"admin_state_up": True, "name": "still up"})
    cloud.idle()
    assert cloud.switches.packets[before:] == []


def test_two_tenants_same_cidrs_own_routers_default_groups_stay_apart(routed: Routed) -> None:
    """Remote-group addresses of routed members are scoped by their network, which each L3
    domain's scope flows name from the address (a routed packet arrives under the receiver's
    key): project p2 builds p1's two subnets (10.0.1.0/24, 10.0.2.0/24) behind its
    own router, with VMs at p1's addresses, every VM only in its project's default group.  Each
    project routes to its own peer; p1's member c (an address p2 does not use) is admitted by
    p1's receiver but not by p2's on the same host; the two domains differ."""
    cloud, store = routed.cloud, routed.cloud.store
    routed.groups = {p: default_group(cloud, p) for p in ("p1", "p2")}
    routed.vm("a", routed.net1, "hv1", 4)
    routed.vm("b", routed.net2, "hv2", 2)
    routed.vm("c", routed.net1, "hv3", 1)
    p1_router, routed.router = routed.router, str(uuid.uuid4())
    if3 = routed.interface(routed.net3, routed.sub3)
    net4, sub4 = routed.network("10.0.2.0/24", "p2")
    routed.interface(net4, sub4)
    routed.router = p1_router

    def twin(name: str, net: dict[str, Any], sub: dict[str, Any], host: str, ofport: int,
             of: str) -> None:  # fmt: skip
        port = store.create_port({"network_id": net["id"], "project_id": "p2",
                                  "security_groups": [routed.groups["p2"]],
                                  "fixed_ips": [{"subnet_id": sub["id"],
                                                 "ip_address": routed.ip(of)}]})  # fmt: skip
        FakeAgent.instances[host].plug(port["id"], ofport)
        routed.vms[name] = (port, host, ofport)

    twin("y", routed.net3, routed.sub3, "hv1", 6, of="a")
    twin("y2", net4, sub4, "hv2", 3, of="b")
    cloud.idle()
    [out] = routed.send("a", routed.ip("b"), routed.if1, protocol=6, dst_port=80).outputs
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.1").ports == [2]
    [out] = routed.send("c", routed.ip("b"), routed.if1, protocol=6, dst_port=80).outputs
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.3").ports == [2]
    [out] = routed.send("y", routed.ip("y2"), if3, protocol=6, dst_port=80).outputs
    assert routed.arrive("hv2", dict(out.fields), "10.9.0.1").ports == [3]
    # the same packet in p2's domain from c's address: no member of p2's group has it
    forged = dict(out.fields) | {"ipv4_src": routed.ip("c")}
    assert routed.arrive("hv2", forged, "10.9.0.1").dropped
    # a and y (same address) are matched on hv2 under their own networks' keys, no domain
    [net_a] = {(dict(r.match)[t.REG_SG_NET], dict(r.match).get(t.REG_SG_DOMAIN))
               for r in member_flows(cloud, "hv2", routed.vms["a"][0])}  # fmt: skip
    [net_y] = {(dict(r.match)[t.REG_SG_NET], dict(r.match).get(t.REG_SG_DOMAIN))
               for r in member_flows(cloud, "hv2", routed.vms["y"][0])}  # fmt: skip
    assert (net_a, net_y) == ((routed.net1["_key"], None), (routed.net3["_key"], None))
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


@pytest.mark.parametrize("by", ["subnet_id", "port_id"])
def test_interface_added_and_removed_leave_the_switches_as_a_whole_compile(
    routed: Routed, by: str
) -> None:
    """An interface added on a third network with ports on router hosts (its ports' owners and
    the router's interfaces recompiled there, the other network's ports left alone), then
    removed (by subnet or by port): each time the switches hold what a fresh controller
    compiles whole, every owner kind (the security groups' too: net 4's ports leave the
    router's L3 domain, so its members' address clauses are re-scoped)."""
    cloud = routed.cloud
    net4, sub4 = routed.network("10.0.4.0/24", "p1")
    routed.vm("w1", net4, "hv1", 7)
    routed.vm("w2", net4, "hv2", 8)
    cloud.idle()
    if4 = routed.interface(net4, sub4)
    cloud.idle()
    assert routed.send("v1", routed.ip("w2"), routed.if1, protocol=6, dst_port=22).outputs
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0
    body = {"subnet_id": sub4["id"]} if by == "subnet_id" else {"port_id": if4["id"]}
    cloud.store.router_interface(routed.router, body, add=False)  # new store
    cloud.idle()
    held = {h: router_rules(cloud, h) for h in ("hv1", "hv2", "hv3")}
    restart(cloud)
    assert {h: router_rules(cloud, h) for h in held} == held
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


@pytest.mark.parametrize("port_first", [True, False])
def test_a_port_deleted_with_its_networks_interface_in_one_step_leaves_no_neighbour_rule(
    routed: Routed, port_first: bool
) -> None:
    """v1 (net 1, on hv1) deleted in the same data-plane step as net 1's router interface: hv1
    and hv2 stay the router's hosts (net 2), so the step patches them rather than compiling
    them whole, and v1's neighbour rules (its router owner) must go there too, whichever input
    came first (the port's patch no longer finds a router of net 1; the interface's partial
    compile no longer finds v1 among net 1's ports).  Then the switches hold what a whole
    compile gives: a restart sends nothing."""
    cloud = routed.cloud
    v1_cookie = t.router_cookie(routed.vms["v1"][0]["_num"])
    assert any(r.cookie == v1_cookie for r in router_rules(cloud, "hv2"))
    gate, taken = threading.Event(), threading.Event()
    done: Future[None] = Future()

    def hold(_dp: Any) -> None:  # the actor waits here while both inputs queue behind it
        taken.set()
        gate.wait(10)

    cloud.dp.post("call", (hold, done))
    assert taken.wait(10)
    writes = [lambda: cloud.store.delete("port", routed.vms["v1"][0]["id"]),
              lambda: cloud.store.router_interface(routed.router, {"port_id": routed.if1["id"]},
                                                   add=False)]  # fmt: skip
    for write in writes if port_first else writes[::-1]:
        write()
    gate.set()
    done.result(10)
    cloud.idle()
    held = {h: [r for r in cloud.flows(h).rules if r.cookie == v1_cookie] for h in ("hv1", "hv2")}
    assert held == {"hv1": [], "hv2": []}
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0


def test_each_host_is_sent_its_bundle_once_its_plan_is_complete(
    routed: Routed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, add_router_interface -> first routed ping: the step that adds an interface
    plans security groups and router owners on every router host; the first host's bundle goes
    out while the later hosts are still planned, and no host is planned again after its bundle
    left (so each still gets the whole step in one bundle).  Recorded in the actor's order:
    ("planned", host) for every piece of work that wanted something on the host, ("sent", host)
    for each apply.  The old actor planned every host before sending any."""
    cloud = routed.cloud
    net4, sub4 = routed.network("10.0.4.0/24", "p1")
    routed.vm("w1", net4, "hv1", 7)
    routed.vm("w2", net4, "hv2", 8)
    routed.vm("w3", net4, "hv3", 9)
    cloud.idle()
    events: list[tuple[str, str]] = []
    host_of = {datapath_id_for(h): h for h in ("hv1", "hv2", "hv3")}
    apply = cloud.switches.apply

    def sent(dpid: int, diff: Any, on_done: Any) -> bool:
        events.append(("sent", host_of[dpid]))
        return bool(apply(dpid, diff, on_done))

    def recording(work: Any) -> Any:
        def wrapped(units: Any, inputs: Any) -> Any:
            for unit, fn in work(units, inputs):

                def piece(step: Any, fn: Any = fn) -> None:
                    fn(step)
                    events.extend(("planned", h) for h in sorted(step.diffs))

                yield unit, piece

        return wrapped

    monkeypatch.setattr(cloud.switches, "apply", sent)
    for service in cloud.dp.planner.services.values():
        monkeypatch.setattr(service, "work", recording(service.work))
    routed.interface(net4, sub4)
    cloud.idle()
    hosts = [h for kind, h in events if kind == "sent"]
    assert sorted(hosts) == ["hv1", "hv2", "hv3"], events  # one bundle each
    planned = {(kind, h) for kind, h in events if kind == "planned"}
    assert planned == {("planned", h) for h in hosts}, events
    first_sent = events.index(("sent", hosts[0]))
    assert any(kind == "planned" for kind, _ in events[first_sent:]), events  # pipelined
    for h in hosts:  # complete when sent
        assert ("planned", h) not in events[events.index(("sent", h)) :], (h, events)
    assert routed.send("v1", routed.ip("w3"), routed.if1, protocol=6, dst_port=22).outputs


def test_a_routed_packet_to_a_port_its_host_does_not_deliver_is_dropped_not_flooded(
    routed: Routed,
) -> None:
    """While a new port's own host has not applied its bundle, another host may already route
    to it (its neighbour rule there came first): the routed packet reaches a host with no
    delivery rule for the MAC.  It is dropped there; before, L2 flooded it to every local port
    of the network (v2 and v4 on hv2, which its security groups let in).  A bridged packet to
    an unknown MAC is still flooded (L2's normal unknown-unicast)."""
    routed.vm("v4", routed.net2, "hv2", 4)
    routed.cloud.idle()
    [out] = routed.send("v1", routed.ip("v2"), routed.if1, protocol=6, dst_port=22).outputs
    f = dict(out.fields)
    assert routed.arrive("hv2", f, "10.9.0.1").ports == [1]
    unknown = {**f, "eth_dst": "02:77:00:00:00:01"}  # a port hv2 does not deliver (yet)
    assert routed.arrive("hv2", unknown, "10.9.0.1").ports == []
    bridged = {**unknown, "eth_src": routed.vms["v3"][0]["mac_address"]}  # v3: net 2, on hv1
    assert sorted(routed.arrive("hv2", bridged, "10.9.0.1").ports) == [1, 4]


def test_removing_the_interface_that_holds_the_routers_mark_renumbers_it(routed: Routed) -> None:
    """The router's mark is its smallest interface number (net 1's, the first added): a third
    interface added changes nothing of the first two; removing net 1's moves the mark to
    net 2's interface, and the routes and echo answers that remain are rewritten under it on
    the router's hosts (the switches then hold what a fresh controller compiles whole: a
    restart sends nothing), and net 2 still reaches net 4 through it, both ways."""
    cloud = routed.cloud
    net4, sub4 = routed.network("10.0.4.0/24", "p1")
    routed.vm("w1", net4, "hv1", 7)
    cloud.idle()
    before = {h: router_rules(cloud, h) for h in ("hv1", "hv2")}
    if4 = routed.interface(net4, sub4)
    cloud.idle()
    for h, rules in before.items():  # the add only added
        assert rules <= router_rules(cloud, h), h
    gw_ip = str(routed.if2["fixed_ips"][0]["ip_address"])
    cloud.store.router_interface(routed.router, {"port_id": routed.if1["id"]}, add=False)
    cloud.idle()
    restart(cloud)
    assert cloud.dp.stats.flow_mods == 0 and cloud.dp.stats.group_mods == 0
    tr = routed.send("v3", routed.ip("w1"), routed.if2, protocol=6, dst_port=22)
    assert tr.ports == [7], tr
    echo = routed.send("v3", gw_ip, routed.if2, protocol=1, icmp_type=8)
    [out] = echo.outputs
    assert (out.port, dict(out.fields)["eth_src"]) == (2, routed.if2["mac_address"])
    back = routed.send("w1", routed.ip("v3"), if4, protocol=6, dst_port=22)
    assert back.ports == [2], back
    # net 1 is no longer routed: v1's packet to its old gateway goes nowhere
    assert not routed.send("v1", routed.ip("v3"), routed.if1, protocol=6, dst_port=22).ports


def test_a_claim_on_a_router_interface_is_refused(routed: Routed) -> None:
    """A router's interface is distributed and never plugged: a host whose OVSDB claims one
    (``iface-id=<interface port>``, anyone who reaches that OVSDB can write it) must not hold
    it.  Held, it made hv3 (no port of net 1, another tenant's host) a member of net 1: flows
    for its interface (no port security: a ``network:`` owner) and its peers tunnelling the
    gateway's MAC to it."""
    cloud = routed.cloud
    gw = routed.if1
    FakeAgent.instances["hv3"].plug(gw["id"], 9)
    cloud.idle()
    assert cloud.dp.bindings.holder(gw["id"]) is None
    assert 9 not in {v for r in cloud.flows("hv3").rules for k, v in r.match if k == "in_port"}
    assert not [r for r in cloud.flows("hv1").rules if ("eth_dst", gw["mac_address"]) in r.match
                and "10.9.0.3" in repr(r.instructions)]  # fmt: skip
    got = cloud.store.get_port(gw["id"])
    assert got is not None and not got["binding:host_id"]
    assert got["binding:vif_details"].get("tenantnet_refused_hosts") == ["hv3"]
    assert cloud.dp.status()["binding_conflicts"] == 1
    # routing on net 1 is as before
    assert routed.send("v1", routed.ip("v3"), gw, protocol=6, dst_port=22).ports == [2]
