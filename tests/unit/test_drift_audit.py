"""The drift audit (controller/dataplane/drift.py, audit.py, the southbound's read_all).

* the comparison, owner by owner: missing, extra and modified flows and groups;
* against the data plane with switches behind the wire (test_dataplane's `Cloud`): a flow
  deleted, one modified and a foreign one added show up under their owner, nothing is sent;
  the periodic audit repairs them (foreign untouched) and counts the repair; a restart with
  nothing changed shows no drift;
* faults: a read answered after a batch to the same host is not compared (it is read again);
  a switch that never answers its read holds up neither the actor nor the other hosts' audits;
  an unknown host is a 404, a disconnected one a 409.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.cli_drift import drift_view
from controller.dataplane.drift import compare_owner
from controller.dataplane.reconciler import DataPlane
from controller.southbound import ofp_codec as codec
from controller.southbound.ovsdb_host import datapath_id_for
from flows import tables as t
from flows.diff import FlowDiff
from flows.model import Apply, GotoTable, GroupEntry, Output, Rule, Slice, match
from tests.unit.test_dataplane import Cloud, FakeAgent, FakeSwitches, restart
from tests.unit.test_ofp_app import DPID, Outcome, _app
from tests.unit.wire_switch import DP, FULL_MASK

FOREIGN = Rule(0, 500, match(in_port=77), (Apply((Output(1),)),), 0x1234)


def _rule(table: int, port: int, out: int, cookie: int = t.port_cookie(1)) -> Rule:
    return Rule(table, 100, match(in_port=port), (Apply((Output(out),)),), cookie)


# ------------------------------------------------------------------ the comparison


def test_compare_owner_names_missing_extra_and_modified() -> None:
    a, b, c = _rule(0, 1, 2), _rule(0, 2, 3), _rule(1, 3, 4)
    c_changed = c._replace(instructions=(GotoTable(2),))
    g1, g2 = GroupEntry(10, ((Output(1),),)), GroupEntry(11, ((Output(2),),))
    g2_changed = GroupEntry(11, ((Output(3),),))
    found = compare_owner(
        desired=Slice(frozenset({a, c}), frozenset({g1, g2})),
        installed=Slice(frozenset({b, c_changed}), frozenset({g2_changed})),
    )
    assert found.missing_rules == (a,) and found.extra_rules == (b,)
    assert found.modified_rules == ((c_changed, c),)
    assert found.missing_groups == (g1,) and found.extra_groups == ()
    assert found.modified_groups == ((g2_changed, g2),)
    assert found.counts() == {"missing": 2, "extra": 1, "modified": 2}
    assert compare_owner(Slice(frozenset({a})), Slice(frozenset({a}))).empty


def test_the_drift_view_shows_each_owner_and_the_foreign_flows() -> None:
    doc = {
        "host": "hv1", "in_sync": False,
        "counts": {"missing": 1, "extra": 0, "modified": 1, "foreign": 1},
        "owners": [{
            "owner": "port 3", "port_id": "p-3", "network_id": "n-1",
            "missing_flows": ["table=2 priority=100 ... actions=output:1"],
            "modified_flows": [{"installed": "table=0 A", "desired": "table=0 B"}],
        }],
        "foreign_flows": ["table=0 priority=500 cookie=0x1234 ..."],
    }  # fmt: skip
    text = drift_view(doc)
    assert text.splitlines()[0] == (
        "host hv1: drift: 1 missing, 0 extra, 1 modified; 1 foreign flows (never touched)"
    )
    assert "p-3" in text and "port 3: missing: table=2 priority=100" in text
    assert "port 3: modified: table=0 A" in text and "desired: table=0 B" in text
    assert "foreign: table=0 priority=500 cookie=0x1234" in text


# ------------------------------------------------------------------ the southbound's read


def _stats_reply(dp: Any, xid: int, body: list[Any]) -> Any:
    return SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid, body=body, flags=0))


def test_read_all_collects_its_own_replies_and_leaves_the_switch_ready() -> None:
    app, dp, sw = _app()
    got: list[tuple[Slice | None, str]] = []
    assert app.read_all(DPID, lambda dump, why="": got.append((dump, why)))
    assert sw.ready and len(sw.reads) == 2  # batches keep going meanwhile
    flow_xid, group_xid = sorted(sw.reads)
    flow = parser.OFPFlowStats(
        table_id=0, priority=500, cookie=0x1234, match=parser.OFPMatch(in_port=77),
        instructions=[parser.OFPInstructionActions(4, [parser.OFPActionOutput(1)])],
    )  # fmt: skip
    group = parser.OFPGroupDescStats(0, 10, [parser.OFPBucket(actions=[parser.OFPActionOutput(2)])])
    app._flow_stats(_stats_reply(dp, flow_xid, [flow]))
    app._group_desc(_stats_reply(dp, group_xid, [group]))
    assert sw.flows == [] and sw.groups == []  # not taken for a (re)connect's read-back
    (barrier,) = sw.barriers
    app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=barrier)))
    ((dump, why),) = got
    assert why == "" and dump is not None
    assert dump.rules == {FOREIGN} and dump.groups == {GroupEntry(10, ((Output(2),),))}
    assert not sw.reads


def test_an_unanswered_read_gives_up_at_the_timeout_and_keeps_the_connection() -> None:
    app, dp, sw = _app(timeout_s=0.2)
    done = threading.Event()
    got: list[tuple[Slice | None, str]] = []

    def on_done(dump: Slice | None, why: str = "") -> None:
        got.append((dump, why))
        done.set()

    assert app.read_all(DPID, on_done)
    flow_xid, group_xid = sorted(sw.reads)
    assert done.wait(5), "an unanswered read was never given up"
    assert got == [(None, "timeout")]
    assert not dp.ended.is_set() and sw.ready
    assert app.apply(DPID, FlowDiff(), Outcome())  # the switch still takes batches
    # Its late replies are dropped, never taken for a reconnect's read-back of the switch.
    sw.pending_dumps = 2  # as if a read-back were under way
    flow = parser.OFPFlowStats(
        table_id=0, priority=500, cookie=0x1234, match=parser.OFPMatch(in_port=77),
        instructions=[parser.OFPInstructionActions(4, [parser.OFPActionOutput(1)])],
    )  # fmt: skip
    app._flow_stats(_stats_reply(dp, flow_xid, [flow]))
    app._group_desc(_stats_reply(dp, group_xid, []))
    assert sw.flows == [] and sw.pending_dumps == 2 and not sw.reads


# ------------------------------------------------------------------ against the data plane


class ReadingSwitches(FakeSwitches):
    """`FakeSwitches` that also answer read_all (every cookie), at once or when released."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.hold: set[int] = set()  # dpids whose reads are held (never answered unless released)
        self.fail: set[int] = set()  # dpids whose reads time out
        self.held: list[tuple[int, Slice, Callable[..., None]]] = []

    def read_all(self, dpid: int, on_done: Callable[..., None]) -> bool:
        with self.lock:
            dump = self._switch(dpid).dump()
            self.reads.append(dpid)
            if dpid in self.hold:
                self.held.append((dpid, dump, on_done))
                return True
        if dpid in self.fail:
            on_done(None, "timeout")
            return True
        on_done(dump, "")
        return True

    def release(self) -> None:
        with self.lock:
            held, self.held = self.held, []
        for _, dump, on_done in held:
            on_done(dump, "")

    def tamper(self, host: str, *msgs: Any) -> None:
        """What an operator's ovs-ofctl does behind the controller's back."""
        with self.lock:
            for msg in msgs:
                self._switch(datapath_id_for(host)).receive(msg)


