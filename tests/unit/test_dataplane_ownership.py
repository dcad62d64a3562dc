"""Host ownership (issue 18, docs/ha.md): two data planes on one store, as two controller
instances on one etcd cluster; switches and OVSDB agents faked (test_dataplane's fakes).

Each host's agent runs on its owner only, only the owner sends it flows and writes its ports'
statuses and its state; an instance that is no longer live writes nothing from that moment;
the instance that takes a host over reads it and, when nothing changed, sends it nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.dataplane.reconciler import DataPlane
from controller.events import EventBus
from controller.membership import MemberView, owner_of
from controller.southbound.ovsdb_host import datapath_id_for
from controller.store import Store
from controller.store.ports import REFUSED_HOSTS
from flows.diff import FlowDiff
from tests.unit.test_dataplane import FakeAgent, FakeSwitches

HOSTS = [f"hv{n}" for n in range(1, 5)]


class Switches:
    """One instance's OpenFlow side over the shared fake switches: counts what it sends;
    a resync reads the switch back (as TenantnetOfpApp's does, through switch_ready)."""

    def __init__(self, shared: FakeSwitches) -> None:
        self.shared = shared
        self.dp: DataPlane | None = None
        self.sent: list[int] = []  # dpid of every batch sent
        self.roles: dict[int, tuple[bool, int]] = {}  # dpid -> the last (master?, generation)
        self.barrier_s = 0.0  # how long the switches take to confirm a batch (0: at once)

    def apply(self, dpid: int, diff: FlowDiff, on_done: Callable[..., None]) -> bool:
        self.sent.append(dpid)
        if not self.barrier_s:
            return self.shared.apply(dpid, diff, on_done)

        def confirm_later(*args: Any) -> None:
            threading.Timer(self.barrier_s, on_done, args).start()

        return self.shared.apply(dpid, diff, confirm_later)

    def remove_all(self, dpid: int, group_ids: list[int], on_done: Callable[..., None]) -> bool:
        return self.shared.remove_all(dpid, group_ids, on_done)

    def resync(self, dpid: int) -> None:
        assert self.dp is not None
        self.dp.switch_ready(dpid, self.shared.installed(dpid))

    def flush_ct_zones(self, dpid: int, zones: list[int]) -> bool:
        return self.shared.flush_ct_zones(dpid, zones)

    def set_role(self, dpid: int, master: bool, generation: int) -> None:
        self.roles[dpid] = (master, generation)

    def step_down(self, dpid: int) -> None:
        self.roles[dpid] = (False, -1)  # EQUAL: no generation

    def forget_role(self, dpid: int) -> None:
        self.roles.pop(dpid, None)


class Instance:
    def __init__(
        self,
        name: str,
        store: Store,
        bus: EventBus,
        shared: FakeSwitches,
        members: tuple[str, ...] = ("a", "b"),
        handover_delay_s: float = 0.0,
    ) -> None:
        self.view = MemberView(name, members, 1)
        self.switches = Switches(shared)
        self.writes: list[tuple[str, Any]] = []
        self.dp = DataPlane(
            _Recording(store, self.writes),
            self.switches,
            "tcp:127.0.0.1:6653",
            agent_factory=self._agent,
            membership=lambda: self.view,
            handover_delay_s=handover_delay_s,
        )
        self.switches.dp = self.dp
        self.agents: list[str] = []
        bus.subscribe(self.dp.on_events)

    def _agent(self, record: dict[str, Any], *args: Any) -> FakeAgent:
        self.agents.append(record["id"])
        return FakeAgent(record, *args)

    def set_view(self, members: tuple[str, ...]) -> None:
        self.view = MemberView(self.view.me, members, self.view.revision + 1)
        self.dp.on_membership(self.view)

    def owned(self) -> list[str]:
        return self.view.owned(HOSTS)


class _Recording:
    """The store, with the data plane's writes noted (which instance wrote what)."""

    def __init__(self, store: Store, writes: list[tuple[str, Any]]) -> None:
        self._store, self._writes = store, writes

    def set_ports_observed(self, **kw: Any) -> Any:
        self._writes.append(("ports", kw))
        return self._store.set_ports_observed(**kw)

    def set_host_state(self, host_id: str, *args: Any) -> Any:
        self._writes.append(("host", host_id))
        return self._store.set_host_state(host_id, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Cluster:
    def __init__(self, path: str) -> None:
        self.bus = EventBus()
        self.store = Store(path, self.bus)
        self.shared = FakeSwitches()
        self.a = Instance("a", self.store, self.bus, self.shared)
        self.b = Instance("b", self.store, self.bus, self.shared)

    def start(self) -> None:
        for inst in (self.a, self.b):
            inst.dp.start()
        for n, host in enumerate(HOSTS, 1):
            self.store.create_host(
                {"id": host, "tunnel_ip": f"10.9.0.{n}", "ovsdb": f"tcp:10.8.0.{n}:6640"}
            )
            for inst in (self.a, self.b):  # every instance has a session with every switch
                inst.dp.switch_ready(datapath_id_for(host), self.shared.installed(dpid(host)))
        self.idle()

    def idle(self) -> None:
        assert self.a.dp.wait_idle(10) and self.b.dp.wait_idle(10)

    def status(self, port: dict[str, Any]) -> str:
        return str(self.store.get_port(port["id"])["status"])


def dpid(host: str) -> int:
    return datapath_id_for(host)


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[Cluster]:
    FakeAgent.instances.clear()
    c = Cluster(str(tmp_path / "db.sqlite"))
    yield c
    c.a.dp.stop()
    c.b.dp.stop()


def _split_hosts() -> tuple[str, str]:
    """A host owned by a and one owned by b (rendezvous hashing over (a, b))."""
    of_a = [h for h in HOSTS if owner_of(h, ("a", "b")) == "a"]
    of_b = [h for h in HOSTS if owner_of(h, ("a", "b")) == "b"]
    assert of_a and of_b, "the test's hosts must be split between the two members"
    return of_a[0], of_b[0]


def test_each_host_is_read_served_and_written_by_its_owner_only(cluster: Cluster) -> None:
    cluster.start()
    assert sorted(cluster.a.agents + cluster.b.agents) == HOSTS  # one agent per host
    assert cluster.a.agents == cluster.a.owned() and cluster.b.agents == cluster.b.owned()
    ha, hb = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    pa = cluster.store.create_port({"network_id": net["id"]})
    pb = cluster.store.create_port({"network_id": net["id"]})
    FakeAgent.instances[ha].plug(pa["id"], 1)
    FakeAgent.instances[hb].plug(pb["id"], 1)
    cluster.idle()
    assert cluster.status(pa) == cluster.status(pb) == "ACTIVE"
    # each host's flows reach the other's port: b learnt pa's host from the holder a wrote
    for host in (ha, hb):
        macs = {v for r in cluster.shared.installed(dpid(host)).rules for k, v in r.match
                if k == "eth_dst"}  # fmt: skip
        assert {pa["mac_address"], pb["mac_address"]} <= macs
    assert set(cluster.a.switches.sent) <= {dpid(h) for h in cluster.a.owned()}
    assert set(cluster.b.switches.sent) <= {dpid(h) for h in cluster.b.owned()}
    written_a = {p for kind, kw in cluster.a.writes if kind == "ports" for p in kw["statuses"]}
    written_b = {p for kind, kw in cluster.b.writes if kind == "ports" for p in kw["statuses"]}
    assert written_a == {pa["id"]} and written_b == {pb["id"]}
    hosts_a = {h for kind, h in cluster.a.writes if kind == "host"}
    assert hosts_a == set(cluster.a.owned())


def test_a_member_not_live_writes_nothing_and_its_hosts_move_with_no_flow_mods(
    cluster: Cluster,
) -> None:
    cluster.start()
    ha, _ = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    p1 = cluster.store.create_port({"network_id": net["id"]})
    p2 = cluster.store.create_port({"network_id": net["id"]})
    agent = FakeAgent.instances[ha]
    agent.plug(p1["id"], 1)
    agent.plug(p2["id"], 2)
    cluster.idle()
    assert cluster.status(p1) == "ACTIVE"
    given = cluster.a.owned()
    # a's lease lapses: from this moment it writes nothing, even what its agent still tells it
    cluster.a.view = MemberView("a", (), cluster.a.view.revision)
    writes_before = len(cluster.a.writes)
    agent.unplug(p1["id"])
    cluster.idle()
    assert cluster.a.writes[writes_before:] == []
    assert cluster.status(p1) == "ACTIVE"  # nobody wrote DOWN yet
    # b sees a gone and takes a's hosts over: reads them, sends nothing but what changed
    FakeAgent.preset = {h: dict(FakeAgent.instances[h].bindings) for h in given}
    sent_before = len(cluster.b.switches.sent)
    flow_mods_before = cluster.b.dp.stats.flow_mods
    cluster.b.set_view(("b",))
    cluster.idle()
    assert sorted(cluster.b.agents) == HOSTS
    assert cluster.status(p1) == "DOWN" and cluster.status(p2) == "ACTIVE"  # b wrote it
    status = cluster.b.dp.status()["hosts"]
    assert all(status[h]["ready"] and status[h]["owned"] for h in HOSTS)
    # p1's flows were withdrawn (it was unplugged); nothing else was sent
    p1_mods = cluster.b.dp.stats.flow_mods - flow_mods_before
    assert p1_mods > 0 and set(cluster.b.switches.sent[sent_before:]) <= {dpid(ha)}
    # a's actor gives its hosts up (its tick notices the lapsed view): agents stopped
    cluster.a.dp.post("tick", ())
    assert cluster.a.dp.wait_idle(10)
    assert not any(h["owned"] for h in cluster.a.dp.status()["hosts"].values())


def test_a_host_handed_over_with_nothing_changed_gets_zero_flow_mods(cluster: Cluster) -> None:
    cluster.start()
    ha, hb = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    for n, host in enumerate((ha, hb), 1):
        port = cluster.store.create_port({"network_id": net["id"]})
        FakeAgent.instances[host].plug(port["id"], n)
    cluster.idle()
    FakeAgent.preset = {h: dict(FakeAgent.instances[h].bindings) for h in cluster.a.owned()}
    given = cluster.a.owned()
    mods_before = (cluster.b.dp.stats.flow_mods, cluster.b.dp.stats.group_mods)
    sent_before = len(cluster.b.switches.sent)
    cluster.a.set_view(("b",))  # a left (its view: not live) ...
    cluster.b.set_view(("b",))  # ... and b sees it gone
    cluster.idle()
    status = cluster.b.dp.status()["hosts"]
    assert all(status[h]["ready"] and status[h]["owned"] for h in given)
    assert (cluster.b.dp.stats.flow_mods, cluster.b.dp.stats.group_mods) == mods_before
    assert cluster.b.switches.sent[sent_before:] == []
    assert not any(cluster.a.dp.status()["hosts"][h]["owned"] for h in HOSTS)


def test_the_owner_asks_master_and_a_later_owner_a_newer_generation(cluster: Cluster) -> None:
    cluster.start()
    for inst in (cluster.a, cluster.b):
        assert inst.switches.roles == {dpid(h): (h in inst.owned(), 1) for h in HOSTS}
    given = cluster.a.owned()
    cluster.a.set_view(())  # a's lease lapsed: a slave everywhere, asks nothing as master
    cluster.b.view = MemberView("b", ("b",), 7)  # b read the members at revision 7
    cluster.b.dp.on_membership(cluster.b.view)
    cluster.idle()
    assert cluster.b.switches.roles == {dpid(h): (True, 7 if h in given else 1) for h in HOSTS}
    assert not any(master for master, _ in cluster.a.switches.roles.values())
    # a switch refused b's generation as stale (another instance read a newer revision first):
    # asked again once b has read a newer one, not before
    h = given[0]
    cluster.b.dp.post("role_refused", (dpid(h), 7))
    cluster.b.dp.post("tick", ())
    cluster.idle()
    assert cluster.b.switches.roles[dpid(h)] == (True, 7)
    # meanwhile nothing is sent to that switch (its session is not master)
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    port = cluster.store.create_port({"network_id": net["id"]})
    sent_before = len(cluster.b.switches.sent)
    FakeAgent.instances[h].plug(port["id"], 5)
    cluster.idle()
    assert dpid(h) not in cluster.b.switches.sent[sent_before:]
    cluster.b.view = MemberView("b", ("b",), 9)
    cluster.b.dp.post("tick", ())
    cluster.idle()
    assert cluster.b.switches.roles[dpid(h)] == (True, 9)
    # asked again: the switch is read again and gets what was held back
    assert dpid(h) in cluster.b.switches.sent[sent_before:]
    assert cluster.status(port) == "ACTIVE"


def test_a_refused_demotion_without_quorum_steps_down_to_equal(cluster: Cluster) -> None:
    """etcd lost quorum: no instance is live, each asks SLAVE with the generation it last
    read.  A switch that saw a newer one (the other instance read the members later) refuses
    the former master's SLAVE as stale, and no newer generation can be read until quorum
    returns: the former master steps down to EQUAL (which takes no generation) instead of
    staying the switch's master.  A live instance whose SLAVE is refused does not (the new
    master's MASTER request demotes it), and with quorum back SLAVE is asked again."""
    cluster.start()
    h = cluster.a.owned()[0]
    other = next(x for x in HOSTS if x not in cluster.a.owned())
    generation = cluster.a.switches.roles[dpid(other)][1]
    cluster.a.dp.post("role_refused", (dpid(other), generation))  # live: waits for a newer one
    cluster.idle()
    assert cluster.a.switches.roles[dpid(other)] == (False, generation)
    cluster.a.set_view(())  # no quorum: a's lease lapsed, it reads nothing newer
    cluster.idle()
    generation = cluster.a.switches.roles[dpid(h)][1]
    assert cluster.a.switches.roles[dpid(h)] == (False, generation)  # SLAVE asked ...
    cluster.a.dp.post("role_refused", (dpid(h), generation))  # ... refused as stale
    cluster.idle()
    assert cluster.a.switches.roles[dpid(h)] == (False, -1)  # stepped down to EQUAL
    cluster.a.view = MemberView("a", ("a", "b"), generation + 5)  # quorum back, newer revision
    cluster.a.dp.post("tick", ())
    cluster.idle()
    assert cluster.a.switches.roles[dpid(h)] == (h in cluster.a.owned(), generation + 5)


def test_a_member_that_rejoined_under_a_new_lease_takes_its_hosts_back_as_a_handover(
    cluster: Cluster,
) -> None:
    """a stalls past its lease: b takes a's host (MASTER, a newer generation).  a resumes and
    joins again under a new lease; its membership thread reads the same members as before the
    stall before its actor heard that a was ever out.  a acted on the host at once (two
    acting owners while b has not read a's return) and kept its old generation, never asking
    MASTER again: its session, demoted by b's MASTER, refused its flow-mods for good.  A new
    lease voids what a owned under the old one: the host is taken like one gained from a live
    member (handover delay, then MASTER with a newer generation than b's, and a re-read)."""
    cluster.start()
    a, b = cluster.a, cluster.b
    a.dp.handover_delay_s = 0.3
    h = a.owned()[0]
    assert a.dp.owns(h)
    old_generation = a.switches.roles[dpid(h)][1]
    agents_before = a.agents.count(h)
    b.set_view(("b",))  # a's lease expired: b takes its hosts at once
    cluster.idle()
    assert b.switches.roles[dpid(h)] == (True, b.view.revision)
    # a back under a new lease, same members; its actor has not taken any of it yet
    a.view = MemberView("a", ("a", "b"), b.view.revision + 5, lease=2)
    assert not a.dp.owns(h), "acting on the host before b has let go"
    b.set_view(("a", "b"))  # b reads a's return and lets go
    a.dp.on_membership(a.view)
    cluster.idle()
    deadline = time.monotonic() + 10
    while not a.switches.roles[dpid(h)][0] and time.monotonic() < deadline:
        a.dp.post("tick", ())  # the handover falls due
        time.sleep(0.05)
        cluster.idle()
    assert a.dp.owns(h)
    master, generation = a.switches.roles[dpid(h)]
    assert master and generation == a.view.revision
    assert generation > max(old_generation, b.switches.roles[dpid(h)][1])
    assert a.agents.count(h) == agents_before + 1  # re-read: b may have changed it meanwhile


def _third_member_joins(cluster: Cluster, handover_delay_s: float) -> tuple[Instance, list[str]]:
    """Member c, started with members (a, b, c), and the hosts it gains from a and b."""
    c = Instance("c", cluster.store, cluster.bus, cluster.shared, ("a", "b", "c"),
                 handover_delay_s=handover_delay_s)  # fmt: skip
    gained = c.view.owned(HOSTS)
    assert gained, "the test's hosts must give c some"
    c.dp.start()
    return c, gained


def test_a_joining_member_takes_its_hosts_only_after_their_owners_let_go(
    cluster: Cluster,
) -> None:
    """A member that joins (or restarts) does not know who owned its hosts: it waits for the
    handover delay, by which time the previous owners have seen it and stopped, so no host
    ever has two acting owners (two agents, two masters, two writers)."""
    cluster.start()
    c, gained = _third_member_joins(cluster, handover_delay_s=0.6)
    joined = c.view.members
    for host in HOSTS:
        c.dp.switch_ready(dpid(host), cluster.shared.installed(dpid(host)))
    assert c.dp.wait_idle(10)
    assert c.agents == [] and not any(m for m, _ in c.switches.roles.values())
    assert not any(c.dp.owns(h) for h in HOSTS)
    FakeAgent.preset = {h: dict(FakeAgent.instances[h].bindings) for h in gained}
    for inst in (cluster.a, cluster.b):  # the others read the members: they let go
        inst.set_view(joined)
    cluster.idle()
    assert not set(gained) & set(cluster.a.owned() + cluster.b.owned())
    deadline = time.monotonic() + 10
    while sorted(c.agents) != sorted(gained) and time.monotonic() < deadline:
        c.dp.post("tick", ())
        time.sleep(0.1)
    assert sorted(c.agents) == sorted(gained)
    assert c.dp.wait_idle(10)
    assert {d: m for d, (m, _) in c.switches.roles.items()} == {dpid(h): h in gained for h in HOSTS}
    assert c.switches.sent == []  # it found what the previous owners had installed
    c.dp.stop()


def test_a_port_moved_between_hosts_of_different_owners_follows_its_vm(cluster: Cluster) -> None:
    """CloudStack sets no binding:host_id: the VM is unplugged on one host and plugged on
    another owned by the other instance, which must take the port (first claim holds) once
    the first owner has seen it go, although it cannot read the first host itself."""
    cluster.start()
    ha, hb = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    port = cluster.store.create_port({"network_id": net["id"]})
    FakeAgent.instances[ha].plug(port["id"], 3)
    cluster.idle()
    assert cluster.store.get_port(port["id"])["binding:host_id"] == ha
    FakeAgent.instances[ha].unplug(port["id"])
    FakeAgent.instances[hb].plug(port["id"], 4)
    cluster.idle()
    cluster.idle()
    shown = cluster.store.get_port(port["id"])
    assert (shown["binding:host_id"], shown["status"]) == (hb, "ACTIVE")
    # a claim b saw before a cleared the holder may have been shown refused for a moment
    assert REFUSED_HOSTS not in shown["binding:vif_details"]
    assert cluster.b.dp.bindings.holder(port["id"]) == hb
    assert cluster.a.dp.bindings.holder(port["id"]) == hb


def test_a_gained_host_is_not_written_before_the_actor_has_armed_its_handover(
    cluster: Cluster,
) -> None:
    """The membership thread changes the view before the actor takes the change (and arms the
    handover delay): an input queued in between (here the binding the previous owner, still
    acting, writes) must not make the new owner write the port's status over the previous
    owner's ACTIVE (it wrote DOWN: the host is not read here yet)."""
    cluster.start()
    joined = ("a", "b", "c")
    c = Instance("c", cluster.store, cluster.bus, cluster.shared, ("a", "b"), handover_delay_s=60)
    gained = MemberView("c", joined, 1).owned(HOSTS)
    assert gained, "the test's hosts must give c some"
    c.dp.start()
    assert c.dp.wait_idle(10)
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    port = cluster.store.create_port({"network_id": net["id"]})
    cluster.idle()
    assert c.dp.wait_idle(10)
    c.view = MemberView("c", joined, 2)  # read by the membership thread; "ownership" not yet
    FakeAgent.instances[gained[0]].plug(port["id"], 7)  # the previous owner still acts
    cluster.idle()
    assert c.dp.wait_idle(10)
    cluster.idle()
    assert [kw for kind, kw in c.writes if kind == "ports"] == []
    assert not any(c.dp.owns(h) for h in HOSTS)
    assert cluster.status(port) == "ACTIVE"
    c.dp.stop()


def test_zone_flushes_follow_the_switch_not_the_instance_that_lost_the_host(
    cluster: Cluster,
) -> None:
    """Conntrack zones across a host handed back and forth (the reviewer's reproduction of
    2ea7e4a, issue of zone flushes kept in one instance's memory).  On ha, owned by a: port
    ``left`` (zone 7) is unplugged while a's switch connection is gone (its flush is not
    taken); ``moved`` (zone 8) stays.  a loses ha to b.  While b owns it, ``moved`` leaves and
    two new ports take ofports 7 and 8: b flushes both zones before their flows go in (the
    switch holds none of their flows there; zone 7 still held ``left``'s connections, which
    the new port would have inherited).  ha goes back to a: the switch holds both new ports'
    flows on their zones, so a flushes nothing (and sends nothing).  The old actors: b never
    flushed (the departures were a's events), and a, back, sent its stale flush of zone 7 and
    the zone of ``moved`` it had kept when it lost ha (`orphan_zones`): both cleared the live
    connections of the new ports."""
    cluster.start()
    ha, _ = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    left, moved, new7, new8 = (cluster.store.create_port({"network_id": net["id"]})
                               for _ in range(4))  # fmt: skip
    FakeAgent.instances[ha].plug(left["id"], 7)
    FakeAgent.instances[ha].plug(moved["id"], 8)
    cluster.idle()
    shared, hv = cluster.shared, dpid(ha)
    real = cluster.a.switches.flush_ct_zones
    cluster.a.switches.flush_ct_zones = lambda d, z: False  # type: ignore[method-assign]
    FakeAgent.instances[ha].unplug(left["id"])
    cluster.idle()
    cluster.a.switches.flush_ct_zones = real  # type: ignore[method-assign]
    # ha moves to b (a is not live)
    FakeAgent.preset = {h: dict(FakeAgent.instances[h].bindings) for h in cluster.a.owned()}
    cluster.a.view = MemberView("a", (), cluster.a.view.revision)
    cluster.b.set_view(("b",))
    cluster.idle()
    cluster.a.dp.post("tick", ())
    cluster.idle()
    assert cluster.b.dp.owns(ha) and not cluster.a.dp.owns(ha)
    n = len(shared.flushed)
    agent = FakeAgent.instances[ha]  # b's
    agent.unplug(moved["id"])
    cluster.idle()
    agent.plug(new7["id"], 7)
    agent.plug(new8["id"], 8)
    cluster.idle()
    assert cluster.status(new7) == cluster.status(new8) == "ACTIVE"
    assert shared.flushed_before_flows(hv, 7, new7) and shared.flushed_before_flows(hv, 8, new8)
    # ha goes back to a
    m, sent = len(shared.flushed), len(cluster.a.switches.sent)
    FakeAgent.preset = {ha: dict(agent.bindings)}
    cluster.a.set_view(("a", "b"))
    cluster.b.set_view(("a", "b"))
    cluster.idle()
    cluster.b.dp.post("tick", ())
    cluster.idle()
    assert cluster.a.dp.owns(ha) and cluster.a.dp.status()["hosts"][ha]["ready"]
    assert shared.flushed[m:] == [], "the new ports' live zones were flushed"
    assert dpid(ha) not in cluster.a.switches.sent[sent:]
    assert (hv, [8]) in shared.flushed[n:m]  # b: ``moved`` left, after its flows went


def test_a_claim_refused_on_either_instances_host_is_shown_and_cleared_by_that_instance(
    cluster: Cluster,
) -> None:
    """The port is held on one of b's hosts; its interface is plugged on a's host too (a claim
    that only a reads, for a port whose holder a cannot read) and on another of b's hosts.  Both
    claims are refused (no flows there) and both are shown in binding:vif_details: each
    instance sets or clears only the entries of the hosts it owns and keeps the other's.  Before,
    a neither refused claim was shown nor logged (docs/ha.md listed it as a gap)."""
    cluster.start()
    of_a = [h for h in HOSTS if owner_of(h, ("a", "b")) == "a"]
    of_b = [h for h in HOSTS if owner_of(h, ("a", "b")) == "b"]
    assert of_a and len(of_b) >= 2, "the test's hosts must be split this way"
    holder, thief_a, thief_b = of_b[0], of_a[0], of_b[1]
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    port = cluster.store.create_port({"network_id": net["id"]})
    FakeAgent.instances[holder].plug(port["id"], 3)
    cluster.idle()

    def shown() -> tuple[str, str, list[str]]:
        got = cluster.store.get_port(port["id"])
        refused = got["binding:vif_details"].get(REFUSED_HOSTS, [])
        return got["binding:host_id"], got["status"], refused

    def in_ports(host: str) -> set[int]:
        return {v for r in cluster.shared.installed(dpid(host)).rules for k, v in r.match
                if k == "in_port"}  # fmt: skip

    assert shown() == (holder, "ACTIVE", [])
    FakeAgent.instances[thief_a].plug(port["id"], 7)
    cluster.idle()
    assert shown() == (holder, "ACTIVE", [thief_a])
    assert 7 not in in_ports(thief_a) and 3 in in_ports(holder)
    assert cluster.a.dp.status()["binding_conflicts"] == 1
    FakeAgent.instances[thief_b].plug(port["id"], 8)
    cluster.idle()
    assert shown() == (holder, "ACTIVE", sorted([thief_a, thief_b]))  # b kept a's entry
    assert 8 not in in_ports(thief_b)
    FakeAgent.instances[thief_a].unplug(port["id"])
    cluster.idle()
    assert shown() == (holder, "ACTIVE", [thief_b])  # a cleared its own, kept b's
    FakeAgent.instances[thief_b].unplug(port["id"])
    cluster.idle()
    assert shown() == (holder, "ACTIVE", [])
    # a's refused entries were written by a, b's by b
    by_a = {h for kind, kw in cluster.a.writes if kind == "ports"
            for hosts in kw.get("refused", {}).values() for h in hosts}  # fmt: skip
    by_b = {h for kind, kw in cluster.b.writes if kind == "ports"
            for hosts in kw.get("refused", {}).values() for h in hosts}  # fmt: skip
    assert by_a == {thief_a} and by_b == {thief_b}


def test_a_port_unplugged_from_an_owned_host_is_down_and_unbound(cluster: Cluster) -> None:
    """The owner clears the holder of a port whose VM left its host and sets it DOWN in the
    same write: once the cleared holder is stored the port names no host, and a status with no
    host has no writer among several instances (a DOWN decided after the step's barrier was
    dropped: the port stayed ACTIVE on etcd, test_resilience's host removal on etcd)."""
    cluster.start()
    ha, hb = _split_hosts()
    net = cluster.store.create_network({"provider:network_type": "vxlan"})
    cluster.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
    for host in (ha, hb):
        port = cluster.store.create_port({"network_id": net["id"]})
        FakeAgent.instances[host].plug(port["id"], 3)
        cluster.idle()
        assert (cluster.store.get_port(port["id"])["binding:host_id"], cluster.status(port)) == (
            host,
            "ACTIVE",
        )
        for inst in (cluster.a, cluster.b):  # longer than the data plane holds a binding
            inst.switches.barrier_s = 0.2  # back for its status (OBSERVATION_HOLD_S)
        FakeAgent.instances[host].unplug(port["id"])
        time.sleep(0.5)
        cluster.idle()
        for inst in (cluster.a, cluster.b):
            inst.switches.barrier_s = 0.0
        got = cluster.store.get_port(port["id"])
        assert (got["binding:host_id"], got["status"]) == ("", "DOWN"), (host, got)


def test_a_deleted_host_leaves_no_role_and_no_pending_handover(cluster: Cluster) -> None:
    """The role asked of each host's switch and a handover still pending are kept per host:
    a deleted host's went on being kept for good, one entry per host ever deleted."""
    cluster.start()
    c, gained = _third_member_joins(cluster, handover_delay_s=60)
    assert c.dp.wait_idle(10)
    assert set(c.dp._takeover_at) == set(gained)
    for host in HOSTS:
        cluster.store.delete("host", host)
    assert c.dp.wait_idle(10)
    cluster.idle()
    for inst in (cluster.a, cluster.b, c):
        assert inst.switches.roles == {}, inst.view.me
        assert inst.dp._takeover_at == {}, inst.view.me
    c.dp.stop()


def test_a_host_left_alone_is_read_again_when_it_is_owned_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host left alone after four unconfirmed batches (its flows unknown) while this
    instance briefly owned nothing (a lease lapse): the re-read due meanwhile was dropped,
    and taking the host back re-read only a host whose flows were known, so its switch was
    never read again and a port plugged there stayed DOWN (found by a review)."""
    from controller.dataplane import reconciler

    monkeypatch.setattr(reconciler, "LEFT_ALONE_FIRST_S", 0.5)
    FakeAgent.instances.clear()
    c = Cluster(str(tmp_path / "db.sqlite"))
    try:
        c.start()
        ha, _ = _split_hosts()
        late = [4]
        real_apply = c.a.switches.apply

        def apply(d: int, diff: FlowDiff, on_done: Callable[..., None]) -> bool:
            if d == dpid(ha) and late[0] > 0:
                late[0] -= 1
                real_apply(d, diff, lambda *a: None)  # applied, confirmed too late
                on_done(False, "timeout")
                return True
            return real_apply(d, diff, on_done)

        c.a.switches.apply = apply  # type: ignore[method-assign]
        net = c.store.create_network({"provider:network_type": "vxlan"})
        c.store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4})
        for n in range(4):
            p = c.store.create_port({"network_id": net["id"]})
            FakeAgent.instances[ha].plug(p["id"], 10 + n)
            c.idle()
        assert c.a.dp.hosts[ha].installed is None  # left alone
        c.a.view = MemberView("a", (), c.a.view.revision + 1)  # the lease lapsed
        c.a.dp.on_membership(c.a.view)
        time.sleep(1.5)  # the re-read falls due while nothing is owned
        c.idle()
        c.a.view = MemberView("a", ("a", "b"), c.a.view.revision + 1)
        c.a.dp.on_membership(c.a.view)
        c.idle()
        port = c.store.create_port({"network_id": net["id"]})
        FakeAgent.instances[ha].plug(port["id"], 30)
        deadline = time.monotonic() + 5
        while c.store.get_port(port["id"])["status"] != "ACTIVE":
            assert time.monotonic() < deadline, "the host's switch was never read again"
            time.sleep(0.02)
    finally:
        c.a.dp.stop()
        c.b.dp.stop()
