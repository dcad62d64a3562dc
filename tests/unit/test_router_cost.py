"""What one port costs the routing service, counted, not timed: the same work whether its
network has 10 ports or 200 (issue 13: "a port change still costs O(1) flow-mods and CPU
whatever the number of ports"; issue 16: a port of a routed network is one neighbour rule per
router host).

Counted: every port the service looks at (`routing.located_on`, finding its work or compiling),
the ports it places in a router's subnets (`routing.routed_entries`), the router bases it builds
(`routing.router_base`: interfaces and CIDRs parsed), the hosts it compiles whole and the ports
it patches, the router owners it plans and their flow-mods.  A port of a network without a
router must cost the service nothing at all, even when a router exists elsewhere; a port of a
routed network one patch (its own owner on each router host), never a router host's whole
compile, which reads every port of the router's networks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from controller.dataplane import planner
from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import Change, Step
from controller.dataplane.services import routing
from controller.dataplane.state import NetworkRec, PortRec, RouterRec, SubnetRec
from controller.services.dhcp_records import DhcpSubnet
from flows import routing as flows_routing
from flows import tables as t
from tests.unit.test_l2_cost import _readdress
from tests.unit.test_planner import World
from tests.unit.test_sg_cost import _join, _leave, _world

RIF = "network:router_interface_distributed"


def _subnet(w: World, subnet_id: str, net_id: str, cidr: str) -> None:
    rec = SubnetRec(subnet_id, net_id, 4, DhcpSubnet(subnet_id, cidr, None))
    w.mirror.set_subnet(subnet_id, rec)
    w.change(Change("subnet", subnet_id, None, rec))


def _interface(w: World, num: int, net_id: str, subnet_id: str, ip: str) -> None:
    port = PortRec(f"if{num}", num, net_id, f"02:ff:00:00:00:{num % 256:02x}", fixed_ips=(ip,),
                   subnet_ips=((subnet_id, ip),), device_owner=RIF, device_id="r1")  # fmt: skip
    w.mirror.set_port(port.id, port)
    w.change(Change("port", port.id, None, port))


def _routed_port(w: World, n: int, host: str) -> None:
    """Port q<n> of "rnet" (192.168.200.<4+n>), created and bound to ``host``."""
    ip = f"192.168.200.{4 + n}"
    port = PortRec(f"q{n}", 900_099 + n, "rnet", f"02:ee:00:00:00:{n:02x}", fixed_ips=(ip,),
                   subnet_ips=(("rs", ip),))  # fmt: skip
    w.mirror.set_port(port.id, port)
    obs = w.hosts[host].obs
    assert obs is not None
    obs.bindings[port.id] = 9_000 - n
    w.bindings.set_claims(host, obs.bindings)
    w.bindings.resolve(port, (), w.hosts)
    w.change(Change("port", port.id, None, port))
    w.change(Change("binding", port.id, None, host))


def _router(w: World, on_the_ports_network: bool) -> None:
    """Router r1 on network "rnet" (one port there, on hv3), and on "net" if asked."""
    rnet = NetworkRec("rnet", 8, "vxlan", 1008)
    w.mirror.set_network("rnet", rnet)
    w.change(Change("network", "rnet", None, rnet))
    rec = RouterRec("r1")
    w.mirror.set_record("router", "r1", rec)
    w.change(Change("router", "r1", None, rec))
    _subnet(w, "rs", "rnet", "192.168.200.0/24")
    _interface(w, 900_001, "rnet", "rs", "192.168.200.1")
    _routed_port(w, 1, "hv3")
    if on_the_ports_network:
        _subnet(w, "s", "net", "10.0.0.0/8")
        _interface(w, 900_002, "net", "s", "10.255.255.254")
    assert not w.step().failed


def counting(counts: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, counting its calls in ``counts[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def _costs(ports: int, router: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[str]]:
    """The counts of each change below, one after the other, in a network of ``ports``;
    ``router``: "none", "elsewhere" (on another network) or "here" (on the ports' network)."""
    w = _world(ports)
    if router != "none":
        _router(w, router == "here")
    counts: Counter[str] = Counter()
    counted = partial(counting, counts)
    service = routing.RoutingService
    for module, attr, name in (
        (routing, "located_on", "ports looked at"),
        (routing, "routed_entries", "ports placed"),
        (routing, "router_base", "router bases built"),
        (service, "_plan", "router hosts compiled whole"),
        (service, "_patch", "router ports patched"),
    ):
        # raising=False: the counts also run on a release without the per-port path (the
        # whole compile's port scan then shows in "ports looked at")
        fn = getattr(module, attr, None)
        if fn is not None:
            monkeypatch.setattr(module, attr, counted(name, fn))
    want = Step.want

    def want_counted(self: Step, host_id: str, owner: int, group: Any, desired: Any) -> None:
        if group == routing.GROUP:
            counts["router owners planned"] += 1
        want(self, host_id, owner, group, desired)

    monkeypatch.setattr(planner.Step, "want", want_counted)
    out = {}
    change: Callable[[World], None]
    for change in (_join, _leave, _readdress):
        counts.clear()
        change(w)
        result = w.step()
        assert not result.failed
        counts["router flow-mods"] = sum(
            1
            for diffs in result.diffs.values()
            for d in diffs
            for r in (*d.add_rules, *d.del_rules)
            if t.owner_kind(r.cookie) == t.OwnerKind.ROUTER
        )
        out[change.__name__] = Counter(counts)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("router", ["none", "elsewhere"])
def test_a_port_of_a_network_without_router_costs_routing_nothing(
    router: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port created on hv1, one deleted on hv2, one readdressed on hv3, in a network with no
    router (a router on another network, or none at all): no port looked at, no unit planned."""
    small, large = _costs(10, router, monkeypatch), _costs(200, router, monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        assert not +counts, (change, counts)


def test_a_port_of_a_routed_network_is_one_patch_whatever_the_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same changes in the router's network: the port's own owner is patched on the three
    router hosts (one neighbour rule each), the port itself the only one looked at; no router
    host compiled whole, no interface parsed again, at 10 ports as at 200.  (Before the per-port
    path: 3 hosts compiled whole, each looking at every port: 42 vs 612 ports looked at.)"""
    small, large = _costs(10, "here", monkeypatch), _costs(200, "here", monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        gone = change == "_leave"
        assert counts["ports looked at"] == counts["ports placed"] == (0 if gone else 1), counts
        assert not counts["router hosts compiled whole"] and not counts["router bases built"]
        assert counts["router ports patched"] == 1, (change, counts)
        assert counts["router owners planned"] == 3, (change, counts)  # all three hold a port
        # one neighbour rule on each router host (added, removed, or replaced: two)
        assert counts["router flow-mods"] == (6 if change == "_readdress" else 3), (change, counts)


def test_a_port_that_makes_a_router_host_compiles_the_router_whole_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first port of a routed network on a host changes every router host's tunnel
    ingress: the router is compiled whole on the new host, and its interfaces' owners (not its
    ports') again on the hosts it had."""
    w = _world(10)
    _router(w, on_the_ports_network=False)  # r1 on rnet only: its one port is on hv3
    plans: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    plan, part = routing.RoutingService._plan, routing.RoutingService._plan_part

    def plan_counted(self: Any, host_id: str, *args: Any) -> Any:
        plans[host_id] += 1
        return plan(self, host_id, *args)

    def part_counted(self: Any, host_id: str, routers: Any, *args: Any) -> Any:
        parts[host_id] += 1
        assert routers == {"r1": set()}  # no network's ports
        return part(self, host_id, routers, *args)

    monkeypatch.setattr(routing.RoutingService, "_plan", plan_counted)
    monkeypatch.setattr(routing.RoutingService, "_plan_part", part_counted)
    _routed_port(w, 2, "hv1")
    result = w.step()
    assert not result.failed
    assert set(plans) == {"hv1"} and set(parts) == {"hv3"}, (plans, parts)
    ingress = {
        r
        for d in result.diffs["hv3"]
        for r in d.add_rules
        if r.table == t.CLASSIFY and t.owner_kind(r.cookie) == t.OwnerKind.ROUTER
    }
    assert len(ingress) == 1  # hv3 now accepts rnet routed from hv1


def test_the_holders_index_by_network_follows_every_holder_change() -> None:
    """`Bindings.networks_held` / `hosts_holding` (what routing reads instead of ports) move with
    the holder: a second port, a move, a deleted port, a deleted host; interfaces not counted."""
    b = Bindings()
    hosts = {"hv1", "hv2"}
    p1, p2 = (
        PortRec("p1", 1, "n1", "02:00:00:00:00:01"),
        PortRec("p2", 2, "n1", "02:00:00:00:00:02"),
    )
    iface = PortRec("i1", 3, "n2", "02:00:00:00:00:03", device_owner=RIF, device_id="r1")
    b.set_claims("hv1", ["p1", "p2", "i1"])
    for p in (p1, p2, iface):
        b.resolve(p, (), hosts)
    assert set(b.networks_held("hv1")) == {"n1"} and set(b.hosts_holding("n1")) == {"hv1"}
    moved = PortRec("p1", 1, "n1", "02:00:00:00:00:01", host="hv2", host_requested=True)
    b.set_claims("hv2", ["p1"])
    assert b.resolve(moved, (), hosts) == "hv2"
    assert set(b.hosts_holding("n1")) == {"hv1", "hv2"}  # p2 still on hv1
    b.forget("p2")
    assert set(b.hosts_holding("n1")) == {"hv2"} and not b.networks_held("hv1")
    b.drop_host("hv2")
    assert not b.hosts_holding("n1") and not b.networks_held("hv2")


def _interface_add_costs(others: int, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Router r1 on "rnet" with ``others`` ports spread over the three hosts; then an interface
    added on "net" (10 ports): the neighbour owners compiled, by network."""
    w = _world(10)
    _router(w, on_the_ports_network=False)
    hosts = sorted(w.hosts)
    for n in range(2, others + 1):
        _routed_port(w, n, hosts[n % 3])
    assert not w.step().failed
    counts: Counter[str] = Counter()
    rnet = {p.num for p in w.mirror.ports.values() if p.network_id == "rnet"}
    neighbour = flows_routing._neighbour_rule

    def counted(ctx: Any, own_ip: str, port: Any) -> Any:
        counts["rnet" if port.num in rnet else port.segment.key] += 1
        return neighbour(ctx, own_ip, port)

    monkeypatch.setattr(flows_routing, "_neighbour_rule", counted)
    _subnet(w, "s", "net", "10.0.0.0/8")
    _interface(w, 900_002, "net", "s", "10.255.255.254")
    result = w.step()
    assert not result.failed
    monkeypatch.undo()
    return counts


def test_an_interface_add_compiles_no_neighbour_owner_of_the_other_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An interface added to a router whose other network holds 4 or 40 ports: the routers'
    hosts compile the added network's ports' neighbour rules (10 ports on 3 hosts) and none of
    the other network's (the old whole compile: every port on every router host, 12 vs 120)."""
    small, large = (_interface_add_costs(n, monkeypatch) for n in (4, 40))
    assert small == large, (small, large)
    assert small["rnet"] == 0, small
    assert sum(small.values()) == 30, small  # "net"'s 10 ports on each of its 3 hosts
