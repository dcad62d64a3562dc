"""The tenantnet OpenFlow 1.3 pipeline on ``br-int``: table ids, priorities, cookies and group ids.

This module only *names* things; :mod:`flows.compiler` decides which rules go where.  Keeping the
numbers here (as Faucet keeps its table layout apart from the code that fills the tables) means
the compiler, the southbound, the tests and the README all talk about the same tables.

Pipeline (every packet enters at table 0; the network key travels in the low 32 bits of the
OpenFlow metadata register from table 0 onwards)::

    VM port ──> 0 CLASSIFY ──> 1 PORT_SECURITY ──> 2 L2_FROM_PORT ──> VM port / tunnel / flood-all
    tunnel  ──> 0 CLASSIFY ─────────────────────> 3 L2_FROM_TUNNEL ──> VM port / flood-local

With security groups (:mod:`flows.security_groups`), a filtered port's packets take a detour::

    1 PORT_SECURITY ──> 10 SG_EGRESS ─ct─> 11 SG_EGRESS_RULES ──> 12 SG_EGRESS_ACCEPT ──> 2
    2 / 3 delivery  ──> 20 SG_INGRESS ─ct─> 21 SG_INGRESS_RULES ──> 22 SG_INGRESS_ACCEPT ──> port

Table 0 ``CLASSIFY`` — which network does a packet belong to, and where did it come from?
    * prio 100 ``in_port=<VM ofport>, vlan_vid=NONE`` -> write metadata=<net key>, goto 1.  One
      per local port that is admin up; an admin-down port has no rule, so its packets hit the
      table miss.  VM ports are access ports: a VLAN-tagged frame from a VM is dropped.
    * prio 100 ``in_port=<tunnel ofport>, tunnel_id=<seg id>, tun_ipv4_src=<peer ip>`` ->
      write metadata=<net key>, goto 3.  One per network and *peer host*: a tunnel packet is only
      accepted from a host that is known to have a port of that network (the VNI alone is not
      proof, any host of the underlay can forge it).
    * prio 0 miss -> drop.

Table 1 ``PORT_SECURITY`` — anti-spoofing for packets sent by VMs.
    For a port with port security on, all prio 100, all matching ``in_port`` and
    ``eth_src=<port mac>``, all -> goto 2:
    * ARP (``eth_type=0x0806``) with ``arp_spa=<ipv4>, arp_sha=<port mac>``, per IPv4 fixed ip;
    * IPv4 (``eth_type=0x0800``) with ``ipv4_src=<ipv4>``, per IPv4 fixed ip;
    * DHCP discover/request: IPv4 from ``0.0.0.0``, UDP 68 -> 67;
    * IPv6 (``eth_type=0x86dd``) with ``ipv6_src=<ipv6>``, per IPv6 fixed ip and for the
      EUI-64 link-local address derived from the MAC;
    * IPv6 duplicate address detection: ``ipv6_src=::``, ICMPv6 neighbour solicitation (135);
    * per allowed address pair (Neutron ``allowed_address_pairs``): ARP and IPv4 (or IPv6) from
      the pair's IP or CIDR (masked match; a ``/0`` matches no address field) with the
      pair's MAC as ``eth_src``/``arp_sha``;
    * prio 102: an IPv6 neighbour advertisement (ICMPv6 136) whose ``ipv6_nd_target`` is one
      of the port's IPv6 addresses (fixed, link-local) or in one of its IPv6 pairs;
      prio 101 ``in_port=<ofport>``, any other advertisement -> drop (`PRIO_ND_GUARD`).
    For a port with port security off: prio 50 ``in_port=<ofport>`` -> goto 2.
    Prio 0 miss -> drop (anything a VM sends that isn't explicitly allowed).

Table 2 ``L2_FROM_PORT`` — destination lookup for packets that came from a local VM.
    * prio 100 ``metadata=<key>, eth_dst=<local mac>`` -> output:<VM ofport> (also for the
      MACs of a port's allowed address pairs);
    * prio 100 ``metadata=<key>, eth_dst=<remote mac>`` -> set tunnel_id=<seg id>,
      set tun_ipv4_dst=<remote host ip>, output:<tunnel ofport>;
    * prio 10 ``metadata=<key>`` -> group:flood_all (broadcast, multicast, unknown unicast);
    * prio 0 miss -> drop.

Table 3 ``L2_FROM_TUNNEL`` — destination lookup for packets that came from a tunnel.  They are
only ever delivered to local VMs, never back into a tunnel: the overlay is a full mesh, so the
sender already sent its own copy to every peer (split horizon; this is what makes loops
impossible without any spanning tree).
    * prio 100 ``metadata=<key>, eth_dst=<local mac>`` -> output:<VM ofport>;
    * prio 10 ``metadata=<key>`` -> group:flood_local;
    * prio 0 miss -> drop.

Groups (type ALL), two per network, ids derived from the network key so that they never collide
and a group can be attributed to its network from a group dump alone:
    * ``flood_all`` = ``2 * key``: one bucket per local VM port (OVS skips the copy that would go
      back out of the ingress port) plus one tunnel bucket per *peer host* (not per remote port:
      the remote host floods locally itself);
    * ``flood_local`` = ``2 * key + 1``: one bucket per local VM port.

Cookies name the *owner* of a flow: ``0x7E4E`` (tenantnet's marker, so a dump can be filtered and
foreign flows left alone) | an owner kind (8 bits: base, network, port, ...) | an object number
(40 bits: the network key, the port number the store allocated).  Every rule belongs to exactly
one owner: the base pipeline of a host; a network on a host (tunnel ingress, flood rules and its
two groups); a port (classification, port security, delivery on its host, one unicast rule per
MAC on each peer).  One flow dump thus splits into per-owner slices
(:func:`flows.diff.split_by_cookie`); groups are attributed by id (:func:`owner_of_group`).
Security groups (kind 3) split a host's firewall into its skeleton, each filtered port's own
flows, each rule's flows and each member port's address flows (:func:`sg_owner_part`).
Capacity: 256 kinds of about 1.1e12 owners each.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

# ------------------------------------------------------------------------------------------ tables

CLASSIFY = 0
"""Ingress classification: VM port or (tunnel, VNI, peer) -> network key in metadata."""

PORT_SECURITY = 1
"""Anti-spoofing of packets sent by VMs (MAC/IP/ARP allow-lists)."""

L2_FROM_PORT = 2
"""L2 forwarding of packets from local VMs: local port, tunnel to the owner's host, or flood."""

