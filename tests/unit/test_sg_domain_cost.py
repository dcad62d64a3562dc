"""What adding a router interface costs the security groups, counted: the flow-mods on each host
are those of the joining network (its entries, per host, and its subnets' scope flows; its members'
address clauses stay as they are, matched by its key), the same whether the router's other networks
hold 4 members or 40 (issue 16: "adding or removing an interface changes only the flows of the
router and its networks' hosts"). Before L3 domains, every member of the router's other networks
was matched once more under the joining network's key on every host with a port there: one
interface add re-keyed the whole router (634 flow-mods per host at 10 x 30 in the bench); before
scope flows (release 2026-12-03), each of the joining network's members was matched once more
under the domain (30 of 73 flow-mods per host and add in the bench).  Only a member address the
domain's subnets cannot place (an allowed pair elsewhere, overlapping subnets) still is.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from bench.planner_port_cost import default_group
from controller.dataplane.planner import Change
from controller.dataplane.services import sg_host
from controller.dataplane.services.security_groups import SecurityGroupService
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
    directions, set with the domain) and its subnet's scope flows (one per direction), nothing
    of any member's, at 4 as at 40 per network (the old per-key scheme added each of the others
    under network 0's key: 12 vs 120 per host; the release before added network 0's 3 members
    under the domain)."""
    small, large = _sg_flow_mods(4), _sg_flow_mods(40)
    assert small == large, (small, large)
    for host in HOSTS:
        assert small[host] == Counter({"+network": 4, "+domain": 2}), (host, small[host])


def test_the_joining_networks_entries_are_per_host_not_per_port() -> None:
    """Network 0 with 4 ports on each host: still 4 entries per host (one per family and
    direction, matching the network's key), not 4 per port (16 per host, 40 at issue size:
    the release before set each routed port's domain in entries of its own); its ports' own
    flows do not change, nor do its 12 members' addresses (the release before: 12 added under
    the domain; before that 16 entries, 12 deletes and 12 adds per host)."""
    sent = _sg_flow_mods(4, own=12)
    for host in HOSTS:
        assert sent[host] == Counter({"+network": 4, "+domain": 2}), (host, sent[host])


def test_removing_the_interface_deletes_the_domain_flows_only() -> None:
    """The interface removed again: per host, the network's 4 entries and its subnet's 2 scope
    flows go; its members' addresses, matched by its key all along, stay (the release before:
    12 deletes under the domain; before that 12 deletes and 12 adds, and 16 entries)."""
    sent = _sg_flow_mods(4, own=12, remove=True)
    for host in HOSTS:
        assert sent[host] == Counter({"-network": 4, "-domain": 2}), (host, sent[host])


