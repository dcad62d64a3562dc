"""State that must not outlive the objects it was kept for: after objects come and go (networks,
subnets, ports, groups, routers, hosts), every per-object table is back to its size before, so
that months of churn cost no memory and no metric series.  Each test failed on the code before
its fix (the number of entries grew with the number of objects deleted)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.dataplane.reconciler import DataPlane
from controller.southbound.ovsdb_host import datapath_id_for
from controller.store import Store
from controller.throttle import MAX_KEYS, Throttle
from tests.unit.test_dataplane import Cloud, FakeAgent, HoldingSwitches
from tests.unit.test_drift_audit import AuditCloud

pytest_plugins = ["tests.unit.test_dataplane"]  # the `cloud` fixture

MIRROR_INDEXES = (
    "net_ports", "host_ports", "group_ports", "group_rules", "router_ifaces", "net_ifaces",
    "net_subnets",
)  # fmt: skip


def _add_host(cloud: Cloud, host: str, n: int) -> None:
    cloud.store.create_host(
        {"id": host, "tunnel_ip": f"10.9.1.{n}", "ovsdb": f"tcp:10.8.1.{n}:6640"}
    )
    cloud.connect(host)


def _churn(cloud: Cloud, n: int) -> None:
    """A network with a subnet, a group with a rule, a router interface and a host with a
    port on it, all created, used and deleted."""
    s = cloud.store
    net = s.create_network({"project_id": "p1"})
    sub = s.create_subnet(
        {"network_id": net["id"], "cidr": "10.1.0.0/24", "ip_version": 4, "project_id": "p1"}
    )
    gid = s.create("security_group", [{"name": "g", "project_id": "p1"}])[0]["id"]
    s.create("security_group_rule", [{
        "security_group_id": gid, "direction": "ingress", "ethertype": "IPv4",
        "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
        "remote_group_id": gid, "project_id": "p1",
    }])  # fmt: skip
    router = str(uuid.uuid4())
    s.create("router", [{"id": router, "project_id": "p1"}])
    iface = s.router_interface(router, {"subnet_id": sub["id"]}, add=True)
    host = f"hx{n}"
    _add_host(cloud, host, n)
    cloud.idle()
    port = s.create_port({"network_id": net["id"], "project_id": "p1", "security_groups": [gid]})
    FakeAgent.instances[host].plug(port["id"], 1)
    cloud.idle()
    s.delete("port", port["id"])
    s.router_interface(router, {"port_id": iface["port_id"]}, add=False)
    s.delete("router", router)
    s.delete("host", host)
    s.delete("security_group", gid)
    s.delete("network", net["id"])  # and its subnet
    cloud.idle()


def _sizes(dp: DataPlane) -> dict[str, int]:
    return {name: len(getattr(dp.mirror, name)) for name in MIRROR_INDEXES}


def test_the_mirror_keeps_no_index_entry_for_deleted_objects(cloud: Cloud) -> None:
    """Each deleted network, group, host and router left an empty set in the mirror's
    indexes, for good (40 cycles: 40 more entries in each of 7 indexes)."""
    cloud.start(hosts=1)
    _churn(cloud, 1)
    before = _sizes(cloud.dp)
    for n in range(2, 6):
        _churn(cloud, n)
    assert _sizes(cloud.dp) == before


def test_the_store_forgets_the_address_hint_of_a_deleted_subnet(store: Store) -> None:
    """The next-address hint of every subnet that ever allocated one was kept after the subnet
    was deleted (alone, or with its network)."""
    for cascade in (False, True):
        net = store.create_network({})
        sub = store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/24", "ip_version": 4})
        port = store.create_port({"network_id": net["id"]})
        assert sub["id"] in store._ip_hints
        store.delete("port", port["id"])
        if not cascade:
            store.delete("subnet", sub["id"])
        store.delete("network", net["id"])
        assert store._ip_hints == {}


@pytest.fixture
def holding(tmp_path: Any) -> Iterator[Cloud]:
    """A cloud whose switches confirm the hosts in ``switches.held`` only when released."""
    FakeAgent.instances.clear()
    c = Cloud(str(tmp_path / "db.sqlite"))
    c.switches = HoldingSwitches()
    c.dp.switches = c.switches
    yield c
    c.dp.stop()


def test_a_host_deleted_with_a_batch_in_flight_leaves_no_reconcile_timer(holding: Cloud) -> None:
    """The reconcile timer of a host deleted before its first batch was confirmed was never
    ended (its confirmation found no host): one entry per such host, for good."""
    cloud = holding
    cloud.start(hosts=1)
    for n in range(1, 4):
        host = f"hx{n}"
        assert isinstance(cloud.switches, HoldingSwitches)
        cloud.switches.held.add(datapath_id_for(host))
        _add_host(cloud, host, n)
        assert not cloud.dp.wait_idle(0.3)  # its batch is held
        cloud.store.delete("host", host)
        cloud.switches.release()
        cloud.idle()
    timer = cloud.dp.metrics.reconcile
    assert timer._since == {} and timer._sent == set()


@pytest.fixture
def on_request_only(tmp_path: Any) -> Iterator[AuditCloud]:
    FakeAgent.instances.clear()
    c = AuditCloud(str(tmp_path / "db.sqlite"))  # interval 0: audits on request only
    yield c
    c.dp.stop()


def test_a_deleted_host_loses_its_foreign_flows_series(on_request_only: AuditCloud) -> None:
    """With audits on request only, every deleted host that was asked for its drift kept its
    ``tenantnet_foreign_flows`` series and its count (the sweep that drops them only ran with
    periodic audits)."""
    cloud = on_request_only
    cloud.start(hosts=1)
    for n in range(1, 4):
        host = f"hx{n}"
        _add_host(cloud, host, n)
        cloud.idle()
        assert cloud.dp.audit.request(host).status == 200
        cloud.store.delete("host", host)
        cloud.idle()
    series = [
        s.labels["host"]
        for family in cloud.dp.metrics.registry.collect()
        for s in family.samples
        if s.name == "tenantnet_foreign_flows"
    ]
    assert series == []
    assert cloud.dp.audit._foreign_seen == {}


def test_the_log_throttle_stays_bounded_under_a_flood_of_sources_in_one_interval() -> None:
    """Keys only left when their interval was over, so a flood of distinct sources within one
    interval grew the table without bound (and scanned all of it for every new source)."""
    throttle = Throttle(every_s=60.0)
    for i in range(3 * MAX_KEYS):
        assert throttle(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0
        assert len(throttle._last) <= MAX_KEYS
    assert throttle("10.0.47.255") is None  # a recent key is still throttled