L2_FROM_TUNNEL = 3
"""L2 forwarding of packets from tunnels: local ports only (split horizon)."""

# Distributed routing (flows/routing.py).  A VM's IPv4 packet to its router interface's MAC
# leaves L2_FROM_PORT for L3_ROUTING (which subnet of the router, TTL, new source MAC and
# network key), then L3_NEIGHBOURS (the destination port's MAC, local delivery through
# L2_FROM_TUNNEL's rules by resubmit, or the tunnel to its host with its network's key).

L3_ROUTING = 4
"""Routing on the sending host: per (router interface the packet came to, destination subnet);
ICMP echo to an interface address is answered here."""

L3_NEIGHBOURS = 5
"""Per routed destination address: its port's MAC, then its local delivery or its tunnel."""

# Security groups (flows/security_groups.py).  Only packets of ports with filtering pass through
# them: port security sends a filtered port's packets to SG_EGRESS instead of L2_FROM_PORT, and
# delivery to a filtered port goes through SG_INGRESS instead of straight to its ofport.  The
# register REG_SG_PORT holds the filtered port's ofport in both directions; its low 16 bits are
# the port's conntrack zone.

SG_EGRESS = 10
"""Egress entry (sender's host, after port security): ARP, ND, DHCP client pass to
L2_FROM_PORT; router advertisements and DHCP server replies from VMs are dropped; IPv4/IPv6
goes through conntrack (zone = port) to SG_EGRESS_RULES, or straight there for a port whose
groups are stateless."""

SG_EGRESS_RULES = 11
"""Egress verdict: invalid or marked connections dropped, replies/related accepted, everything
else (new *and* established in the original direction) must match a rule (conjunctions:
port in group x rule match x remote group address) -> SG_EGRESS_ACCEPT; an established
connection no rule allows any more is marked (ct_mark=1) and dropped."""

SG_EGRESS_ACCEPT = 12
"""Egress accepted: a new connection is committed, then -> L2_FROM_PORT."""

SG_EGRESS_SCOPE = 13
"""Egress, routed networks only (resubmitted to by their entries, before conntrack): which
network of the sender's L3 domain the destination address is in, by the domain's subnets
(REG_SG_NET; `flows.security_groups.domain_rules`)."""

