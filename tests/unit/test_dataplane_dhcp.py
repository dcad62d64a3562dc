"""The DHCP packet-in handler (`controller.dataplane.dhcp.DhcpPunt`): a packet-in is answered
only when the switch says it came from the punt rule of a port, on the host holding that port,
from the ofport that host's OVSDB shows for it; the answer comes from the mirrored records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.dataplane.bindings import Bindings
from controller.dataplane.dhcp import DhcpPunt
from controller.dataplane.punt_source import PortPunts
from controller.dataplane.state import HostRec, Mirror, NetworkRec, PortRec, SubnetRec
from controller.services.dhcp import DISCOVER, OFFER, DhcpResponder
from controller.services.dhcp_guard import FloodGuard, GuardSettings
from controller.southbound.ovsdb_host import HostObservation
from controller.southbound.packet_in import PacketIn
from flows import tables as t
from flows.compiler import dhcp_guard_rule
from flows.model import Rule
from tests.unit.test_dhcp_responder import client_frame, parse

MAC = "fa:16:3e:00:00:05"
OTHER_MAC = "fa:16:3e:00:00:06"
DPID = 0x11


@dataclass
class Host:
    rec: HostRec
    obs: HostObservation | None
    degraded: str = ""
    installed: dict[int, Any] | None = field(default_factory=dict)
    groups: dict[Any, set[int]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return True


def _world(enable_dhcp: bool = True) -> tuple[DhcpPunt, PortRec]:
    mirror = Mirror()
    mirror.set_network("n1", NetworkRec.from_store({
        "id": "n1", "_key": 7, "provider:segmentation_id": 77, "mtu": 1400}))  # fmt: skip
    mirror.set_record("subnet", "s1", SubnetRec.from_store({
        "id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24", "ip_version": 4,
        "gateway_ip": "10.0.0.1", "enable_dhcp": enable_dhcp}))  # fmt: skip
    port = PortRec.from_store({
        "id": "p1", "_num": 42, "network_id": "n1", "mac_address": MAC,
        "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}],
        "binding:host_id": "hv1"})  # fmt: skip
    mirror.set_port("p1", port)
    bindings = Bindings()
    hosts = {"hv1": Host(HostRec("hv1", "192.0.2.1", {}), HostObservation({"p1": 3}))}
    bindings.resolve(port, unsynced={"hv1"}, known=hosts)
    punt = DhcpPunt(PortPunts(mirror, bindings, hosts, {DPID: "hv1"}), DhcpResponder())
    return punt, port


def _pkt(cookie: int = t.port_cookie(42), in_port: int = 3, dpid: int = DPID) -> PacketIn:
    return PacketIn(dpid, t.PORT_SECURITY, cookie, 1, in_port, None, client_frame(DISCOVER, MAC))


def test_a_punt_from_the_ports_ofport_on_its_host_is_answered_from_the_records() -> None:
    punt, _ = _world()
    reply = punt.handle(_pkt())
    assert reply is not None
    _, _, _, msg, options = parse(reply)
    assert msg.yiaddr == "10.0.0.5" and options[53] == bytes([OFFER])
    assert options[26] == (1400).to_bytes(2, "big")  # the network's MTU


def test_anything_the_punt_rule_of_the_port_does_not_explain_gets_nothing() -> None:
    punt, _ = _world()
    assert punt.handle(_pkt(in_port=4)) is None  # another ofport than OVSDB shows
    assert punt.handle(_pkt(dpid=0x99)) is None  # a switch that is no host
    assert punt.handle(_pkt(cookie=t.port_cookie(43))) is None  # no such port
    assert punt.handle(_pkt(cookie=t.network_cookie(7))) is None  # not a port's rule
    assert punt.unmatched == 4


def test_a_subnet_with_dhcp_off_is_not_answered() -> None:
    punt, port = _world(enable_dhcp=False)
    assert not punt.mirror.dhcp_served(port)
    assert punt.handle(_pkt()) is None


def test_the_guard_given_to_the_handler_is_the_one_it_uses() -> None:
    """A new FloodGuard tracks no port yet, so its length is 0: the handler once took it for
    "no guard" and put the default one (20/s a port) in its place, whatever
    ``--dhcp-port-max-pps`` said."""
    world, _ = _world()
    guard = FloodGuard(GuardSettings(max_pps=50, ban_s=10, max_ban_s=40))
    punt = DhcpPunt(world.source, DhcpResponder(), guard)
    assert punt.guard is guard
    replies = [punt.handle(_pkt()) for _ in range(30)]
    assert all(r is not None for r in replies)


def _guarded(max_pps: int = 3) -> tuple[DhcpPunt, list[tuple[int, Rule, int]]]:
    """The world above with a second port (p2, ofport 4) on the same host, a small budget and
    a recorder for the drop rules the handler sends."""
    punt, _ = _world()
    other = PortRec.from_store({
        "id": "p2", "_num": 43, "network_id": "n1", "mac_address": OTHER_MAC,
        "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.6"}],
        "binding:host_id": "hv1"})  # fmt: skip
    punt.mirror.set_port("p2", other)
    punt.source.hosts["hv1"].obs = HostObservation({"p1": 3, "p2": 4})  # type: ignore[attr-defined]
    punt.source.bindings.resolve(other, unsynced={"hv1"}, known=punt.source.hosts)
    sent: list[tuple[int, Rule, int]] = []
    punt.guard = FloodGuard(GuardSettings(max_pps=max_pps, ban_s=10, max_ban_s=40))
    punt.send_ban = lambda dpid, rule, seconds: sent.append((dpid, rule, seconds)) is None
    return punt, sent


def _other_pkt() -> PacketIn:
    frame = client_frame(DISCOVER, OTHER_MAC)
    return PacketIn(DPID, t.PORT_SECURITY, t.port_cookie(43), 1, 4, None, frame)


def test_a_flooding_port_gets_one_drop_rule_and_its_neighbour_is_still_answered() -> None:
    punt, sent = _guarded(max_pps=3)
    replies = [punt.handle(_pkt()) for _ in range(10)]
    assert all(r is not None for r in replies[:3]) and replies[3:] == [None] * 7
    assert sent == [(DPID, dhcp_guard_rule(3, 42), 10)]  # one rule for the one offence
    _, rule, _ = sent[0]
    assert rule.table == t.PORT_SECURITY and rule.priority > t.PRIO_DHCP_PUNT
    assert rule.instructions == () and ("in_port", 3) in rule.match  # drop, that port only
    assert t.owner_kind(rule.cookie) == t.OwnerKind.DHCP_GUARD and t.is_transient(rule.cookie)
    reply = punt.handle(_other_pkt())
    assert reply is not None and parse(reply)[3].yiaddr == "10.0.0.6"
    st = punt.status()
    assert st["drops"]["flood"] == 7 and st["port_bans"] == 1 and st["port_ban_failures"] == 0
    assert st["answers"]["offer"] == 4


def test_a_drop_rule_that_cannot_be_sent_is_counted_and_the_flood_still_dropped() -> None:
    punt, _ = _guarded(max_pps=3)
    punt.send_ban = lambda dpid, rule, seconds: False  # the switch stopped reading
    replies = [punt.handle(_pkt()) for _ in range(6)]
    assert replies[3:] == [None] * 3
    assert punt.status()["port_ban_failures"] == 1


def test_garbage_from_a_port_is_dropped_and_counted_by_the_real_parse_path() -> None:
    """Truncated frames, a reply (wrong op), a mangled option list, random bytes: each goes
    through the packet-in handler to os-ken's parser and comes out as a counted drop."""
    punt, _ = _world()
    good = client_frame(DISCOVER, MAC)
    dhcp_at = 14 + 20 + 8
    wrong_op = bytearray(good)
    wrong_op[dhcp_at] = 2  # BOOTREPLY from a client
    bad_option = bytearray(good)
    bad_option[dhcp_at + 240 + 1] = 200  # the message type option claims 200 bytes
    frames = [b"", good[:20], good[: dhcp_at + 100], bytes(wrong_op), bytes(bad_option),
              bytes(range(256)) * 3, b"\xff" * 9000]  # fmt: skip
    for frame in frames:
        pkt = PacketIn(DPID, t.PORT_SECURITY, t.port_cookie(42), 1, 3, None, frame)
        assert punt.handle(pkt) is None
    assert punt.status()["drops"]["malformed"] == len(frames)
    assert punt.handle(_pkt()) is not None  # and the next good one is answered


