"""Compile one host's view of the tenant networks into OpenFlow rules and groups.

This is the "logical -> physical" step (OVN's northd/controller split, Faucet's pipeline vs.
valve_of): the input is what a host needs to know about a network (:class:`NetworkView`) plus the
host's own facts (:class:`HostContext`), the output is a :class:`Slice` of plain values.  The
compiler is pure and deterministic: no I/O, no os-ken, no clock, and the same input (in any
order) gives an equal slice.  That is what lets the southbound compare desired and installed
state by set arithmetic.  Every rule carries the cookie of its *owner* (:mod:`flows.tables`): the
base pipeline, a network on the host, or a port, so a change of one port recompiles only that
port's rules and its host's flood groups.

The table layout is described in :mod:`flows.tables`.

Decisions worth knowing:

* A port with ``admin_up=False`` is treated as unplugged, in both directions: no classification
  rule (its packets are dropped) and it is neither a unicast destination nor a flood member
  (Neutron's "dead port" semantics).  A port without a valid ofport (OVS reports -1 while an
  interface fails) is skipped the same way.
* A network with no usable local port on this host compiles to an empty slice: a host that has no
  port of a network carries none of its flows (and receives none of its tunnel traffic).
* ``peer_ips`` is authoritative for flooding and for accepting tunnel traffic; ``remote_ports`` is
  used for unicast only.  A remote port whose host is not (yet) a peer is still reached by
  unicast; the reply is accepted once that host becomes a peer.  Our own tunnel IP is never a
  peer and never a unicast destination (stale data during a migration must not hairpin).
* If the host has no (valid) tunnel port for the network's segmentation type yet, the rules and
  buckets that would output to or classify from it are omitted: the network works locally until
  the tunnel port appears and the slice is recompiled.  Table L2_FROM_TUNNEL and the flood_local
  group are still compiled (they don't name the tunnel port), so the local half of the slice
  doesn't change when the tunnel port comes and goes.
* Inconsistent input never yields two rules with the same (table, priority, match) key, because
  a switch can only hold one of them: a local port wins over a remote port with the same MAC
  (the port is bound here; the remote entry is stale), and among duplicates the smallest
  (ofport, port_id) / (host_ip, port_id) wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

import netaddr

from flows import arp_responder as arp
from flows import tables as t
from flows.model import (
    Action,
    Apply,
    GotoTable,
    GroupEntry,
    HostContext,
    Instruction,
    LocalPort,
    Match,
    NetworkView,
    Output,
    RemotePort,
    Rule,
    Segment,
    SetField,
    Slice,
    ToGroup,
    WriteMetadata,
    match,
)
from flows.vip_pairs import vip_pairs

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
IP_PROTO_UDP = 17
IP_PROTO_ICMPV6 = 58
DHCP_CLIENT_PORT = 68
DHCP_SERVER_PORT = 67
ICMPV6_NEIGHBOR_SOLICIT = 135
ICMPV6_NEIGHBOR_ADVERT = 136
_NA = (("eth_type", ETH_TYPE_IPV6), ("ip_proto", IP_PROTO_ICMPV6),
       ("icmpv6_type", ICMPV6_NEIGHBOR_ADVERT))  # fmt: skip

_DHCP_REQUEST = match(
    eth_type=ETH_TYPE_IPV4,
    ipv4_src="0.0.0.0",
    ip_proto=IP_PROTO_UDP,
    udp_src=DHCP_CLIENT_PORT,
    udp_dst=DHCP_SERVER_PORT,
)
_IPV6_DAD = match(
    eth_type=ETH_TYPE_IPV6,
    ipv6_src="::",
    ip_proto=IP_PROTO_ICMPV6,
    icmpv6_type=ICMPV6_NEIGHBOR_SOLICIT,
)

OFPP_MAX = 0xFFFFFF00
"""Largest physical port number in OpenFlow 1.3; above it are reserved ports (IN_PORT, ALL...)."""
OFPP_CONTROLLER = 0xFFFFFFFD
_TO_CONTROLLER = (Apply((Output(OFPP_CONTROLLER),)),)

# ---------------------------------------------------------------------------------- normalisation
# Rules are compared with what the switch reports, so every address must have exactly one spelling.
# The caches make recompiling a large network cheap: the same MACs/IPs are seen again and again.


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


@lru_cache(maxsize=65536)
def normalize_mac(mac: str) -> str:
    """Lower-case colon form (``02:ab:..``), the spelling the southbound decodes MACs to.

    MACs almost always arrive in that form already; recognising it skips netaddr's parser, which
    dominates the cost of compiling a large network on a cold cache.
    """
    if _CANONICAL_MAC.fullmatch(mac):
        return mac
    return str(netaddr.EUI(mac, dialect=netaddr.mac_unix_expanded))


@lru_cache(maxsize=65536)
def normalize_ip(addr: str) -> tuple[int, str]:
    """``(version, compact string)`` of an IPv4 or IPv6 address."""
    ip = netaddr.IPAddress(addr)
    return ip.version, str(ip)


@lru_cache(maxsize=65536)
def link_local_of(mac: str) -> str:
    """The EUI-64 IPv6 link-local address a VM derives from its MAC (used before SLAAC/DHCPv6)."""
    return str(netaddr.EUI(mac).ipv6_link_local())


def _tunnel_ip(addr: str) -> str:
    """Normalised IPv4 tunnel endpoint; the underlay is IPv4 (``tun_ipv4_src``/``tun_ipv4_dst``)."""
    version, text = normalize_ip(addr)
    if version != 4:
        raise ValueError(f"tunnel endpoint {addr!r} is not IPv4")
    return text


@lru_cache(maxsize=65536)
def _ip_sort_key(text: str) -> tuple[int, int]:
    """Numeric order of normalised addresses, so bucket order reads naturally in dumps."""
    ip = netaddr.IPAddress(text)
    return ip.version, int(ip)


# ------------------------------------------------------------------------------------------ base


def compile_base(ctx: HostContext) -> Slice:
    """The host-independent skeleton: one priority-0 drop rule per table.

    Explicit miss rules (rather than relying on the switch's default) make "drop unless allowed"
    part of the desired state, so a switch that was configured to send misses to the controller
    or to flood is corrected by the ordinary diff.  ``ctx`` is taken for symmetry with
    :func:`compile_network` and so that host-specific base rules can be added without changing
    callers.
    """
    del ctx
    cookie = t.BASE_COOKIE
    rules = frozenset(Rule(spec.table_id, t.PRIO_MISS, (), (), cookie) for spec in t.TABLES)
    return Slice(rules=rules)


# --------------------------------------------------------------------------------------- network


def _usable_local_ports(ports: Iterable[LocalPort]) -> list[tuple[LocalPort, str]]:
    """Admin-up ports with a valid ofport, one per ofport, with their normalised MAC, sorted.

    Sorting first and keeping the first port per ofport makes the choice among inconsistent
    duplicates independent of input order.
    """
    chosen: list[tuple[LocalPort, str]] = []
    seen_ofports: set[int] = set()
    for port in sorted(ports, key=lambda p: (p.ofport, p.port_id)):
        if not port.admin_up or not 0 < port.ofport <= OFPP_MAX or port.ofport in seen_ofports:
            continue
        seen_ofports.add(port.ofport)
        chosen.append((port, normalize_mac(port.mac)))
    return chosen


def _port_security_rules(port: LocalPort, mac: str, cookie: int) -> list[Rule]:
    """Table PORT_SECURITY: what this VM may send (see :mod:`flows.tables`).

    Everything matches ``in_port`` *and* ``eth_src``: a VM that forges its MAC is dropped even
    when the IP is right, and an allowed (MAC, IP) pair on one port is no licence on another.
    """
    goto: tuple[Instruction, ...] = (GotoTable(t.L2_FROM_PORT),)
    ofport = port.ofport
    if not port.port_security:
        return [Rule(t.PORT_SECURITY, t.PRIO_PASS, match(in_port=ofport), goto, cookie)]

    v4: set[str] = set()
    v6: set[str] = {link_local_of(mac)}
    for addr in port.fixed_ips:
        version, text = normalize_ip(addr)
        (v4 if version == 4 else v6).add(text)

    # The matches are built as "port part + rule part, sorted" rather than with match(**kw):
    # same normal form, but this loop runs ~7 times per port and dominates large compiles.
    who = (("eth_src", mac), ("in_port", ofport))

    def allow(*fields: tuple[str, object]) -> Rule:
        return Rule(t.PORT_SECURITY, t.PRIO_EXACT, tuple(sorted(who + fields)), goto, cookie)

    # IPv6 duplicate address detection is sent from the unspecified address.
    rules = [allow(*_IPV6_DAD)]
    if not port.dhcp:
        # DHCP before the VM has an address; the server replies to the MAC, not the IP.  A
        # port whose DHCP tenantnet serves has its punt instead (`_dhcp_punt_rule`: above this
        # priority, a wider match), which would leave this rule unreachable: one flow less.
        rules.append(allow(*_DHCP_REQUEST))
    for ip in v4:
        # ARP must carry the port's own MAC and IP inside the payload too, or a VM could poison
        # its neighbours' caches while sending from a legitimate Ethernet source.
        rules.append(allow(("eth_type", ETH_TYPE_ARP), ("arp_spa", ip), ("arp_sha", mac)))
        rules.append(allow(("eth_type", ETH_TYPE_IPV4), ("ipv4_src", ip)))
    rules.extend(allow(("eth_type", ETH_TYPE_IPV6), ("ipv6_src", ip)) for ip in v6)
    # A neighbour advertisement only for the port's own addresses (its pairs' below); any
    # other is dropped, whatever its source address (see `t.PRIO_ND_GUARD`).
    rules.extend(_na_rule(who, ip, goto, cookie) for ip in v6)
    na_from_port = tuple(sorted((*_NA, ("in_port", ofport))))
    rules.append(Rule(t.PORT_SECURITY, t.PRIO_ND_GUARD, na_from_port, (), cookie))
    # The port's virtual IPs by `vip_pairs`, the rule the VIP learner accepts announcements by.
    vips = {ip: normalize_mac(m) for ip, m in vip_pairs(port.allowed_pairs, port.fixed_ips).items()}
    for addr, pair_mac in port.allowed_pairs:
        rules.extend(_pair_rules(normalize_mac(pair_mac), ofport, addr, goto, cookie, vips))
    return rules


def _na_rule(
    who: tuple[tuple[str, object], ...],
    target: object | None,
    goto: tuple[Instruction, ...],
    cookie: int,
) -> Rule:
    """The port (``who``: its ``eth_src`` and ``in_port``) may advertise ``target`` (an
    address, a masked prefix, or None for a ``/0`` pair: any)."""
    fields = _NA + who + ((("ipv6_nd_target", target),) if target is not None else ())
    return Rule(t.PORT_SECURITY, t.PRIO_ND_TARGET, tuple(sorted(fields)), goto, cookie)


def _prefix_value(net: netaddr.IPNetwork) -> object | None:
    """A prefix as a match value: the address for a host prefix, (network, mask) otherwise,
    None for a ``/0``.  Not an all-zero mask: OVS stores that as no match on the field, so
    its dump would show a different rule and every reconcile would replace it."""
    if net.prefixlen == 0:
        return None
    full = net.prefixlen == (32 if net.version == 4 else 128)
    return str(net.ip) if full else (str(net.network), str(net.netmask))


def _pair_rules(
    mac: str,
    ofport: int,
    addr: str,
    goto: tuple[Instruction, ...],
    cookie: int,
    vips: Mapping[str, str],
) -> list[Rule]:
    """Port security for one allowed address pair: a host address, or a CIDR as a masked match.

    A pair that `flows.vip_pairs.vip_pairs` makes a virtual IP (VRRP, keepalived, a load
    balancer: a single IPv4 address, not a fixed IP of the port; of one address paired with
    several MACs, the smallest MAC's pair) is given in ``vips`` (``{address: normalised MAC}``
    of the port).  A gratuitous ARP the port sends for it (sender and target the address, as
    on taking it over) says the port holds it now, so one more rule above the pair's ARP rule
    copies those to the controller (`controller.dataplane.vips`, over the host's metered
    packet-in path) before forwarding them the same way.  No other ARP goes there - not the
    holder's answers to its neighbours' requests, which another VM could otherwise drive at
    will, nor another MAC's pair of the same address, whose announcements the learner would
    not accept - and the announce rule is matched on the port, its MAC and the pair's address
    as the pair's own.  Every pair keeps its allow rules."""
    net = netaddr.IPNetwork(addr)
    full = net.prefixlen == (32 if net.version == 4 else 128)
    value = _prefix_value(net)
    who = (("eth_src", mac), ("in_port", ofport))

    def allow(*fields: tuple[str, object]) -> Rule:
        return Rule(t.PORT_SECURITY, t.PRIO_EXACT, tuple(sorted(who + fields)), goto, cookie)

    def field(name: str) -> tuple[tuple[str, object], ...]:
        return () if value is None else ((name, value),)  # a /0 pair: any address

    if net.version == 4:
        arp_from = (("eth_type", ETH_TYPE_ARP), *field("arp_spa"), ("arp_sha", mac))
        rules = [allow(*arp_from), allow(("eth_type", ETH_TYPE_IPV4), *field("ipv4_src"))]
        if full and vips.get(str(net.ip)) == mac:  # a virtual IP: its announcements go up too
            announce = tuple(sorted(who + arp_from + (("arp_tpa", value),)))
            rules.append(Rule(t.PORT_SECURITY, t.PRIO_VIP_ANNOUNCE, announce,
                              (*_TO_CONTROLLER, *goto), cookie))  # fmt: skip
        return rules
    return [
        allow(("eth_type", ETH_TYPE_IPV6), *field("ipv6_src")),
        _na_rule(who, value, goto, cookie),
    ]


def compile_network_owners(ctx: HostContext, net: NetworkView) -> dict[int, Slice]:
    """Every rule and group of network ``net`` on the host described by ``ctx``, by owner:
    ``{owner cookie: Slice}`` for the network on this host and for each port that has rules
    here (its own rules if it is local, its unicast rules if it is remote).

    One definition of a network's flows: duplicates are resolved first (which port gets an
    ofport two ports claim, which port a MAC two ports claim is delivered to), then the result
    is the union of the per-owner fragments (`local_port_fragment`, `remote_port_fragment`,
    `network_slice`) that the data plane's per-port path also uses.  Without duplicates a
    port's fragment is exactly `local_port_rules` / `remote_port_rules`, so the two paths
    cannot disagree.

    See the module docstring for how admin-down ports, missing tunnel ports, unknown peers and
    inconsistent duplicates are handled.  Raises ``ValueError`` for a network key that cannot be
    encoded in metadata/cookie/group ids, for a port number that does not fit a cookie, or for a
    non-IPv4 tunnel endpoint.
    """
    seg = net.segment
    _check_key(seg.key)
    locals_ = _usable_local_ports(net.local_ports)
    if not locals_:
        return {}

    # Destinations by MAC: local ports first so that they win over a stale remote entry; every
    # port's own MAC before any address-pair MAC.
    local_dst: dict[str, LocalPort] = {}
    for port, mac in locals_:
        local_dst.setdefault(mac, port)
    for port, _mac in locals_:
        for _addr, pair_mac in sorted(port.allowed_pairs):
            local_dst.setdefault(normalize_mac(pair_mac), port)
    delivered: dict[str, list[str]] = {}
    for mac, port in local_dst.items():
        delivered.setdefault(port.port_id, []).append(mac)

    # ARP answers: one port per IPv4 address, local ports first (the store never gives one
    # address to two ports of a network; this keeps inconsistent input from colliding).
    answered: set[str] = set()

    def claim(fixed_ips: Iterable[str]) -> list[str]:
        mine = [ip for ip in _ipv4s(fixed_ips) if ip not in answered]
        answered.update(mine)
        return mine

    owned: dict[int, set[Rule]] = {}
    for port, mac in locals_:
        fragment = local_port_fragment(
            seg, port, mac, delivered.get(port.port_id, ()), claim(port.fixed_ips)
        )
        owned.setdefault(t.port_cookie(port.num), set()).update(fragment)

    peers = peer_list(ctx, seg, net.peer_ips)
    tunnel_ofport = _tunnel_ofport(ctx, seg)
    if tunnel_ofport is not None:
        own_ip = _tunnel_ip(ctx.tunnel_ip)
        remote_dst: dict[str, tuple[str, RemotePort]] = {}
        remotes = sorted(
            (((normalize_mac(m), _tunnel_ip(r.host_ip), r.port_id), r)
             for r in net.remote_ports
             for m in (r.mac, *r.extra_macs)),
            key=lambda item: item[0],
        )  # fmt: skip
        for (mac, host_ip, _port_id), rport in remotes:
            if host_ip != own_ip and mac not in local_dst:
                remote_dst.setdefault(mac, (host_ip, rport))
        for mac, (host_ip, rport) in remote_dst.items():
            cookie = t.port_cookie(rport.num)
            rule = _unicast_rule(seg, mac, host_ip, tunnel_ofport, cookie)
            owned.setdefault(cookie, set()).add(rule)
            if mac == normalize_mac(rport.mac):  # its answers go with its own MAC's delivery
                owned[cookie].update(arp_rules(seg, mac, claim(rport.fixed_ips), cookie, None))

    out = {cookie: Slice(rules=frozenset(rules)) for cookie, rules in owned.items()}
    out[t.network_cookie(seg.key)] = network_slice(
        ctx, seg, [p for p, _ in locals_], peers, net.service_answers
    )
    return out


def compile_network(ctx: HostContext, net: NetworkView) -> Slice:
    """Network ``net`` on one host as one slice: the union of `compile_network_owners`."""
    owned = compile_network_owners(ctx, net).values()
    return Slice(
        rules=frozenset(r for s in owned for r in s.rules),
        groups=frozenset(g for s in owned for g in s.groups),
    )


# ------------------------------------------------------------------------------------- fragments
# The per-owner pieces a network is made of.  A port change on a host that stays in the network
# touches only that port's fragments (on its host and its peers) and the network slice of its
# host (the flood groups).


def usable(port: LocalPort) -> bool:
    """Whether a local port gets flows at all (admin-up, with a valid ofport)."""
    return port.admin_up and 0 < port.ofport <= OFPP_MAX


def local_port_fragment(
    seg: Segment, port: LocalPort, mac: str, deliver_to: Iterable[str], answer: Iterable[str]
) -> frozenset[Rule]:
    """A usable local port's rules under its own cookie: classification, port security (``mac``
    is its normalised MAC), delivery of the MACs ``deliver_to`` (normalised) in both L2
    tables, ARP answers for the addresses ``answer``, its DHCP punt and, with port security
    off, its ARP bypass."""
    cookie = t.port_cookie(port.num)
    rules = [_classify_rule(seg.key, port.ofport, cookie)]
    rules.extend(_port_security_rules(port, mac, cookie))
    for dst in deliver_to:
        rules.extend(_delivery_rules(seg.key, dst, port.ofport, cookie))
    if port.dhcp:
        rules.append(_dhcp_punt_rule(port.ofport, cookie))
    owner_ofport: int | None = port.ofport
    if not port.port_security:
        rules.append(arp.bypass_rule(seg.key, port.ofport, cookie))
        owner_ofport = None  # the bypass already forwards all its requests
    return frozenset(rules).union(arp_rules(seg, mac, answer, cookie, owner_ofport))


def _ipv4s(addrs: Iterable[str]) -> list[str]:
    """The IPv4 addresses among ``addrs``, normalised, sorted, once each."""
    v4 = {text for version, text in map(normalize_ip, addrs) if version == 4}
    return sorted(v4, key=_ip_sort_key)


def arp_rules(
    seg: Segment, mac: str, fixed_ips: Iterable[str], cookie: int, ofport: int | None
) -> frozenset[Rule]:
    """A port's ARP answers (`flows.arp_responder`) for its IPv4 fixed IPs, under its own
    cookie, on every host of its network, plus on its own host (``ofport``: where it is
    plugged, None on peers) the pass for its own requests.  Allowed-address-pair addresses
    are never answered (VRRP-style addresses move between ports): their requests keep
    flooding.

    ``mac`` is normalised and ``fixed_ips`` are normalised, distinct IPv4 addresses (as
    `_ipv4s` returns them), so the entries need none of `arp.entries_for`'s parsing, which was
    most of the cost of compiling a network (netaddr per address and MAC, uncached)."""
    entries = [arp.ArpEntry(ip, mac, cookie) for ip in fixed_ips]
    return arp.compile_entries(seg.key, entries, ofport)


def _dhcp_client_match(ofport: int) -> Match:
    """Every DHCP client message a port sends, whatever its addresses."""
    return match(in_port=ofport, eth_type=ETH_TYPE_IPV4, ip_proto=IP_PROTO_UDP,
                 udp_src=DHCP_CLIENT_PORT, udp_dst=DHCP_SERVER_PORT)  # fmt: skip


def _dhcp_punt_rule(ofport: int, cookie: int) -> Rule:
    """The port's DHCP client messages go to the controller (`controller.dataplane.dhcp`), in
    the port-security table above its allow rules (PRIO_EXACT) so that discovers, broadcast
    requests and unicast renewals are all answered on the host and none is flooded."""
    return Rule(t.PORT_SECURITY, t.PRIO_DHCP_PUNT, _dhcp_client_match(ofport), _TO_CONTROLLER,
                cookie)  # fmt: skip


def dhcp_guard_rule(ofport: int, port_num: int) -> Rule:
    """The drop that stops a port's DHCP flood before it reaches the controller: above its punt
    rule, same match, no instructions; owned by `flows.tables.OwnerKind.DHCP_GUARD` (the switch
    expires it, nothing diffs it).  Installed with a hard timeout by `controller.dataplane.dhcp`."""
    cookie = t.owner_cookie(t.OwnerKind.DHCP_GUARD, port_num)
    return Rule(t.PORT_SECURITY, t.PRIO_DHCP_GUARD, _dhcp_client_match(ofport), (), cookie)


def arp_copy_guard_rule(ofport: int, mac: str, vip: str, port_num: int) -> Rule:
    """The drop of the port's gratuitous ARPs for virtual IP ``vip``: above its announce rule
    (`_pair_rules`), same match, no instructions; owned by
    `flows.tables.OwnerKind.ARP_COPY_GUARD` (the switch expires it, nothing diffs it).
    Installed with a hard timeout by `controller.dataplane.vips` when the port floods them.
    A drop, so that one left behind (the pair removed, the ofport reused) can only stop
    frames, never let one through that port security would not."""
    mac = normalize_mac(mac)
    ip = str(netaddr.IPAddress(vip))
    fields = (("eth_src", mac), ("in_port", ofport), ("eth_type", ETH_TYPE_ARP),
              ("arp_spa", ip), ("arp_tpa", ip), ("arp_sha", mac))  # fmt: skip
    cookie = t.owner_cookie(t.OwnerKind.ARP_COPY_GUARD, port_num)
    return Rule(t.PORT_SECURITY, t.PRIO_ARP_COPY_GUARD, tuple(sorted(fields)), (), cookie)


def local_port_rules(seg: Segment, port: LocalPort) -> frozenset[Rule]:
    """One local port's fragment when no other port claims its MACs or ofport: its rules and
    the delivery of its own and its address-pair MACs.  Empty for an unusable port."""
    if not usable(port):
        return frozenset()
    mac = normalize_mac(port.mac)
    pair_macs = (normalize_mac(m) for _a, m in sorted(port.allowed_pairs))
    answer = _ipv4s(port.fixed_ips)
    return local_port_fragment(seg, port, mac, dict.fromkeys([mac, *pair_macs]), answer)


def remote_port_rules(ctx: HostContext, seg: Segment, port: RemotePort) -> frozenset[Rule]:
    """Unicast towards a port on another host, under the port's cookie: one rule per MAC it may
    use.  Empty without a tunnel port of the segment's type, or for a 'remote' port that claims
    to be on this host."""
    tunnel_ofport = _tunnel_ofport(ctx, seg)
    host_ip = _tunnel_ip(port.host_ip)
    if tunnel_ofport is None or host_ip == _tunnel_ip(ctx.tunnel_ip):
        return frozenset()
    cookie = t.port_cookie(port.num)
    mac = normalize_mac(port.mac)
    return frozenset(
        _unicast_rule(seg, normalize_mac(m), host_ip, tunnel_ofport, cookie)
        for m in (port.mac, *port.extra_macs)
    ).union(arp_rules(seg, mac, _ipv4s(port.fixed_ips), cookie, None))


def network_slice(
    ctx: HostContext,
    seg: Segment,
    local_ports: Iterable[LocalPort],
    peers: list[str],
    service_answers: Iterable[tuple[str, str]] = (),
) -> Slice:
    """What the network itself owns on a host: tunnel ingress per peer, the two flood rules,
    the ARP answers for its service addresses ((ip, mac): its DHCP servers, so that a client's
    unicast renewal finds the server) and the two flood groups (the groups list the host's
    usable local ports)."""
    return network_slice_of(ctx, seg, local_buckets(local_ports), peers, service_answers)


def network_slice_of(
    ctx: HostContext,
    seg: Segment,
    buckets: tuple[tuple[Action, ...], ...],
    peers: list[str],
    service_answers: Iterable[tuple[str, str]] = (),
) -> Slice:
    """`network_slice` from the host's local flood buckets as they are (`local_buckets`, or a
    list the caller keeps up to date port by port, as the data plane's per-port path does)."""
    cookie = t.network_cookie(seg.key)
    answers = (
        arp.answer_rule(seg.key, entry, priority=arp.PRIO_ARP_SERVICE)
        for entry in arp.entries_for(arp.ArpEntry(ip, mac, cookie) for ip, mac in service_answers)
    )
    return Slice(
        rules=frozenset((*shared_rules(ctx, seg, peers), *answers)),
        groups=flood_groups_of(ctx, seg, buckets, peers),
    )


def shared_rules(ctx: HostContext, seg: Segment, peers: list[str]) -> list[Rule]:
    """Rules of a network that no single port owns: tunnel ingress per peer, flooding."""
    key, cookie = seg.key, t.network_cookie(seg.key)
    rules: list[Rule] = []
    tunnel_ofport = _tunnel_ofport(ctx, seg)
    if tunnel_ofport is not None:
        from_tunnel = (WriteMetadata(key, t.METADATA_MASK), GotoTable(t.L2_FROM_TUNNEL))
        for peer in peers:
            m = match(in_port=tunnel_ofport, tunnel_id=seg.seg_id, tun_ipv4_src=peer)
            rules.append(Rule(t.CLASSIFY, t.PRIO_EXACT, m, from_tunnel, cookie))
    groups = ((t.L2_FROM_PORT, t.flood_all_group_id(key)),
              (t.L2_FROM_TUNNEL, t.flood_local_group_id(key)))  # fmt: skip
    for table, group in groups:
        flood = (Apply((ToGroup(group),)),)
        rules.append(Rule(table, t.PRIO_FLOOD, match(metadata=key), flood, cookie))
    return rules


def flood_groups(
    ctx: HostContext, seg: Segment, local_ports: Iterable[LocalPort], peers: list[str]
) -> frozenset[GroupEntry]:
    """flood_all (local ports + one copy per peer host) and flood_local (local ports only)."""
    return flood_groups_of(ctx, seg, local_buckets(local_ports), peers)


def local_buckets(local_ports: Iterable[LocalPort]) -> tuple[tuple[Action, ...], ...]:
    """One ``output`` bucket per usable local port, sorted by ofport, one per ofport: the
    canonical bucket order."""
    return tuple((Output(port.ofport),) for port, _ in _usable_local_ports(local_ports))


def flood_groups_of(
    ctx: HostContext, seg: Segment, buckets: tuple[tuple[Action, ...], ...], peers: list[str]
) -> frozenset[GroupEntry]:
    """The two flood groups from the host's local buckets (in canonical order) and its peers.

    An OpenFlow 1.3 group-mod carries every bucket, so a group is as large as the host's local
    ports of the network; building it from a kept bucket tuple is one C-level copy."""
    tunnel_ofport = _tunnel_ofport(ctx, seg)
    tunnel_buckets = (
        tuple(_to_tunnel(seg.seg_id, peer, tunnel_ofport) for peer in peers)
        if tunnel_ofport is not None
        else ()
    )
    return frozenset(
        {
            GroupEntry(t.flood_all_group_id(seg.key), buckets + tunnel_buckets),
            GroupEntry(t.flood_local_group_id(seg.key), buckets),
        }
    )


def peer_list(ctx: HostContext, seg: Segment, peer_ips: Iterable[str]) -> list[str]:
    """The peers a host exchanges a network's traffic with: normalised, sorted, never itself;
    empty while the host has no tunnel port of the segment's type."""
    if _tunnel_ofport(ctx, seg) is None:
        return []
    own_ip = _tunnel_ip(ctx.tunnel_ip)
    return sorted({_tunnel_ip(ip) for ip in peer_ips} - {own_ip}, key=_ip_sort_key)


def _check_key(key: int) -> None:
    if not 1 <= key <= t.MAX_NETWORK_KEY:
        raise ValueError(f"network key {key} outside 1..{t.MAX_NETWORK_KEY}")


def _tunnel_ofport(ctx: HostContext, seg: Segment) -> int | None:
    ofport = ctx.tunnel_ofports.get(seg.seg_type)
    return ofport if ofport is not None and 0 < ofport <= OFPP_MAX else None


def _classify_rule(key: int, ofport: int, cookie: int) -> Rule:
    # vlan_vid=0 (OFPVID_NONE): VM ports are access ports; a tagged frame is dropped like
    # Neutron and OVN do, instead of smuggling a VLAN into the tenant's L2 domain.
    to_pipeline = (WriteMetadata(key, t.METADATA_MASK), GotoTable(t.PORT_SECURITY))
    return Rule(t.CLASSIFY, t.PRIO_EXACT, match(in_port=ofport, vlan_vid=0), to_pipeline, cookie)


def _delivery_rules(key: int, mac: str, ofport: int, cookie: int) -> tuple[Rule, Rule]:
    deliver = (Apply((Output(ofport),)),)
    m = match(metadata=key, eth_dst=mac)
    return (
        Rule(t.L2_FROM_PORT, t.PRIO_EXACT, m, deliver, cookie),
        Rule(t.L2_FROM_TUNNEL, t.PRIO_EXACT, m, deliver, cookie),
    )


def _unicast_rule(seg: Segment, mac: str, host_ip: str, tunnel_ofport: int, cookie: int) -> Rule:
    send = (Apply(_to_tunnel(seg.seg_id, host_ip, tunnel_ofport)),)
    return Rule(t.L2_FROM_PORT, t.PRIO_EXACT, match(metadata=seg.key, eth_dst=mac), send, cookie)


def _to_tunnel(seg_id: int, host_ip: str, tunnel_ofport: int) -> tuple[Action, ...]:
    """Actions that send a packet to ``host_ip`` over the flow-based tunnel port.

    The tunnel ports are created with ``key=flow, remote_ip=flow``, so the VNI/GRE key and the
    destination are set per packet; one tunnel port per type serves every peer.
    """
    return (SetField("tunnel_id", seg_id), SetField("tun_ipv4_dst", host_ip), Output(tunnel_ofport))
