"""What adding a router interface costs the security groups, counted: the flow-mods on each host
are those of the joining network (its members' address clauses added under the router's L3 domain,
those under its key kept; its entries, per host), the same whether the router's other networks hold
4 members or 40 (issue 16: "adding or removing an interface changes only the flows of the router
and its networks' hosts"). Before L3 domains, every member of the router's other networks was
matched once more under the joining network's key on every host with a port there: one interface
add re-keyed the whole router (634 flow-mods per host at 10 x 30 in the bench).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from bench.planner_port_cost import default_group
from controller.dataplane.planner import Change
from controller.dataplane.services import sg_host
from controller.dataplane.state import Mirror, NetworkRec, PortRec, RouterRec
from flows import security_groups as sg
from flows import tables as t
from tests.unit.test_planner import World
from tests.unit.test_router_cost import _interface, _subnet
from tests.unit.test_sg_cost import _mac, _plug

HOSTS = ("hv1", "hv2", "hv3")


def _network(w: World, n: int) -> str:
    net = NetworkRec(f"n{n}", 100 + n, "vxlan", 2000 + n)
    w.mirror.set_network(net.id, net)
    w.change(Change("network", net.id, None, net))
    _subnet(w, f"s{n}", net.id, f"10.{n}.0.0/16")
    return net.id


def _member(w: World, n: int, i: int) -> None:
    """Port i of network n, in the default group, plugged on one of the three hosts."""
    num = 1000 * (n + 1) + i
    ip = f"10.{n}.{i >> 8}.{i & 255 or 250}"
    port = PortRec(f"n{n}p{i}", num, f"n{n}", _mac(num), fixed_ips=(ip,),
                   subnet_ips=((f"s{n}", ip),), groups=("default",))  # fmt: skip
    _plug(w, port, HOSTS[i % 3], num)


def routed_world(networks: int, ports: Callable[[int], int]) -> World:
    """Three hosts, the default group, networks 0..N-1 with ``ports(n)`` members each (spread
    over the hosts) and router r1 with an interface on each of them but network 0; planned."""
    w = World()
    for h in HOSTS:
        w.change(Change("switch", h))
    for change in default_group(w.mirror):
        w.change(change)
    router = RouterRec("r1")
    w.mirror.set_record("router", "r1", router)
    w.change(Change("router", "r1", None, router))
    for n in range(networks):
        _network(w, n)
        for i in range(1, ports(n) + 1):
            _member(w, n, i)
        if n:
            _interface(w, 900_000 + n, f"n{n}", f"s{n}", f"10.{n}.255.254")
    assert not w.step().failed
    return w


def _sg_flow_mods(others: int, own: int = 3, remove: bool = False) -> dict[str, Counter[str]]:
    """Per host, the security-group flow-mods of adding network 0 (``own`` ports, spread over
    the hosts) to a router that joins networks 1..3 of ``others`` members each (all in the
    default group), by owner part and "+"/"-" for an add or a delete (``remove``: of removing
    the interface again after)."""
    w = routed_world(4, lambda n: own if n == 0 else others)
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    plan = w.step()
    if remove:
        port = w.mirror.ports["if900100"]
        w.mirror.set_port(port.id, None)
        w.change(Change("port", port.id, port, None))
        plan = w.step()
    assert not plan.failed
    out: dict[str, Counter[str]] = {}
    for host, diffs in plan.diffs.items():
        counts: Counter[str] = Counter()
        for d in diffs:
            for sign, rules in (("+", d.add_rules), ("-", d.del_rules)):
                for r in rules:
                    if t.owner_kind(r.cookie) == t.OwnerKind.SECURITY_GROUP:
                        counts[sign + t.sg_owner_part(r.cookie)[0]] += 1
        out[host] = counts
    return out


def test_an_interface_add_costs_the_joining_network_whatever_the_others_hold() -> None:
    """Each host holds one of network 0's ports: the network's entries (2 families x 2
    directions, set with the domain) and the address clause of each of network 0's 3 members
    under the domain (added: the one under network 0's key stays; the release before moved
    it, a delete and an add), nothing of the other networks' members, at 4 as at 40 per
    network (the old per-key scheme added each of them under network 0's key: 12 vs 120 per
    host)."""
    small, large = _sg_flow_mods(4), _sg_flow_mods(40)
    assert small == large, (small, large)
    for host in HOSTS:
        assert small[host] == Counter({"+network": 4, "+member": 3}), (host, small[host])


def test_the_joining_networks_entries_are_per_host_not_per_port() -> None:
    """Network 0 with 4 ports on each host: still 4 entries per host (one per family and
    direction, matching the network's key), not 4 per port (16 per host, 40 at issue size:
    the release before set each routed port's domain in entries of its own); its ports' own
    flows do not change; its 12 members' addresses are added under the domain, nothing
    deleted (the release before: 16 entries, 12 deletes and 12 adds per host)."""
    sent = _sg_flow_mods(4, own=12)
    for host in HOSTS:
        assert sent[host] == Counter({"+network": 4, "+member": 12}), (host, sent[host])


def test_removing_the_interface_deletes_the_domain_flows_only() -> None:
    """The interface removed again: per host, the network's 4 entries and its members'
    addresses under the domain go; those under its key, which never left, stay (the release
    before: 12 deletes and 12 adds of member flows, and 16 entries)."""
    sent = _sg_flow_mods(4, own=12, remove=True)
    for host in HOSTS:
        assert sent[host] == Counter({"-network": 4, "-member": 12}), (host, sent[host])


def test_a_members_clauses_are_computed_once_per_step_not_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every host of the interface add matches network 0's members under the domain: what
    each member contributes to each of the default group's two remote-group rules is the same
    on every host, so it is computed once in the step (the sg service's step memo) and each
    host only keeps the scopes it applies the rule in.  A later step sees the mirror as it is
    then: a member readdressed after is matched by its new address on every host, its old one
    gone (nothing of the earlier step's memo is reused)."""
    w = routed_world(4, lambda n: 3 if n == 0 else 4)
    built: Counter[str] = Counter()
    real = sg_host.filtered_port

    def counted(port: PortRec, mirror: Mirror, ofport: int) -> sg.FilteredPort:
        if ofport == 0:  # a member's addresses, not a local port's own filter
            built[port.id] += 1
        return real(port, mirror, ofport)

    monkeypatch.setattr(sg_host, "filtered_port", counted)
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    assert not w.step().failed
    assert built == Counter({"n0p1": 2, "n0p2": 2, "n0p3": 2}), built

    old = w.mirror.ports["n0p2"]
    new = dataclasses.replace(old, fixed_ips=("10.0.0.77",), subnet_ips=(("s0", "10.0.0.77"),))
    w.mirror.set_port(new.id, new)
    w.change(Change("port", new.id, old, new))
    plan = w.step()
    assert not plan.failed
    owner = t.sg_member_cookie(new.num)
    for host in HOSTS:
        text = repr(w.hosts[host].installed[owner])
        assert "10.0.0.77" in text and f"'{old.fixed_ips[0]}'" not in text, (host, text)
