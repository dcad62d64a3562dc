"""The planner on its own: state in, per-host diffs out (no store, no threads, no switches),
and the actor's retry of a unit whose planning raises."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from bench.planner_port_cost import Host
from controller.dataplane import reconciler
from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import (
    Change,
    Inputs,
    Planner,
    PortDecision,
    Unit,
    index_owners,
)
from controller.dataplane.services import l2, services
from controller.dataplane.services.security_groups import SHARED
from controller.dataplane.state import (
    HostRec,
    Mirror,
    NetworkRec,
    PortRec,
    SecurityGroupRec,
    SgRuleRec,
)
from controller.events import ChangeEvent
from controller.southbound.ovsdb_host import HostObservation
from flows import tables as t
from flows.model import Slice
from tests.unit.test_dataplane import Cloud

TUNNELS = {"vxlan": 64001, "gre": 64002}
pytest_plugins = ["tests.unit.test_dataplane"]  # the `cloud` fixture


class World:
    """Three hosts, one network, ports plugged where the test says: the planner's whole input."""

    def __init__(self) -> None:
        self.mirror = Mirror()
        self.bindings = Bindings()
        self.hosts: dict[str, Host] = {
            h: Host(HostRec(h, f"10.9.0.{n}", {}), HostObservation({}, dict(TUNNELS)))
            for n, h in enumerate(("hv1", "hv2", "hv3"), 1)
        }
        self.planner = Planner(services())
        self.inputs = Inputs(
            self.mirror,
            self.bindings,
            self.hosts,
            lambda o: self.planner.group_of(o, self.inputs),
        )
        self.net = NetworkRec("net", 7, "vxlan", 1007)
        self.mirror.set_network("net", self.net)
        self.dirty: set[Unit] = set()

    def change(self, change: Change) -> None:
        self.dirty |= self.planner.changed(change, self.inputs)

    def port(
        self, num: int, host: str, ofport: int, groups: tuple[str, ...] = (), ip: str = ""
    ) -> PortRec:
        port = PortRec(f"p{num}", num, "net", f"02:00:00:00:00:{num:02x}",
                       fixed_ips=(ip,) if ip else (), groups=groups)  # fmt: skip
        self.mirror.set_port(port.id, port)
        obs = self.hosts[host].obs
        assert obs is not None
        claims = {**obs.bindings, port.id: ofport}
        self.hosts[host].obs = HostObservation(claims, obs.tunnel_ofports)
        self.bindings.set_claims(host, claims)
        self.bindings.resolve(port, (), self.hosts)
        self.change(Change("port", port.id, None, port))
        self.change(Change("binding", port.id, None, host))
        return port

    def step(self) -> Any:
        """Plan what is dirty and apply it, as the actor does once the switches confirmed."""
        plan = self.planner.plan(self.dirty, self.inputs)
        self.dirty = set()
        for host_id, owner, group, after in plan.writes:
            reconciler._record(self.hosts[host_id], owner, group, after)  # type: ignore[arg-type]
        return plan