SG_INGRESS = 20
"""Ingress entry (receiver's host, before delivery; REG_SG_PORT = destination ofport): ARP,
ND, DHCP server replies are delivered; IPv4/IPv6 goes through conntrack (zone = destination
port) to SG_INGRESS_RULES, or straight there for a stateless port."""

SG_INGRESS_RULES = 21
"""Ingress verdict, as SG_EGRESS_RULES with the remote address being the source."""

SG_INGRESS_ACCEPT = 22
"""Ingress accepted: a new connection is committed, then output to the port in REG_SG_PORT."""

SG_INGRESS_SCOPE = 23
"""Ingress, as SG_EGRESS_SCOPE with the source address: the network of the receiver's L3 domain
a routed packet came from (its key in metadata is the receiver's by then)."""

REG_SG_PORT = "reg5"
"""Register with the ofport a security-group table filters for (sender on egress, receiver on
ingress); the port's conntrack zone is its low 16 bits."""

REG_SG_FLAGS = "reg6"
"""Register that says how the port in REG_SG_PORT is filtered: 0 stateful (set by the conntrack
entry), SG_STATELESS (set by a stateless port's entry); the state flows only apply to 0."""

SG_STATELESS = 1
"""REG_SG_FLAGS value of a port whose groups are all stateless."""

REG_SG_DOMAIN = "reg7"
REG_SG_DOMAIN_HI = "reg8"
"""Registers with the L3 domain of the filtered port in REG_SG_PORT (low and high 32 bits; both 0
for a port whose network is on no router).  A routed network's SG entries set them (matching
the network key in metadata: one set per network and host); the domain's scope flows match them
(SG_EGRESS_SCOPE, SG_INGRESS_SCOPE), and so does the address clause of a routed member's address
that those cannot place (`flows.security_groups.MemberAddress.fallback`)."""

REG_SG_NET = "reg9"
"""Register with the network the other end of a packet is in, as the remote-group address
clauses match it: the network key (metadata) of the filtered port, copied by every SG entry,
or for a routed network the network of its L3 domain whose subnet holds the other end's address
(SG_EGRESS_SCOPE, SG_INGRESS_SCOPE).  A member's addresses are matched under its own network's
key whether or not the network is on a router, so a network joining a router rewrites none of
its members' flows (only a member address outside its network's classified subnets is also
matched under the domain: `flows.security_groups.MemberAddress.fallback`)."""

REG_ROUTER = "reg3"
REG_ROUTER_HI = "reg4"
"""Registers with the router a packet entered routing through (low and high 32 bits of its
`flows.routing.router_id_of`), set by the interface's entry in L2_FROM_PORT: L3_ROUTING's
routes and echo answers match them, one rule per interface of the router and host instead of
one per pair of interfaces (the entry is the only way in, so a packet can only reach the
subnets of the router it was sent to)."""

ROUTER_ECHO_MARK = 0x80000000
"""Set in REG_ROUTER_HI (beside the router's high bits) on an echo reply built in L3_ROUTING on
its way back to the asking port (`flows.routing`): never in a router's high bits (ids have
OWNER_NUM_BITS bits), so only the reply's second pass matches the rule that sets its source
MAC, and no route or echo answer matches the reply."""

CT_MARK_DENIED = 1
"""ct_mark of a connection that a rule change no longer allows (every later packet dropped)."""


class TableSpec(NamedTuple):
    """A table's id, short name and purpose, for logs, dumps and documentation."""

    table_id: int
    name: str
    purpose: str


TABLES: tuple[TableSpec, ...] = (
    TableSpec(CLASSIFY, "CLASSIFY", "ingress classification: which network, from VM or tunnel"),
    TableSpec(PORT_SECURITY, "PORT_SECURITY", "anti-spoofing of packets sent by VMs"),
    TableSpec(L2_FROM_PORT, "L2_FROM_PORT", "L2 lookup for VM traffic: local, tunnel or flood"),
    TableSpec(L2_FROM_TUNNEL, "L2_FROM_TUNNEL", "L2 lookup for tunnel traffic: local ports only"),
    TableSpec(L3_ROUTING, "L3_ROUTING", "routing on the sender's host: subnet, TTL, source MAC"),
    TableSpec(L3_NEIGHBOURS, "L3_NEIGHBOURS", "routed address -> its port's MAC and location"),
)
"""Every table of the pipeline, in table-id order (the base slice has one miss rule per entry)."""

