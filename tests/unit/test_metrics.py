"""GET /metrics, /healthz and /readyz: the exposition is parsed with prometheus_client's own
parser, and every value checked here is read before and after the behaviour that must move it
(a request, a commit, a port turning ACTIVE, a barrier reply, an error reply)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from prometheus_client.parser import text_string_to_metric_families

from controller.api import ApiSettings, create_app
from controller.api.health import not_ready
from controller.config import ConfigError, Settings
from controller.dataplane.audit import Auditor
from controller.metrics import Metrics
from controller.southbound.ovsdb_host import datapath_id_for
from controller.store import Store
from flows.diff import FlowDiff
from tests.unit.conftest import ClientFactory, TestClient
from tests.unit.test_dataplane import Cloud, FakeAgent
from tests.unit.test_ofp_app import (
    DPID,
    FLOW_A,
    FLOW_B,
    Outcome,
    _app,
    _flow_mod_xid,
    _refused,
    _switch_answers,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition by (name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str | bytes, name: str, **labels: str) -> float:
    if isinstance(text, bytes):
        text = text.decode()
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def scrape(client: TestClient, **headers: str) -> str:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


# ------------------------------------------------------------------ API requests and commits


def test_api_requests_are_counted_by_route_template_never_by_raw_path(
    client: TestClient,
) -> None:
    before = scrape(client)
    ids = [client.post("/v2.0/networks", json={"network": {}}).json()["network"]["id"]]
    ids.append(client.post("/v2.0/networks", json={"network": {}}).json()["network"]["id"])
    for net_id in ids:
        assert client.get(f"/v2.0/networks/{net_id}").status_code == 200
    assert client.get("/v2.0/networks/nope").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)
    route = "/v2.0/networks/{obj_id}"
    show = "tenantnet_api_requests_total"
    assert (
        value(after, show, method="GET", route=route, status="200")
        - value(before, show, method="GET", route=route, status="200")
        == 2
    )
    assert value(after, show, method="GET", route=route, status="404") == 1
    assert value(after, show, method="POST", route="/v2.0/networks", status="201") == 2
    assert value(after, show, method="GET", route="none", status="404") == 1
    count = "tenantnet_api_request_seconds_count"
    assert value(after, count, method="GET", route=route) == 3
    assert not any(i in after for i in ids), "a raw id became a label"


def test_each_durable_commit_is_timed(client: TestClient) -> None:
    name = "tenantnet_store_commit_seconds_count"
    before = value(scrape(client), name, kind="durable")
    client.post("/v2.0/networks", json={"networks": [{}, {}]})  # a bulk: one commit
    client.post("/v2.0/networks", json={"network": {}})
    assert value(scrape(client), name, kind="durable") == before + 2


# ------------------------------------------------------------------ authentication


def test_metrics_and_readyz_follow_the_api_authentication(make_client: ClientFactory) -> None:
    client = make_client(auth_token="s3cret")
    for path in ("/metrics", "/readyz", "/v2.0/networks"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"X-Auth-Token": "s3cret"}).status_code == 200, path
    assert client.get("/healthz").status_code == 200  # liveness is always open
    text = scrape(client, **{"X-Auth-Token": "s3cret"})
    refused = {"method": "GET", "route": "none", "status": "401"}
    assert value(text, "tenantnet_api_requests_total", **refused) == 3


def test_metrics_auth_open_leaves_only_the_probes_open(make_client: ClientFactory) -> None:
    client = make_client(auth_token="s3cret", metrics_auth="open")
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2.0/networks").status_code == 401
    assert client.post("/metrics").status_code == 401  # open for reading only


def test_metrics_auth_localhost_trusts_only_loopback_peers(store: Store) -> None:
    app = create_app(store, ApiSettings(auth_token="s3cret", metrics_auth="localhost"))
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/metrics").status_code == 200
        assert local.get("/v2.0/networks").status_code == 401
    with TestClient(app, client=("192.0.2.7", 40000)) as remote:
        assert remote.get("/metrics").status_code == 401
        assert remote.get("/metrics", headers={"X-Auth-Token": "s3cret"}).status_code == 200


def test_metrics_auth_is_validated() -> None:
    with pytest.raises(ConfigError, match="metrics_auth"):
        Settings(metrics_auth="anyone").validate()


def test_two_controllers_in_one_process_have_separate_registries(store: Store) -> None:
    a = TestClient(create_app(store, ApiSettings(), metrics=Metrics()))
    b = TestClient(create_app(store, ApiSettings(), metrics=Metrics()))
    a.get("/v2.0/networks")
    name = "tenantnet_api_requests_total"
    labels = {"method": "GET", "route": "/v2.0/networks", "status": "200"}
    assert value(scrape(a), name, **labels) == 1
    assert value(scrape(b), name, **labels) == 0


# ------------------------------------------------------------------ readiness


def test_readyz_names_the_hosts_not_reconciled(store: Store) -> None:
    doc: dict[str, Any] = {}
    client = TestClient(create_app(store, ApiSettings(), status=lambda: doc))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "data plane not started"
    doc["hosts"] = {
        "hv1": {"ready": True},
        "hv2": {"ready": False, "ovsdb": True},
        "hv3": {"ready": False, "down": True},
        "hv4": {"ready": True, "degraded": "rejected flows"},
    }
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "hosts not reconciled yet: hv2 (syncing)"
    doc["hosts"]["hv2"]["ready"] = True
    assert client.get("/readyz").status_code == 200
    store.close()
    assert not_ready(store, lambda: doc) == "store closed"
    assert client.get("/healthz").json() == {"status": "ok"}


# ------------------------------------------------------------------ the data plane


@pytest.fixture
def metered(tmp_path: Any) -> Iterator[Cloud]:
    FakeAgent.instances.clear()
    c = Cloud(str(tmp_path / "db.sqlite"))
    c.dp.metrics.add_status(c.dp.status)
    yield c
    c.dp.stop()


def test_flows_per_host_match_the_switches_and_ports_ready_are_timed(metered: Cloud) -> None:
    m = metered.dp.metrics
    metered.start(hosts=3)
    reconciled = value(m.exposition(), "tenantnet_host_reconcile_seconds_count")
    assert reconciled == 3  # each host, once its OVSDB and switch were read
    net = metered.network()
    ports = [metered.port(net, "hv1", 5), metered.port(net, "hv2", 6)]
    metered.idle()
    assert all(metered.store.get_port(p["id"])["status"] == "ACTIVE" for p in ports)
    text = m.exposition().decode()
    for host in ("hv1", "hv2", "hv3"):
        assert value(text, "tenantnet_host_flows", host=host) == len(metered.flows(host).rules)
        assert value(text, "tenantnet_host_groups", host=host) == len(metered.flows(host).groups)
        assert value(text, "tenantnet_host_ready", host=host) == 1
    assert value(text, "tenantnet_host_flows", host="hv1") > value(
        text, "tenantnet_host_flows", host="hv3"
    )  # hv3 has no port of the network
    assert value(text, "tenantnet_hosts", state="connected") == 3
    assert value(text, "tenantnet_port_ready_seconds_count") == 2
    assert value(text, "tenantnet_flow_mods_total") == metered.dp.stats.flow_mods > 0
    assert value(text, "tenantnet_dataplane_step_seconds_count") >= 2
    assert value(text, "tenantnet_dataplane_queue_depth") == 0

    metered.port(net, "hv3", 7)  # hv3 joins the network: more flows there, one more ready
    metered.idle()
    later = m.exposition().decode()
    assert value(later, "tenantnet_port_ready_seconds_count") == 3
    assert value(later, "tenantnet_host_flows", host="hv3") == len(metered.flows("hv3").rules)
    assert value(later, "tenantnet_host_flows", host="hv3") > value(
        text, "tenantnet_host_flows", host="hv3"
    )


def test_a_lost_switch_changes_the_host_state_and_its_reconnect_is_timed(metered: Cloud) -> None:
    m = metered.dp.metrics
    metered.start(hosts=2)
    metered.dp.switch_gone(datapath_id_for("hv2"))
    metered.idle()
    text = m.exposition().decode()
    assert value(text, "tenantnet_hosts", state="connected") == 1
    assert value(text, "tenantnet_hosts", state="syncing") == 1  # OVSDB is still up
    assert value(text, "tenantnet_host_ready", host="hv2") == 0
    assert ("tenantnet_host_flows", frozenset({("host", "hv2")})) not in samples(text)
    metered.connect("hv2")
    metered.idle()
    later = m.exposition().decode()
    assert value(later, "tenantnet_hosts", state="connected") == 2
    assert (
        value(later, "tenantnet_host_reconcile_seconds_count")
        == value(text, "tenantnet_host_reconcile_seconds_count") + 1
    )


# ------------------------------------------------------------------ the OpenFlow side


def _openflow_scrape(app: Any) -> str:
    metrics = app.metrics
    metrics.add_status(lambda: {"openflow": {**vars(app.counters)}})
    return str(metrics.exposition().decode())


def test_barriers_bundles_and_their_round_trip_are_counted() -> None:
    app, dp, sw = _app()
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), Outcome())
    assert app.apply(DPID, FlowDiff(add_rules=(FLOW_B,), del_rules=(FLOW_A,)), Outcome())
    text = _openflow_scrape(app)
    assert value(text, "tenantnet_openflow_barriers_total") == 2
    assert value(text, "tenantnet_openflow_bundles_total") == 1  # the additive one needs none
    assert value(text, "tenantnet_openflow_barrier_rtt_seconds_count") == 0
    for xid in list(sw.barriers):
        app._barrier(SimpleNamespace(msg=SimpleNamespace(datapath=dp, xid=xid)))
    assert value(app.metrics.exposition(), "tenantnet_openflow_barrier_rtt_seconds_count") == 2


def test_openflow_errors_are_counted_by_type() -> None:
    app, dp, _ = _app()
    for type_, code in (
        (ofp.OFPET_FLOW_MOD_FAILED, 1),
        (ofp.OFPET_FLOW_MOD_FAILED, 1),
        (ofp.OFPET_BAD_ACTION, 4),
        (0x7777, 1),  # a type the protocol does not have: no new label per made-up type
    ):
        dp.sent.clear()
        assert app.apply(DPID, FlowDiff(add_rules=(FLOW_A,), replaces_rules=False), Outcome())
        _switch_answers(app, dp, _refused(dp, type_, code), _flow_mod_xid(dp, FLOW_A))
    text = _openflow_scrape(app)
    name = "tenantnet_openflow_errors_total"
    assert value(text, name, type="OFPET_FLOW_MOD_FAILED") == 2
    assert value(text, name, type="OFPET_BAD_ACTION") == 1
    assert value(text, name, type="unknown") == 1


# ------------------------------------------------------------------ the docs


def test_every_metric_the_sample_dashboard_queries_exists() -> None:
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    wanted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tenantnet_[a-z_]+", target["expr"])
    }
    m = Metrics(process=True)
    m.add_status(
        lambda: {
            "hosts": {"hv1": {"ready": True, "flows": 3, "groups": 2}},
            "queue_depth": 0,
            "flow_mods": 1,
            "group_mods": 1,
            "batches": 1,
            "reconciled_after_s": 0.5,
            "openflow": {
                "bundles": 1,
                "barriers": 1,
                "barrier_timeouts": 0,
                "error_types": {"OFPET_BAD_ACTION": 1},
            },
        }
    )
    m.store_commit.labels("durable").observe(0.001)
    audit = Auditor(SimpleNamespace(metrics=m), interval_s=0, read_timeout_s=5)  # its own
    audit.repairs.labels("port", "missing").inc()
    audit.foreign.labels("hv1").set(0)
    m.api_requests.labels("GET", "/v2.0/ports", "200").inc()
    m.api_latency.labels("GET", "/v2.0/ports").observe(0.001)
    exposed = {name for name, _ in samples(m.exposition().decode())}
    assert wanted and wanted <= exposed, sorted(wanted - exposed)


def test_a_controller_not_started_yet_can_be_scraped() -> None:
    """Registering the status collector must not ask the controller for its status (it has no
    data plane before start) and a scrape before start says there are no hosts."""
    from controller.service import Controller

    ctl = Controller(Settings())
    text = ctl.metrics.exposition().decode()
    assert value(text, "tenantnet_hosts", state="connected") == 0
    assert value(text, "tenantnet_process_open_fds") > 0


def test_dhcp_answers_by_type_and_drops_by_reason_are_exported() -> None:
    """Read from the DHCP handler's own counters through the status document: an OFFER and a
    malformed frame move exactly their two samples; the packet-in queue's drops come along."""
    from controller.southbound.packet_in import PacketInCounters
    from tests.unit.test_dataplane_dhcp import _pkt, _world

    punt, _ = _world()
    queue = PacketInCounters(received=3, queue_full=1)
    m = Metrics()
    m.add_status(lambda: {"dhcp": punt.status(), "packet_in": vars(queue)})
    before = m.exposition()
    assert punt.handle(_pkt()) is not None
    assert punt.handle(dataclasses.replace(_pkt(), data=b"\x00" * 50)) is None
    after = m.exposition()
    for name, labels in (
        ("tenantnet_dhcp_answers_total", {"type": "offer"}),
        ("tenantnet_dhcp_drops_total", {"reason": "malformed"}),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name
    assert value(after, "tenantnet_dhcp_answers_total", type="ack") == 0
    assert value(after, "tenantnet_dhcp_drops_total", reason="flood") == 0
    assert value(after, "tenantnet_dhcp_port_bans_total") == 0
    assert value(after, "tenantnet_packet_in_drops_total", reason="queue_full") == 1


def test_security_group_flows_per_host_and_flushed_zones_are_exported() -> None:
    """The firewall's share of each host's flows is counted from the owners' cookies (kind 3
    only), and the conntrack zones flushed for departed filtered ports come from the status."""
    from controller.dataplane.reconciler import _installed_counts
    from flows.model import Rule, Slice
    from flows.tables import OwnerKind, owner_cookie

    def owner(kind: OwnerKind, num: int, n: int) -> tuple[int, Slice]:
        cookie = owner_cookie(kind, num)
        return cookie, Slice(frozenset(Rule(0, i, (), (), cookie) for i in range(n)))

    installed = dict(
        (owner(OwnerKind.SECURITY_GROUP, 0, 4), owner(OwnerKind.SECURITY_GROUP, 7, 3),
         owner(OwnerKind.PORT, 7, 5))
    )  # fmt: skip
    hv1 = {"connected": True, "ready": True, **_installed_counts(installed)}
    assert (hv1["flows"], hv1["sg_flows"]) == (12, 7)
    m = Metrics()
    m.add_status(lambda: {"hosts": {"hv1": hv1}, "ct_zones_flushed": 2})
    text = m.exposition().decode()
    assert value(text, "tenantnet_host_sg_flows", host="hv1") == 7
    assert value(text, "tenantnet_host_flows", host="hv1") == 12
    assert value(text, "tenantnet_ct_zones_flushed_total") == 2