def test_a_port_is_planned_from_the_state_alone() -> None:
    """No store, no switch: a port's rules on its host, its unicast rule on its peer, the
    flood groups of its host, and its status decision, all from the records."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    w.port(1, "hv1", 5)
    w.port(2, "hv2", 5)
    first = w.step()
    assert set(first.diffs) == {"hv1", "hv2", "hv3"}  # base on all three, the network on two
    assert {d.port_id for d in first.decisions if d.active} == {"p1", "p2"}

    w.port(3, "hv1", 6)
    plan = w.step()
    assert plan.counts == {"ports_patched": 1}
    assert set(plan.diffs) == {"hv1", "hv2"}  # hv3 has no port of the network
    owners = {(h, o) for h, o, _, _ in plan.writes}
    assert owners == {("hv1", t.port_cookie(3)), ("hv1", t.network_cookie(7)),
                      ("hv2", t.port_cookie(3)),
                      ("hv1", t.sg_port_cookie(3))}  # its filter (port security on)  # fmt: skip
    (peer,) = plan.diffs["hv2"]
    assert len(peer.add_rules) == 1 and peer.add_rules[0].cookie == t.port_cookie(3)
    assert [d.port_id for d in plan.decisions] == ["p3"]
    assert w.step().diffs == {}  # nothing dirty, nothing to do


def test_an_input_kind_no_service_reads_is_ignored() -> None:
    w = World()
    w.change(Change("security_group", "sg1", None, {"id": "sg1"}))
    assert w.dirty == set()


def test_owners_of_deleted_objects_are_unclaimed_and_removed() -> None:
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    a = w.port(1, "hv1", 5)
    w.port(2, "hv2", 5)
    w.step()
    installed = dict(w.hosts["hv2"].installed or {})
    # a restart: the port was deleted meanwhile, the switch still holds its unicast rule
    w.mirror.set_port(a.id, None)
    w.bindings.forget(a.id)
    assert w.inputs.group_of(t.port_cookie(1)) is None
    assert w.inputs.group_of(t.port_cookie(2)) == l2.group(7)
    w.hosts["hv2"].groups = index_owners(installed, w.inputs.group_of)
    w.hosts["hv2"].installed = installed
    w.change(Change("switch", "hv2"))
    plan = w.step()
    deleted = {r.cookie for d in plan.diffs["hv2"] for r in d.del_rules}
    assert t.port_cookie(1) in deleted and t.port_cookie(2) not in deleted


def test_a_unit_that_raises_is_planned_again_with_backoff_logged_once(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The network of a new port cannot be compiled three times (a bug, a bad record): nothing
    of it is sent or recorded, one error names the unit, and the unit is planned again until
    it succeeds; then the port is ACTIVE with its flows, and other networks never waited."""
    monkeypatch.setattr(reconciler, "RETRY_FIRST_S", 0.01)
    real = l2.compile_network_owners
    calls = {"n": 0}
    cloud.start(hosts=2)
    bad, good = cloud.network(), cloud.network()

    def flaky(ctx: Any, view: Any) -> Any:
        if view.key == bad["_key"]:
            calls["n"] += 1
            if calls["n"] <= 3:
                raise RuntimeError("injected")
        return real(ctx, view)

    monkeypatch.setattr(l2, "compile_network_owners", flaky)
    caplog.set_level(logging.ERROR, logger="controller.dataplane.reconciler")
    port = cloud.port(bad, "hv1", 1)
    other = cloud.port(good, "hv1", 2)
    cloud.idle()
    assert calls["n"] >= 4
    errors = [r for r in caplog.records if "planning l2" in r.getMessage()]
    assert len(errors) == 1 and f"l2 {bad['_key']}" in errors[0].getMessage()
    assert not cloud.dp._retry
    for p in (port, other):
        assert cloud.store.get_port(p["id"])["status"] == "ACTIVE"
    macs = {v for r in cloud.flows("hv1").rules for k, v in r.match if k == "eth_dst"}
    assert {port["mac_address"], other["mac_address"]} <= macs


def test_an_unknown_store_event_reaches_no_service(cloud: Cloud) -> None:
    cloud.start(hosts=1)
    sent = cloud.dp.stats.flow_mods
    cloud.dp.on_events([ChangeEvent("security_group", None, {"id": "sg1", "rules": []})])
    cloud.idle()
    assert cloud.dp.stats.flow_mods == sent and cloud.dp.status()["hosts"]["hv1"]["ready"]


# ------------------------------------------------------------------------ security groups