SG_TABLES: tuple[TableSpec, ...] = (
    TableSpec(SG_EGRESS, "SG_EGRESS", "security groups: egress entry, always-pass, conntrack"),
    TableSpec(SG_EGRESS_RULES, "SG_EGRESS_RULES", "security groups: egress state and rules"),
    TableSpec(SG_EGRESS_ACCEPT, "SG_EGRESS_ACCEPT", "security groups: egress commit"),
    TableSpec(SG_EGRESS_SCOPE, "SG_EGRESS_SCOPE", "security groups: routed destination's network"),
    TableSpec(SG_INGRESS, "SG_INGRESS", "security groups: ingress entry, always-pass, conntrack"),
    TableSpec(SG_INGRESS_RULES, "SG_INGRESS_RULES", "security groups: ingress state and rules"),
    TableSpec(SG_INGRESS_ACCEPT, "SG_INGRESS_ACCEPT", "security groups: ingress commit, deliver"),
    TableSpec(SG_INGRESS_SCOPE, "SG_INGRESS_SCOPE", "security groups: routed source's network"),
)
"""The security-group tables; their miss rules (drop) come with
:func:`flows.security_groups.static_rules`, not with the base slice."""

# -------------------------------------------------------------------------------------- priorities

PRIO_DHCP_GUARD = 120
"""PORT_SECURITY: a temporary drop of the DHCP of a port that flooded it (above its punt rule;
installed with a hard timeout by `controller.dataplane.dhcp`, never by the compiler)."""

PRIO_ARP_COPY_GUARD = 120
"""PORT_SECURITY: a temporary drop of the gratuitous ARPs for a virtual IP of a port that
flooded them (above its announce rule; installed with a hard timeout by
`controller.dataplane.vips`, never by the compiler)."""

PRIO_VIP_ANNOUNCE = 105
"""PORT_SECURITY: a port's gratuitous ARP for a virtual IP of its own (an address pair) is
copied to the controller, then forwarded as its pair's ARP rule does (above that rule, which
matches every ARP from the address: only announcements go up)."""

PRIO_DHCP_PUNT = 110
"""PORT_SECURITY: a port of a DHCP-enabled subnet sends its DHCP client messages to the
controller (above the port's allow rules, which would flood them)."""

PRIO_ND_TARGET = 102
"""PORT_SECURITY: an IPv6 neighbour advertisement from a port for one of its own addresses
(fixed, link-local, address pair) as the target, allowed (above the NA drop below)."""

PRIO_ND_GUARD = 101
"""PORT_SECURITY: every other neighbour advertisement from the port is dropped (above the
port's IPv6 allow rules, which check only the packet's source address: a VM could advertise
its neighbour's address with its own MAC and take its traffic, as Neutron's CVE-2021-20267)."""

PRIO_EXACT = 100
"""Rules that name one port, address or peer."""

PRIO_PASS = 50
"""Port-security bypass for ports with port security off (below any spoof rule, above miss)."""

PRIO_FLOOD = 10
"""Per-network catch-all: broadcast, multicast and unknown unicast go to a flood group."""

PRIO_MISS = 0
"""Table-miss rules of the base pipeline (drop)."""

PRIO_SG_HAIRPIN = 210
"""SG ingress entry: a flood copy back to the port it came from is dropped before anything."""

PRIO_SG_STATE = 200
"""SG rules tables: drop invalid and marked (denied) connections, before anything else."""

PRIO_SG_REPLY = 190
"""SG rules tables: replies and related packets of an allowed connection pass."""

PRIO_SG_ALWAYS = 100
"""SG entry tables: ARP, ND and DHCP pass; SG accept tables: commit new connections."""

PRIO_SG_CONJ = 100
"""SG rules tables: every conjunctive flow and every ``conj_id`` flow.  One priority for all
(OVS needs the flows of a conjunction at one priority; no ordinary flow shares it)."""

PRIO_SG_BAN = 90
"""SG egress entry: what a VM may never send (router advertisements, DHCP server replies)."""

PRIO_SG_STATELESS = 60
"""SG entry tables: a port of stateless groups skips conntrack."""

PRIO_SG_DOMAIN = 55
"""SG entry tables: a routed network's IP packets set its L3 domain, then go through
conntrack."""