class AuditCloud(Cloud):
    interval_s = 0.0

    def _dataplane(self) -> DataPlane:
        if not isinstance(self.switches, ReadingSwitches):
            self.switches = ReadingSwitches()
        dp = DataPlane(
            self.store, self.switches, "tcp:127.0.0.1:6653", agent_factory=FakeAgent,
            audit_interval_s=self.interval_s, audit_read_timeout_s=1.0,
        )  # fmt: skip
        self.bus.subscribe(dp.on_events)
        return dp


@pytest.fixture
def audit_cloud(tmp_path: Any) -> Iterator[AuditCloud]:
    FakeAgent.instances.clear()
    c = AuditCloud(str(tmp_path / "db.sqlite"))
    yield c
    c.dp.stop()


def _two_hosts_one_network(cloud: AuditCloud) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cloud.start(hosts=2)
    net = cloud.network()
    ports = [cloud.port(net, "hv1", 5), cloud.port(net, "hv2", 5)]
    cloud.idle()
    return net, ports


def _tamper_hv1(cloud: AuditCloud, port: dict[str, Any]) -> tuple[Rule, Rule, Rule]:
    """Delete one of the port's flows on hv1, modify another, add a foreign flow."""
    owned = sorted(
        (r for r in cloud.flows("hv1").rules if r.cookie == t.port_cookie(port["_num"])),
        key=lambda r: (r.table, -r.priority, repr(r.match)),
    )
    gone, changed = owned[0], owned[1]
    modified = changed._replace(instructions=(Apply((Output(99),)),))
    cloud.switches.tamper(
        "hv1",
        codec.flow_delete_strict(DP, gone, FULL_MASK),
        codec.flow_add(DP, modified),
        codec.flow_add(DP, FOREIGN),
    )
    return gone, changed, modified