def test_the_facts_follow_every_change_of_the_port_its_network_and_subnets() -> None:
    """`Mirror.dhcp_facts` gives the same objects again while the records are the same (the
    responder then finds its plan without hashing new ones), and the new facts as soon as the
    port, its network or one of its subnets is replaced, or a subnet is added or removed: the
    answers follow (MTU, gateway, address)."""
    punt, port = _world()
    mirror = punt.mirror
    first = mirror.dhcp_facts(port)
    assert first is not None and mirror.dhcp_facts(port) is first
    mirror.set_network("n1", NetworkRec.from_store({
        "id": "n1", "_key": 7, "provider:segmentation_id": 77, "mtu": 1300}))  # fmt: skip
    assert parse(punt.handle(_pkt()) or b"")[4][26] == (1300).to_bytes(2, "big")
    mirror.set_record("subnet", "s1", SubnetRec.from_store({
        "id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24", "ip_version": 4,
        "gateway_ip": "10.0.0.254", "enable_dhcp": True}))  # fmt: skip
    assert parse(punt.handle(_pkt()) or b"")[4][3] == bytes([10, 0, 0, 254])  # the router
    mirror.set_record("subnet", "s2", SubnetRec.from_store({
        "id": "s2", "network_id": "n1", "cidr": "10.1.0.0/24", "ip_version": 4,
        "gateway_ip": "10.1.0.1", "enable_dhcp": True}))  # fmt: skip
    facts = mirror.dhcp_facts(port)
    assert facts is not None and [s.id for s in facts[1].subnets] == ["s1", "s2"]
    moved = PortRec.from_store({
        "id": "p1", "_num": 42, "network_id": "n1", "mac_address": MAC,
        "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.1.0.9"}],
        "binding:host_id": "hv1"})  # fmt: skip
    mirror.set_port("p1", moved)
    assert parse(punt.handle(_pkt()) or b"")[3].yiaddr == "10.1.0.9"
    mirror.set_record("subnet", "s2", None)
    facts = mirror.dhcp_facts(moved)
    assert facts is not None and [s.id for s in facts[1].subnets] == ["s1"]
    assert punt.handle(_pkt()) is None  # its only address is in a subnet that is gone