PRIO_SG_SCOPE = 100
"""SG scope tables: a subnet of an L3 domain names its network (the subnets of one domain that
a flow names never overlap, so one priority)."""

PRIO_SG_TRACK = 50
"""SG entry tables: IP goes through conntrack; SG rules tables: an established connection no
rule allows is marked and dropped; SG accept tables: the pass-through after commit."""

# ---------------------------------------------------------------------------------------- metadata

METADATA_MASK = 0xFFFFFFFF
"""The network key lives in the low 32 bits of metadata; the high bits are left for later use."""

# ----------------------------------------------------------------------------------------- cookies
# A cookie names the *owner* of a flow: the store object (or object on this host) that produced
# it.  Layout of the 64 bits (see docs/architecture.md):
#
#     63            48 47      40 39                                      0
#    +----------------+----------+-----------------------------------------+
#    |  0x7E4E marker | kind (8) | object number (40)                      |
#    +----------------+----------+-----------------------------------------+
#
# The number comes from persisted store data, never from a runtime counter, so the same owner
# has the same cookie after a restart (0 flow-mods when nothing changed) and a dump can be cut
# into per-owner slices by cookie alone.


class OwnerKind(IntEnum):
    """What produced a flow (the ``kind`` field of a cookie).  Values are persisted on every
    switch: never renumber one; a new kind takes the next free value."""

    BASE = 0
    """The pipeline skeleton of a host (table-miss drops); object number 0."""
    NETWORK = 1
    """A network on a host: tunnel ingress per peer, flood rules, flood groups; the network key."""
    PORT = 2
    """A port: its rules on its host and its unicast rules on each peer; the port number the
    store allocated at create time (``_num``, never reused)."""
    SECURITY_GROUP = 3
    """Security-group flows on a host (`flows.security_groups`), the number's top bits saying
    which part: 0 the host's skeleton (entries, conntrack, commits, misses of the SG tables);
    ``SG_PORT_BIT | port number`` one filtered port's own flows (its rules' first clauses, its
    hairpin drop, its stateless entries); ``SG_RULE_BIT | rule key`` a rule's ``conj_id`` flow
    and its clause-2 flows; ``SG_NET_BIT | network key`` a routed network's entries (its L3
    domain set for every filtered port of it on that host, release 2026-12-01 on: before,
    each routed port had its own); ``SG_DOMAIN_BIT | domain`` an L3 domain's scope flows
    (release 2026-12-03 on); ``SG_MEMBER_BIT | port number`` a member port's remote-group
    address (clause-3) flows on that host.  A flow merged from several rules or members
    (`flows.sg_clauses`) belongs to the smallest of their cookies.  Number 1 held the host's
    merged clauses whole before release 2026-11-30 (evening); it is no longer compiled, so no
    object claims it, and it is replaced, in the same bundle, at the first reconnect after the
    upgrade."""
    ROUTER = 4
    """Distributed routing (`flows.routing`), the number a port's store number: a routed port
    (an address in a router's subnet) owns its neighbour rules on each host of the router; a
    router *interface* owns the rest: on each host of the router, the interface's ARP answer,
    its entry to routing, its echo answers, the routes from its subnet and the tunnel ingress
    of routed traffic into its network."""
    # Reserved for the service to come: 5 subnet DHCP.
    DHCP_GUARD = 6
    """A temporary drop of a port's DHCP after it flooded the controller; the port number.
    Installed by the packet-in path with a hard timeout and expired by the switch: no service
    plans it and the reconciler never diffs it (`TRANSIENT_KINDS`)."""
    ARP_COPY_GUARD = 7
    """A temporary drop of a port's gratuitous ARPs for one of its virtual IPs after it
    flooded the controller with them (`flows.compiler.arp_copy_guard_rule`); the port number.
    Transient as ``DHCP_GUARD``.  A drop, never an allow: a rule left after the pair is gone
    lets nothing through that port security would stop."""


TRANSIENT_KINDS = frozenset({int(OwnerKind.DHCP_GUARD), int(OwnerKind.ARP_COPY_GUARD)})
"""Owner kinds whose flows the switch expires (hard timeout): left out of every desired-state
diff, as foreign flows are, but still ours (deleted with the host's flows)."""


COOKIE_BASE = 0x7E4E000000000000
"""High bits marking a flow as tenantnet's ("7E4E" ~ "TeNE")."""