def _everything(cloud: AuditCloud, host: str) -> Slice:
    """Every flow of the host's switch, any cookie."""
    with cloud.switches.lock:
        return cloud.switches._switch(datapath_id_for(host)).dump()


def _port_entry(doc: dict[str, Any], port_id: str) -> dict[str, Any]:
    (entry,) = [o for o in doc["owners"] if o.get("port_id") == port_id]
    return entry


def test_drift_shows_the_difference_by_owner_and_changes_nothing(audit_cloud: AuditCloud) -> None:
    from flows.readable import rule_text

    cloud = audit_cloud
    _, (p1, _) = _two_hosts_one_network(cloud)
    assert cloud.dp.audit.request("hv1").document["in_sync"]
    gone, changed, modified = _tamper_hv1(cloud, p1)
    sent = cloud.dp.stats.flow_mods
    answer = cloud.dp.audit.request("hv1")
    assert answer.status == 200
    doc = answer.document
    assert not doc["in_sync"]
    assert doc["counts"] == {"missing": 1, "extra": 0, "modified": 1, "foreign": 1}
    entry = _port_entry(doc, p1["id"])
    assert entry["owner"] == f"port {p1['_num']}" and entry["network_id"] == p1["network_id"]
    assert entry["missing_flows"] == [rule_text(gone)]
    assert entry["modified_flows"] == [
        {"installed": rule_text(modified), "desired": rule_text(changed)}
    ]
    assert doc["foreign_flows"] == [rule_text(FOREIGN)]
    assert doc["by_kind"] == {"port": {"missing": 1, "extra": 0, "modified": 1}}
    cloud.idle()
    assert cloud.dp.stats.flow_mods == sent  # nothing repaired by a request
    assert cloud.dp.audit.request("hv2").document["in_sync"]  # the other host is untouched


