"""Routed traffic to an allowed-address-pair virtual IP (VRRP, load balancers): the holder
learnt from the ARP it sends (controller/dataplane/vips.py), kept in the store
(`ports.claim_vip`), routed to by a neighbour rule of its own (flows/routing.py).  The
data-plane actor with a real Store and faked switches, packets walked by the evaluator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from os_ken.lib.packet import arp, ethernet, packet

from controller.dataplane.punt_source import PortPunts
from controller.dataplane.vips import RECENT_S, VipClaims, VipLearner
from controller.services.dhcp_guard import FloodGuard, GuardSettings
from controller.southbound.ovsdb_host import datapath_id_for
from controller.southbound.packet_in import PacketIn
from controller.store.ports import VIPS_HELD
from controller.tracer import Request, Tracer
from flows import tables as t
from flows.compiler import arp_copy_guard_rule
from flows.model import Apply, GotoTable, Output, Rule, Slice
from flows.routing import PRIO_VIP_NEIGHBOUR
from flows.trace import make_packet, trace
from tests.unit.test_dataplane import Cloud, FakeAgent, restart
from tests.unit.test_dataplane_routing import TUN, Routed

pytest_plugins = ["tests.unit.test_dataplane"]  # the `cloud` fixture

VIP = "10.0.2.50"
OFPP_CONTROLLER = 0xFFFFFFFD


class Vrrp:
    """`Routed` (v1 in 10.0.1.0/24 on hv1; 10.0.2.0/24 behind the same router) with two VMs in
    10.0.2.0/24 that share `VIP` as an address pair: ``a`` on hv2 (ofport 3), ``b`` on hv1
    (ofport 4)."""

    def __init__(self, cloud: Cloud) -> None:
        self.routed = Routed(cloud)
        self.cloud = cloud
        pairs = [{"ip_address": VIP}]
        self.a = self.vm("a", "hv2", 3, pairs)
        self.b = self.vm("b", "hv1", 4, pairs)
        cloud.idle()
        dp = cloud.dp
        self.learner = VipLearner(PortPunts(dp.mirror, dp.bindings, dp.hosts, dp.by_dpid), dp.post)
        # the actor's claims on a clock of the test's: a VIP moves at most once per RECENT_S
        self.now = [1000.0]
        dp.vip_claims._clock = lambda: self.now[0]

    def vm(self, name: str, host: str, ofport: int, pairs: list[dict[str, str]]) -> dict[str, Any]:
        r = self.routed
        port = r.vm(name, r.net2, host, ofport)
        port = self.cloud.store.update("port", port["id"], {"allowed_address_pairs": pairs})
        r.vms[name] = (port, host, ofport)
        return port

    def port(self, name: str) -> dict[str, Any]:
        found = self.cloud.store.get_port(self.routed.vms[name][0]["id"])
        assert found is not None
        return found

    def held(self, name: str) -> list[str]:
        return list(self.port(name)["binding:vif_details"].get(VIPS_HELD, ()))

    def garp(self, name: str, spa: str = VIP) -> PacketIn:
        """The packet-in a gratuitous ARP from the VM makes when its pair's rule copies it
        (the port's cookie, the port-security table): built, so that one the switch would
        never send (a forged claim) can be handed to the learner as well."""
        port, host, ofport = self.routed.vms[name]
        mac = port["mac_address"]
        frame = packet.Packet()
        frame.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=0x0806))
        frame.add_protocol(arp.arp(opcode=1, src_mac=mac, src_ip=spa, dst_mac="00:00:00:00:00:00",
                                   dst_ip=spa))  # fmt: skip
        frame.serialize()
        cookie = t.port_cookie(port["_num"])
        return PacketIn(datapath_id_for(host), t.PORT_SECURITY, cookie, 0, ofport, None,
                        bytes(frame.data))  # fmt: skip

    def announce(self, name: str, spa: str = VIP, after: float = RECENT_S) -> bool:
        """The VM announces ``spa`` (a gratuitous ARP walked through its host's flows),
        ``after`` seconds after the last announcement, and the learner gets the packet-in;
        True if the flows copied the ARP to the controller."""
        self.now[0] += after
        port, host, ofport = self.routed.vms[name]
        mac = port["mac_address"]
        pkt = make_packet(mac, "ff:ff:ff:ff:ff:ff", ip_src=spa, ip_dst=spa, arp_op=1)
        punted = trace(self.cloud.flows(host), ofport, pkt, []).punted
        assert self.learner.handle(self.garp(name, spa))  # an ARP: the learner's, not DHCP's
        self.cloud.idle()
        return punted

    def route_to_vip(self) -> tuple[int, str | None, str]:
        """v1 (10.0.1.0/24, hv1) pings the VIP through the router: (out port, tunnel
        destination, destination MAC)."""
        r = self.routed
        [out] = r.send("v1", VIP, r.if1, protocol=6, dst_port=22).outputs
        f = dict(out.fields)
        return out.port, f.get("tun_ipv4_dst"), f["eth_dst"]


@pytest.fixture
def vrrp(cloud: Cloud) -> Iterator[Vrrp]:
    yield Vrrp(cloud)


def vip_rules(cloud: Cloud, host: str) -> set[Any]:
    return {
        r for r in cloud.flows(host).rules
        if r.table == t.L3_NEIGHBOURS and ("ipv4_dst", VIP) in r.match
    }  # fmt: skip


def test_the_garp_is_copied_to_the_controller_and_still_forwarded(vrrp: Vrrp) -> None:
    port, host, ofport = vrrp.routed.vms["a"]
    mac = port["mac_address"]
    garp = make_packet(mac, "ff:ff:ff:ff:ff:ff", ip_src=VIP, ip_dst=VIP, arp_op=1)
    tr = trace(vrrp.cloud.flows(host), ofport, garp, [])
    assert tr.punted and tr.outputs  # to the controller and flooded as before
    # its own fixed IP's ARP is not copied (ordinary ARP never reaches the controller)
    fixed = port["fixed_ips"][0]["ip_address"]
    tr = trace(vrrp.cloud.flows(host), ofport,
               make_packet(mac, "ff:ff:ff:ff:ff:ff", ip_src=fixed, ip_dst="10.0.2.1",
                           arp_op=1), [])  # fmt: skip
    assert not tr.punted
    # an address that is not its pair is dropped by port security: no copy, no flood
    tr = trace(vrrp.cloud.flows(host), ofport,
               make_packet(mac, "ff:ff:ff:ff:ff:ff", ip_src="10.0.2.51", ip_dst="10.0.2.51",
                           arp_op=1), [])  # fmt: skip
    assert tr.dropped
    # the copy is the announce rule's (above the pair's ARP rule, which copies nothing): the
    # port's cookie, then on as the pair's rule goes (the port is filtered: through its
    # security groups' egress, as every frame it sends; one apply-actions)
    rules = {r.priority: r for r in vrrp.cloud.flows(host).rules
             if r.table == t.PORT_SECURITY and ("arp_spa", VIP) in r.match}  # fmt: skip
    assert set(rules) == {t.PRIO_VIP_ANNOUNCE, t.PRIO_EXACT}
    announce, pair = rules[t.PRIO_VIP_ANNOUNCE], rules[t.PRIO_EXACT]
    assert announce.cookie == pair.cookie == t.port_cookie(port["_num"])
    assert ("arp_tpa", VIP) in announce.match and set(pair.match) < set(announce.match)
    to_sg, goto_sg = pair.instructions
    assert isinstance(to_sg, Apply) and goto_sg == GotoTable(t.SG_EGRESS)
    assert announce.instructions == (Apply((Output(OFPP_CONTROLLER), *to_sg.actions)), goto_sg)
    # the holder's answer to a neighbour's request for the VIP is forwarded, not copied: no
    # other VM can make it send copies at will
    answer = make_packet(mac, "fa:16:3e:00:00:99", ip_src=VIP, ip_dst="10.0.2.7", arp_op=2)
    tr = trace(vrrp.cloud.flows(host), ofport, answer, [])
    assert not tr.punted and not tr.dropped
    # the tenant trace names the copy
    tracer = Tracer(vrrp.cloud.store, lambda: vrrp.cloud.dp, lambda: None)
    doc = tracer.trace(Request(port["id"], destination_ip=VIP, protocol="arp", source_ip=VIP,
                               destination_mac="ff:ff:ff:ff:ff:ff"))  # fmt: skip
    steps = [s for p in doc["paths"] if p["verdict"] == "punted" for s in p["steps"]]
    assert steps[-2:] == [
        f"{host}: port security: {VIP} is an allowed address pair of port {port['id']}",
        f"{host}: sent to tenantnet (its ARP says who holds the virtual IP)",
    ], steps


def test_nothing_routes_to_a_vip_nobody_announced(vrrp: Vrrp) -> None:
    assert vip_rules(vrrp.cloud, "hv1") == set() and vip_rules(vrrp.cloud, "hv2") == set()
    r = vrrp.routed
    assert r.send("v1", VIP, r.if1, protocol=6, dst_port=22).dropped


def test_an_announcement_is_one_observation_and_routes_the_vip_to_its_holder(
    vrrp: Vrrp,
) -> None:
    rev = vrrp.port("a")["revision_number"]
    assert vrrp.announce("a")
    assert vrrp.held("a") == [VIP] and vrrp.held("b") == []
    assert vrrp.port("a")["revision_number"] == rev + 1  # one write
    a = vrrp.routed.vms["a"][0]
    # from hv1 through the router, to a's MAC on hv2 (a's own owner, below fixed IPs' rules)
    assert vrrp.route_to_vip() == (TUN, "10.9.0.2", a["mac_address"])
    for host in ("hv1", "hv2"):  # every router host
        [rule] = vip_rules(vrrp.cloud, host)
        assert (rule.cookie, rule.priority) == (t.router_cookie(a["_num"]), PRIO_VIP_NEIGHBOUR)
    assert vip_rules(vrrp.cloud, "hv3") == set()  # no router host
    # the tenant trace follows it too
    tracer = Tracer(vrrp.cloud.store, lambda: vrrp.cloud.dp, lambda: None)
    v1 = vrrp.routed.vms["v1"][0]
    doc = tracer.trace(Request(v1["id"], destination_ip=VIP, protocol="tcp",
                               destination_l4_port=22))  # fmt: skip
    assert doc["delivered_to"] == [a["id"]], doc
    # a whole compile gives the same: a restart sends nothing
    restart(vrrp.cloud)
    assert vrrp.cloud.dp.stats.flow_mods == 0


def test_a_repeated_announcement_writes_nothing(vrrp: Vrrp) -> None:
    vrrp.announce("a")
    rev = vrrp.port("a")["revision_number"]
    mods = vrrp.cloud.dp.stats.flow_mods
    written = vrrp.cloud.dp.vip_claims.written
    for _ in range(5):  # keepalived's burst
        vrrp.announce("a", after=0.1)
    assert vrrp.learner.held == 5 and vrrp.cloud.dp.vip_claims.written == written
    assert vrrp.port("a")["revision_number"] == rev
    assert vrrp.cloud.dp.stats.flow_mods == mods
    # a claim posted late (the port holds the VIP by the time the actor takes it): dropped
    vrrp.cloud.dp.post("vip_claim", (vrrp.routed.net2["id"], VIP, vrrp.a["id"], "hv2"))
    vrrp.cloud.idle()
    assert vrrp.port("a")["revision_number"] == rev


def test_claims_are_kept_once_per_vip_and_not_written_twice_in_a_row(vrrp: Vrrp) -> None:
    """`VipClaims`: the repeats of a burst that arrive before the first write's event came
    back (the mirror does not show the holder yet) are not written again, for `RECENT_S`."""
    now = [100.0]
    claims = VipClaims(clock=lambda: now[0])
    mirror, net = vrrp.cloud.dp.mirror, vrrp.routed.net2["id"]
    claims.add((net, VIP, vrrp.a["id"], "hv2"), mirror, lambda h: True)
    claims.add((net, VIP, vrrp.b["id"], "hv1"), mirror, lambda h: True)  # the latest wins
    assert claims.take(lambda h: True) == {(net, VIP): vrrp.b["id"]}
    claims.add((net, VIP, vrrp.b["id"], "hv1"), mirror, lambda h: True)
    assert claims.take(lambda h: True) == {}
    now[0] += RECENT_S
    claims.add((net, VIP, vrrp.b["id"], "hv1"), mirror, lambda h: True)
    assert claims.take(lambda h: True) == {(net, VIP): vrrp.b["id"]}
    # another instance's host: not this one's to write
    claims.add((net, VIP, vrrp.a["id"], "hv2"), mirror, lambda h: False)
    assert claims.take(lambda h: True) == {} and claims.dropped == 1
    # the actor walks the pending claims once a step (`due`) and writes those; one replaced
    # in between is not written as it was
    now[0] += RECENT_S
    claims.add((net, VIP, vrrp.a["id"], "hv2"), mirror, lambda h: True)
    due = claims.due()
    assert due == {(net, VIP): (vrrp.a["id"], "hv2")}
    claims.add((net, VIP, vrrp.b["id"], "hv1"), mirror, lambda h: True)
    assert claims.take(lambda h: True, due) == {}
    assert claims.take(lambda h: True, claims.due()) == {(net, VIP): vrrp.b["id"]}


def test_an_address_that_is_not_the_senders_pair_is_not_learnt(vrrp: Vrrp) -> None:
    """v2 (no pairs) claims the VIP, a claims v3's fixed IP: port security drops both (no
    copy), and a forged packet-in naming them is refused by the controller too."""
    v3_ip = vrrp.routed.ip("v3")
    revs = {n: vrrp.port(n)["revision_number"] for n in ("a", "b")}
    v2_rev = vrrp.cloud.store.get_port(vrrp.routed.vms["v2"][0]["id"])["revision_number"]
    assert not vrrp.announce("v2")
    assert not vrrp.announce("a", v3_ip)
    assert vrrp.learner.claimed == 0 and vrrp.learner.unmatched == 2
    assert {n: vrrp.port(n)["revision_number"] for n in ("a", "b")} == revs
    assert vrrp.cloud.store.get_port(vrrp.routed.vms["v2"][0]["id"])["revision_number"] == v2_rev
    # the store refuses it as well (a claim from a stale view)
    vrrp.cloud.store.set_ports_observed(vips={(vrrp.routed.net2["id"], v3_ip): vrrp.a["id"]})
    vrrp.cloud.store.set_ports_observed(
        vips={(vrrp.routed.net2["id"], VIP): vrrp.routed.vms["v2"][0]["id"]}
    )
    assert vrrp.held("a") == [] and vrrp.held("v2") == []
    # a packet-in from another ofport than the port's is no claim either
    pin = vrrp.garp("a")
    forged = PacketIn(pin.dpid, pin.table_id, pin.cookie, 0, 9, None, pin.data)
    assert vrrp.learner.handle(forged) and vrrp.learner.claimed == 0
    vrrp.cloud.idle()
    assert vip_rules(vrrp.cloud, "hv1") == set()


def test_the_holder_changes_and_only_the_vip_rules_move(vrrp: Vrrp) -> None:
    vrrp.announce("a")
    mods = vrrp.cloud.dp.stats.flow_mods
    assert vrrp.announce("b")
    assert vrrp.held("a") == [] and vrrp.held("b") == [VIP]
    b = vrrp.routed.vms["b"][0]
    assert vrrp.route_to_vip() == (4, None, b["mac_address"])  # b is on hv1: delivered there
    tracer = Tracer(vrrp.cloud.store, lambda: vrrp.cloud.dp, lambda: None)
    doc = tracer.trace(Request(vrrp.routed.vms["v1"][0]["id"], destination_ip=VIP,
                               protocol="tcp", destination_l4_port=22))  # fmt: skip
    assert doc["delivered_to"] == [b["id"]], doc
    # per router host: a's rule deleted, b's added
    assert vrrp.cloud.dp.stats.flow_mods - mods == 2 * 2
    for host in ("hv1", "hv2"):
        [rule] = vip_rules(vrrp.cloud, host)
        assert rule.cookie == t.router_cookie(b["_num"])
    # and back
    vrrp.announce("a")
    assert vrrp.route_to_vip() == (TUN, "10.9.0.2", vrrp.a["mac_address"])
    restart(vrrp.cloud)
    assert vrrp.cloud.dp.stats.flow_mods == 0


def test_the_pair_removed_or_the_port_deleted_takes_the_rule_along(vrrp: Vrrp) -> None:
    vrrp.announce("a")
    assert vip_rules(vrrp.cloud, "hv1")
    vrrp.cloud.store.update("port", vrrp.a["id"], {"allowed_address_pairs": []})
    vrrp.cloud.idle()
    assert vrrp.held("a") == []
    assert vip_rules(vrrp.cloud, "hv1") == set() and vip_rules(vrrp.cloud, "hv2") == set()
    assert vrrp.routed.send("v1", VIP, vrrp.routed.if1, protocol=6, dst_port=22).dropped
    vrrp.announce("b")
    assert vip_rules(vrrp.cloud, "hv2")
    vrrp.cloud.store.delete("port", vrrp.b["id"])
    FakeAgent.instances["hv1"].unplug(vrrp.b["id"])
    vrrp.cloud.idle()
    assert vip_rules(vrrp.cloud, "hv1") == set() and vip_rules(vrrp.cloud, "hv2") == set()


def test_the_arp_responder_never_answers_for_a_vip(vrrp: Vrrp) -> None:
    """Held or not, the VIP's ARP floods (its holder answers): no rule of ours answers it."""
    vrrp.announce("a")
    for host in ("hv1", "hv2", "hv3"):
        assert not [r for r in vrrp.cloud.flows(host).rules
                    if r.table == t.L2_FROM_PORT and ("arp_tpa", VIP) in r.match]  # fmt: skip
    port, host, ofport = vrrp.routed.vms["v3"]  # net 2 on hv1, asks for the VIP
    pkt = make_packet(port["mac_address"], "ff:ff:ff:ff:ff:ff", ip_src=vrrp.routed.ip("v3"),
                      ip_dst=VIP, arp_op=1)  # fmt: skip
    tr = trace(vrrp.cloud.flows(host), ofport, pkt, [])
    assert ofport not in tr.ports and TUN in tr.ports  # flooded, not answered


def test_a_port_flooding_its_announcements_gets_them_dropped_on_its_switch(
    vrrp: Vrrp,
) -> None:
    """The copies share the host's packet-in meter with its ports' DHCP: a port over its
    budget gets a drop (hard timeout) of its gratuitous ARPs for the VIP above its announce
    rule - a drop, so that one left after the pair is gone lets nothing through - and one
    for each other VIP it floods during the ban; its other ARPs still flow."""
    sent: list[tuple[int, Rule, int]] = []
    vrrp.learner.guard = FloodGuard(GuardSettings(max_pps=3, ban_s=10, max_ban_s=40))
    vrrp.learner.send_ban = lambda dpid, rule, seconds: sent.append((dpid, rule, seconds)) is None
    port, host, ofport = vrrp.routed.vms["a"]
    for _ in range(6):  # within one second: 3 admitted, the 4th an offence, then dropped
        assert vrrp.learner.handle(vrrp.garp("a"))
    assert vrrp.learner.status()["flooded"] == 3 and vrrp.learner.bans == 1
    [(dpid, quiet, seconds)] = sent
    assert (dpid, seconds) == (datapath_id_for(host), 10)
    assert t.owner_kind(quiet.cookie) == t.OwnerKind.ARP_COPY_GUARD and not quiet.instructions
    assert t.is_transient(quiet.cookie)  # expired by the switch, never diffed
    installed = vrrp.cloud.flows(host)
    [announce] = [r for r in installed.rules
                  if r.table == t.PORT_SECURITY and ("arp_tpa", VIP) in r.match]  # fmt: skip
    assert quiet.match == announce.match and quiet.priority > announce.priority
    # on the switch: its GARPs for the VIP are dropped, its other ARPs from it still flow
    guarded = Slice(installed.rules | {quiet}, installed.groups)
    garp = make_packet(port["mac_address"], "ff:ff:ff:ff:ff:ff", ip_src=VIP, ip_dst=VIP,
                       arp_op=1)  # fmt: skip
    assert trace(installed, ofport, garp, []).punted
    assert trace(guarded, ofport, garp, []).dropped
    answer = make_packet(port["mac_address"], "fa:16:3e:00:00:99", ip_src=VIP,
                         ip_dst="10.0.2.7", arp_op=2)  # fmt: skip
    assert not trace(guarded, ofport, answer, []).dropped
    # a second VIP flooded during the same ban gets its own drop, once
    other = "10.0.2.60"
    pairs = [{"ip_address": VIP}, {"ip_address": other}]
    vrrp.cloud.store.update("port", vrrp.a["id"], {"allowed_address_pairs": pairs})
    vrrp.cloud.idle()
    for _ in range(5):
        assert vrrp.learner.handle(vrrp.garp("a", other))
    assert [r.match for _, r, _ in sent[1:]] == [
        arp_copy_guard_rule(ofport, port["mac_address"], other, port["_num"]).match
    ]
    # another port on the same host is not affected
    assert vrrp.learner.handle(vrrp.garp("b"))
    assert vrrp.learner.status()["flooded"] == 8


def test_a_vip_claimed_back_before_the_mirror_shows_its_move_is_still_written(
    vrrp: Vrrp,
) -> None:
    """The mirror lags the store: a moved B -> A -> ... where A's claim comes while the
    mirror still shows A as the holder (B's write's event not back yet) was dropped as
    "holds it already", and B kept the VIP while A had it."""
    vrrp.announce("a")  # written: the mirror shows a as the holder
    claims = VipClaims(clock=lambda: vrrp.now[0])
    mirror, net = vrrp.cloud.dp.mirror, vrrp.routed.net2["id"]
    claims.add((net, VIP, vrrp.b["id"], "hv1"), mirror, lambda h: True)
    assert claims.take(lambda h: True) == {(net, VIP): vrrp.b["id"]}  # B's write, not seen yet
    claims.add((net, VIP, vrrp.a["id"], "hv2"), mirror, lambda h: True)  # A takes it back
    assert claims.take(lambda h: True) == {}  # a move a second at most...
    vrrp.now[0] += RECENT_S
    assert claims.take(lambda h: True) == {(net, VIP): vrrp.a["id"]}  # ...but not lost


def test_two_ports_announcing_in_turn_move_the_vip_once_a_second(vrrp: Vrrp) -> None:
    """A split brain (or a tenant driving it): every announcement is a move, each a store
    write and flow-mods on every router host; at most one a second, the latest wins."""
    vrrp.announce("a")
    written = vrrp.cloud.dp.vip_claims.written
    for i in range(10):  # within 0.5 s
        vrrp.announce("b" if i % 2 == 0 else "a", after=0.05)
    assert vrrp.cloud.dp.vip_claims.written == written  # a moved a moment ago: none yet
    vrrp.announce("b", after=RECENT_S)
    assert vrrp.cloud.dp.vip_claims.written == written + 1
    assert vrrp.held("b") == [VIP] and vrrp.held("a") == []