COOKIE_MASK_OURS = 0xFFFF000000000000
"""Mask that selects the ownership bits of a cookie (for dumps/deletes restricted to our flows)."""

OWNER_KIND_SHIFT = 40
OWNER_KIND_BITS = 8
OWNER_NUM_BITS = 40
OWNER_NUM_MAX = (1 << OWNER_NUM_BITS) - 1
"""Largest object number of one kind: about 1.1e12 owners per kind, 256 kinds."""

BASE_COOKIE = COOKIE_BASE  # kind BASE, number 0: the same value as before owners existed

OFPG_MAX = 0xFFFFFF00
"""Largest group id OpenFlow 1.3 allows; higher values are reserved (OFPG_ALL, OFPG_ANY)."""

MAX_NETWORK_KEY = (OFPG_MAX - 1) // 2
"""Largest network key whose two group ids (``2k``, ``2k + 1``) are still valid group ids."""


def owner_cookie(kind: OwnerKind, num: int) -> int:
    """The cookie of every rule owned by object ``num`` of ``kind``.

    Raises ``ValueError`` for a number that does not fit, rather than silently producing a
    cookie that would be attributed to another owner.
    """
    if not 0 <= num <= OWNER_NUM_MAX:
        raise ValueError(f"{kind.name.lower()} number {num} does not fit in {OWNER_NUM_BITS} bits")
    return COOKIE_BASE | (int(kind) << OWNER_KIND_SHIFT) | num


def network_cookie(key: int) -> int:
    """Owner cookie of network ``key`` on a host."""
    return owner_cookie(OwnerKind.NETWORK, key)


def port_cookie(num: int) -> int:
    """Owner cookie of the port numbered ``num`` (on its host and on its peers)."""
    return owner_cookie(OwnerKind.PORT, num)


def router_cookie(interface_num: int) -> int:
    """Owner cookie of the routing flows of the router interface whose port is ``interface_num``."""
    return owner_cookie(OwnerKind.ROUTER, interface_num)


SG_STATIC_NUM = 0
SG_SHARED_NUM = 1
"""The host's merged clauses as one owner: the layout before per-rule and per-member owners
(no longer compiled, unclaimed)."""
SG_PORT_BIT = 1 << (OWNER_NUM_BITS - 1)
"""Security-group owners of one port: this bit plus the port's number (numbers stay below
``SG_MEMBER_BIT``)."""
SG_MEMBER_BIT = 1 << (OWNER_NUM_BITS - 2)
"""A member port's address clauses on a host: this bit (and not ``SG_PORT_BIT``) plus the port's
number."""
SG_RULE_BIT = 1 << (OWNER_NUM_BITS - 3)
"""A rule's flows on a host: this bit (and neither above) plus the rule's key (< 2^32)."""
SG_NET_BIT = 1 << (OWNER_NUM_BITS - 4)
"""A routed network's entries on a host (they set its L3 domain): this bit (and none above)
plus the network key (< 2^32)."""
SG_DOMAIN_BIT = 1 << (OWNER_NUM_BITS - 5)
"""An L3 domain's scope flows on a host (its subnets -> their networks): this bit (and none
above) plus the domain (a router interface's port number, below this bit)."""


def sg_host_cookie(num: int) -> int:
    """Owner cookie of a host-level security-group owner (``SG_STATIC_NUM``, ``SG_SHARED_NUM``)."""
    return owner_cookie(OwnerKind.SECURITY_GROUP, num)


def sg_port_cookie(port_num: int) -> int:
    """Owner cookie of the security-group flows of the filtered port numbered ``port_num``."""
    if not 0 <= port_num < SG_MEMBER_BIT:
        raise ValueError(f"port number {port_num} does not fit a security-group cookie")
    return owner_cookie(OwnerKind.SECURITY_GROUP, SG_PORT_BIT | port_num)


def sg_member_cookie(port_num: int) -> int:
    """Owner cookie of the address clauses of the port numbered ``port_num`` as a member of
    remote groups (on every host whose rules name one of its groups)."""
    if not 0 <= port_num < SG_MEMBER_BIT:
        raise ValueError(f"port number {port_num} does not fit a security-group cookie")
    return owner_cookie(OwnerKind.SECURITY_GROUP, SG_MEMBER_BIT | port_num)


