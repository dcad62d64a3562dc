"""The DHCP packet-in handler (`controller.dataplane.dhcp.DhcpPunt`): a packet-in is answered
only when the switch says it came from the punt rule of a port, on the host holding that port,
from the ofport that host's OVSDB shows for it; the answer comes from the mirrored records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.dataplane.bindings import Bindings
from controller.dataplane.dhcp import DhcpPunt
from controller.dataplane.state import HostRec, Mirror, NetworkRec, PortRec, SubnetRec
from controller.services.dhcp import DISCOVER, OFFER, DhcpResponder
from controller.southbound.ovsdb_host import HostObservation
from controller.southbound.packet_in import PacketIn
from flows import tables as t
from tests.unit.test_dhcp_responder import client_frame, parse

MAC = "fa:16:3e:00:00:05"
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
    punt = DhcpPunt(mirror, bindings, hosts, {DPID: "hv1"}, DhcpResponder())
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