def _sg_world(n_web: int) -> World:
    """Group ``web`` (tcp 22 from members of ``db``, egress anywhere) on ``n_web`` ports of
    hv1; group ``db`` on one port of hv2; hv3 has a port in no group."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    for gid in ("web", "db"):
        rec = SecurityGroupRec(gid)
        w.mirror.set_record("security_group", gid, rec)
        w.change(Change("security_group", gid, None, rec))
    for body in (
        {"id": "r1", "security_group_id": "web", "_key": 1, "direction": "ingress",
         "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
         "remote_group_id": "db"},
        {"id": "r2", "security_group_id": "web", "_key": 2, "direction": "egress",
         "ethertype": "IPv4"},
    ):  # fmt: skip
        rule = SgRuleRec.from_store(body)
        w.mirror.set_record("security_group_rule", rule.id, rule)
        w.change(Change("security_group_rule", rule.id, None, rule))
    for n in range(1, n_web + 1):
        w.port(n, "hv1", n, groups=("web",), ip=f"10.0.0.{n}")
    w.port(100, "hv2", 1, groups=("db",), ip="10.0.1.1")
    w.port(101, "hv3", 1, ip="10.0.1.2")
    w.step()
    return w


def _flow_mods(plan: Any) -> dict[str, int]:
    return {
        h: sum(len(d.add_rules) + len(d.del_rules) for d in diffs)
        for h, diffs in plan.diffs.items()
    }


@pytest.mark.parametrize("n_web", [3, 30])
def test_a_member_joining_a_remote_group_costs_o1_flows_per_host(n_web: int) -> None:
    """hv3's port joins ``db``: its address becomes one clause flow on hv1 (whose web ports
    name db as remote group), whatever the number of web ports there; hv2 (db's own host,
    whose rules name no remote group) and hv3 (a port in a group without rules: only its own
    hairpin drop is its filter) change nothing else."""
    w = _sg_world(n_web)
    old = w.mirror.ports["p101"]
    new = replace(old, groups=("db",))
    w.mirror.set_port(old.id, new)
    w.change(Change("port", old.id, old, new))
    assert {u.scope[0] for u in w.dirty if u.service == "sg"} == {"hv1", "hv3"}
    plan = w.step()
    assert _flow_mods(plan) == {"hv1": 1}
    (clause,) = next(iter(plan.diffs["hv1"])).add_rules
    assert ("ipv4_src", "10.0.1.2") in clause.match
    assert clause.cookie == t.sg_member_cookie(101)  # the member's address clauses
    # and back out again: the same one flow
    w.mirror.set_port(old.id, old)
    w.change(Change("port", old.id, new, old))
    assert _flow_mods(w.step()) == {"hv1": 1}


@pytest.mark.parametrize("n_web", [3, 30])
def test_a_rule_change_touches_only_the_hosts_of_its_group(n_web: int) -> None:
    """A rule added to ``db``: only hv2 (db's port) plans and sends: its conjunction flows
    (the rule's clause, its conj_id flow, the port's first clause)."""
    w = _sg_world(n_web)
    rule = SgRuleRec.from_store({"id": "r3", "security_group_id": "db", "_key": 3,
                                 "direction": "ingress", "ethertype": "IPv4",
                                 "protocol": "udp", "port_range_min": 53,
                                 "port_range_max": 53})  # fmt: skip
    w.mirror.set_record("security_group_rule", rule.id, rule)
    w.change(Change("security_group_rule", rule.id, None, rule))
    assert {u.scope[0] for u in w.dirty if u.service == "sg"} == {"hv2"}
    assert _flow_mods(w.step()) == {"hv2": 3}


def test_a_deleted_filtered_port_has_its_zone_flushed_on_its_host() -> None:
    w = _sg_world(2)
    old = w.mirror.ports["p2"]
    w.mirror.set_port(old.id, None)
    w.bindings.forget(old.id)
    w.change(Change("port", old.id, old, None))
    plan = w.step()
    assert plan.ct_flushes == {"hv1": [2]}
    assert t.sg_port_cookie(2) not in w.hosts["hv1"].installed  # type: ignore[operator]


def test_zone_flushes_follow_what_the_switch_holds() -> None:
    """A filtered port given another ofport on its host: its new zone is flushed before the
    diff (the switch holds none of its flows there), its old zone after it (nothing filters
    in it now).  A rebuild of a host whose switch holds every port's flows on its zone (a
    restart, a take-over) flushes nothing; one whose switch lost a port's flows flushes that
    port's zone before they go back, and only that one."""
    w = _sg_world(2)
    rt = w.hosts["hv1"]
    assert rt.obs is not None and rt.installed is not None
    claims = {**rt.obs.bindings, "p2": 9}
    rt.obs = HostObservation(claims, rt.obs.tunnel_ofports)
    w.bindings.set_claims("hv1", claims)
    w.change(Change("iface", "p2", None, "hv1"))
    plan = w.step()
    assert plan.ct_flushes_first == {"hv1": [9]} and plan.ct_flushes == {"hv1": [2]}
    w.change(Change("switch", "hv1"))
    plan = w.step()
    assert plan.ct_flushes_first == {} and plan.ct_flushes == {} and plan.diffs == {}
    del rt.installed[t.sg_port_cookie(1)]  # p1's own flows went missing on the switch
    w.change(Change("switch", "hv1"))
    plan = w.step()
    assert plan.ct_flushes_first == {"hv1": [1]} and plan.ct_flushes == {}