def _count_member_builds(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """From now on, how many times each port's member addresses are computed (not a local
    port's own filter), by port id."""
    built: Counter[str] = Counter()
    real = sg_host.filtered_port

    def counted(
        port: PortRec, mirror: Mirror, ofport: int, classified: sg_host.Classified | None = None
    ) -> sg.FilteredPort:
        if ofport == 0:  # a member's addresses, not a local port's own filter
            built[port.id] += 1
        return real(port, mirror, ofport, classified)

    monkeypatch.setattr(sg_host, "filtered_port", counted)
    return built


def test_a_members_clauses_are_computed_once_per_step_not_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An interface add computes no member's addresses: network 0's members are matched the
    same (by its key) before and after, their contributions only move to the domain's scope on
    each host (`HostFirewall.begin_rescope`; before: twice per member, once per remote-group
    rule, in every add).  A member readdressed after is: what it contributes to each of the
    default group's two remote-group rules is the same on every host, so it is computed once
    in the step (the sg service's step memo), not once per host, and it is matched by its new
    address on every host, its old one gone (nothing of the earlier step's memo is reused)."""
    w = routed_world(4, lambda n: 3 if n == 0 else 4)
    built = _count_member_builds(monkeypatch)
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    assert not w.step().failed
    assert built == Counter(), built

    old = w.mirror.ports["n0p2"]
    new = dataclasses.replace(old, fixed_ips=("10.0.0.77",), subnet_ips=(("s0", "10.0.0.77"),))
    w.mirror.set_port(new.id, new)
    w.change(Change("port", new.id, old, new))
    plan = w.step()
    assert not plan.failed
    assert built == Counter({"n0p2": 2}), built
    owner = t.sg_member_cookie(new.num)
    for host in HOSTS:
        text = repr(w.hosts[host].installed[owner])
        assert "10.0.0.77" in text and f"'{old.fixed_ips[0]}'" not in text, (host, text)


def _sg_mods(plan_diffs: dict[str, list], host: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for d in plan_diffs.get(host, ()):
        for sign, rules in (("+", d.add_rules), ("-", d.del_rules)):
            for r in rules:
                if t.owner_kind(r.cookie) == t.OwnerKind.SECURITY_GROUP:
                    counts[sign + t.sg_owner_part(r.cookie)[0]] += 1
    return counts


def _give_pair(w: World, pid: str, ip: str) -> PortRec:
    """The port gets an allowed address pair (its own MAC), planned; its record before."""
    old = w.mirror.ports[pid]
    new = dataclasses.replace(old, pairs=((ip, old.mac),))
    w.mirror.set_port(new.id, new)
    w.change(Change("port", new.id, old, new))
    assert not w.step().failed
    return old


def _step_sends(w: World, expected: Counter[str]) -> None:
    """The next step sends each host these security-group flow-mods (by owner part)."""
    plan = w.step()
    assert not plan.failed
    for host in HOSTS:
        assert _sg_mods(plan.diffs, host) == expected, (host, _sg_mods(plan.diffs, host))


def _unroute(w: World) -> None:
    """Network 0's interface removed."""
    port = w.mirror.ports["if900100"]
    w.mirror.set_port(port.id, None)
    w.change(Change("port", port.id, port, None))


def _rebuilt_sends_nothing(w: World) -> None:
    """Every host's switch read again: its firewall rebuilt from scratch (the whole-host
    compile) finds the switch holding exactly what the incremental steps sent.  Before that,
    each kept firewall's index of members by rule and scope is what its contributions say
    (a stale entry would make a scope's take-back miss or leak a member)."""
    service = w.planner.services["sg"]
    assert isinstance(service, SecurityGroupService)
    for fw in service.firewalls.values():
        derived: dict[tuple[str, int], set[str]] = {}
        for rid, per_member in fw.c3.items():
            for mpid, entries in per_member.items():
                for entry in entries:
                    derived.setdefault((rid, entry[0]), set()).add(mpid)
        assert fw.scoped_members == derived, fw.host_id
        assert not fw.pending and not fw.rescoping, fw.host_id
    for h in HOSTS:
        w.change(Change("switch", h))
    plan = w.step()
    assert not plan.failed
    for h in HOSTS:
        assert not _sg_mods(plan.diffs, h), (h, _sg_mods(plan.diffs, h))


def _domain_matches(w: World, host: str, ip: str) -> list[tuple[tuple[str, object], ...]]:
    """The member address flows on the host that match ``ip`` under an L3 domain."""
    installed = w.hosts[host].installed
    assert installed is not None
    return [
        r.match
        for owner, s in installed.items()
        if t.owner_kind(owner) == t.OwnerKind.SECURITY_GROUP
        and t.sg_owner_part(owner)[0] == "member"
        for r in s.rules
        if ("ipv4_src", ip) in r.match and t.REG_SG_DOMAIN in dict(r.match)
    ]


@pytest.mark.parametrize(
    ("networks", "ports", "added"),
    [
        # network 0's one member is on hv2: hv1 and hv3 hold the group's ports in networks 1-3
        # only, so its address comes to them with the interface (and goes with it)
        (4, lambda n: 1 if n == 0 else 3, {"hv1": 1, "hv2": 0, "hv3": 1}),
        # the router's first interface: the domain is new on every host
        (1, lambda n: 3, {"hv1": 0, "hv2": 0, "hv3": 0}),
        # a domain whose other network has no port: new on every host too
        (2, lambda n: 0 if n else 3, {"hv1": 0, "hv2": 0, "hv3": 0}),
    ],
)
def test_a_rescoped_network_gains_and_loses_its_members_where_the_scope_does(
    networks: int, ports: Callable[[int], int], added: dict[str, int]
) -> None:
    """The re-tagging of an interface change (`HostFirewall.begin_rescope`) against what the
    rules' scopes call for: a host where the group had no port in the joining network gains
    its members' addresses, one where the domain is new keeps them, and removing the interface
    takes back exactly what came; each step agrees with a rebuild, and each host's index of
    members by rule and scope with its contributions."""
    w = routed_world(networks, ports)
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    plan = w.step()
    assert not plan.failed
    for host in HOSTS:
        assert _sg_mods(plan.diffs, host)["+member"] == added[host], host
    _rebuilt_sends_nothing(w)
    _unroute(w)
    plan = w.step()
    assert not plan.failed
    for host in HOSTS:
        assert _sg_mods(plan.diffs, host)["-member"] == added[host], host
    _rebuilt_sends_nothing(w)


def test_a_pair_outside_the_networks_subnets_is_matched_under_the_domain_too() -> None:
    """A member of network 0 with an allowed address pair outside its subnet (a VIP the
    domain's scope flows cannot place): when network 0 joins the router, that address alone is
    added under the domain (the default group's IPv4 ingress rule: one flow per host); its
    fixed address, inside the subnet, is not.  Leaving the router takes it back; a rebuild
    finds nothing to change either time."""
    w = routed_world(4, lambda n: 3 if n == 0 else 4)
    old = _give_pair(w, "n0p1", "192.168.7.7")
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    _step_sends(w, Counter({"+network": 4, "+domain": 2, "+member": 1}))
    for host in HOSTS:
        assert len(_domain_matches(w, host, "192.168.7.7")) == 1
        assert not _domain_matches(w, host, old.fixed_ips[0])
    _rebuilt_sends_nothing(w)
    _unroute(w)
    _step_sends(w, Counter({"-network": 4, "-domain": 2, "-member": 1}))
    _rebuilt_sends_nothing(w)


def test_overlapping_subnets_in_a_domain_are_not_classified() -> None:
    """Network 0 has a second subnet with network 1's CIDR (Neutron refuses that on one router;
    two routers sharing a network can still join them): neither may name its network, so
    network 1's scope flows go and its members are matched under the domain (network 0's, in
    its other subnet, are not); a rebuild agrees with every incremental step, and removing the
    interface restores network 1's scope flows."""
    w = routed_world(4, lambda n: 3 if n == 0 else 4)
    _subnet(w, "s0b", "n0", "10.1.0.0/16")
    assert not w.step().failed
    _interface(w, 900_100, "n0", "s0", "10.0.255.254")
    # scope flows: network 0's 10.0/16 added (2), network 1's 10.1/16 removed (2); members
    # under the domain: network 1's 4, for the IPv4 rule
    _step_sends(w, Counter({"+network": 4, "+domain": 2, "-domain": 2, "+member": 4}))
    _rebuilt_sends_nothing(w)
    # the overlapping subnet deleted: network 1's subnet classifies its members again
    rec = w.mirror.subnets["s0b"]
    w.mirror.set_subnet("s0b", None)
    w.change(Change("subnet", "s0b", rec, None))
    _step_sends(w, Counter({"+domain": 2, "-member": 4}))
    _rebuilt_sends_nothing(w)
    _subnet(w, "s0b", "n0", "10.1.0.0/16")
    _step_sends(w, Counter({"-domain": 2, "+member": 4}))
    _unroute(w)
    assert not w.step().failed
    _rebuilt_sends_nothing(w)
    for host in HOSTS:
        assert not _domain_matches(w, host, "10.1.0.1")


def test_a_domain_renumbered_moves_its_fallback_members_and_scope_flows() -> None:
    """The router's interface with the smallest number removed: the domain takes the next
    number, so its scope flows and its members' domain flows move to it (network 1, which left,
    is matched by its key alone again), and a rebuild agrees."""
    w = routed_world(4, lambda n: 3)
    _give_pair(w, "n2p1", "192.168.9.9")
    first = w.mirror.domain_of("n1")
    port = w.mirror.ports["if900001"]
    w.mirror.set_port(port.id, None)
    w.change(Change("port", port.id, port, None))
    plan = w.step()
    assert not plan.failed
    assert w.mirror.domain_of("n2") != first and not w.mirror.domain_of("n1")
    for host in HOSTS:
        matches = _domain_matches(w, host, "192.168.9.9")
        assert [dict(m)[t.REG_SG_DOMAIN] for m in matches] == [w.mirror.domain_of("n2")]
        assert _sg_mods(plan.diffs, host)["+domain"] == 2 * 2  # networks 2 and 3, renumbered
    _rebuilt_sends_nothing(w)


def test_a_subnet_added_to_a_routed_network_classifies_its_addresses() -> None:
    """A routed network gains a subnet: its scope flows (one per direction) are added on every
    host of the domain, and a member's pair inside it is no longer matched under the domain."""
    w = routed_world(3, lambda n: 3)
    _give_pair(w, "n1p1", "172.16.5.5")
    assert all(len(_domain_matches(w, h, "172.16.5.5")) == 1 for h in HOSTS)
    _subnet(w, "s1b", "n1", "172.16.0.0/16")
    _step_sends(w, Counter({"+domain": 2, "-member": 1}))
    assert not any(_domain_matches(w, h, "172.16.5.5") for h in HOSTS)
    _rebuilt_sends_nothing(w)


def test_a_subnet_that_comes_or_goes_computes_no_members_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A routed network gains a subnet, then loses it: only its scope flows change on each host
    (+2, then -2); its members, whose addresses are in its other subnet, keep their flows and
    none of their addresses is computed again (the subnet holds none: a port gets one later,
    a subnet with one cannot be deleted), while before every member of the network was
    synced whole on every host; a rebuild agrees after each step.  A subnet that overlaps
    another network's still syncs that network's members whole (the overlap test above)."""
    w = routed_world(3, lambda n: 4)
    built = _count_member_builds(monkeypatch)
    _subnet(w, "s1b", "n1", "172.16.0.0/16")
    _step_sends(w, Counter({"+domain": 2}))
    assert built == Counter(), built
    _rebuilt_sends_nothing(w)
    built.clear()
    rec = w.mirror.subnets["s1b"]
    w.mirror.set_subnet("s1b", None)
    w.change(Change("subnet", "s1b", rec, None))
    _step_sends(w, Counter({"-domain": 2}))
    assert built == Counter(), built
    _rebuilt_sends_nothing(w)
