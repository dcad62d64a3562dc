"""Compile Neutron security groups into stateful OpenFlow filtering on each port's own host.

Pure like :mod:`flows.compiler`: typed frozen inputs (:class:`SgRule`, :class:`SecurityGroup`,
:class:`FilteredPort`), :class:`~flows.model.Rule` values out, no I/O, no clock.  The design
follows Neutron's OVS firewall (conntrack per port, established connections re-checked against
the rules, ``ct_mark`` to kill connections a change no longer allows) and OVN's port groups and
address sets (conjunctive matches), in the tables documented in :mod:`flows.tables`:

    1 PORT_SECURITY ──> 10 SG_EGRESS ─ct─> 11 SG_EGRESS_RULES ──> 12 SG_EGRESS_ACCEPT ──> 2
    2 / 3 delivery  ──> 20 SG_INGRESS ─ct─> 21 SG_INGRESS_RULES ──> 22 SG_INGRESS_ACCEPT ──> port

Semantics (Neutron's):

* Egress rules are enforced where the sender is, ingress rules where the receiver is, each in
  conntrack zone = the filtered port's ofport (unique on a host, kept by OVS across restarts of
  the controller and of OVS, so nothing is allocated or persisted and a restart recompiles the
  same flows).  Two ports on one host talking to each other use two zones, one per side.
* Invalid packets are dropped; replies and related packets of a connection pass; a packet that
  opens a connection (``+new``) or continues one in the original direction (``+est-rpl``) must
  match a rule; a new one is then committed.  Re-checking established packets is what makes a
  rule removal, a member leaving a remote group or a port leaving a group take effect on open
  connections: the next packet matches no rule, the connection gets ``ct_mark=1`` and every
  later packet of it, both ways, is dropped.  It needs nothing but the changed flows, so it is
  in the same bundle as the change.
* ``stateful=False`` groups: no conntrack, every packet must match a rule (replies too).  A port
  takes its mode from its groups (Neutron refuses to mix them; if the input mixes them anyway,
  stateful wins).  A stateless port's entry sets ``reg6=1`` and the state flows only match
  ``reg6=0``: a packet still carries the conntrack state of the sender's zone (or of another
  flood copy's), which must not count as a reply at a stateless receiver.
* ARP, IPv6 ND/MLD and DHCP (client side) always pass; a VM may not send router
  advertisements or DHCP server replies.  Anything else (other ethertypes) is dropped.
* A port with port security on and no group drops all IP traffic (Neutron); a port with port
  security off is not a :class:`FilteredPort` at all and gets none of these flows.

Flow counts grow with rules + members + ports, never with their products: every rule is one
conjunction ``conj_id = rule.key`` with the clauses (1) ``reg5 = ofport`` for every local port
in the rule's group, (2) the rule's own match (protocol, masked port ranges, remote prefix) and,
for a ``remote_group_id``, (3) ``reg9 = network, ip_src/dst = address`` for every address of
the remote group's members whose network (or L3 domain) a local port with the rule is in (the
network key scopes addresses: tenants' address spaces overlap). ``reg9`` (REG_SG_NET) is the
network the other end is in: every SG entry copies the port's own key from metadata, and a routed
network's entries (`network_entries`, one set per network and host, which also set the L3 domain
in ``reg7/reg8``) ask the domain's scope flows (`domain_rules`: one per subnet of the domain that
overlaps no other network's, `classified_subnets`) which network of the domain holds the address:
a routed packet arrives under the receiver's key, not the sender's.  So a member's address is one
flow whether or not its network is on a router, and a network joining a router adds its entries
and its subnets' scope flows on the hosts that already match its members, not a flow per member
(a host with only the other networks' ports gains the joining members' addresses: it needs
them).  Only an address the subnets cannot place (`MemberAddress.fallback`: an allowed pair
outside them, a subnet overlapping another's) is also matched under the domain (``reg7/reg8 =
domain``), as every routed address was before.  A
member joining or leaving changes one clause-3 flow per address and scope per host that uses the
group. Flows with the same match (the same address in two groups, the same port range in two rules)
are one flow with several ``conjunction`` actions, kept as contributions in a
`flows.sg_clauses.ClauseIndex`: a rule's ``conj_id`` and clause-2 flows belong to the rule (owner
cookie from its key), a member's address flows to the member port on that host (from its number),
and a merged flow to the smallest cookie among its contributors, so that the sg service patches one
rule or one member in or out at its own cost and the whole-host compile here (:func:`shared_rules`)
gives the same flows and cookies from scratch.

Integration (what the core calls; see :func:`plug`, which does all three for a slice):

* port security rules of a filtered port: instructions :func:`egress_hook` instead of
  ``goto_table:L2_FROM_PORT``;
* delivery to a filtered port in L2_FROM_PORT and L2_FROM_TUNNEL: :func:`ingress_hook` instead
  of ``output:<ofport>``;
* flood group buckets ``(output:<ofport>,)`` of a filtered port: :func:`ingress_bucket`;
* goto_table can only go forward, so egress returns to L2_FROM_PORT with ``resubmit(,2)``;
* the security-group flows themselves: :func:`compile_host` (one :class:`~flows.model.Slice`,
  cookies per owner: :class:`SgCookies`), or its parts :func:`static_rules` (host-independent),
  :func:`port_rules` (one port's), :func:`shared_rules` (merged rule/address clauses, the
  reference) and the contributions the sg service patches (:func:`conj_id_rule`,
  :func:`rule_entries`, :func:`member_entries`);
* deleting a port: flush its conntrack zone :func:`zone_of` (``NXT_CT_FLUSH_ZONE``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import netaddr

from flows import tables as t
from flows.compiler import normalize_mac, usable
from flows.model import (
    Action,
    Apply,
    Conjunction,
    Ct,
    GotoTable,
    GroupEntry,
    Instruction,
    LocalPort,
    Match,
    Move,
    Output,
    OutputReg,
    Resubmit,
    Rule,
    SetField,
    Slice,
    match,
)
from flows.sg_clauses import ClauseIndex

INGRESS = "ingress"
EGRESS = "egress"
IPV4 = "IPv4"
IPV6 = "IPv6"

ETH_TYPE = {IPV4: 0x0800, IPV6: 0x86DD}
ETH_TYPE_ARP = 0x0806
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PORT_FIELD = {PROTO_TCP: "tcp_dst", PROTO_UDP: "udp_dst", PROTO_SCTP: "sctp_dst"}
"""Protocols whose rules have destination port ranges, and the OXM field of that port."""
PORTS_UNMATCHABLE = frozenset({33, 136})
"""dccp and udplite: Neutron's API takes port ranges for them, but Open vSwitch has no field
for their ports.  Compiled without the range, a rule for port 80 allowed every port; the API
refuses such ranges (`controller.store.rule_values`), and one stored before allows nothing."""

MAX_ZONE_OFPORT = 0xFEFF
"""OVS numbers ports below 0xFF00; such an ofport fits the 16-bit conntrack zone."""

MAX_CONJ_ID = 0xFFFFFFFF

# ct_state bits (OVS / Nicira)
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# ICMPv6 types that pass in each direction whatever the rules (MLD query/report/done and MLDv2
# report, router solicitation/advertisement, neighbour solicitation/advertisement).
ND_EGRESS = (130, 131, 132, 133, 135, 136, 143)
ND_INGRESS = (130, 131, 132, 134, 135, 136, 143)
ICMPV6_RA = 134
DHCP = {IPV4: (68, 67), IPV6: (546, 547)}  # (client port, server port)

REG = t.REG_SG_PORT
FLAGS = t.REG_SG_FLAGS


# ------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SgRule:
    """A security-group rule as Neutron's API has it, already validated and normalised.

    ``key`` is a stable integer id of the rule (1..2^32-1, unique among all rules; allocated and
    kept by the store like a network's key): it is the rule's conjunction id, so the flows of a
    rule do not change when other rules come and go.  ``protocol`` is a number (``None``: any;
    an IPv6 rule with protocol 1 means ICMPv6, as Neutron's agents read it); the port range is
    destination ports for tcp/udp/sctp and (type, code) for ICMP/ICMPv6.
    """

    key: int
    direction: str  # INGRESS | EGRESS
    ethertype: str  # IPV4 | IPV6
    protocol: int | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


@dataclass(frozen=True)
class MemberAddress:
    """One address a member port of a group may use: a fixed IP or an allowed address pair
    (address or CIDR, with the pair's MAC), in the network with key ``network_key``."""

    network_key: int
    ip: str
    mac: str
    port_id: str = ""  # the member port: whose address-clause owner it is (`SgCookies.members`)
    domain: int = 0  # the L3 domain of its network (`FilteredPort.domain`), 0: none
    fallback: bool = False
    """Matched under the L3 domain as well as under its network: a routed member's address that
    is not inside one of its network's classified subnets (`FilteredPort.subnets`: an allowed
    pair elsewhere, an address "any" known by its MAC, a subnet that overlaps another network's
    in the domain), so the domain's scope flows cannot tell which network it is in."""


@dataclass(frozen=True)
class SecurityGroup:
    """A group: its rules and the addresses of all its member ports (every host, every network)."""

    id: str
    rules: tuple[SgRule, ...] = ()
    members: tuple[MemberAddress, ...] = ()
    stateful: bool = True


@dataclass(frozen=True)
class FilteredPort:
    """A port bound to this host with port security on (ports with it off are not passed)."""

    port_id: str
    ofport: int
    mac: str
    network_key: int
    fixed_ips: tuple[str, ...] = ()
    allowed_pairs: tuple[tuple[str, str], ...] = ()  # (IP or CIDR, MAC)
    groups: tuple[str, ...] = ()
    domain: int = 0
    """The L3 domain of the port's network: 0 if it is on no router, else an id shared by the
    networks that routers join (`controller.dataplane.state.Mirror.domain_of`), unique among
    domains and never 0.  Remote-group addresses are scoped by it instead of the network key,
    since a member's packets arrive under any key of its domain (routed)."""
    subnets: tuple[str, ...] = ()
    """The CIDRs of the port's network that the domain's scope flows classify to it
    (`classified_subnets`; empty on no router): an address inside one is matched under the
    network key alone, whichever network of the domain the packet is in."""


@dataclass(frozen=True)
class SgCookies:
    """The cookie of each owner of security-group flows: the host-independent skeleton, each
    port's own flows (by port id), each rule's ``conj_id`` and clause-2 flows (``rules``: rule
    key -> cookie) and each member port's address (clause-3) flows (``members``: port id ->
    cookie).  A merged flow (`flows.sg_clauses`) takes the smallest cookie of its
    contributors.  Whatever has no cookie of its own gets ``shared`` (with neither ``rules``
    nor ``members``, every merged flow is ``shared``'s)."""

    static: int
    shared: int
    ports: Mapping[str, int] = field(default_factory=dict)
    rules: Callable[[int], int] | None = None
    members: Mapping[str, int] = field(default_factory=dict)
    networks: Callable[[int], int] | None = None  # network key -> its entries' owner

    def rule(self, key: int) -> int:
        return self.rules(key) if self.rules is not None else self.shared

    def network(self, key: int) -> int:
        return self.networks(key) if self.networks is not None else self.shared

    def member(self, port_id: str) -> int:
        return self.members.get(port_id, self.shared)


def member_addresses(port: FilteredPort) -> tuple[MemberAddress, ...]:
    """What a port contributes to the address set of each of its groups (remote_group_id):
    its fixed IPs (with its MAC) and its allowed address pairs."""
    mac, net, pid, dom = normalize_mac(port.mac), port.network_key, port.port_id, port.domain
    pairs = [(ip, mac) for ip in port.fixed_ips]
    pairs += [(ip, normalize_mac(m)) for ip, m in port.allowed_pairs]
    return tuple(MemberAddress(net, ip, m, pid, dom, bool(dom) and not _inside(ip, port.subnets))
                 for ip, m in pairs)  # fmt: skip


@lru_cache(maxsize=1 << 16)
def _inside(ip: str, cidrs: tuple[str, ...]) -> bool:
    """Whether the address (or CIDR) lies within one of ``cidrs`` (an address "any" never does:
    it is matched by its MAC)."""
    addr = netaddr.IPNetwork(ip)
    if addr.prefixlen == 0:
        return False
    return any(addr.version == c.version and addr in c for c in map(netaddr.IPNetwork, cidrs))


def classified_form(cidr: str) -> str:
    """A subnet's CIDR as `classified_subnets` lists it (its network address, netaddr's
    spelling): what a caller compares with its lists."""
    return str(netaddr.IPNetwork(cidr).cidr)


def classified_subnets(subnets: Iterable[tuple[int, str]]) -> dict[int, tuple[str, ...]]:
    """Of an L3 domain's subnets (network key, CIDR), those its scope flows classify: per
    network key, sorted, each CIDR that overlaps no other network's (an address there is in one
    network only).  CIDRs nest or are disjoint, so a block of nested ones with two networks'
    CIDRs in it is left out whole (conservative: an address outside every classified subnet is
    only matched under the domain too, `MemberAddress.fallback`).  O(n log n)."""
    nets = sorted({(netaddr.IPNetwork(c).cidr, key) for key, c in subnets},
                  key=lambda n: (n[0].version, n[0].first, n[0].prefixlen))  # fmt: skip
    out: dict[int, list[str]] = {}
    i = 0
    while i < len(nets):
        top, j = nets[i][0], i + 1
        while j < len(nets) and nets[j][0].version == top.version and nets[j][0] in top:
            j += 1
        block = nets[i:j]
        if len({key for _c, key in block}) == 1:
            for cidr, key in block:
                out.setdefault(key, []).append(str(cidr))
        i = j
    return {key: tuple(sorted(cidrs)) for key, cidrs in out.items()}


@lru_cache(maxsize=4096)
def domain_rules(domain: int, classified: tuple[tuple[int, tuple[str, ...]], ...],
                 cookie: int) -> frozenset[Rule]:  # fmt: skip
    """An L3 domain's scope flows on a host: for every classified subnet of it
    (`classified_subnets`, as sorted items), a packet of the domain whose other end (destination
    on egress, source on ingress) is in the subnet gets its network's key in REG_SG_NET, where
    the remote-group clauses look for it (one flow per subnet and direction, whatever the number
    of members: a network joining a router adds its subnets' flows, not its members' where they
    are matched already)."""
    out = []
    where = _scope_match(0, domain)
    for key, cidrs in classified:
        to_key = (Apply((SetField(t.REG_SG_NET, key),)),)
        for cidr in cidrs:
            version, value = _address(cidr)
            eth_type, v = (ETH_TYPE[IPV4], "ipv4") if version == 4 else (ETH_TYPE[IPV6], "ipv6")
            for table, end in ((t.SG_EGRESS_SCOPE, "dst"), (t.SG_INGRESS_SCOPE, "src")):
                m = match(**where, eth_type=eth_type, **{f"{v}_{end}": value})
                out.append(Rule(table, t.PRIO_SG_SCOPE, m, to_key, cookie))
    return frozenset(out)


TO_NET = Move("metadata", t.REG_SG_NET)
"""Every SG entry copies the port's network key into REG_SG_NET: the scope of the remote-group
address clauses (`_scope_match`) unless a routed network's scope flows say otherwise."""

_SCOPE_TABLE = {t.SG_EGRESS: t.SG_EGRESS_SCOPE, t.SG_INGRESS: t.SG_INGRESS_SCOPE}

DOMAIN_SCOPE = 1 << 64
"""Scopes above this are L3 domains (`scope_of`), below it network keys."""


def scope_of(network_key: int, domain: int) -> int:
    """Where a port's rules apply and a member's addresses are relevant: its network (key) if
    that is on no router, else its L3 domain (kept apart from keys by `DOMAIN_SCOPE`).  A
    member's address flows are on a host where one of the rules naming its group applies to a
    local port of the same scope: whatever its flows match (`_member_matches`), its packets
    only reach ports of that scope."""
    return DOMAIN_SCOPE | domain if domain else network_key


def _scope_match(network_key: int, domain: int) -> dict[str, int]:
    """The match fields of a scope: the network key in REG_SG_NET (what the entries put there:
    the port's own network, or the network of its L3 domain that the other end is in), or the
    domain registers (that the entries of a routed network set, `network_entries`)."""
    if not domain:
        return {t.REG_SG_NET: network_key}
    return {t.REG_SG_DOMAIN: domain & 0xFFFFFFFF, t.REG_SG_DOMAIN_HI: domain >> 32}


@lru_cache(maxsize=4096)
def _domain_actions(domain: int) -> tuple[Action, ...]:
    """A routed port's entry sets its domain (a packet's registers start at 0)."""
    if not domain:
        return ()
    return (SetField(t.REG_SG_DOMAIN, domain & 0xFFFFFFFF),
            SetField(t.REG_SG_DOMAIN_HI, domain >> 32))  # fmt: skip


@lru_cache(maxsize=4096)
def network_entries(network_key: int, domain: int, cookie: int) -> frozenset[Rule]:
    """The entries of a routed network's filtered ports on a host: in both entry tables, its
    IP packets (``metadata`` = the network: the sender's on egress, the receiver's on ingress,
    also for a routed packet, which has its destination network's key by then) set the
    network's L3 domain and, by the domain's scope flows (`domain_rules`), the network the other
    end is in (REG_SG_NET: the port's own if no classified subnet holds it), then go through
    conntrack as the static track flow does.  One owner
    per network and host (`flows.tables.sg_net_cookie`), not per port: a network joining or
    leaving a router changes 4 flows on each of its hosts whatever its number of ports, and a
    port of a routed network costs no entry of its own.  A stateless port's own entries
    (above these) set the domain themselves.  Empty for a network on no router."""
    if not domain:
        return frozenset()
    out = []
    for entry, rules_table in ((t.SG_EGRESS, t.SG_EGRESS_RULES),
                               (t.SG_INGRESS, t.SG_INGRESS_RULES)):  # fmt: skip
        track = (Apply((SetField(FLAGS, 0), *_domain_actions(domain), TO_NET,
                        Resubmit(_SCOPE_TABLE[entry]),
                        Ct(zone_reg=REG, table=rules_table))),)  # fmt: skip
        for eth_type in ETH_TYPE.values():
            m = match(metadata=network_key, eth_type=eth_type)
            out.append(Rule(entry, t.PRIO_SG_DOMAIN, m, track, cookie))
    return frozenset(out)


def zone_of(ofport: int) -> int:
    """Conntrack zone of a filtered port (flush it when the port is deleted)."""
    if not 0 < ofport <= MAX_ZONE_OFPORT:
        raise ValueError(f"ofport {ofport} cannot be a conntrack zone")
    return ofport


# -------------------------------------------------------------------------------- plug points


@lru_cache(maxsize=1 << 16)
def egress_hook(ofport: int) -> tuple[Instruction, ...]:
    """Instructions of a filtered port's port-security rules (instead of goto L2_FROM_PORT)."""
    return (Apply((SetField(REG, zone_of(ofport)),)), GotoTable(t.SG_EGRESS))


@lru_cache(maxsize=1 << 16)
def ingress_hook(ofport: int) -> tuple[Instruction, ...]:
    """Instructions of a delivery rule to a filtered port (instead of ``output:<ofport>``)."""
    return (Apply((SetField(REG, zone_of(ofport)),)), GotoTable(t.SG_INGRESS))


@lru_cache(maxsize=1 << 16)
def ingress_bucket(ofport: int) -> tuple[Action, ...]:
    """A flood-group bucket for a filtered port (instead of ``(output:<ofport>,)``): broadcast
    and multicast copies pass the receiver's ingress filter like unicast does.  Cached (as the
    two hooks are): a whole-network compile plugs every bucket of its flood groups (the per-port
    path keeps its buckets in `controller.dataplane.compiled.FloodBuckets` instead)."""
    return (SetField(REG, zone_of(ofport)), Resubmit(t.SG_INGRESS))


def _egress_after(first: tuple[Instruction, ...], ofport: int) -> tuple[Instruction, ...]:
    """`egress_hook` for a port-security rule whose instructions before its goto are
    ``first`` (none, or one apply-actions: a flow has at most one)."""
    hook = egress_hook(ofport)
    if not first:
        return hook
    (before,) = first
    apply, goto = hook
    assert isinstance(before, Apply) and isinstance(apply, Apply)
    return (Apply((*before.actions, *apply.actions)), goto)


def plug(s: Slice, filtered_ofports: Collection[int]) -> Slice:
    """``s`` (a core slice or fragment) with the three hooks applied for the given ports.

    Port-security rules matching ``in_port`` of a filtered port and going to L2_FROM_PORT get
    :func:`egress_hook` (a rule that applies actions first - the copy of a virtual IP's
    announcement to the controller - keeps them, in the hook's one apply-actions); delivery
    rules (L2_FROM_PORT, L2_FROM_TUNNEL) whose only action is
    ``output`` to a filtered port get :func:`ingress_hook`; flood buckets get
    :func:`ingress_bucket`.  Everything else is returned unchanged.
    """
    filtered = frozenset(filtered_ofports)
    to_l2 = (GotoTable(t.L2_FROM_PORT),)
    rules = []
    for r in s.rules:
        if r.table == t.PORT_SECURITY and r.instructions[-1:] == to_l2:
            in_port = dict(r.match).get("in_port")
            if in_port in filtered:
                r = r._replace(instructions=_egress_after(r.instructions[:-1], in_port))
        elif r.table in (t.L2_FROM_PORT, t.L2_FROM_TUNNEL):
            out = _only_output(r.instructions)
            if out in filtered:
                r = r._replace(instructions=ingress_hook(out))
        rules.append(r)
    groups = {
        GroupEntry(
            g.group_id,
            tuple(
                ingress_bucket(b[0].port)
                if len(b) == 1 and isinstance(b[0], Output) and b[0].port in filtered
                else b
                for b in g.buckets
            ),
        )
        for g in s.groups
    }
    return Slice(rules=frozenset(rules), groups=frozenset(groups))


def filtered_ofports(ports: Iterable[LocalPort]) -> frozenset[int]:
    """The ofports of the ports among ``ports`` that get flows (`flows.compiler.usable`) and
    are filtered (port security on): what :func:`plug` is given for a host's slices."""
    return frozenset(p.ofport for p in ports if p.port_security and usable(p))


def _only_output(instructions: tuple[Instruction, ...]) -> int | None:
    if len(instructions) == 1 and isinstance(instructions[0], Apply):
        acts = instructions[0].actions
        if len(acts) == 1 and isinstance(acts[0], Output):
            return acts[0].port
    return None


# ------------------------------------------------------------------------------- port ranges


@lru_cache(maxsize=4096)
def port_masks(lo: int, hi: int) -> tuple[int | tuple[int, int], ...]:
    """The fewest value/mask matches that cover exactly the ports ``lo..hi`` (an exact port is
    a plain ``int``, as the match normal form wants it).

    An aligned power-of-two block of ports is what a CIDR block is for addresses, so netaddr's
    range-to-CIDR split (ports as the low 16 bits of an IPv4 address) gives the minimal prefix
    cover; ``prefixlen - 16`` of the 16 port bits are fixed.
    """
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"port range {lo}..{hi} outside 0..65535")
    out: list[int | tuple[int, int]] = []
    for block in netaddr.iprange_to_cidrs(netaddr.IPAddress(lo, 4), netaddr.IPAddress(hi, 4)):
        mask = (0xFFFFFFFF << (32 - block.prefixlen)) & 0xFFFF
        value = int(block.network)
        out.append(value if mask == 0xFFFF else (value, mask))
    return tuple(out)


# ---------------------------------------------------------------------------- rule compiling


@lru_cache(maxsize=1 << 16)
def _address(ip: str) -> tuple[int, object]:
    """(version, match value) of an address or CIDR: a host as a plain string, else masked."""
    net = netaddr.IPNetwork(ip)
    full = net.prefixlen == (32 if net.version == 4 else 128)
    value: object = str(net.ip) if full else (str(net.network), str(net.netmask))
    return net.version, value


def _remote_field(rule: SgRule) -> str:
    """The packet field that names the other end: its source on ingress, destination on egress."""
    v = "ipv4" if rule.ethertype == IPV4 else "ipv6"
    return f"{v}_src" if rule.direction == INGRESS else f"{v}_dst"


def _protocol(rule: SgRule) -> int | None:
    if rule.ethertype == IPV6 and rule.protocol == PROTO_ICMP:
        return PROTO_ICMPV6
    return rule.protocol


@lru_cache(maxsize=1 << 16)
def check_rule(rule: SgRule) -> None:
    """Raise ``ValueError`` for a rule the API should never have stored."""
    if not 0 < rule.key <= MAX_CONJ_ID:
        raise ValueError(f"rule key {rule.key} outside 1..{MAX_CONJ_ID}")
    if rule.direction not in (INGRESS, EGRESS) or rule.ethertype not in ETH_TYPE:
        raise ValueError(f"rule {rule.key}: direction/ethertype {rule.direction}/{rule.ethertype}")
    if rule.remote_ip_prefix is not None and rule.remote_group_id is not None:
        raise ValueError(f"rule {rule.key}: both remote_ip_prefix and remote_group_id")
    if rule.remote_ip_prefix is not None:
        version, _ = _address(rule.remote_ip_prefix)
        if version != (4 if rule.ethertype == IPV4 else 6):
            raise ValueError(f"rule {rule.key}: {rule.remote_ip_prefix} is not {rule.ethertype}")
    if rule.protocol is not None and not 0 <= rule.protocol <= 255:
        raise ValueError(f"rule {rule.key}: protocol {rule.protocol}")


@lru_cache(maxsize=1 << 16)
def rule_clauses(rule: SgRule) -> tuple[Match, ...]:
    """Clause 2 of a rule: the matches (one per port-range block) that say what it allows,
    besides who sends and who the remote group is."""
    check_rule(rule)
    base: dict[str, object] = {"eth_type": ETH_TYPE[rule.ethertype]}
    proto = _protocol(rule)
    if proto is not None:
        base["ip_proto"] = proto
    if rule.remote_ip_prefix is not None and netaddr.IPNetwork(rule.remote_ip_prefix).prefixlen:
        base[_remote_field(rule)] = _address(rule.remote_ip_prefix)[1]
    lo, hi = rule.port_range_min, rule.port_range_max
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        kind = "icmpv4" if proto == PROTO_ICMP else "icmpv6"
        if lo is not None:
            base[f"{kind}_type"] = lo
            if hi is not None:
                base[f"{kind}_code"] = hi
        return (match(**base),)
    if proto in PORTS_UNMATCHABLE and lo is not None:
        return ()  # no clause: the rule allows nothing rather than every port
    if proto in PORT_FIELD and lo is not None:
        hi = lo if hi is None else hi
        if (lo, hi) not in ((0, 0xFFFF), (1, 0xFFFF)):  # Neutron: 1-65535 means any port
            return tuple(match(**base, **{PORT_FIELD[proto]: m}) for m in port_masks(lo, hi))
    return (match(**base),)


def _rules_table(direction: str) -> int:
    return t.SG_INGRESS_RULES if direction == INGRESS else t.SG_EGRESS_RULES


def _n_clauses(rule: SgRule) -> int:
    return 3 if rule.remote_group_id is not None else 2


def _port_group_rules(port: FilteredPort, groups: Mapping[str, SecurityGroup]) -> list[SgRule]:
    """Every rule that applies to a port (unknown group ids are skipped: the port then allows
    less, never more)."""
    return [r for gid in dict.fromkeys(port.groups) if gid in groups for r in groups[gid].rules]


def is_stateful(port: FilteredPort, groups: Mapping[str, SecurityGroup]) -> bool:
    """A port is stateless only if every group it is in is (no group: stateful, drop all)."""
    known = [groups[g] for g in port.groups if g in groups]
    return not known or any(g.stateful for g in known)


# ------------------------------------------------------------------------------------ outputs


def static_rules(cookie: int) -> frozenset[Rule]:
    """The host-independent part: entries, state handling, commits and table misses."""
    rules: list[Rule] = [Rule(spec.table_id, t.PRIO_MISS, (), (), cookie) for spec in t.SG_TABLES]
    # L2_FROM_PORT comes before the SG tables and goto_table may only go forward: resubmit
    to_l2: tuple[Instruction, ...] = (Apply((Resubmit(t.L2_FROM_PORT),)),)
    deliver: tuple[Instruction, ...] = (Apply((OutputReg(REG),)),)
    for entry, rules_table, accept, done, nd_types in (
        (t.SG_EGRESS, t.SG_EGRESS_RULES, t.SG_EGRESS_ACCEPT, to_l2, ND_EGRESS),
        (t.SG_INGRESS, t.SG_INGRESS_RULES, t.SG_INGRESS_ACCEPT, deliver, ND_INGRESS),
    ):
        egress = entry == t.SG_EGRESS

        def add(table: int, prio: int, m: Match, ins: tuple[Instruction, ...]) -> None:
            rules.append(Rule(table, prio, m, ins, cookie))

        # ---- entry: always-pass, bans, conntrack
        add(entry, t.PRIO_SG_ALWAYS, match(eth_type=ETH_TYPE_ARP), done)
        for icmp_type in nd_types:
            m = match(eth_type=ETH_TYPE[IPV6], ip_proto=PROTO_ICMPV6, icmpv6_type=icmp_type)
            add(entry, t.PRIO_SG_ALWAYS, m, done)
        for ethertype, (client, server) in DHCP.items():
            src, dst = (client, server) if egress else (server, client)
            m = match(eth_type=ETH_TYPE[ethertype], ip_proto=PROTO_UDP, udp_src=src, udp_dst=dst)
            add(entry, t.PRIO_SG_ALWAYS, m, done)
            if egress:  # a VM is no DHCP server
                m = match(eth_type=ETH_TYPE[ethertype], ip_proto=PROTO_UDP, udp_src=dst,
                          udp_dst=src)  # fmt: skip
                add(entry, t.PRIO_SG_BAN, m, ())
        if egress:  # nor a router
            m = match(eth_type=ETH_TYPE[IPV6], ip_proto=PROTO_ICMPV6, icmpv6_type=ICMPV6_RA)
            add(entry, t.PRIO_SG_BAN, m, ())
        for eth_type in ETH_TYPE.values():
            # the flag is reset here: a stateless sender's packet may reach a stateful receiver
            track = (Apply((SetField(FLAGS, 0), TO_NET, Ct(zone_reg=REG, table=rules_table))),)
            add(entry, t.PRIO_SG_TRACK, match(eth_type=eth_type), track)

        # ---- rules table: connection state first, for stateful ports only.  Every state flow
        # matches the flag: a packet carries the conntrack state of any earlier ct() (the
        # sender's zone, or, for a flood copy, another receiver's), which a stateless port must
        # ignore, and OVS does not even honour ct_clear for a flood copy after such a bucket.
        def state(**fields: object) -> Match:
            return match(**{FLAGS: 0}, **fields)

        trk_inv = CT_TRK | CT_INV
        add(rules_table, t.PRIO_SG_STATE, state(ct_state=(trk_inv, trk_inv)), ())
        add(rules_table, t.PRIO_SG_STATE, state(ct_state=(CT_TRK, CT_TRK),
                                                ct_mark=t.CT_MARK_DENIED), ())  # fmt: skip
        reply = (CT_TRK | CT_EST | CT_RPL, CT_TRK | CT_EST | CT_REL | CT_RPL)
        related = (CT_TRK | CT_REL, CT_TRK | CT_NEW | CT_EST | CT_REL | CT_INV)
        add(rules_table, t.PRIO_SG_REPLY, state(ct_state=reply), done)
        add(rules_table, t.PRIO_SG_REPLY, state(ct_state=related), done)
        deny = (Apply((Ct(commit=True, zone_reg=REG, mark=t.CT_MARK_DENIED),)),)
        for eth_type in ETH_TYPE.values():
            m = state(eth_type=eth_type, ct_state=(CT_TRK | CT_EST, CT_TRK | CT_EST))
            add(rules_table, t.PRIO_SG_TRACK, m, deny)

        # ---- accept table: commit what is new, then on
        commit = Ct(commit=True, zone_reg=REG)
        for eth_type in ETH_TYPE.values():
            m = state(eth_type=eth_type, ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW))
            then = Resubmit(t.L2_FROM_PORT) if egress else OutputReg(REG)
            ins = (Apply((commit, then)),)
            add(accept, t.PRIO_SG_ALWAYS, m, ins)
        add(accept, t.PRIO_SG_TRACK, (), done)
    return frozenset(rules)


def port_rules(
    port: FilteredPort, groups: Mapping[str, SecurityGroup], cookie: int
) -> frozenset[Rule]:
    """One port's own flows: clause 1 (``reg5 = ofport``) of every rule of its groups, per
    direction, the drop of flood copies to itself, and for a stateless port the entries that
    skip conntrack.  They depend on the port's ofport, its known groups and, if stateless, its
    domain only (`_port_rules`)."""
    known = tuple(groups[gid] for gid in dict.fromkeys(port.groups) if gid in groups)
    stateful = not known or any(g.stateful for g in known)
    return _port_rules(port.ofport, known, 0 if stateful else port.domain, stateful, cookie)


@lru_cache(maxsize=1 << 14)
def _port_rules(ofport: int, known: tuple[SecurityGroup, ...], domain: int, stateful: bool,
                cookie: int) -> frozenset[Rule]:  # fmt: skip
    """`port_rules` from what they depend on: cached, since a port is re-planned unchanged when
    only its addresses' scope moves (its network joins or leaves a router: every local port of
    the network on every host), and equal inputs then give the very same rules (the diff's
    comparison with what the switch holds is an identity check)."""
    zone = zone_of(ofport)
    who = match(**{REG: zone})
    out: list[Rule] = []
    by_dir: dict[str, list[Action]] = defaultdict(list)
    for rule in sorted((r for g in known for r in g.rules), key=lambda r: r.key):
        check_rule(rule)
        by_dir[rule.direction].append(Conjunction(rule.key, 1, _n_clauses(rule)))
    for direction, acts in by_dir.items():
        clause1 = (Apply(tuple(dict.fromkeys(acts))),)
        out.append(Rule(_rules_table(direction), t.PRIO_SG_CONJ, who, clause1, cookie))
    # A flood copy back to the sender: OVS would skip the output anyway, but only after an
    # ingress conntrack pass (an entry in the sender's own zone and one recirculation) per packet.
    hairpin = match(**{REG: zone}, in_port=zone)
    out.append(Rule(t.SG_INGRESS, t.PRIO_SG_HAIRPIN, hairpin, (), cookie))
    if not stateful:  # (a stateful routed port: `network_entries`)
        domain_acts = _domain_actions(domain)
        for entry, rules_table in ((t.SG_EGRESS, t.SG_EGRESS_RULES),
                                   (t.SG_INGRESS, t.SG_INGRESS_RULES)):  # fmt: skip
            scope = (Resubmit(_SCOPE_TABLE[entry]),) if domain else ()
            for eth_type in ETH_TYPE.values():
                m = match(**{REG: zone}, eth_type=eth_type)
                skip = (Apply((SetField(FLAGS, t.SG_STATELESS), *domain_acts, TO_NET, *scope)),
                        GotoTable(rules_table))  # fmt: skip
                out.append(Rule(entry, t.PRIO_SG_STATELESS, m, skip, cookie))
    return frozenset(out)


def conj_id_rule(rule: SgRule, cookie: int) -> Rule:
    """A rule's ``conj_id`` flow: all its clauses matched -> its direction's accept table."""
    table = _rules_table(rule.direction)
    accept = t.SG_INGRESS_ACCEPT if rule.direction == INGRESS else t.SG_EGRESS_ACCEPT
    return Rule(table, t.PRIO_SG_CONJ, match(conj_id=rule.key), (GotoTable(accept),), cookie)


@lru_cache(maxsize=1 << 16)
def rule_entries(rule: SgRule) -> tuple[tuple[int, Match, Conjunction], ...]:
    """Clause 2 of a rule as (table, match, conjunction action) contributions to merged flows."""
    table, conj = _rules_table(rule.direction), Conjunction(rule.key, 2, _n_clauses(rule))
    return tuple((table, m, conj) for m in rule_clauses(rule))


def member_entries(
    rule: SgRule, addrs: Iterable[MemberAddress]
) -> list[tuple[int, Match, Conjunction]]:
    """Clause 3 of a remote-group rule for these member addresses (already filtered to the
    scopes where the rule applies): one contribution per address of the rule's family (two for
    a `MemberAddress.fallback` one)."""
    table, conj = _rules_table(rule.direction), Conjunction(rule.key, 3, 3)
    return [(table, m, conj) for addr in addrs for m in _member_matches(rule, addr)]


def shared_rules(
    ports: Iterable[FilteredPort], groups: Mapping[str, SecurityGroup], cookies: SgCookies
) -> frozenset[Rule]:
    """Clauses 2 and 3 and the ``conj_id`` flows of every rule that applies to a local port,
    merged (two rules or two address sets needing one match share one flow with all their
    conjunction actions) in a fresh `flows.sg_clauses.ClauseIndex`, the same structure the sg
    service patches incrementally: this is the reference it is tested against.
    """
    ports = list(ports)
    used: dict[int, SgRule] = {}
    scopes: dict[int, set[int]] = defaultdict(set)  # rule key -> scopes it applies in
    for port in ports:
        for rule in _port_group_rules(port, groups):
            if used.setdefault(rule.key, rule) != rule:
                raise ValueError(f"two different rules with key {rule.key}")
            scopes[rule.key].add(scope_of(port.network_key, port.domain))

    index = ClauseIndex()
    for key, rule in used.items():
        owner = cookies.rule(key)
        index.add_fixed(owner, conj_id_rule(rule, owner))
        for entry in rule_entries(rule):
            index.add(owner, *entry)
        if rule.remote_group_id is None:
            continue
        remote = groups.get(rule.remote_group_id)
        for addr in remote.members if remote is not None else ():
            if scope_of(addr.network_key, addr.domain) in scopes[key]:
                for entry in member_entries(rule, (addr,)):
                    index.add(cookies.member(addr.port_id), *entry)
    return frozenset(index.rules())


@lru_cache(maxsize=1 << 16)
def _member_matches(rule: SgRule, addr: MemberAddress) -> tuple[Match, ...]:
    """Clause 3 for one address of a remote group's member, in the rule's address family (none
    for an address of the other family): under its network's key (REG_SG_NET), and for a
    `MemberAddress.fallback` one under its L3 domain too."""
    version, value = _address(addr.ip)
    if version != (4 if rule.ethertype == IPV4 else 6):
        return ()
    if netaddr.IPNetwork(addr.ip).prefixlen == 0:
        # an allowed pair "any address": the member is known by its MAC only (as Neutron does)
        what: dict[str, object] = {
            "eth_src" if rule.direction == INGRESS else "eth_dst": normalize_mac(addr.mac)
        }
    else:
        what = {_remote_field(rule): value}
    wheres = [_scope_match(addr.network_key, 0)]
    if addr.fallback:
        wheres.append(_scope_match(0, addr.domain))
    return tuple(match(**where, eth_type=ETH_TYPE[rule.ethertype], **what) for where in wheres)


def compile_host(
    ports: Iterable[FilteredPort],
    groups: Mapping[str, SecurityGroup],
    cookies: SgCookies,
    domains: Mapping[int, Mapping[int, tuple[str, ...]]] | None = None,
) -> Slice:
    """Every security-group flow of a host with these filtered ports (none: empty slice).

    ``domains``: each L3 domain's classified subnets (`classified_subnets`), for its scope
    flows (`domain_rules`) on a host with a filtered port in it (none given: none classified).
    Raises ``ValueError`` for input the API must have refused (bad rule, two ports with one
    ofport, an ofport that cannot be a zone) rather than compile something ambiguous.
    """
    ports = sorted(ports, key=lambda p: p.ofport)
    if not ports:
        return Slice()
    ofports = [p.ofport for p in ports]
    if len(set(ofports)) != len(ofports):
        raise ValueError("two filtered ports with the same ofport")
    rules = set(static_rules(cookies.static))
    for port in ports:
        rules |= port_rules(port, groups, cookies.ports.get(port.port_id, cookies.shared))
    for key, domain in sorted({(p.network_key, p.domain) for p in ports if p.domain}):
        rules |= network_entries(key, domain, cookies.network(key))
    for domain in sorted({p.domain for p in ports if p.domain}):
        classified = tuple(sorted((domains or {}).get(domain, {}).items()))
        rules |= domain_rules(domain, classified, t.sg_domain_cookie(domain))
    rules |= shared_rules(ports, groups, cookies)
    return Slice(rules=frozenset(rules))