def test_the_merged_clause_owner_of_the_old_layout_is_replaced_in_one_diff() -> None:
    """A switch that holds the firewall as the release before per-rule and per-member owners
    wrote it (every merged clause under owner number 1): its rebuild re-adds the same flows
    under their owners and deletes the old cookie's, in one merged diff (adds first, one
    bundle), so no flow of the firewall is ever missing; the next rebuild sends nothing."""
    w = _sg_world(3)
    rt = w.hosts["hv1"]
    assert rt.installed is not None
    moved = {o for o in rt.installed if t.sg_owner_part(o)[0] in ("rule", "member")}
    assert moved  # web's rules and db's member on hv1
    legacy = frozenset(r._replace(cookie=SHARED) for o in moved for r in rt.installed[o].rules)
    for o in moved:
        reconciler._record(rt, o, "sg", Slice())  # type: ignore[arg-type]
    reconciler._record(rt, SHARED, "sg", Slice(rules=legacy))  # type: ignore[arg-type]
    rt.groups = index_owners(rt.installed, w.inputs.group_of)
    w.change(Change("switch", "hv1"))
    plan = w.step()
    merged = reconciler.merge_diffs(plan.diffs["hv1"])
    assert {r._replace(cookie=0) for r in merged.add_rules} == {
        r._replace(cookie=0) for r in legacy
    }
    assert set(merged.del_rules) == legacy and not merged.additive  # strict, old cookie, bundle
    assert SHARED not in rt.installed
    w.change(Change("switch", "hv1"))
    assert w.step().diffs == {}


def test_a_patch_that_raises_drops_the_hosts_firewall_and_its_retry_rebuilds_it() -> None:
    """A rule the API should have refused (an unknown direction) makes hv1's patch raise half
    way: nothing of it is sent, hv1's kept firewall is dropped and the unit returned is hv1's
    rebuild; once the rule is gone the retry (as the actor makes it) rebuilds hv1 to exactly
    what a fresh planner compiles, zones of ports that left meanwhile flushed."""
    w = _sg_world(3)
    sg_service = w.planner.services["sg"]
    bad = SgRuleRec.from_store({"id": "bad", "security_group_id": "web", "_key": 9,
                                "direction": "ingress", "ethertype": "IPv4"})  # fmt: skip
    bad = replace(bad, rule=replace(bad.rule, direction="sideways"))
    w.mirror.set_record("security_group_rule", bad.id, bad)
    w.change(Change("security_group_rule", bad.id, None, bad))
    before = dict(w.hosts["hv1"].installed or {})
    plan = w.step()
    assert [u for u, _ in plan.failed] == [Unit("sg", ("hv1",))] and "hv1" not in plan.diffs
    assert "hv1" not in sg_service.firewalls  # type: ignore[attr-defined]
    assert w.hosts["hv1"].installed == before
    # meanwhile the rule is deleted and a filtered port of hv1 leaves (no unit reaches hv1:
    # it has no firewall to patch), then the actor retries the failed unit
    w.mirror.set_record("security_group_rule", bad.id, None)
    w.change(Change("security_group_rule", bad.id, bad, None))
    gone = w.mirror.ports["p2"]
    w.mirror.set_port(gone.id, None)
    w.bindings.forget(gone.id)
    w.change(Change("port", gone.id, gone, None))
    w.dirty.add(Unit("sg", ("hv1",)))
    plan = w.step()
    assert not plan.failed and plan.ct_flushes == {"hv1": [2]}
    sg_kind = t.OwnerKind.SECURITY_GROUP
    want = {o: s for o, s in fresh_owners(Planner(services()), w, "hv1").items()
            if t.owner_kind(o) == sg_kind}  # fmt: skip
    got = {o: s for o, s in (w.hosts["hv1"].installed or {}).items() if t.owner_kind(o) == sg_kind}
    assert got == want and len(want) > 3  # skeleton, ports, rules, member


