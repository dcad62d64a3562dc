"""What one port costs the routing service, counted, not timed: the same work whether its
network has 10 ports or 500 (issue 13: "a port change still costs O(1) flow-mods and CPU
whatever the number of ports"; issue 16: a port of a routed network is one neighbour rule per
router host).

Counted: the ports the service looks at to *find* its work (`routing.located_on` outside a
router's compile: which routers a host has, which hosts a router has), the router units it
plans, and the router owners' flow-mods.  A port of a network without a router must cost the
service nothing at all, even when a router exists elsewhere.  Not counted, because it still
grows by design of `flows.routing` (one owner per interface holds the neighbour rules of its
whole subnet): the ports a router host's compile reads (`routing.router_view`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from controller.dataplane import planner
from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import Change, Step
from controller.dataplane.services import routing
from controller.dataplane.state import NetworkRec, PortRec, RouterRec, SubnetRec
from controller.services.dhcp_records import DhcpSubnet
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
    port = PortRec("q1", 900_100, "rnet", "02:ee:00:00:00:01", fixed_ips=("192.168.200.5",),
                   subnet_ips=(("rs", "192.168.200.5"),))  # fmt: skip
    w.mirror.set_port(port.id, port)
    obs = w.hosts["hv3"].obs
    assert obs is not None
    obs.bindings[port.id] = 8_999
    w.bindings.set_claims("hv3", obs.bindings)
    w.bindings.resolve(port, (), w.hosts)
    w.change(Change("port", port.id, None, port))
    w.change(Change("binding", port.id, None, "hv3"))
    if on_the_ports_network:
        _subnet(w, "s", "net", "10.0.0.0/8")
        _interface(w, 900_002, "net", "s", "10.255.255.254")
    assert not w.step().failed


def _costs(ports: int, router: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[str]]:
    """The counts of each change below, one after the other, in a network of ``ports``;
    ``router``: "none", "elsewhere" (on another network) or "here" (on the ports' network)."""
    w = _world(ports)
    if router != "none":
        _router(w, router == "here")
    counts: Counter[str] = Counter()
    compiling = [0]
    located_on, router_view = routing.located_on, routing.router_view
    plan = routing.RoutingService._plan

    def located_counted(port: PortRec, inputs: Any) -> Any:
        counts["ports visited compiling" if compiling[0] else "ports visited finding"] += 1
        return located_on(port, inputs)

    def view_counted(*args: Any) -> Any:
        compiling[0] += 1
        try:
            return router_view(*args)
        finally:
            compiling[0] -= 1

    def plan_counted(self: Any, *args: Any) -> Any:
        counts["router units planned"] += 1
        return plan(self, *args)

    want = Step.want

    def want_counted(self: Step, host_id: str, owner: int, group: Any, desired: Any) -> None:
        if group == routing.GROUP:
            counts["router owners planned"] += 1
        want(self, host_id, owner, group, desired)

    monkeypatch.setattr(routing, "located_on", located_counted)
    monkeypatch.setattr(routing, "router_view", view_counted)
    monkeypatch.setattr(routing.RoutingService, "_plan", plan_counted)
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
        counts.pop("ports visited compiling", None)  # grows by design: see the docstring
        out[change.__name__] = Counter(counts)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("router", ["none", "elsewhere"])
def test_a_port_of_a_network_without_router_costs_routing_nothing(
    router: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port created on hv1, one deleted on hv2, one readdressed on hv3, in a network with no
    router (a router on another network, or none at all): no port looked at, no unit planned."""
    small, large = _costs(10, router, monkeypatch), _costs(500, router, monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        assert not +counts, (change, counts)


def test_a_port_of_a_routed_network_finds_its_router_hosts_without_a_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same changes in the router's network: the router hosts are planned (one neighbour
    rule each), and finding them looks at no port, at 10 ports as at 500."""
    small, large = _costs(10, "here", monkeypatch), _costs(500, "here", monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        assert not counts["ports visited finding"], (change, counts)
        assert counts["router units planned"] == 3, (change, counts)  # all three hold a port
        assert counts["router owners planned"] > 0, (change, counts)
        # one neighbour rule on each router host (added, removed, or replaced: two)
        assert counts["router flow-mods"] == (6 if change == "_readdress" else 3), (change, counts)


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
