"""Distributed east-west routing: a tenant's router, routed on the sending hypervisor (issue 16).
Pure, no I/O.

tenantnet knows every port's MAC and IP, so like OVN's and OpenDaylight's distributed routers it
routes fully proactively, with no central router in the path and no neighbour learning.  A VM's
IPv4 packet to the MAC of its router interface, for an address in another subnet of the router,
is routed on the VM's own host::

    2 L2_FROM_PORT   metadata=K_src, eth_dst=IF_src, ip
                       -> set reg3/reg4=R (the router), goto 4                        [IF_src]
    4 L3_ROUTING     reg3/reg4=R, ip, nw_dst=CIDR_dst
                       -> dec_ttl, set eth_src=IF_dst, write metadata=K_dst, goto 5    [IF_dst]
                     reg3/reg4=R, icmp echo, nw_dst=<IF_dst's address>
                       -> the echo reply (addresses swapped, type 0, eth_dst=the asker),
                          reg4=ECHO_MARK|R_hi, resubmit(,4)                            [IF_dst]
                     reg3/reg4=R_lo/ECHO_MARK|R_hi, metadata=K_src
                       -> set eth_src=IF_src, back out of the asking port              [IF_src]
                     metadata=K_src, eth_dst=IF_src, ip, nw_ttl=1
                       -> controller (ICMP time exceeded)                              [IF_src]
    5 L3_NEIGHBOURS  metadata=K_dst, ip, nw_dst=<a port's address>
                       -> set eth_dst=<its MAC>, then
                          on this host:  resubmit(,3)  (L2_FROM_TUNNEL's delivery, with the
                                         receiver's security-group ingress if it has one)
                          elsewhere:     set tunnel_id=<seg of K_dst>, tun_ipv4_dst=<its host>,
                                         output:<tunnel port>                          [P]
    4 L3_ROUTING     an extra route: reg3/reg4=R, ip, nw_dst=<its destination>
                       -> dec_ttl, set eth_src=IF_hop, set eth_dst=<the nexthop's MAC>, then
                          its local delivery or its tunnel, as above                   [IF_hop]
    0 CLASSIFY       in_port=<tunnel>, tunnel_id=<seg of K>, tun_ipv4_src=<router host>,
                     eth_src=IF_K
                       -> write metadata=K, goto 3   (prio 99)                        [IF of K]
    3 L2_FROM_TUNNEL metadata=K, eth_src=IF_K  -> drop   (prio 55: below the delivery to a
                       local port, above the flood: a routed packet is never flooded)   [IF of K]
    2 L2_FROM_PORT   ARP request for an interface address -> the answer              [IF]

(``[IF]``: the owner, the interface whose rule it is; ``[P]``: the routed port whose rule it is.)
The packet leaves the sender's host already in the destination network, with the destination's key,
so the receiver delivers it as any tunnel packet of that network: ingress security groups apply
there, egress ones applied on the sender before routing (Neutron's semantics). TTL: a packet to be
routed that arrives with TTL 1 goes to the controller (the packet-in meter of its host limits
them), which answers ICMP time exceeded from the interface (`controller.dataplane.ttl`), so
traceroute shows the router; ``dec_ttl`` drops what else cannot be decremented (TTL 0).

**Router id.**  The entry marks the packet with its router (`router_id_of`: the smallest store
number among the router's interface ports; numbers are never reused and a port is an interface
of one router at most, so no two routers share one; an interface added by subnet is a new port
with a larger number, so adding it changes no other rule, while one added by ``port_id`` may be
an older port with a smaller number and move the mark, as below).  Routes and echo answers match
the mark: one per interface of the router and host, where keying them on the entering interface
took one per pair (a router of N interfaces: 2N instead of 2N x N rules per host, and an added
interface is its own rules only).  Removing the interface with the smallest number renumbers the
router: its routes and echo answers are rewritten on its hosts.

**Isolation.**  Every entry is scoped by the network key in metadata and the interface's MAC,
and the mark is set by entries only: a packet can only enter routing through an interface of
its own network and only reach the subnets of that interface's router; tenants with the same
CIDRs have different keys and different routers (different marks).  The tunnel
ingress of routed traffic is exact: a host accepts network K's key from exactly the hosts of
K's routers (``RouterView.hosts``: the hosts holding a port in one of the router's
networks), at priority 99 beside l2's per-peer rules (priority 100), so neither owner needs to
know the other's rules, and only with the source MAC of the router's interface on K (what
every routed packet into K carries: its route set it).  That MAC also keeps the ingress rules
of two routers on one network (through two of its subnets) apart when a host is a host of
both: without it they would be one flow with two owners.

**Owners** (`flows.tables.OwnerKind.ROUTER`; the number is a port's store number, never
reused): an interface owns its ARP answer, its entry into routing, the route *to* its subnet,
the echo answer of its address, the source MAC of echo replies to its subnet, the extra routes
whose nexthop is in its subnet and the tunnel ingress into its network; a routed port (a bound
port with an address in a subnet of a router) owns its neighbour rules (``[P]`` above), on
every host of every router of its network.  So a port change in a routed network is one owner
per router host (`routed_port_rules`, O(1) flow-mods and CPU whatever the number of ports), and
the whole compile of a router is the interface owners plus the same per-port pieces
(`compile_router`).  Adding an interface adds its own owner and the ports of its network on
that router's hosts, nothing else; removing one removes them (and, if it held the router's
mark, rewrites the router's routes and echo answers there).

**Virtual IPs.**  A port's address pair that it was learnt to hold (`RoutedPort.vip`: an ARP
it sent from that address, `controller.dataplane.vips`) gets the same neighbour rule as a
fixed IP, to the pair's MAC, owned by the port and at `PRIO_VIP_NEIGHBOUR` (one below a fixed
IP's, so an address that is also a bound port's fixed IP stays that port's, and the two are
never one flow with two owners).  The store keeps one holder per VIP and network, so a move is
the old holder's rule deleted and the new one's added on each router host.

**Which host gets what.**  A host holding a port in some of the router's networks (a
*router host*) gets, for those networks only, the entries, routes, echo answers, ARP answers
and tunnel ingress, and the neighbour rules of every routed address (it may send to any).  Other
hosts get nothing of the router.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import netaddr

from flows import arp_responder as arp
from flows import tables as t
from flows.compiler import OFPP_MAX, normalize_mac
from flows.model import (
    Action,
    Apply,
    DecTtl,
    GotoTable,
    HostContext,
    Move,
    Output,
    Resubmit,
    Rule,
    Segment,
    SetField,
    Slice,
    WriteMetadata,
    match,
)

ETH_TYPE_IPV4 = 0x0800
IP_PROTO_ICMP = 1
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0

PRIO_ROUTED_INGRESS = t.PRIO_EXACT - 1
"""CLASSIFY: routed traffic into a network from a router host (beside l2's per-peer rules)."""
PRIO_ROUTE_BASE = t.PRIO_EXACT
"""L3_ROUTING: a route's priority is this plus its prefix length (longest prefix first)."""
PRIO_ARP_GATEWAY = arp.PRIO_ARP_BYPASS + 5
"""L2_FROM_PORT: an interface's ARP answer, above the bypass of ports with port security off
(an appliance VM must find its gateway too; the address is never a VM's to claim)."""
PRIO_TTL_EXPIRED = 190
"""L3_ROUTING: a packet with TTL 1 to be routed goes to the controller, which answers ICMP time
exceeded from the interface (`controller.dataplane.ttl`); above the routes, below the echo
answers (a router answers what is addressed to it whatever the TTL)."""
OFPP_CONTROLLER = 0xFFFFFFFD
PRIO_ECHO = 200
"""L3_ROUTING: echo requests to an interface address, above every route."""
PRIO_ROUTED_UNKNOWN = (t.PRIO_FLOOD + t.PRIO_EXACT) // 2
"""L2_FROM_TUNNEL: a routed packet (source MAC: the interface of its network) whose
destination this host does not deliver is dropped, not flooded: the sender routed it to one
known port, so a flood copy could only reach ports it was never meant for (it happens while a
new port's own host has not applied its bundle yet: the sender's route may land first)."""
PRIO_VIP_NEIGHBOUR = t.PRIO_EXACT - 1
"""L3_NEIGHBOURS: a virtual IP's rule (its holder's), below a fixed IP's: an address that is a
bound port's fixed IP and another's address pair goes to the fixed IP's port, and the two
rules are never one flow with two owners."""


@dataclass(frozen=True)
class Interface:
    """A router interface: a port of the router on one subnet, holding the subnet's gateway."""

    num: int  # the interface port's store number: its owner cookie
    segment: Segment  # its network
    mac: str
    ip: str  # the gateway address
    cidr: str  # the subnet


@dataclass(frozen=True)
class RoutedPort:
    """A bound port's address in one of the router's subnets (`Subnets.routed`)."""

    num: int  # the port's store number: the owner of its neighbour rules
    segment: Segment  # its network
    mac: str
    ip: str  # normalized
    host_ip: str  # tunnel address of the host holding it
    vip: bool = False  # a virtual IP the port holds (an address pair), not a fixed IP of it

    @property
    def key(self) -> int:
        return self.segment.key


@dataclass(frozen=True)
class RouterView:
    """What one host needs to know about one router (admin up; a down router has no view)."""

    interfaces: tuple[Interface, ...]
    ports: tuple[RoutedPort, ...]
    hosts: tuple[str, ...]  # tunnel IPs of every router host (this one included or not)
    local_keys: frozenset[int]  # networks of the router with a port held by this host
    routes: tuple[tuple[str, str], ...] = ()  # extra routes: (destination CIDR, nexthop IP)


def router_id_of(interfaces: Iterable[Interface]) -> int:
    """A router's mark: the smallest store number among its interfaces (unique among routers:
    see "Router id" above), 0 for none."""
    return min((i.num for i in interfaces), default=0)


class Subnets:
    """A router's interfaces (`_interfaces`: one per network and per subnet), their CIDRs and
    gateways parsed once, so that placing a port's address is integer compares: what makes a
    port change O(1) on a router host (`RoutedPort` entries are built per port, never by
    walking the router's networks)."""

    def __init__(self, interfaces: Iterable[Interface]) -> None:
        self.interfaces = _interfaces(interfaces)
        self._parsed: list[tuple[int, int, int, int, Interface]] = []  # key, net, mask, gw
        for iface in self.interfaces:
            cidr = netaddr.IPNetwork(iface.cidr)
            gw = int(netaddr.IPAddress(_ip4(iface.ip)))
            self._parsed.append((iface.segment.key, int(cidr.network), int(cidr.netmask), gw,
                                 iface))  # fmt: skip

    def interface_of(self, key: int, ip: str) -> Interface | None:
        """The interface whose subnet holds ``ip`` (IPv4, normalized), in network ``key``; None
        outside the router's subnets and for the gateway address itself."""
        addr = _ip_int(ip)
        for k, net, mask, gw, iface in self._parsed:
            if k == key and addr & mask == net:
                return iface if addr != gw else None
        return None

    def routed(self, num: int, segment: Segment, mac: str, fixed_ips: Iterable[str],
               host_ip: str,
               vips: Iterable[tuple[str, str]] = ()) -> tuple[RoutedPort, ...]:  # fmt: skip
        """A bound port's entries: its IPv4 addresses in a subnet of the router, then the
        virtual IPs it holds there (``vips``: (address, the MAC it is reached at))."""
        out = []
        addresses = [(text, mac, False) for text in fixed_ips]
        addresses += [(text, vip_mac, True) for text, vip_mac in vips]
        for text, at_mac, vip in addresses:
            if ":" in text:
                continue
            ip = _ip4(text)
            if self.interface_of(segment.key, ip) is not None:
                out.append(RoutedPort(num, segment, at_mac, ip, host_ip, vip=vip))
        return tuple(out)


@lru_cache(maxsize=1024)
def _subnets(interfaces: tuple[Interface, ...]) -> Subnets:
    """`Subnets` of a router's interfaces, shared by its hosts (never changed once built): each
    router host's `interface_rules` in a step asks for the same ones, and building them parses
    every CIDR and gateway."""
    return Subnets(interfaces)


def compile_router(ctx: HostContext, view: RouterView) -> dict[int, Slice]:
    """Every routing rule of one router on one host, by owner (`flows.tables.router_cookie`):
    its interfaces' rules (`interface_rules`), and each routed port's neighbour rules
    (`routed_port_rules`, the per-port path's own function).  Empty on a host that is not a
    router host.  Raises ``ValueError`` for an address or CIDR that does not parse (a unit
    failure, retried) rather than installing a wrong route."""
    if not view.local_keys:
        return {}
    rules = interface_rules(ctx, view)
    for rule in routed_port_rules(ctx, view.ports):
        rules.setdefault(rule.cookie, set()).add(rule)
    return {cookie: Slice(rules=frozenset(rs)) for cookie, rs in rules.items()}


def interface_rules(ctx: HostContext, view: RouterView) -> dict[int, set[Rule]]:
    """The interfaces' owners of one router on one host: what depends on the set of
    interfaces and on the router's hosts (entries, routes, echo and ARP answers, TTL, tunnel
    ingress, extra routes; ``view.ports`` is read only for the extra routes' nexthops).  A
    routed port's neighbour rules depend on none of it (only on the port, its host and the
    interface of its own network that makes it routed), which is what lets an interface
    change recompile these and the ports of the networks whose interface changed only."""
    if not view.local_keys:
        return {}
    subnets = _subnets(tuple(view.interfaces))
    ifaces = subnets.interfaces
    own_ip = _ip4(ctx.tunnel_ip)
    rules: dict[int, set[Rule]] = {}
    rid = router_id_of(ifaces)
    pieces = [_every_host_rules(ifaces)]  # what every router host needs, whoever sends
    peers = tuple(sorted({_ip4(h) for h in view.hosts} - {own_ip}, key=_ip_int))
    for src in ifaces:
        if src.segment.key not in view.local_keys:
            continue
        pieces.append(_entry_rules(rid, src))
        tunnel = _tunnel_ofport(ctx, src.segment)
        if tunnel is not None:
            pieces.append(_ingress_rules(src, tunnel, peers))
    for piece in pieces:
        for cookie, rs in piece:
            rules.setdefault(cookie, set()).update(rs)
    for rule in _extra_routes(ctx, own_ip, rid, subnets, view):
        rules.setdefault(rule.cookie, set()).add(rule)
    return rules


Piece = tuple[tuple[int, tuple[Rule, ...]], ...]
"""Rules by owner cookie: a part of `interface_rules` that is the same on every host that needs
it, built once and shared (the caches below), so that a router's second and third hosts in a
step, and the interfaces that did not change, cost set updates instead of rule construction."""


@lru_cache(maxsize=1024)
def _every_host_rules(ifaces: tuple[Interface, ...]) -> Piece:
    """Each interface's echo answer and route: the same on every router host, whoever sends."""
    rid = router_id_of(ifaces)
    cookies = [(dst, t.router_cookie(dst.num)) for dst in ifaces]
    return tuple(
        (cookie, (_echo_rule(rid, _ip4(dst.ip), cookie), _route_rule(rid, dst, cookie)))
        for dst, cookie in cookies
    )


@lru_cache(maxsize=1 << 14)
def _entry_rules(rid: int, src: Interface) -> Piece:
    """What a host with a port in ``src``'s network needs of it: the entry into router ``rid``
    (the mark), the ARP and echo answers from its MAC, TTL expiry, and the drop of a routed
    packet that no port here takes (it is never flooded)."""
    key, cookie, mac = src.segment.key, t.router_cookie(src.num), normalize_mac(src.mac)
    entry = match(metadata=key, eth_dst=mac, eth_type=ETH_TYPE_IPV4)
    enter = (Apply(_mark(rid)), GotoTable(t.L3_ROUTING))
    expired = match(metadata=key, eth_dst=mac, eth_type=ETH_TYPE_IPV4, nw_ttl=1)
    to_controller = (Apply((Output(OFPP_CONTROLLER),)),)
    routed = match(metadata=key, eth_src=mac)
    return ((cookie, (
        Rule(t.L2_FROM_PORT, t.PRIO_EXACT, entry, enter, cookie),
        arp.answer_rule(key, arp.ArpEntry(_ip4(src.ip), mac, cookie), priority=PRIO_ARP_GATEWAY),
        _echo_source_rule(rid, key, mac, cookie),
        Rule(t.L3_ROUTING, PRIO_TTL_EXPIRED, expired, to_controller, cookie),
        Rule(t.L2_FROM_TUNNEL, PRIO_ROUTED_UNKNOWN, routed, (), cookie),
    )),)  # fmt: skip


@lru_cache(maxsize=1 << 14)
def _ingress_rules(src: Interface, tunnel: int, peers: tuple[str, ...]) -> Piece:
    """``src``'s network's key accepted from the other router hosts ``peers`` (they route into
    it), on tunnel port ``tunnel``, for packets from ``src``'s MAC only: a packet routed into
    the network always has it as its source (`_route_rule`, `_extra_routes`), and matching it
    keeps two routers of one network from owning one flow (see "Isolation" above) and a
    router host from sending the network anything but routed packets."""
    key, cookie = src.segment.key, t.router_cookie(src.num)
    to_l2 = (WriteMetadata(key, t.METADATA_MASK), GotoTable(t.L2_FROM_TUNNEL))
    mac = normalize_mac(src.mac)
    return ((cookie, tuple(
        Rule(t.CLASSIFY, PRIO_ROUTED_INGRESS,
             match(in_port=tunnel, tunnel_id=src.segment.seg_id, tun_ipv4_src=host,
                   eth_src=mac), to_l2, cookie)
        for host in peers
    )),)  # fmt: skip


def routed_port_rules(ctx: HostContext, ports: Iterable[RoutedPort]) -> frozenset[Rule]:
    """The neighbour rules of routed ports on a router host (each under its port's cookie):
    the one definition both the whole compile and a port change use."""
    own_ip = _ip4(ctx.tunnel_ip)
    out = (_neighbour_rule(ctx, own_ip, port) for port in ports)
    return frozenset(r for r in out if r is not None)


def _interfaces(interfaces: Iterable[Interface]) -> tuple[Interface, ...]:
    """One interface per network and one per subnet, smallest port number first (the store
    never attaches a subnet twice or overlapping subnets to one router; this keeps an
    inconsistent input from producing two owners of one flow)."""
    out: list[Interface] = []
    nets: set[int] = set()
    cidrs: list[netaddr.IPNetwork] = []
    for iface in sorted(interfaces, key=lambda i: i.num):
        cidr = netaddr.IPNetwork(iface.cidr)
        if cidr.version != 4 or iface.segment.key in nets:
            continue
        if any(cidr in other or other in cidr for other in cidrs):
            continue
        nets.add(iface.segment.key)
        cidrs.append(cidr)
        out.append(iface)
    return tuple(out)


def _marked(rid: int) -> dict[str, int]:
    """The registers' values that mark a packet with router ``rid`` (`flows.tables.REG_ROUTER`):
    what the entries set and the routes and echo answers match."""
    return {t.REG_ROUTER: rid & 0xFFFFFFFF, t.REG_ROUTER_HI: rid >> 32}


@lru_cache(maxsize=4096)
def _mark(rid: int) -> tuple[Action, ...]:
    """The entry's actions that set the mark."""
    return tuple(SetField(reg, value) for reg, value in _marked(rid).items())


@lru_cache(maxsize=1 << 14)
def _route_rule(rid: int, dst: Interface, cookie: int) -> Rule:
    """The route of router ``rid`` to ``dst``'s subnet.  Cached, as `_echo_rule`: the same on
    every host of the router, and an interface added or removed recompiles them all there."""
    nw_dst, prefixlen = _cidr_dst(dst.cidr)
    m = match(eth_type=ETH_TYPE_IPV4, **_dst_field(nw_dst), **_marked(rid))
    route = (
        Apply((DecTtl(), SetField("eth_src", normalize_mac(dst.mac)))),
        WriteMetadata(dst.segment.key, t.METADATA_MASK),
        GotoTable(t.L3_NEIGHBOURS),
    )
    return Rule(t.L3_ROUTING, PRIO_ROUTE_BASE + prefixlen, m, route, cookie)


@lru_cache(maxsize=4096)
def _cidr_dst(text: str) -> tuple[object, int]:
    """A subnet's ``ipv4_dst`` match value and prefix length (cached: a router's routes are
    interfaces x interfaces rules on each host, from the same few CIDRs)."""
    cidr = netaddr.IPNetwork(text)
    full = cidr.prefixlen == 32
    return (str(cidr.ip) if full else (str(cidr.network), str(cidr.netmask))), cidr.prefixlen


def _dst_field(value: object) -> dict[str, object]:
    """``ipv4_dst`` as a match field, none for a ``/0`` (a default route): an all-zero mask is
    stored by OVS as no match on the field, so its dump would show another rule and every
    reconcile would replace it."""
    if isinstance(value, tuple) and value[1] == "0.0.0.0":
        return {}
    return {"ipv4_dst": value}


def _extra_routes(ctx: HostContext, own_ip: str, rid: int, subnets: Subnets,
                  view: RouterView) -> list[Rule]:  # fmt: skip
    """The extra routes of router ``rid``, each owned by the interface of its nexthop's subnet:
    a packet for the destination goes to the nexthop's port, routed like a packet for the
    nexthop itself (TTL, the interface's MAC on the nexthop's subnet, the nexthop's MAC), in one
    rule (the neighbour table is keyed by the packet's own destination address).  A route
    whose nexthop is no bound port in a subnet of the router, or whose destination is a subnet
    of the router, is left out (the API refuses both; nothing is routed to a guess)."""
    if not view.routes:
        return []  # the common case: no index of the router's ports to build per interface
    # a fixed IP over a virtual IP that is the same address (its rule is the one that routes)
    by_ip = {_ip4(p.ip): p for p in sorted(view.ports, key=lambda p: not p.vip)}
    connected = {netaddr.IPNetwork(i.cidr).cidr for i in subnets.interfaces}
    out: list[Rule] = []
    seen: set[netaddr.IPNetwork] = set()
    for destination, nexthop in sorted(view.routes):  # one nexthop per destination: the first
        dest = netaddr.IPNetwork(destination).cidr
        hop = by_ip.get(_ip4(nexthop))
        iface = subnets.interface_of(hop.key, hop.ip) if hop is not None else None
        if hop is None or iface is None or dest.version != 4 or dest in connected | seen:
            continue
        seen.add(dest)
        full = dest.prefixlen == 32
        nw_dst: object = str(dest.ip) if full else (str(dest.network), str(dest.netmask))
        m = match(eth_type=ETH_TYPE_IPV4, **_dst_field(nw_dst), **_marked(rid))
        acts: list[Action] = [DecTtl(), SetField("eth_src", normalize_mac(iface.mac)),
                              SetField("eth_dst", normalize_mac(hop.mac))]  # fmt: skip
        if _ip4(hop.host_ip) == own_ip:
            acts += [SetField("metadata", hop.key), Resubmit(t.L2_FROM_TUNNEL)]
        else:
            tunnel = _tunnel_ofport(ctx, iface.segment)
            if tunnel is None:
                continue
            acts += [SetField("tunnel_id", iface.segment.seg_id),
                     SetField("tun_ipv4_dst", _ip4(hop.host_ip)), Output(tunnel)]  # fmt: skip
        cookie = t.router_cookie(iface.num)
        out.append(Rule(t.L3_ROUTING, PRIO_ROUTE_BASE + dest.prefixlen, m, (Apply(tuple(acts)),),
                        cookie))  # fmt: skip
    return out


@lru_cache(maxsize=1 << 14)
def _echo_rule(rid: int, ip: str, cookie: int) -> Rule:
    """The echo reply of router ``rid``'s interface address ``ip``, whichever of its interfaces
    the request came through: addresses swapped, type 0 (OVS fixes the ICMP and IP checksums),
    then marked and resubmitted to this table, where the asking interface's
    `_echo_source_rule` (the packet still carries its network's key) sets the source MAC the
    VM sent to and sends it back out of its port."""
    m = match(eth_type=ETH_TYPE_IPV4, ip_proto=IP_PROTO_ICMP, icmpv4_type=ICMP_ECHO_REQUEST,
              ipv4_dst=ip, **_marked(rid))  # fmt: skip
    reply = (
        Move("eth_src", "eth_dst"),
        Move("ipv4_src", "ipv4_dst"),
        SetField("ipv4_src", ip),
        SetField("icmpv4_type", ICMP_ECHO_REPLY),
        SetField(t.REG_ROUTER_HI, t.ROUTER_ECHO_MARK | rid >> 32),
        Resubmit(t.L3_ROUTING),
    )
    return Rule(t.L3_ROUTING, PRIO_ECHO, m, (Apply(reply),), cookie)


@lru_cache(maxsize=1 << 14)
def _echo_source_rule(rid: int, key: int, mac: str, cookie: int) -> Rule:
    """An echo reply's second pass (`_echo_rule`) to a VM of network ``key``: from the MAC of
    router ``rid``'s interface on it (a network can be on two routers: the mark keeps their
    rules apart), back out of the asking port."""
    m = match(metadata=key, **{**_marked(rid), t.REG_ROUTER_HI: t.ROUTER_ECHO_MARK | rid >> 32})
    back = (SetField("eth_src", mac), Output(arp.OFPP_IN_PORT))
    return Rule(t.L3_ROUTING, PRIO_ECHO + 1, m, (Apply(back),), cookie)


def _neighbour_rule(ctx: HostContext, own_ip: str, port: RoutedPort) -> Rule | None:
    local = _ip4(port.host_ip) == own_ip
    tunnel = None if local else _tunnel_ofport(ctx, port.segment)
    if not local and tunnel is None:
        return None
    return _neighbour(port, tunnel)


@lru_cache(maxsize=1 << 16)
def _neighbour(port: RoutedPort, tunnel: int | None) -> Rule:
    """A routed port's neighbour rule on its own host (``tunnel`` None) or on another router
    host (out of ``tunnel``): the same on every host of a kind, so built once for all of them
    (an interface add gives every router host the joining network's ports)."""
    cookie = t.router_cookie(port.num)
    m = match(metadata=port.key, eth_type=ETH_TYPE_IPV4, ipv4_dst=_ip4(port.ip))
    acts: list[Action] = [SetField("eth_dst", normalize_mac(port.mac))]
    if tunnel is None:
        acts.append(Resubmit(t.L2_FROM_TUNNEL))
    else:
        acts += [SetField("tunnel_id", port.segment.seg_id),
                 SetField("tun_ipv4_dst", _ip4(port.host_ip)), Output(tunnel)]  # fmt: skip
    prio = PRIO_VIP_NEIGHBOUR if port.vip else t.PRIO_EXACT
    return Rule(t.L3_NEIGHBOURS, prio, m, (Apply(tuple(acts)),), cookie)


def _tunnel_ofport(ctx: HostContext, seg: Segment) -> int | None:
    ofport = ctx.tunnel_ofports.get(seg.seg_type)
    return ofport if ofport is not None and 0 < ofport <= OFPP_MAX else None


@lru_cache(maxsize=65536)
def _ip4(text: str) -> str:
    """The normalized IPv4 address (cached: the same few thousand addresses come back on
    every compile of a router host)."""
    ip = netaddr.IPAddress(text)
    if ip.version != 4:
        raise ValueError(f"{text} is not an IPv4 address")
    return str(ip)


@lru_cache(maxsize=65536)
def _ip_int(text: str) -> int:
    return int(netaddr.IPAddress(text))