def sg_rule_cookie(rule_key: int) -> int:
    """Owner cookie of the ``conj_id`` and clause-2 flows of the rule with key ``rule_key``."""
    if not 0 < rule_key < SG_RULE_BIT:
        raise ValueError(f"rule key {rule_key} does not fit a security-group cookie")
    return owner_cookie(OwnerKind.SECURITY_GROUP, SG_RULE_BIT | rule_key)


def sg_net_cookie(network_key: int) -> int:
    """Owner cookie of the security-group entries of a routed network on a host (the flows
    that set its L3 domain for all its filtered ports there, `flows.security_groups`)."""
    if not 0 <= network_key <= MAX_NETWORK_KEY:
        raise ValueError(f"network key {network_key} does not fit a security-group cookie")
    return owner_cookie(OwnerKind.SECURITY_GROUP, SG_NET_BIT | network_key)


def sg_domain_cookie(domain: int) -> int:
    """Owner cookie of an L3 domain's scope flows on a host
    (`flows.security_groups.domain_rules`)."""
    if not 0 < domain < SG_DOMAIN_BIT:
        raise ValueError(f"L3 domain {domain} does not fit a security-group cookie")
    return owner_cookie(OwnerKind.SECURITY_GROUP, SG_DOMAIN_BIT | domain)


def sg_owner_part(cookie: int) -> tuple[str, int]:
    """Which part of a host's firewall a kind-3 cookie names: ``("port", port number)``,
    ``("member", port number)``, ``("rule", rule key)``, ``("network", network key)``,
    ``("domain", L3 domain)`` or ``("host", 0 | 1)``."""
    num = owner_num(cookie)
    if num & SG_PORT_BIT:
        return "port", num & ~SG_PORT_BIT
    if num & SG_MEMBER_BIT:
        return "member", num & ~SG_MEMBER_BIT
    if num & SG_RULE_BIT:
        return "rule", num & ~SG_RULE_BIT
    if num & SG_NET_BIT:
        return "network", num & ~SG_NET_BIT
    if num & SG_DOMAIN_BIT:
        return "domain", num & ~SG_DOMAIN_BIT
    return "host", num


def is_ours(cookie: int) -> bool:
    """Whether a flow with this cookie was installed by tenantnet (foreign flows are left alone)."""
    return cookie & COOKIE_MASK_OURS == COOKIE_BASE


def owner_kind(cookie: int) -> int:
    """The kind field of one of our cookies (an int: a newer release may know more kinds)."""
    return (cookie >> OWNER_KIND_SHIFT) & ((1 << OWNER_KIND_BITS) - 1)


def is_transient(cookie: int) -> bool:
    """Whether one of our cookies belongs to a flow the switch expires (`TRANSIENT_KINDS`)."""
    return owner_kind(cookie) in TRANSIENT_KINDS


def owner_num(cookie: int) -> int:
    """The object number of one of our cookies."""
    return cookie & OWNER_NUM_MAX


def describe_owner(cookie: int) -> str:
    """``network 7``, ``port 1234``, ``base``, ``security_group rule 12``: an owner as logs
    name it."""
    kind, num = owner_kind(cookie), owner_num(cookie)
    if kind == OwnerKind.BASE and num == 0:
        return "base"
    if kind == OwnerKind.SECURITY_GROUP:
        part, n = sg_owner_part(cookie)
        return f"security_group {part} {n}" if part != "host" else f"security_group {n}"
    name = OwnerKind(kind).name.lower() if kind in OwnerKind._value2member_map_ else f"kind {kind}"
    return f"{name} {num}"


# ------------------------------------------------------------------------------------------ groups


def flood_all_group_id(key: int) -> int:
    """Group that floods a VM's packet to the other local ports and to every peer host."""
    return 2 * key


def flood_local_group_id(key: int) -> int:
    """Group that floods a tunnel packet to the local ports only (never back into a tunnel)."""
    return 2 * key + 1


def key_of_group(group_id: int) -> int:
    """Network key a group belongs to (inverse of both group-id functions)."""
    return group_id // 2


def owner_of_group(group_id: int) -> int:
    """Owner cookie of a group: groups carry no cookie, so ownership follows from the id.  Today
    every group is a network's; a kind that needs groups of its own takes a range of ids here
    (and the network keys give it up by a lower ``MAX_NETWORK_KEY``)."""
    return network_cookie(key_of_group(group_id))
