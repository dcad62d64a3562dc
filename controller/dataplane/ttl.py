"""ICMP time exceeded for routed packets whose TTL ran out: the packet-in handler of routers.

A packet to be routed that arrives with TTL 1 is sent to the controller by its router
interface's flow (`flows.routing`, table ``L3_ROUTING``, the interface's cookie); the answer is
ICMP type 11 code 0 from the interface's address, carrying the offending IP header and the
first 8 bytes of its payload (RFC 792), back out of the port the packet came from - what makes
traceroute show the router as a hop.  Encoded with ``os_ken.lib.packet``.

As for DHCP (`controller.dataplane.dhcp`), who asks is decided by the switch, never by the
frame: the packet-in must come from a router interface's flow in ``L3_ROUTING``, on a host
from an ofport that host's OVSDB shows for a port of the interface's network, and the
interface's router must be known and up (an interface whose router record the mirror does not
have, e.g. events reordered, answers nothing, as its flows route nothing).  The frame must be
IPv4 from that port's MAC and one of its addresses; an ICMP error is never answered with
another (RFC 1122).  The host's packet-in meter limits how many arrive; runs where
`controller.southbound.packet_in` calls it (its worker or, bounded, the asking switch's receive
thread), reads records by key and never waits: the asking port is found from the in_port by an
ofport index of the host's observation, built once per observation, not per packet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from os_ken.lib.packet import ethernet, icmp, ipv4, packet

from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import HostFacts
from controller.dataplane.state import Mirror, PortRec
from controller.southbound.ovsdb_host import HostObservation
from controller.southbound.packet_in import PacketIn
from flows import tables as t

LOG = logging.getLogger(__name__)

ICMP_TIME_EXCEEDED = 11
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})  # never answered with an error (RFC 1122 3.2.2)
REPLY_TTL = 64


class TtlExpired:
    """Answers the TTL-expired packet-ins of every host from the data plane's state."""

    def __init__(self, mirror: Mirror, bindings: Bindings, hosts: Mapping[str, HostFacts],
                 by_dpid: Mapping[int, str]) -> None:  # fmt: skip
        self.mirror = mirror
        self.bindings = bindings
        self.hosts = hosts
        self.by_dpid = by_dpid
        self.answered = 0
        self.unmatched = 0  # no current interface's flow, or a sender that is no port there
        self.malformed = 0
        # host -> (the observation, its ofport -> iface-ids): rebuilt when the data plane
        # replaces the host's observation (it never edits one in place)
        self._at: dict[str, tuple[HostObservation, Mapping[int, tuple[str, ...]]]] = {}

    def handle(self, pkt: PacketIn) -> bytes | None:
        """The time-exceeded frame for the packet-in's in_port, or None."""
        iface = self._interface(pkt)
        sender = self._sender(pkt, iface) if iface is not None else None
        if iface is None or sender is None:
            self.unmatched += 1
            return None
        try:
            frame = packet.Packet(pkt.data)
        except Exception:  # os-ken raises anything on a truncated or odd frame
            self.malformed += 1
            return None
        eth = frame.get_protocol(ethernet.ethernet)
        ip = frame.get_protocol(ipv4.ipv4)
        err = frame.get_protocol(icmp.icmp)
        gateway = _ipv4_of(iface)
        if eth is None or ip is None or gateway is None or ip.ttl > 1:
            self.malformed += 1
            return None
        if eth.src != sender.mac.lower() or ip.src not in sender.fixed_ips:
            self.unmatched += 1
            return None
        if err is not None and err.type in ICMP_ERRORS:
            return None
        self.answered += 1
        return _time_exceeded(pkt.data[14:], ip, eth.src, iface.mac.lower(), gateway)

    def _interface(self, pkt: PacketIn) -> PortRec | None:
        if pkt.table_id != t.L3_ROUTING or t.owner_kind(pkt.cookie) != t.OwnerKind.ROUTER:
            return None
        port = self.mirror.port_by_num(t.owner_num(pkt.cookie))
        if port is None or port.router_id is None:
            return None
        router = self.mirror.routers.get(port.router_id)
        return port if router is not None and router.admin_up else None

    def _sender(self, pkt: PacketIn, iface: PortRec) -> PortRec | None:
        """The port of the interface's network held on the packet-in's host at its in_port."""
        host_id = self.by_dpid.get(pkt.dpid)
        rt = self.hosts.get(host_id) if host_id is not None else None
        obs = rt.obs if rt is not None else None
        if host_id is None or obs is None or pkt.in_port is None:
            return None
        for pid in self._ports_at(host_id, obs).get(pkt.in_port, ()):
            port = self.mirror.ports.get(pid)
            if (port is not None and port.network_id == iface.network_id
                    and self.bindings.holder(pid) == host_id):  # fmt: skip
                return port
        return None

    def _ports_at(self, host_id: str, obs: HostObservation) -> Mapping[int, tuple[str, ...]]:
        """The host's ofport -> iface-ids (normally one each), once per observation."""
        cached = self._at.get(host_id)
        if cached is not None and cached[0] is obs:
            return cached[1]
        index: dict[int, tuple[str, ...]] = {}
        for pid, ofport in obs.bindings.items():
            index[ofport] = (*index.get(ofport, ()), pid)
        if len(self._at) > len(self.hosts):  # bounded: hosts deleted since are dropped
            self._at = {h: v for h, v in list(self._at.items()) if h in self.hosts}
        view = MappingProxyType(index)
        self._at[host_id] = (obs, view)
        return view

    def status(self) -> dict[str, int]:
        return {"answered": self.answered, "unmatched": self.unmatched,
                "malformed": self.malformed}  # fmt: skip


def _ipv4_of(port: PortRec) -> str | None:
    return next((ip for ip in port.fixed_ips if ":" not in ip), None)


def _time_exceeded(ip_bytes: bytes, ip: ipv4.ipv4, to_mac: str, from_mac: str,
                   from_ip: str) -> bytes:  # fmt: skip
    """ICMP time exceeded (in transit) for the IP packet ``ip_bytes``, from the interface."""
    quoted = ip_bytes[: ip.header_length * 4 + 8]
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=to_mac, src=from_mac, ethertype=0x0800))
    reply.add_protocol(ipv4.ipv4(src=from_ip, dst=ip.src, proto=1, ttl=REPLY_TTL))
    reply.add_protocol(icmp.icmp(type_=ICMP_TIME_EXCEEDED, code=0,
                                 data=icmp.TimeExceeded(data=quoted)))  # fmt: skip
    reply.serialize()
    return bytes(reply.data)
