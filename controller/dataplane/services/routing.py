"""Distributed routers on their hosts (owner kind ROUTER, `flows.routing`).

Inputs: ``router`` (admin state, routes), ``port`` (interfaces, and the addresses, MACs and
state of the ports of routed networks), ``subnet`` (an interface's CIDR), ``network`` (keys and
segments), ``binding`` and ``iface`` (where a port is), ``host_facts`` (tunnel ports),
``switch`` (a host was read) and ``host`` (one deleted).

Two kinds of unit.  ``(host id,)``: the host compiled whole, every router with a network that
has a port held by the host (`flows.routing.compile_router`), each owner diffed on its own.
``(port id, network id, port number)``: one port of a routed network patched in, its own
owner (its neighbour rules, `flows.routing.routed_port_rules`, the function the whole compile
uses too) on each host of its network's routers: O(1) per router host whatever the number of
ports, one flow-mod per router host (two for a readdress).  The virtual IPs a port holds
(`PortRec.vips`, learnt from its ARP: `controller.dataplane.vips`) are its addresses here
too, so a VIP moving between ports is those two ports' patches.

What a port change reads of a router apart from the port is kept per router (`RouterBase`: its
interfaces with their CIDRs parsed once, its networks, its nexthops) with its *hosts* at the
last compile (`router_hosts`: which hosts hold a port in which of its networks, from the
holders' counted index `Bindings.hosts_holding`, never a network's ports).  A change that
alters a router's base (the router, an interface, a subnet or network of it, a port that is a
nexthop of its extra routes) marks it dirty (the old base kept to diff); a router whose base
changed or whose hosts moved (the first port of a network on a host, the last one leaving) is
compiled whole on the hosts that join or leave it, and on the hosts that stay only what
depends on the change (`RoutingService._plan_part`: its interfaces' owners, which follow its
interfaces and hosts, and the ports of the networks whose interface changed), unless it has
extra routes or a host of it was deleted (then whole everywhere).  A port of a network
without a router dirties nothing here.

A router the mirror does not know (its interface seen before its record, or after its
deletion) routes nothing and answers nothing, like one that is admin down.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import netaddr

from controller.dataplane.planner import EMPTY, Change, Inputs, Step, Unit
from controller.dataplane.state import NetworkRec, PortRec, RouterRec, SubnetRec
from flows import tables as t
from flows.model import Rule, Slice
from flows.routing import (
    Interface,
    RoutedPort,
    RouterView,
    Subnets,
    compile_router,
    interface_rules,
    routed_port_rules,
)

GROUP = "router"

Hosts = dict[str, tuple[str, frozenset[int]]]
"""A router's hosts: host id -> (its tunnel IP, the keys of the router's networks it holds a
port in)."""


def located_on(port: PortRec, inputs: Inputs) -> str | None:
    """The registered host holding the port (None for an interface port).  Like l2's members
    and remote ports, it counts whether or not the host's OVSDB shows the port yet: a restart
    knows the recorded holders before any host is heard from, so it compiles the same flows
    whatever order the hosts come back in."""
    if port.router_id is not None:
        return None
    holder = inputs.bindings.holder(port.id)
    return holder if holder is not None and holder in inputs.hosts else None


def interfaces_of(router_id: str, inputs: Inputs) -> list[tuple[PortRec, Interface]]:
    """The router's interfaces whose port, network and IPv4 subnet are known."""
    mirror = inputs.mirror
    out: list[tuple[PortRec, Interface]] = []
    for pid in sorted(mirror.router_ifaces.get(router_id, ())):
        port = mirror.ports.get(pid)
        net = mirror.networks.get(port.network_id) if port is not None else None
        if port is None or net is None:
            continue
        for subnet_id, ip in port.subnet_ips:
            subnet = mirror.subnets.get(subnet_id)
            if subnet is None or subnet.ip_version != 4:
                continue
            out.append((port, Interface(port.num, net.segment, port.mac, ip, subnet.dhcp.cidr)))
            break
    return out


