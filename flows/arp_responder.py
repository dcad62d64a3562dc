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

* the address owner's own requests for its own address: gratuitous ARP (``arp_spa ==
  arp_tpa``) and probes, which an answer would turn into a conflict on the owner.  One rule per
  address on the owner's host only, matching its ``in_port`` (`own_request_rule`).  Nowhere
  else is it needed: ``L2_FROM_PORT`` sees only requests sent by a VM on the same host (the
  owner's broadcast reaches a peer host through ``L2_FROM_TUNNEL``, which has no answers), and
  port security lets another VM put the owner's address in ``arp_spa`` only through an allowed
  address pair, whose holder then gets the truthful answer (the address is bound to the owner)
  like any other asker, on whichever host it sits.
* addresses nobody listed: allowed-address-pair IPs and CIDRs are never entries (VRRP-style
  virtual IPs move between ports by gratuitous ARP; an answer from flows would pin them).
* requests from a port with port security off: `bypass_rule` (per such port, in_port match) sends
  its ARP to the fallthrough before any answer, since such a VM may own addresses tenantnet
  does not know about (a router or appliance VM).

So an address costs one rule on every host of its network (the answer) and one more on its
owner's host (the owner's own requests), whatever the number of ports.

Ownership (how the core plugs this in): cookies are the caller's (`flows.tables.owner_cookie`).
Each `ArpEntry` carries the cookie of its owner - the *port owner* (``port_cookie``) owns the
entries of its fixed IPs (so a port's fragment adds or removes exactly its answer and exclusion
rules, on every host of the network), the *network owner* the DHCP server addresses' answers
(`PRIO_ARP_SERVICE`, below a port's, so a port holding the address wins without either owner
knowing of the other; `flows.compiler.network_slice`), a router owner its interface
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
PRIO_ARP_SERVICE = 140
"""A service address the network answers for (its DHCP servers): below a port's answer, so a
port that holds the same address wins without either owner knowing of the other."""
PRIO_ARP_PASS = 160
"""The owner's own requests for its address (gratuitous ARP, probes): forwarded as before."""
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


def answer_rule(
    key: int, entry: ArpEntry, table: int = tables.L2_FROM_PORT, priority: int = PRIO_ARP_ANSWER
) -> Rule:
    """The answer for one address, on every host of the network."""
    arp = {"metadata": key, "eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": entry.ip}
    return Rule(
        table, priority, match(**arp), (Apply(answer_actions(entry.ip, entry.mac)),),
        entry.cookie,
    )  # fmt: skip


def own_request_rule(
    key: int,
    entry: ArpEntry,
    ofport: int,
    fallthrough: tuple[Instruction, ...] | None = None,
    table: int = tables.L2_FROM_PORT,
) -> Rule:
    """The owner's own requests for its address (from its ``ofport``, on its host): forwarded,
    never answered (gratuitous ARP, probes)."""
    through = flood_fallthrough(key) if fallthrough is None else fallthrough
    m = match(metadata=key, in_port=ofport, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST,
              arp_tpa=entry.ip)  # fmt: skip
    return Rule(table, PRIO_ARP_PASS, m, through, entry.cookie)


def compile_entries(
    key: int,
    entries: Iterable[ArpEntry],
    owner_ofport: int | None = None,
    fallthrough: tuple[Instruction, ...] | None = None,
    table: int = tables.L2_FROM_PORT,
) -> frozenset[Rule]:
    """The answers for ``entries`` (as `entries_for` returns them) and, on the host where their
    owner is plugged at ``owner_ofport`` (None elsewhere, or when the owner has port security
    off and its `bypass_rule` already forwards all its requests), the pass for its own requests.
    """
    rules: set[Rule] = set()
    for entry in entries:
        rules.add(answer_rule(key, entry, table))
        if owner_ofport is not None:
            rules.add(own_request_rule(key, entry, owner_ofport, fallthrough, table))
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