def test_an_extra_flow_of_ours_is_drift_of_its_owner(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    net, _ = _two_hosts_one_network(cloud)
    stray = Rule(2, 100, match(eth_dst="fa:16:3e:00:00:99", metadata=(net["_key"], 0xFFFFFFFF)),
                 (Apply((Output(9),)),), t.network_cookie(net["_key"]))  # fmt: skip
    cloud.switches.tamper("hv2", codec.flow_add(DP, stray))
    doc = cloud.dp.audit.request("hv2").document
    (entry,) = doc["owners"]
    assert entry["kind"] == "network" and entry["network_id"] == net["id"]
    assert len(entry["extra_flows"]) == 1 and doc["counts"]["extra"] == 1


def test_the_audit_repairs_drift_leaves_foreign_flows_and_counts(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    _, (p1, _) = _two_hosts_one_network(cloud)
    wanted = cloud.flows("hv1")
    _tamper_hv1(cloud, p1)
    before = _samples(cloud)
    cloud.dp.audit.interval_s = 0.2  # audits from now on
    deadline = time.monotonic() + 10
    while _everything(cloud, "hv1").rules != wanted.rules | {FOREIGN}:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _everything(cloud, "hv1").rules == wanted.rules | {FOREIGN}
    assert cloud.flows("hv1").groups == wanted.groups
    after = _samples(cloud)
    repaired = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert repaired[("tenantnet_drift_repairs_total", ("port", "missing"))] == 1
    assert repaired[("tenantnet_drift_repairs_total", ("port", "modified"))] == 1
    assert repaired[("tenantnet_drift_audits_total", ("repaired",))] == 1
    assert after[("tenantnet_foreign_flows", ("hv1",))] == 1
    assert cloud.dp.audit.request("hv1").document["in_sync"]
    # the repaired record keeps the totals the status reports (`flows.diff.Owners`)
    installed = cloud.dp.hosts["hv1"].installed
    assert installed is not None and installed.totals == (
        len(wanted.rules), len(wanted.groups),
        sum(1 for r in wanted.rules if t.owner_kind(r.cookie) == t.OwnerKind.SECURITY_GROUP),
    )  # fmt: skip
    assert cloud.dp.status()["hosts"]["hv1"]["flows"] == len(wanted.rules)


def _samples(cloud: AuditCloud) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    for family in cloud.dp.metrics.registry.collect():
        for s in family.samples:
            if s.name.startswith(("tenantnet_drift", "tenantnet_foreign")):
                out[(s.name, tuple(s.labels.values()))] = s.value
    return out


def test_a_restart_with_nothing_changed_shows_no_drift(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    _two_hosts_one_network(cloud)
    restart(cloud)
    for host in ("hv1", "hv2"):
        answer = cloud.dp.audit.request(host)
        assert answer.status == 200 and answer.document["in_sync"], answer


def test_a_read_overtaken_by_a_batch_is_read_again(audit_cloud: AuditCloud) -> None:
    """The dump was taken before the actor sent hv1 a new port's flows: compared, it would show
    them missing.  The audit notices the send and reads again."""
    cloud = audit_cloud
    net, _ = _two_hosts_one_network(cloud)
    hv1 = datapath_id_for("hv1")
    cloud.switches.hold.add(hv1)
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(cloud.dp.audit.request("hv1")))
    asking.start()
    deadline = time.monotonic() + 5
    while not cloud.switches.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cloud.switches.held, "no read was asked for"
    cloud.port(net, "hv1", 6)  # a batch to hv1 after the read was asked for
    cloud.idle()
    cloud.switches.hold.clear()
    cloud.switches.release()  # the stale dump arrives now
    asking.join(10)
    (answer,) = answers
    assert answer.status == 200 and answer.document["in_sync"], answer.document
    assert cloud.switches.reads.count(hv1) == 2


def test_a_switch_that_never_answers_holds_up_nothing(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    net, (p1, _) = _two_hosts_one_network(cloud)
    cloud.switches.hold.add(datapath_id_for("hv2"))  # hv2's switch never answers a read
    wanted = cloud.flows("hv1").rules | {FOREIGN}
    _tamper_hv1(cloud, p1)
    cloud.dp.audit.interval_s = 0.2
    deadline = time.monotonic() + 10
    while _everything(cloud, "hv1").rules != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _everything(cloud, "hv1").rules == wanted  # hv1 audited and repaired meanwhile
    new = cloud.port(net, "hv1", 7)  # the actor still serves changes
    cloud.idle()
    assert cloud.store.get_port(new["id"])["status"] == "ACTIVE"
    assert cloud.dp.audit.request("hv1").document["in_sync"]  # hv1 was repaired
    assert datapath_id_for("hv2") in cloud.switches.reads


def test_unknown_and_disconnected_hosts(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    _two_hosts_one_network(cloud)
    assert cloud.dp.audit.request("hv9").status == 404
    cloud.dp.switch_gone(datapath_id_for("hv2"))
    answer = cloud.dp.audit.request("hv2")
    assert answer.status == 409 and answer.state in ("syncing", "disconnected")
    assert "hv2" in answer.message and "read back" in answer.message


def test_a_read_that_times_out_is_skipped_logged_and_counted(
    audit_cloud: AuditCloud, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = audit_cloud
    _, (p1, _) = _two_hosts_one_network(cloud)
    cloud.switches.fail.add(datapath_id_for("hv1"))
    _tamper_hv1(cloud, p1)
    answer = cloud.dp.audit.request("hv1")
    assert answer.status == 504 and "did not answer" in answer.message
    before = _samples(cloud)[("tenantnet_drift_audits_total", ("unanswered",))]
    cloud.dp.audit.interval_s = 0.2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _samples(cloud)[("tenantnet_drift_audits_total", ("unanswered",))] > before:
            break
        time.sleep(0.05)
    assert _samples(cloud)[("tenantnet_drift_audits_total", ("unanswered",))] > before
    assert any("did not answer the drift audit" in r.getMessage() for r in caplog.records)
    cloud.dp.audit.interval_s = 0
    cloud.switches.fail.clear()
    assert not cloud.dp.audit.request("hv1").document["in_sync"]  # not repaired blindly
    assert cloud.dp.audit.request("hv2").status == 200  # the other host is read as usual


# ------------------------------------------------------------------ the HTTP route


def test_the_drift_route_answers_as_the_audit_says_and_needs_the_token(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from controller.api import ApiSettings, create_app
    from controller.api.drift import add_drift_route
    from controller.dataplane.audit import DriftAnswer
    from controller.events import EventBus
    from controller.store import Store

    answers = {
        "hv1": DriftAnswer(200, {"host": "hv1", "in_sync": True}),
        "hv2": DriftAnswer(409, state="disconnected", message="Host hv2 is disconnected: ..."),
        "hv3": DriftAnswer(504, message="the switch of host hv3 did not answer"),
    }
    audit = SimpleNamespace(
        request=lambda host: answers.get(host, DriftAnswer(404, message=f"Host {host} ..."))
    )
    running: list[Any] = [None]
    store = Store(str(tmp_path / "api.sqlite"), EventBus())
    app = create_app(store, ApiSettings(auth_token="s3cret"))
    add_drift_route(app, lambda: running[0])
    with TestClient(app) as client:
        assert client.get("/tenantnet/hosts/hv1/drift").status_code == 401
        auth = {"X-Auth-Token": "s3cret"}
        r = client.get("/tenantnet/hosts/hv1/drift", headers=auth)
        assert r.status_code == 503 and "not running" in r.text  # before the data plane runs
        running[0] = SimpleNamespace(audit=audit)
        r = client.get("/tenantnet/hosts/hv1/drift", headers=auth)
        assert r.status_code == 200 and r.json() == {"host": "hv1", "in_sync": True}
        for host, status, kind in (
            ("hv2", 409, "HostNotConnected"),
            ("hv3", 504, "SwitchDidNotAnswer"),
            ("hv9", 404, "HostNotFound"),
        ):
            r = client.get(f"/tenantnet/hosts/{host}/drift", headers=auth)
            assert r.status_code == status and r.json()["NeutronError"]["type"] == kind
            assert host in r.json()["NeutronError"]["message"]
    store.close()


def test_audits_of_a_switch_in_sync_send_nothing(audit_cloud: AuditCloud) -> None:
    cloud = audit_cloud
    _two_hosts_one_network(cloud)
    sent = (cloud.dp.stats.flow_mods, cloud.dp.stats.group_mods, cloud.dp.stats.batches)
    before = _samples(cloud)[("tenantnet_drift_audits_total", ("in_sync",))]
    cloud.dp.audit.interval_s = 0.2
    deadline = time.monotonic() + 10
    while _samples(cloud)[("tenantnet_drift_audits_total", ("in_sync",))] < before + 4:
        assert time.monotonic() < deadline, "no audits"
        time.sleep(0.05)
    cloud.dp.audit.interval_s = 0
    cloud.idle()
    assert (cloud.dp.stats.flow_mods, cloud.dp.stats.group_mods, cloud.dp.stats.batches) == sent
    samples = _samples(cloud)
    assert samples[("tenantnet_drift_audits_total", ("repaired",))] == 0
    assert samples[("tenantnet_foreign_flows", ("hv1",))] == 0


def test_hosts_are_audited_in_slots_of_their_own() -> None:
    """Each host's slot is a hash of its id within the interval: spread, and stable."""
    from controller.dataplane.audit import Auditor
    from controller.metrics import Metrics

    dp = SimpleNamespace(metrics=Metrics(), stats=SimpleNamespace(started_at=1000.0), hosts={})
    audit = Auditor(dp, interval_s=300, read_timeout_s=5)
    slots = [audit._next(f"hv{n}", 1000.0) - 1000.0 for n in range(1, 41)]
    assert all(0 < s <= 300 for s in slots)
    assert len({int(s // 30) for s in slots}) >= 8  # over most tenths of the interval
    assert audit._next("hv1", 1000.0 + slots[0] + 1) - audit._next("hv1", 1000.0) == 300


def test_the_audit_interval_setting() -> None:
    from controller import config

    assert config.load(environ={}).drift_audit_interval_s == 300
    off = config.load(environ={"TENANTNET_DRIFT_AUDIT_INTERVAL_S": "0"})
    assert off.drift_audit_interval_s == 0
    for bad in ("0.5", "-1", "100000", "soon"):
        with pytest.raises(config.ConfigError, match="drift_audit_interval_s"):
            config.load(environ={"TENANTNET_DRIFT_AUDIT_INTERVAL_S": bad})


def test_a_dhcp_guard_drop_is_neither_drift_nor_repaired(audit_cloud: AuditCloud) -> None:
    """The flood guard's drop (a transient owner kind, expired by the switch) is left alone."""
    cloud = audit_cloud
    _, (p1, _) = _two_hosts_one_network(cloud)
    guard = Rule(1, t.PRIO_DHCP_GUARD, match(in_port=5, eth_type=0x800), (),
                 t.owner_cookie(t.OwnerKind.DHCP_GUARD, p1["_num"]))  # fmt: skip
    cloud.switches.tamper("hv1", codec.flow_add(DP, guard))
    doc = cloud.dp.audit.request("hv1").document
    assert doc["in_sync"] and doc["foreign_flows"] == []
    cloud.dp.audit.interval_s = 0.2
    before = _samples(cloud)[("tenantnet_drift_audits_total", ("in_sync",))]
    deadline = time.monotonic() + 10
    while _samples(cloud)[("tenantnet_drift_audits_total", ("in_sync",))] < before + 2:
        assert time.monotonic() < deadline, "no audits"
        time.sleep(0.05)
    assert guard in _everything(cloud, "hv1").rules