@dataclass(frozen=True)
class RouterBase:
    """What a router's compile reads of it apart from its networks' ports: O(interfaces)."""

    subnets: Subnets
    nets: tuple[str, ...]  # its interfaces' networks
    routes: tuple[tuple[str, str], ...]
    nexthops: frozenset[str]  # its extra routes' nexthops, normalized
    iface_nets: frozenset[tuple[str, Interface]] = frozenset()  # (network id, its interface)


def router_base(router_id: str, inputs: Inputs) -> RouterBase | None:
    """None if the router is admin down, unknown to the mirror, or has no interface."""
    rec = inputs.mirror.routers.get(router_id)
    if rec is None or not rec.admin_up:
        return None
    ifaces = interfaces_of(router_id, inputs)
    if not ifaces:
        return None
    subnets = Subnets(i for _, i in ifaces)
    net_of = {i.num: p.network_id for p, i in ifaces}
    return RouterBase(
        subnets=subnets,
        nets=tuple(sorted({p.network_id for p, _ in ifaces})),
        routes=rec.routes,
        nexthops=frozenset(filter(None, (_normalized(nh) for _, nh in rec.routes))),
        iface_nets=frozenset((net_of[i.num], i) for i in subnets.interfaces),
    )


def changed_networks(old: RouterBase, new: RouterBase) -> set[str]:
    """The networks whose interface (the one that makes their ports routed: CIDR, gateway,
    segment, MAC) differs between two bases of a router: the only networks whose ports'
    neighbour rules an interface change can alter (`flows.routing.interface_rules`)."""
    return {net for net, _ in old.iface_nets ^ new.iface_nets}


def _normalized(ip: str) -> str | None:
    try:
        return str(netaddr.IPAddress(ip))
    except (ValueError, netaddr.AddrFormatError):
        return None


def router_hosts(base: RouterBase | None, inputs: Inputs) -> Hosts:
    """The router's hosts, from the holders' index: O(its networks x their hosts)."""
    out: dict[str, set[int]] = {}
    if base is not None:
        mirror = inputs.mirror
        for net_id in base.nets:
            key = mirror.key_of(net_id)
            if key is None:
                continue
            for h in inputs.bindings.hosts_holding(net_id):
                if h in inputs.hosts:
                    out.setdefault(h, set()).add(key)
    return {h: (inputs.hosts[h].rec.tunnel_ip, frozenset(ks)) for h, ks in out.items()}


def routed_entries(base: RouterBase, port: PortRec, inputs: Inputs) -> tuple[RoutedPort, ...]:
    """One port's addresses in the router's subnets, where it is: O(its addresses)."""
    holder = located_on(port, inputs)
    net = inputs.mirror.networks.get(port.network_id)
    if holder is None or net is None:
        return ()
    host_ip = inputs.hosts[holder].rec.tunnel_ip
    return base.subnets.routed(port.num, net.segment, port.mac, port.fixed_ips, host_ip,
                               port.vips)  # fmt: skip


def router_view(router_id: str, host_id: str, inputs: Inputs,
                base: RouterBase | None = None) -> RouterView | None:  # fmt: skip
    """What the host needs of the router (every routed port: a whole compile), None if it has
    no base (`router_base`)."""
    base = base if base is not None else router_base(router_id, inputs)
    if base is None:
        return None
    mirror = inputs.mirror
    hosts = router_hosts(base, inputs)
    ports: list[RoutedPort] = []
    for net_id in base.nets:
        for pid in sorted(mirror.net_ports.get(net_id, ())):
            ports += routed_entries(base, mirror.ports[pid], inputs)
    return RouterView(
        interfaces=base.subnets.interfaces,
        ports=tuple(ports),
        hosts=tuple(sorted(ip for ip, _ in hosts.values())),
        local_keys=hosts[host_id][1] if host_id in hosts else frozenset(),
        routes=base.routes,
    )


