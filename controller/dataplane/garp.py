"""Gratuitous ARP for a router interface that (re)appears.

A VM keeps its gateway's MAC in its ARP cache until the entry goes stale and a probe fails
(Linux: ~5 s after the last confirmation, then a unicast probe, then broadcast).  When an
interface is removed and added again it usually comes back with another port, so another MAC:
until the VM notices, it sends its routed traffic to a MAC no flow routes any more.  So when an
interface port appears (a new interface, or a port that became one, or one whose MAC or
address changed, or its router set admin up again) the data plane announces it once: one
gratuitous ARP request (sender and target the interface's address, sender MAC its MAC,
broadcast) out of each port of the interface's network on every host that holds them, sent
when that host has confirmed the step that installed the interface's flows
(`controller.dataplane.batch.Batch.announce`), so a VM that takes the new MAC finds it routed.
Linux updates an existing neighbour entry from such an ARP whatever ``arp_accept`` says (that
setting governs creating new entries only).

Bounded: one frame per port, once per appearance, at most `MAX_PER_HOST` per host (the rest
learn the MAC the usual way), as one write per host; no repeats and no flooding through the
tunnels (each host sends to its own ports).  Frames are built with os-ken's packet library.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import netaddr
from os_ken.lib.packet import arp, ethernet, packet
from os_ken.lib.packet.ether_types import ETH_TYPE_ARP

from controller.dataplane.bindings import Bindings
from controller.dataplane.state import Mirror, PortRec, RouterRec
from controller.southbound.ovsdb_host import HostObservation

LOG = logging.getLogger(__name__)

MAX_PER_HOST = 512
"""Gratuitous ARPs one interface's appearance sends on one host (one per local port)."""

BROADCAST = "ff:ff:ff:ff:ff:ff"
UNKNOWN = "00:00:00:00:00:00"

Frames = list[tuple[int, bytes]]
"""(ofport, frame) pairs for one host's switch."""


def appeared(old: PortRec | None, new: PortRec | None) -> bool:
    """Whether a port event makes a router interface appear to its network's VMs: a new
    interface, a port that became one, or an interface whose MAC or addresses changed."""
    if new is None or new.router_id is None:
        return False
    return (
        old is None
        or old.router_id is None
        or (old.mac, old.fixed_ips)
        != (
            new.mac,
            new.fixed_ips,
        )
    )


def router_came_up(old: RouterRec | None, new: RouterRec | None) -> bool:
    """Whether a router event makes its interfaces route again: set admin up, or its record
    seen after its interfaces (events reordered).  While a router does not route, its
    interfaces' ARP answers are gone too, and a VM that asks for its gateway then gets the
    DHCP server's MAC (the responder answers a DHCP subnet's server address, its gateway,
    when no router holds it) or nothing; its interfaces are announced again so such VMs
    move back at once."""
    return new is not None and new.admin_up and (old is None or not old.admin_up)


def frame(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request announcing that ``ip`` is at ``mac`` (RFC 5227's
    announcement: sender and target address both ``ip``)."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=BROADCAST, src=mac, ethertype=ETH_TYPE_ARP))
    pkt.add_protocol(
        arp.arp(opcode=arp.ARP_REQUEST, src_mac=mac, src_ip=ip, dst_mac=UNKNOWN, dst_ip=ip)
    )
    pkt.serialize()
    return bytes(pkt.data)


def announcements(
    interface: PortRec,
    mirror: Mirror,
    bindings: Bindings,
    observed: Mapping[str, HostObservation | None],
) -> dict[str, Frames]:
    """host id -> the gratuitous ARPs for ``interface`` out of each port of its network that
    the host holds and shows plugged (``observed``: each host's OVSDB, None if not read).  No
    IPv4 address, or a router down or unknown: nothing (IPv6 neighbours are not announced)."""
    ips = [ip for ip in interface.fixed_ips if netaddr.valid_ipv4(ip)]
    router = mirror.routers.get(interface.router_id or "")
    if not ips or router is None or not router.admin_up:
        return {}  # a router that routes nothing is not announced (`router_came_up` does)
    announce = frame(interface.mac, ips[0])
    out: dict[str, Frames] = {}
    for pid in sorted(mirror.net_ports.get(interface.network_id, ())):
        port = mirror.ports.get(pid)
        if port is None or port.router_id is not None or not port.admin_up:
            continue
        host = bindings.holder(pid)
        obs = observed.get(host) if host is not None else None
        ofport = obs.bindings.get(pid) if obs is not None else None
        if host is None or ofport is None:
            continue
        frames = out.setdefault(host, [])
        if len(frames) < MAX_PER_HOST:
            frames.append((ofport, announce))
    return out
