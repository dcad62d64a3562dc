"""What one add_router_interface step compiles and sends, counted (issue 16: "time from
add_router_interface to the first routed ping reply"; the step was ~115 ms of one data-plane
step at 10 subnets x 30 ports on H=3, most of it planning).

Counted in the step that plans the interface added to a router of N-1 networks (N networks of M
ports, every port in its project's default group, on three hosts):

* the L3 domain walks (`Mirror.routed_component`): each re-scoped member asked for its
  network's domain on every host that matches it, and each ask walked the router's whole
  component (O(members x hosts x interfaces)); the domain is now kept per network until an
  interface changes: a walk per component;
* the route and echo rules built (`flows.routing._route_rule`, `_echo_rule`): each router host
  rebuilt all N x N of both (O(hosts x N^2)); then they were built once and shared (the same on
  every host): the 2N - 1 pairs with the new interface; now they are keyed on the router's mark
  instead of the entering interface (N of each per host, not N x N): the new interface's own;
* the flow-mods per host by owner kind, which the cuts above must leave as they were.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import pytest

from controller.dataplane.state import Mirror, PortRec
from flows import routing as flows_routing
from flows import tables as t
from tests.unit.test_router_cost import RIF, _interface, counting
from tests.unit.test_sg_domain_cost import HOSTS, routed_world


def _add_step(networks: int, ports: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Networks 1..N-1 on router r1, network 0's interface added: the add step's counts."""
    for name in ("_route_rule", "_echo_rule", "_echo_source_rule", "_every_host_rules",
                 "_entry_rules", "_ingress_rules", "_neighbour"):  # fmt: skip
        builder = getattr(flows_routing, name, None)
        if hasattr(builder, "cache_clear"):  # a test before built the same ones
            builder.cache_clear()
    w = routed_world(networks, lambda n: ports)
    counts: Counter[str] = Counter()
    counted = partial(counting, counts)
    # what the cached builders build (a hit builds no match)
    monkeypatch.setattr(flows_routing, "match", counted("routing matches", flows_routing.match))
    monkeypatch.setattr(Mirror, "routed_component",
                        counted("domain walks", Mirror.routed_component))  # fmt: skip
    for attr, name in (("_route_rule", "routes built"), ("_echo_rule", "echoes built")):
        builder = getattr(flows_routing, attr)
        if hasattr(builder, "cache_info"):  # built: the misses
            counts[name] -= builder.cache_info().misses
        else:  # (a release without the caches builds on every call)
            monkeypatch.setattr(flows_routing, attr, counted(name, builder))
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    plan = w.step()
    monkeypatch.undo()
    for attr, name in (("_route_rule", "routes built"), ("_echo_rule", "echoes built")):
        builder = getattr(flows_routing, attr)
        if hasattr(builder, "cache_info"):
            counts[name] += builder.cache_info().misses
    assert not plan.failed
    sent: dict[str, Counter[str]] = {}
    for host, diffs in plan.diffs.items():
        kinds: Counter[str] = Counter()
        for d in diffs:
            for r in (*d.add_rules, *d.del_rules):
                kinds[t.OwnerKind(t.owner_kind(r.cookie)).name] += 1
        sent[host] = kinds
    return {
        "walks": counts["domain walks"],
        "routes built": counts["routes built"],
        "echoes built": counts["echoes built"],
        "matches": counts["routing matches"],
        "sent": sent,
    }


@pytest.mark.parametrize("networks", [4, 8])
def test_an_interface_add_builds_what_is_new_once(
    networks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N networks of 6 ports (2 per host). Three domain walks for the whole step, whatever N and M
    (the sg service's, finding the networks whose domain may have changed; the first ask, kept
    for them all; the domain's subnets classified when the change comes in, kept for every host
    until the next interface or routed subnet change; the old code walked the component once
    more per member per host matching it: 47 walks at N=4, 51 at N=8); one route and one echo
    answer built (to the new interface's subnet and address, under the router's mark, and the
    source MAC of echo replies to its network), shared by the three hosts (keyed on the entering
    interface: 2N - 1 of each; the old code: 3 x N x N of each, 48 at N=4, 192 at N=8); the
    routing matches built besides those, whatever N: the new interface's entry, TTL and drop of
    routed packets to no local port once for the three hosts, its tunnel ingress from the two
    other hosts on each host, and each of the joining network's 6 neighbour rules twice (on its
    port's host, and once for the two others); the interfaces that stay reuse what their last
    compile built (the release before built each interface's entry, TTL, ingress and drop again
    on every host, and every neighbour rule on every host: 81 at N=4, 141 at N=8; older code,
    all: 162 at N=4, 498 at N=8). Sent per host: the router's flows (the new interface's owner,
    the 6 neighbour rules; keyed on the entering interface, also a route and an echo answer on
    each other interface: 14 more at N=8) and network 0's security-group changes (its entries, 4
    per host whatever its local ports (the release before: 4 per port, 8 here), and its subnet's
    2 scope flows; its 6 members' address clauses stay as they are (the release before added
    them under the domain; before that: 6 out, 6 in))."""
    c = _add_step(networks, 6, monkeypatch)
    assert c["walks"] == 3, c
    assert c["routes built"] == c["echoes built"] == 1, c
    assert c["matches"] == 2 + 1 + 3 + 3 * 2 + 2 * 6, c
    # the new interface's entry, ARP, echo answer, route, echo source MAC, TTL, 2 ingress, the
    # drop of routed packets to no local port; nothing on the others
    router = (1 + 1 + 1 + 1 + 1 + 1 + 2 + 1) + 6
    for host in HOSTS:
        assert c["sent"][host] == Counter(ROUTER=router, SECURITY_GROUP=4 + 2), (host, c)


def test_a_kept_domain_follows_every_interface_change() -> None:
    """The domains kept between interface changes are the ones a fresh walk gives: two
    routers' networks apart, joined by an interface of one on the other's network (the
    smaller interface number wins), split again, an interface moved to another router, and
    a plain port's change (no interface) keeping what was kept."""
    m = Mirror()

    def iface(num: int, net: str, router: str | None) -> None:
        pid = f"if{num}"
        m.set_port(pid, None if router is None else PortRec(
            pid, num, net, "02:00:00:00:00:01", device_owner=RIF, device_id=router))

    def fresh(net: str) -> int:
        walk = Mirror()
        for rec in m.ports.values():
            walk.set_port(rec.id, rec)
        return walk.domain_of(net)

    def check(expected: dict[str, int]) -> None:
        for net, domain in expected.items():
            assert m.domain_of(net) == fresh(net) == domain, (net, expected)

    iface(10, "a", "r1")
    iface(11, "b", "r1")
    iface(20, "c", "r2")
    check({"a": 10, "b": 10, "c": 20, "d": 0})
    iface(21, "b", "r2")  # r2 on b too: one component
    check({"a": 10, "b": 10, "c": 10})
    m.set_port("vm", PortRec("vm", 5, "c", "02:00:00:00:00:05"))  # not an interface
    check({"a": 10, "b": 10, "c": 10})
    iface(21, "b", None)  # split again
    check({"a": 10, "b": 10, "c": 20})
    iface(10, "a", "r2")  # moved to r2: a joins c, b stays on r1 alone
    check({"a": 10, "b": 11, "c": 10})
    iface(10, "a", None)
    check({"a": 0, "b": 11, "c": 20})