def routers_on(host_id: str, inputs: Inputs) -> set[str]:
    """The routers with a network that has a port held by the host: O(networks the host holds
    a port in), from the holders' counted index (`Bindings.networks_held`), never its ports."""
    if host_id not in inputs.hosts:
        return set()
    mirror = inputs.mirror
    found: set[str] = set()
    for net_id in inputs.bindings.networks_held(host_id):
        if mirror.net_ifaces.get(net_id):
            found |= mirror.routers_of(net_id)
    return found


def merge(owners: dict[int, Slice], more: dict[int, Slice]) -> None:
    """Add one router's owners to a host's: a routed port of a network on two routers owns the
    rules of both."""
    for cookie, piece in more.items():
        have = owners.get(cookie)
        owners[cookie] = piece if have is None else Slice(rules=have.rules | piece.rules)


def _routing_differs(old: PortRec, new: PortRec) -> bool:
    return (old.network_id, old.mac, old.fixed_ips, old.router_id, old.vips) != (
        new.network_id, new.mac, new.fixed_ips, new.router_id, new.vips)  # fmt: skip


StepEntries = tuple[RouterBase, PortRec, tuple[RoutedPort, ...]]
"""A port's routed entries from one router's base, kept for one step (`_entries_on`)."""


class RoutingService:
    name = "router"
    inputs = frozenset(
        {"router", "port", "subnet", "network", "binding", "iface", "host_facts", "switch",
         "host"}
    )  # fmt: skip
    owner_kinds = frozenset({int(t.OwnerKind.ROUTER)})

    def __init__(self) -> None:
        self.compiled_on: dict[str, frozenset[str]] = {}  # host -> routers compiled there
        self.bases: dict[str, RouterBase | None] = {}  # router -> its base (None: no routing)
        self.hosts: dict[str, Hosts] = {}  # router -> its hosts at its last compile
        self.dirty: set[str] = set()  # routers whose base changed (the old one kept to diff)
        # a step's routed entries of a port by (router, port id), read by every router host's
        # part: the same on each (its holder's address, not the reader's); emptied per step
        self.step_entries: dict[tuple[str, str], StepEntries] = {}

    # ------------------------------------------------------------------ inputs -> units

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        """Whole hosts for what changes a router (its base: dropped here), one unit per port of
        a routed network."""
        kind, mirror = change.kind, inputs.mirror
        routers: set[str] = set()  # compiled whole on their hosts
        hosts: set[str] = set()
        ports: list[Unit] = []
        if kind == "router":
            routers.add(change.id)
            rec = change.new or change.old
            assert isinstance(rec, RouterRec)
        elif kind == "port":
            old, new = change.old, change.new
            assert isinstance(old, PortRec | None) and isinstance(new, PortRec | None)
            if old is not None and new is not None and not _routing_differs(old, new):
                return []
            for rec in (old, new):
                if rec is None:
                    continue
                if rec.router_id is not None:
                    routers.add(rec.router_id)
                else:
                    ports += self._port_units(rec, inputs, routers, old, new)
        elif kind == "subnet":
            sub = change.new or change.old
            assert isinstance(sub, SubnetRec)
            routers |= mirror.routers_of(sub.network_id)
        elif kind == "network":
            net = change.new or change.old
            assert isinstance(net, NetworkRec)
            routers |= mirror.routers_of(net.id)
        elif kind in ("binding", "iface"):
            port = mirror.ports.get(change.id)
            if port is not None and port.router_id is None:
                ports += self._port_units(port, inputs, routers, port)
        elif kind in ("switch", "host_facts"):
            hosts.add(change.id)
        elif kind == "host" and change.new is None:
            routers |= self._routers_naming(change.id, inputs)
        self.dirty |= routers
        units = [Unit(self.name, (h,)) for h in sorted(hosts) if h in inputs.hosts]
        units += [Unit(self.name, ("router", r)) for r in sorted(routers)]
        return units + list(dict.fromkeys(ports))

    def _routers_naming(self, host_id: str, inputs: Inputs) -> set[str]:
        """The routers whose flows on any host may name a deleted host: those compiled on it,
        and those it was a host of at their last compile (its tunnel in their interfaces'
        owners, its ports' neighbour rules on the other hosts).  Not only the first: a host
        whose switch was never read holds nothing compiled, yet its peers route to it.  A
        router with no hosts kept (never compiled, or forgotten after a failed unit) may name
        it too.  Its bindings are dropped already, so the kept hosts are what says it: O(routers)
        for a rare event."""
        found = set(self.compiled_on.pop(host_id, frozenset()))
        found |= {r for r, hosts in self.hosts.items() if host_id in hosts}
        found |= {r for r in inputs.mirror.routers if r not in self.hosts}
        return found

    def _port_units(self, rec: PortRec, inputs: Inputs, routers: set[str],
                    *versions: PortRec | None) -> list[Unit]:  # fmt: skip
        """The port's unit if its network is routed; a router with one of its addresses as a
        nexthop goes into ``routers`` (its extra routes name the port's MAC and host)."""
        routed = inputs.mirror.routers_of(rec.network_id)
        if not routed:
            return []  # a port of a network without a router costs this service nothing
        ips = {ip for v in versions if v is not None for ip in v.fixed_ips}
        ips |= {ip for v in versions if v is not None for ip, _ in v.vips}
        for r in routed:
            base = self.bases.get(r)
            if (
                base is not None
                and base.nexthops
                and any(_normalized(ip) in base.nexthops for ip in ips)
            ):
                routers.add(r)
        return [Unit(self.name, (rec.id, rec.network_id, rec.num))]

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        """An interface's or a routed port's owner: claimed while the port exists."""
        return GROUP if inputs.mirror.port_by_num(t.owner_num(owner)) is not None else None

    def host_of(self, unit: Unit) -> str | None:
        """A whole host ``(host,)`` or a host's part ``("part", host)`` plans that host; a
        port's patch (its id, network, number) plans every host of its network's routers."""
        if len(unit.scope) == 1:
            return str(unit.scope[0])
        if unit.scope[0] == "part":
            return str(unit.scope[1])
        return None

    def forget(self, unit: Unit) -> None:
        """A failed unit: every router is compiled whole on its hosts next time it is touched
        (what was cached may be half-done)."""
        self.bases.clear()
        self.hosts.clear()
        self.dirty.clear()

    # ------------------------------------------------------------------ units -> work

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        """Whole hosts, then the ports of hosts not compiled whole.  A router touched whose
        base changed or whose hosts moved is made current first (so that what a port patch
        reads is current).  If it had a base and has one, with no extra routes (whose rules
        read any port of the router: nexthops), its hosts that stay its hosts with the same
        tunnel address get only what depends on the change (`_plan_part`): its interfaces'
        owners and the neighbour owners of the ports of the networks whose interface changed
        (an interface added or removed: one network's ports, whatever the router's size);
        hosts that join or leave it, and every host of any other change, are compiled whole."""
        self.step_entries = {}
        # (host,), or a failed ("part", host) retried: the host whole
        whole = {str(u.scope[-1]) for u in units if len(u.scope) == 1 or u.scope[0] == "part"}
        ports = sorted({u.scope for u in units if len(u.scope) == 3}, key=str)
        mirror = inputs.mirror
        pending = sorted(str(u.scope[1]) for u in units if u.scope[0] == "router")
        for _pid, net_id, _num in ports:
            pending += sorted(mirror.routers_of(str(net_id)))
        for h in sorted(whole):
            pending += sorted(routers_on(h, inputs) | self.compiled_on.get(h, frozenset()))
        parts: dict[str, dict[str, set[str]]] = {}  # host -> router -> its changed networks
        olds: dict[str, set[int]] = {}  # host -> interface numbers of the routers' old bases
        seen: set[str] = set()
        while pending:
            r = pending.pop()
            if r in seen:
                continue
            seen.add(r)
            stale = r not in self.bases or r in self.dirty
            old = self.bases.get(r)
            if stale:
                self.bases[r] = router_base(r, inputs)
                self.dirty.discard(r)
            new = self.bases[r]
            hosts = router_hosts(new, inputs)
            before = self.hosts.get(r)
            if not stale and hosts == before:
                continue
            self.hosts[r] = hosts
            if r not in mirror.routers and not hosts:  # deleted: nothing kept of it
                del self.bases[r], self.hosts[r]
            more = hosts.keys() | (before or {}).keys()
            more |= {h for h, rs in self.compiled_on.items() if r in rs}
            # (a host gone unlocates its ports: their neighbour rules go on every router host)
            if (old is not None and new is not None and before is not None
                    and not old.routes and not new.routes
                    and all(h in inputs.hosts for h in before)):  # fmt: skip
                stay = {h for h in hosts.keys() & before.keys() if hosts[h][0] == before[h][0]}
                nets = changed_networks(old, new)
                for h in stay:
                    parts.setdefault(h, {}).setdefault(r, set()).update(nets)
                    olds.setdefault(h, set()).update(i.num for i in old.subnets.interfaces)
                for net_id in nets:  # their ports' owners read these routers' bases too
                    pending += sorted(mirror.routers_of(net_id))
                more -= stay
            for h in sorted(more - whole):
                whole.add(h)
                pending += sorted(routers_on(h, inputs) | self.compiled_on.get(h, frozenset()))
        out: list[tuple[Unit, Any]] = [
            (Unit(self.name, (h,)), partial(self._plan, h, inputs)) for h in sorted(whole)
        ]
        for h in sorted(parts.keys() - whole):
            plan = partial(self._plan_part, h, parts[h], olds.get(h, set()), inputs)
            out.append((Unit(self.name, ("part", h)), plan))
        for scope in ports:
            pid, net_id, num = str(scope[0]), str(scope[1]), int(scope[2])  # type: ignore[call-overload]
            patch = partial(self._patch, pid, net_id, num, frozenset(whole), inputs)
            out.append((Unit(self.name, scope), patch))
        return iter(out)

    def _plan(self, host_id: str, inputs: Inputs, step: Step) -> None:
        """The host's router owners, each diffed against what its switch holds (a host that is
        not ready is planned when its switch has been read: ``switch``)."""
        rt = inputs.hosts.get(host_id)
        if rt is None or not rt.ready:
            if rt is None:
                self.compiled_on.pop(host_id, None)
            return
        assert rt.installed is not None
        desired = self.compile_host_owners(host_id, inputs)
        step.count("router_hosts_compiled")
        for owner in sorted(desired.keys() | rt.groups.get(GROUP, set())):
            step.want(host_id, owner, GROUP, desired.get(owner, EMPTY))
        self.compiled_on[host_id] = frozenset(routers_on(host_id, inputs))

    def compile_host_owners(self, host_id: str, inputs: Inputs) -> dict[int, Slice]:
        """Every router owner's slice on a ready host."""
        ctx = inputs.context(host_id)
        owners: dict[int, Slice] = {}
        for router_id in sorted(routers_on(host_id, inputs)):
            view = router_view(router_id, host_id, inputs, self.bases.get(router_id))
            if view is not None:
                merge(owners, compile_router(ctx, view))
        return owners

    def _plan_part(self, host_id: str, routers: dict[str, set[str]], old_nums: set[int],
                   inputs: Inputs, step: Step) -> None:  # fmt: skip
        """What a change of these routers alters on a host that stays their host: the
        interfaces' owners (old and new; `flows.routing.interface_rules`, the whole compile's
        own function) and the owners of the ports of the given networks (each from every
        router of its network on the host, as `_patch`).  The union of such pieces is the
        whole compile, so the switch ends up holding what a whole compile would give.

        A port deleted in the same step is no longer among its network's ports, and its own
        patch finds no router if the interface went first (or no unit was made for it at
        all, if the interface's removal came first): the owners the host holds of ports that
        are gone are emptied here too.  O(router owners on the host), once per change of an
        interface."""
        rt = inputs.hosts.get(host_id)
        if rt is None or not rt.ready:
            return
        mirror = inputs.mirror
        ctx = inputs.context(host_id)
        rules: dict[int, set[Rule]] = {}
        nums = set(old_nums)
        nums |= mirror.gone_nums(t.owner_num(o) for o in rt.groups.get(GROUP, ()))
        ports: set[str] = set()
        for r, nets in sorted(routers.items()):
            base, hosts = self.bases.get(r), self.hosts.get(r, {})
            if base is None or host_id not in hosts:
                continue
            nums.update(i.num for i in base.subnets.interfaces)
            view = RouterView(
                interfaces=base.subnets.interfaces,
                ports=(),  # no extra routes here (`work`): no nexthop to find
                hosts=tuple(sorted(ip for ip, _ in hosts.values())),
                local_keys=hosts[host_id][1],
                routes=base.routes,
            )
            for cookie, rs in interface_rules(ctx, view).items():
                rules.setdefault(cookie, set()).update(rs)
            for net_id in nets:
                ports.update(mirror.net_ports.get(net_id, ()))
        step.count("router_parts_compiled")
        for pid in sorted(ports):
            port = mirror.ports[pid]
            nums.add(port.num)
            entries = self._entries_on(host_id, port, inputs)
            step.count("router_neighbour_owners_compiled")
            for rule in routed_port_rules(ctx, entries):
                rules.setdefault(rule.cookie, set()).add(rule)
        for num in sorted(nums):
            cookie = t.router_cookie(num)
            step.want(host_id, cookie, GROUP, Slice(rules=frozenset(rules.get(cookie, ()))))
        self.compiled_on[host_id] = frozenset(routers_on(host_id, inputs))

    def _entries_on(self, host_id: str, port: PortRec, inputs: Inputs) -> list[RoutedPort]:
        """A port's neighbour entries on a host: from each router of its network that has
        the host (bases and hosts made current by `work`), each computed once per step."""
        out: list[RoutedPort] = []
        memo = self.step_entries
        for r in sorted(inputs.mirror.routers_of(port.network_id)):
            base = self.bases.get(r)
            if base is None or host_id not in self.hosts.get(r, {}):
                continue
            hit = memo.get((r, port.id))
            if hit is None or hit[0] is not base or hit[1] is not port:
                hit = memo[r, port.id] = (base, port, routed_entries(base, port, inputs))
            out += hit[2]
        return out

    def _patch(self, pid: str, net_id: str, num: int, whole: frozenset[str], inputs: Inputs,
               step: Step) -> None:  # fmt: skip
        """One port's owner on each host of its network's routers (but those compiled whole
        in this step): its neighbour rules from each router of the host, from the bases and
        hosts `work` made current.  O(its routers x their hosts)."""
        mirror = inputs.mirror
        port = mirror.ports.get(pid)
        if port is not None and (port.network_id != net_id or port.num != num):
            port = None
        entries: dict[str, list[RoutedPort]] = {}  # router host -> the port's entries there
        for r in sorted(mirror.routers_of(net_id)):
            base = self.bases.get(r)
            mine = routed_entries(base, port, inputs) if base is not None and port else ()
            for h in self.hosts.get(r, {}):
                entries.setdefault(h, []).extend(mine)
        step.count("router_ports_patched")
        for h in sorted(entries.keys() - whole):
            rt = inputs.hosts.get(h)
            if rt is None or not rt.ready:
                continue
            rules = routed_port_rules(inputs.context(h), entries[h])
            step.want(h, t.router_cookie(num), GROUP, Slice(rules=rules))
