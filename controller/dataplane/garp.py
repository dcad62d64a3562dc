"""Gratuitous ARP for a router interface a host newly answers for.

A VM keeps its gateway's MAC in its ARP cache until the entry goes stale and a probe fails
(Linux: 15-45 s after the last confirmation, then ~5 s, then a unicast probe).  Until it
notices that the MAC changed, it sends its routed traffic to a MAC no flow routes.  That happens
when an interface is removed and added again (another port, so another MAC), when its router
was down while the VM asked (no answer then, or, on a subnet with DHCP, the DHCP server's MAC:
the responder answers the server address, the gateway, while no router holds it), and when a
VM asked before the router existed at all (the same), or on a host that missed the interface's
flows while its switch was away.

What all of these have in common is that the host's switch gets the interface's ARP answer
(`flows.routing`, ``L2_FROM_PORT`` at `flows.routing.PRIO_ARP_GATEWAY`, the interface's owner)
as a new or changed flow.  So that is the trigger: when a step's diff for a host adds such an
answer, once that host has confirmed the step (`controller.dataplane.batch.Batch.announce`:
the interface's flows are in, so a VM that takes the MAC finds it routed) the host sends one
gratuitous ARP request (sender and target the interface's address, sender MAC its MAC,
broadcast) out of each of its ports in the interface's network.  A restart or reconnect that
finds the answers installed sends none; a switch that lost its flows gets them again.  Linux
updates an existing neighbour entry from such an ARP whatever ``arp_accept`` says (that
setting governs creating new entries only).

Bounded: one frame per port and answer added, at most `MAX_PER_HOST` per interface and host
(the rest learn the MAC the usual way), as one write per host; no flooding through the tunnels
(each host sends to its own ports).  Frames are built with os-ken's packet library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from os_ken.lib.packet import arp, ethernet, packet
from os_ken.lib.packet.ether_types import ETH_TYPE_ARP

from controller.dataplane.bindings import Bindings
from controller.dataplane.state import Mirror
from controller.southbound.ovsdb_host import HostObservation
from flows import tables as t
from flows.model import Rule
from flows.routing import PRIO_ARP_GATEWAY

LOG = logging.getLogger(__name__)

MAX_PER_HOST = 512
"""Gratuitous ARPs one added answer sends on one host (one per local port of its network)."""

BROADCAST = "ff:ff:ff:ff:ff:ff"
UNKNOWN = "00:00:00:00:00:00"

Frames = list[tuple[int, bytes]]
"""(ofport, frame) pairs for one host's switch."""


def added_answers(add_rules: Iterable[Rule]) -> list[tuple[int, str]]:
    """(interface port number, address) of each router interface's ARP answer among a host
    diff's added rules (new, or replacing an installed one: another MAC, another owner)."""
    out = []
    for rule in add_rules:
        if (
            rule.table == t.L2_FROM_PORT
            and rule.priority == PRIO_ARP_GATEWAY
            and t.owner_kind(rule.cookie) == t.OwnerKind.ROUTER
        ):
            tpa = dict(rule.match).get("arp_tpa")
            if isinstance(tpa, str):
                out.append((t.owner_num(rule.cookie), tpa))
    return out


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
    answers: Iterable[tuple[int, str]],
    host_id: str,
    obs: HostObservation | None,
    mirror: Mirror,
    bindings: Bindings,
) -> tuple[Frames, set[str]]:
    """The gratuitous ARPs one host sends for the interface answers it was given (`added_answers`):
    out of each port of the interface's network that the host holds and shows plugged
    (``obs``: its OVSDB, None if not read); with the addresses they announce (for the log).  An
    interface the mirror no longer knows: nothing.  O(the host's ports), never the network's: a
    network may span many hosts."""
    out: Frames = []
    if obs is None:
        return out, set()
    by_net: dict[str, list[tuple[bytes, str]]] = {}
    for num, ip in answers:
        interface = mirror.port_by_num(num)
        if interface is not None and interface.router_id is not None:
            by_net.setdefault(interface.network_id, []).append((frame(interface.mac, ip), ip))
    sent: dict[bytes, int] = {}  # per interface (two tenants' gateways may share an address)
    what: set[str] = set()
    for pid, ofport in sorted(obs.bindings.items()):
        port = mirror.ports.get(pid)
        if port is None or port.router_id is not None or not port.admin_up:
            continue
        announce = by_net.get(port.network_id)
        if not announce or bindings.holder(pid) != host_id:
            continue
        for data, ip in announce:
            if sent.get(data, 0) < MAX_PER_HOST:
                sent[data] = sent.get(data, 0) + 1
                out.append((ofport, data))
                what.add(ip)
    return out, what