def fresh_owners(planner: Planner, w: World, host_id: str) -> dict[int, Slice]:
    """What a fresh planner wants on a host that holds nothing (its from-scratch compile)."""
    hosts = {h: replace(rt, installed={}, groups={}) for h, rt in w.hosts.items()}
    inputs = Inputs(w.mirror, w.bindings, hosts, lambda o: planner.group_of(o, inputs))
    plan = planner.plan(planner.changed(Change("switch", host_id), inputs), inputs)
    return {o: s for h, o, _, s in plan.writes if h == host_id}


def base_pieces_also(w: World, also: Callable[[Unit, Any], None], only: Unit | None = None) -> None:
    """Make the base service's pieces (``only`` that one, if given) run ``also(unit, step)``
    after their own planning: a piece that does more than its `Service.host_of` says."""
    base = w.planner.services["base"]
    work = base.work

    def wrapped(units: Any, inputs: Inputs) -> Any:
        for unit, fn in work(units, inputs):
            if only is not None and unit != only:
                yield unit, fn
                continue

            def piece(step: Any, fn: Any = fn, unit: Unit = unit) -> None:
                fn(step)
                also(unit, step)

            yield unit, piece

    base.work = wrapped  # type: ignore[method-assign]


def test_a_piece_declared_for_one_host_that_plans_another_fails_alone() -> None:
    """Pipelining relies on `Service.host_of`: a host is sent once its own pieces ran, so a
    piece that says it plans hv1 but wants something on hv2 (whose bundle may have left) fails
    like any unit (retried by the actor) instead of slipping into a later bundle; the other
    pieces are planned, and each host is released once, with all of its diffs."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    bad, good = Unit("base", ("hv1",)), Unit("base", ("hv2",))
    base_pieces_also(w, lambda u, step: step.want("hv2", t.BASE_COOKIE, None, Slice()), bad)
    released: list[tuple[str, int]] = []
    plan = w.planner.plan(w.dirty, w.inputs, lambda h, p: released.append((h, len(p.diffs[h]))))
    assert [u for u, _ in plan.failed] == [bad]
    assert "hv1" not in plan.diffs and set(plan.diffs) == {"hv2", "hv3"}
    assert sorted(released) == [("hv2", 1), ("hv3", 1)]
    assert good not in {u for u, _ in plan.failed}


@pytest.mark.parametrize("lie", ["flush_zone", "decide"])
def test_a_one_host_piece_that_flushes_another_host_or_decides_fails_alone(lie: str) -> None:
    """The guard of the test above for the step's other outputs: a piece declared for hv1
    that flushes a conntrack zone of hv2 (whose bundle, and flush, may have left) or decides a
    port's status (the actor puts decisions into the batch before its first send) fails like
    any unit; nothing of it reaches the plan, the other hosts are released once."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    bad = Unit("base", ("hv1",))

    def also(unit: Unit, step: Any) -> None:
        if lie == "flush_zone":
            step.flush_zone("hv2", 5)
        else:
            step.decide(PortDecision("p1", "hv1", True))

    base_pieces_also(w, also, bad)
    released: list[str] = []
    plan = w.planner.plan(w.dirty, w.inputs, lambda h, p: released.append(h))
    assert [u for u, _ in plan.failed] == [bad]
    assert plan.ct_flushes == {} and plan.decisions == []
    assert sorted(released) == ["hv2", "hv3"]


def test_a_one_host_piece_flushes_its_own_hosts_zone() -> None:
    """The guard lets a one-host piece flush its own host's zones (the security groups do)."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    base_pieces_also(w, lambda unit, step: step.flush_zone(str(unit.scope[0]), 5))
    plan = w.planner.plan(w.dirty, w.inputs)
    assert plan.failed == []
    assert plan.ct_flushes == {"hv1": [5], "hv2": [5], "hv3": [5]}
