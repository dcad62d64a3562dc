"""Distributed routers on their hosts (owner kind ROUTER, `flows.routing`).

Inputs: ``router`` (admin state), ``port`` (interfaces, and the addresses, MACs and state of
the ports of routed networks), ``subnet`` (an interface's CIDR), ``network`` (keys and
segments), ``binding`` and ``iface`` (where a port is and whether it is plugged),
``host_facts`` (tunnel ports), ``switch`` (a host was read) and ``host`` (one deleted).

One unit per host, ``(host id,)``: every router with a network that has a port held by the
host is compiled for it (`flows.routing.compile_router`) and each owner (one per interface)
is diffed on its own, so a change sends only the flows it changes: a port of a routed network
one neighbour rule per router host, an interface added or removed the flows of that router's
interfaces on that router's hosts.

A change dirties the hosts of the routers it concerns: the hosts holding a port in one of
their networks now (as l2 locates ports), and the hosts this service compiled them on last time
(`hosts_of`), so a host that stopped being a router host has its owners removed.  Finding them,
and a host's routers (`routers_on`), reads the holders' counted index by network
(`Bindings.hosts_holding`, `Bindings.networks_held`), never a network's ports; a port of a
network without a router dirties nothing here.  Compiling a router host still reads the ports
of the router's networks (its neighbour rules).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from functools import partial
from typing import Any

import netaddr

from controller.dataplane.planner import EMPTY, Change, Inputs, Step, Unit
from controller.dataplane.state import NetworkRec, PortRec, RouterRec, SubnetRec
from flows import tables as t
from flows.routing import Interface, RoutedPort, RouterView, compile_router

GROUP = "router"


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


def router_view(router_id: str, host_id: str, inputs: Inputs) -> RouterView | None:
    """What the host needs of the router, None if it is admin down or has no interface."""
    rec = inputs.mirror.routers.get(router_id)
    if rec is not None and not rec.admin_up:
        return None
    ifaces = interfaces_of(router_id, inputs)
    if not ifaces:
        return None
    mirror = inputs.mirror
    cidrs = [(i.segment.key, netaddr.IPNetwork(i.cidr)) for _, i in ifaces]
    ports: list[RoutedPort] = []
    hosts: set[str] = set()
    local: set[int] = set()
    for net_id in sorted({p.network_id for p, _ in ifaces}):
        key = mirror.key_of(net_id)
        if key is None:
            continue
        for pid in sorted(mirror.net_ports.get(net_id, ())):
            port = mirror.ports[pid]
            holder = located_on(port, inputs)
            if holder is None:
                continue
            host_ip = inputs.hosts[holder].rec.tunnel_ip
            hosts.add(host_ip)
            if holder == host_id:
                local.add(key)
            for ip in port.fixed_ips:
                addr = netaddr.IPAddress(ip)
                if any(k == key and addr in c for k, c in cidrs):
                    ports.append(RoutedPort(key, port.mac, str(addr), host_ip))
    return RouterView(
        interfaces=tuple(i for _, i in ifaces),
        ports=tuple(ports),
        hosts=tuple(sorted(hosts)),
        local_keys=frozenset(local),
        routes=rec.routes if rec is not None else (),
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


def compile_host_owners(host_id: str, inputs: Inputs) -> dict[int, Any]:
    """Every router owner's slice on a ready host."""
    ctx = inputs.context(host_id)
    owners: dict[int, Any] = {}
    for router_id in sorted(routers_on(host_id, inputs)):
        view = router_view(router_id, host_id, inputs)
        if view is not None:
            owners.update(compile_router(ctx, view))
    return owners


class RoutingService:
    name = "router"
    inputs = frozenset(
        {"router", "port", "subnet", "network", "binding", "iface", "host_facts", "switch",
         "host"}
    )  # fmt: skip
    owner_kinds = frozenset({int(t.OwnerKind.ROUTER)})

    def __init__(self) -> None:
        self.compiled_on: dict[str, frozenset[str]] = {}  # host -> routers compiled there

    def hosts_of(self, router_ids: Iterable[str], inputs: Inputs) -> set[str]:
        """The hosts of these routers now and at their last compile."""
        routers = set(router_ids)
        if not routers:
            return set()
        hosts = {h for h, rs in self.compiled_on.items() if rs & routers}
        mirror = inputs.mirror
        nets = {
            mirror.ports[pid].network_id
            for r in routers
            for pid in mirror.router_ifaces.get(r, ())
            if pid in mirror.ports
        }
        for net_id in nets:
            hosts.update(h for h in inputs.bindings.hosts_holding(net_id) if h in inputs.hosts)
        return hosts

    # ------------------------------------------------------------------ inputs -> units

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        kind, mirror = change.kind, inputs.mirror
        routers: set[str] = set()
        hosts: set[str] = set()
        if kind == "router":
            routers.add(change.id)
            rec = change.new or change.old
            assert isinstance(rec, RouterRec)
        elif kind == "port":
            old, new = change.old, change.new
            assert isinstance(old, PortRec | None) and isinstance(new, PortRec | None)
            for rec in (old, new):
                if rec is None:
                    continue
                if rec.router_id is not None:
                    routers.add(rec.router_id)
                else:
                    routers |= mirror.routers_of(rec.network_id)
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
            if port is not None:
                routers |= mirror.routers_of(port.network_id)
            if routers:  # a port of a network without a router costs this service nothing
                hosts |= {h for h in (change.old, change.new) if isinstance(h, str)}
        elif kind in ("switch", "host_facts"):
            hosts.add(change.id)
        elif kind == "host":
            if change.new is None:
                self.compiled_on.pop(change.id, None)
            return []
        hosts |= self.hosts_of(routers, inputs)
        return [Unit(self.name, (h,)) for h in sorted(hosts) if h in inputs.hosts]

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        port = inputs.mirror.port_by_num(t.owner_num(owner))
        return GROUP if port is not None and port.router_id is not None else None

    def forget(self, unit: Unit) -> None:
        """Nothing is cached half-done: a host whose compile failed is compiled whole again."""

    # ------------------------------------------------------------------ units -> work

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        hosts = sorted({str(u.scope[0]) for u in units})
        return ((Unit(self.name, (h,)), partial(self._plan, h, inputs)) for h in hosts)

    def _plan(self, host_id: str, inputs: Inputs, step: Step) -> None:
        """The host's router owners, each diffed against what its switch holds (a host that is
        not ready is planned when its switch has been read: ``switch``)."""
        rt = inputs.hosts.get(host_id)
        if rt is None or not rt.ready:
            if rt is None:
                self.compiled_on.pop(host_id, None)
            return
        assert rt.installed is not None
        desired = compile_host_owners(host_id, inputs)
        for owner in sorted(desired.keys() | rt.groups.get(GROUP, set())):
            step.want(host_id, owner, GROUP, desired.get(owner, EMPTY))
        self.compiled_on[host_id] = frozenset(routers_on(host_id, inputs))
