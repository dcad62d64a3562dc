"""ARP responder: flows that answer an ARP request for an address tenantnet knows, on the
asker's own hypervisor, so the broadcast never crosses a tunnel (issue 15).  Pure, no I/O.

For each known IPv4 address of a network (a port's fixed IP; later a router interface; the DHCP
server address of `controller.services.dhcp.server_address`) one rule in ``L2_FROM_PORT`` (after
port security, so only requests a VM may send reach it), scoped by the network key in metadata,
turns the request into the reply in place and sends it back out of the port it came from - the
classic OVS recipe::

    metadata=K, arp, arp_op=1, arp_tpa=IP
      -> move:eth_src->eth_dst, set eth_src=MAC, set arp_op=2, move:arp_sha->arp_tha,
         set arp_sha=MAC, move:arp_spa->arp_tpa, set arp_spa=IP, output:IN_PORT

What is *not* answered (it behaves as before: flooded by the rule the caller names as
``fallthrough``, normally the network's flood group, like the ``PRIO_FLOOD`` rule):

* gratuitous ARP (``arp_spa == arp_tpa``): one rule per address matching ``arp_spa=IP,
  arp_tpa=IP``, above the answer; and the address owner's own probes (``arp_sha=<its MAC>``,
  e.g. ``arp_spa=0.0.0.0`` duplicate address detection), which an answer would turn into a
  conflict on the owner.
* addresses nobody listed: allowed-address-pair IPs and CIDRs are never entries (VRRP-style
  virtual IPs move between ports by gratuitous ARP; an answer from flows would pin them).
* requests from a port with port security off: `bypass_rule` (per such port, in_port match) sends
  its ARP to the fallthrough before any answer, since such a VM may own addresses tenantnet
  does not know about (a router or appliance VM).

Ownership (how the core plugs this in): cookies are the caller's (`flows.tables.owner_cookie`).
Each `ArpEntry` carries the cookie of its owner - the *port owner* (``port_cookie``) owns the
entries of its fixed IPs (so a port's fragment adds or removes exactly its answer and exclusion
rules, on every host of the network), the subnet-DHCP owner (kind 5, reserved in
`flows.tables.OwnerKind`) the server address's entries, a router owner its interface
addresses.  A port with port security off owns its `bypass_rule` on its own host.  The same
address in two networks gives two rules that differ in metadata: tenants with overlapping
subnets each get their own MAC.  When two entries of one network claim one IP (a port holding
the derived DHCP server address) the first wins and the caller is expected to order them ports
first (`entries_for`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import netaddr

from flows import tables
from flows.model import Apply, Instruction, Move, Output, Rule, SetField, ToGroup, match

ETH_TYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
OFPP_IN_PORT = 0xFFFFFFF8
PRIO_ARP_ANSWER = 150
"""Above the L2 unicast rules (PRIO_EXACT): unicast ARP requests (cache refreshes) are answered
too."""
PRIO_ARP_PASS = 160
"""Gratuitous ARP and the owner's own requests: not answered, forwarded as before."""
PRIO_ARP_BYPASS = 170
"""Ports with port security off: their ARP is never answered from flows."""


@dataclass(frozen=True)
class ArpEntry:
    """One address the network answers for, with the MAC that owns it and the owner's cookie."""

    ip: str
    mac: str
    cookie: int


def entries_for(*owners: Iterable[ArpEntry]) -> list[ArpEntry]:
    """The entries of several owners, first owner first, one per IPv4 address (IPv6 dropped:
    neighbour discovery is another protocol).  Put ports before service addresses."""
    seen: set[str] = set()
    result = []
    for entries in owners:
        for entry in entries:
            ip = netaddr.IPAddress(entry.ip)
            if ip.version != 4 or str(ip) in seen:
                continue
            seen.add(str(ip))
            result.append(
                ArpEntry(
                    str(ip),
                    str(netaddr.EUI(entry.mac, dialect=netaddr.mac_unix_expanded)),
                    entry.cookie,
                )
            )
    return result


def flood_fallthrough(key: int) -> tuple[Instruction, ...]:
    """What an unanswered ARP request from a VM does today: the network's flood-all group."""
    return (Apply((ToGroup(tables.flood_all_group_id(key)),)),)


def answer_actions(ip: str, mac: str) -> tuple[Move | SetField | Output, ...]:
    """Turn the request in the packet into the reply for ``ip`` at ``mac``, back to its port."""
    return (
        Move("eth_src", "eth_dst"),
        SetField("eth_src", mac),
        SetField("arp_op", ARP_REPLY),
        Move("arp_sha", "arp_tha"),
        SetField("arp_sha", mac),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_spa", ip),
        Output(OFPP_IN_PORT),
    )


def entry_rules(
    key: int,
    entry: ArpEntry,
    fallthrough: tuple[Instruction, ...] | None = None,
    table: int = tables.L2_FROM_PORT,
) -> frozenset[Rule]:
    """The answer for one address plus its two exclusions (gratuitous, the owner's own)."""
    through = flood_fallthrough(key) if fallthrough is None else fallthrough
    arp = {"metadata": key, "eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": entry.ip}
    return frozenset(
        {
            Rule(
                table,
                PRIO_ARP_ANSWER,
                match(**arp),
                (Apply(answer_actions(entry.ip, entry.mac)),),
                entry.cookie,
            ),
            Rule(table, PRIO_ARP_PASS, match(**arp, arp_spa=entry.ip), through, entry.cookie),
            Rule(table, PRIO_ARP_PASS, match(**arp, arp_sha=entry.mac), through, entry.cookie),
        }
    )


def compile_network(
    key: int,
    entries: Iterable[ArpEntry],
    fallthrough: tuple[Instruction, ...] | None = None,
    table: int = tables.L2_FROM_PORT,
) -> frozenset[Rule]:
    """Every answer of one network (entries as `entries_for` returns them)."""
    rules: set[Rule] = set()
    for entry in entries:
        rules |= entry_rules(key, entry, fallthrough, table)
    return frozenset(rules)


def bypass_rule(
    key: int,
    ofport: int,
    cookie: int,
    fallthrough: tuple[Instruction, ...] | None = None,
    table: int = tables.L2_FROM_PORT,
) -> Rule:
    """A port with port security off: its ARP requests are forwarded, never answered."""
    through = flood_fallthrough(key) if fallthrough is None else fallthrough
    return Rule(
        table,
        PRIO_ARP_BYPASS,
        match(metadata=key, in_port=ofport, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST),
        through,
        cookie,
    )
