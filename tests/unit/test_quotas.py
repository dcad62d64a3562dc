"""Per-project quotas: Neutron's quota API, enforcement inside every create transaction (bulk
creates as a whole, no race between concurrent creators), and refusals that name the field."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.events import EventBus
from controller.store import Conflict, InvalidInput, NotFound, Store, networks
from controller.store.schema import migrate
from tests.unit.conftest import ClientFactory, TestClient

NEUTRON_DEFAULTS = {
    "network": 100,
    "subnet": 100,
    "port": 500,
    "security_group": 10,
    "security_group_rule": 100,
    "router": 10,
}


def _error(r: Any, status: int, type_: str, *words: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["NeutronError"]
    assert err["type"] == type_, err
    for word in words:
        assert word in err["message"], err["message"]
    return str(err["message"])


def _names(store: Store, kind: str, project: str) -> list[str]:
    return [o["name"] for o in store.list_all(kind) if o["project_id"] == project]


# -- the store ---------------------------------------------------------------------------------


def test_defaults_are_neutrons_unless_configured(db_path: str, bus: EventBus) -> None:
    store = Store(db_path, bus)
    assert store.quota_limits("p") == NEUTRON_DEFAULTS
    store.close()
    store = Store(db_path, bus, quota_defaults={"network": 2, "port": -1, "router": 7})
    assert store.quota_limits("p") == {**NEUTRON_DEFAULTS, "network": 2, "port": -1, "router": 7}
    with pytest.raises(InvalidInput, match="quota_network"):
        Store(db_path, bus, quota_defaults={"network": -2})
    store.close()


def test_a_bulk_create_counts_as_a_whole(db_path: str, bus: EventBus) -> None:
    store = Store(db_path, bus, quota_defaults={"network": 3})
    store.create("network", [{"project_id": "p", "name": "a"}])
    with pytest.raises(Conflict) as over:
        store.create("network", [{"project_id": "p", "name": n} for n in ("b", "c", "d")])
    assert over.value.type == "OverQuota"
    assert over.value.message == "Quota exceeded for resources: ['network']."
    assert _names(store, "network", "p") == ["a"]  # nothing of the refused bulk
    store.create("network", [{"project_id": "p", "name": n} for n in ("b", "c")])
    assert sorted(_names(store, "network", "p")) == ["a", "b", "c"]
    store.close()


def test_an_over_quota_bulk_stops_at_the_first_object_too_many(
    db_path: str, bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota was checked only after every object of the bulk was inserted: 3,000 networks
    over a quota of 100 held the write lock 9 s before the 409.  Now the create stops at the
    first object over the limit (here the 3rd of 500), and still writes nothing."""
    store = Store(db_path, bus, quota_defaults={"network": 3})
    store.create("network", [{"project_id": "p", "name": "a"}])
    made: list[str] = []
    real_create = networks.create

    def counting_create(tx: Any, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        made.append(body["name"])
        return real_create(tx, body, **kwargs)

    monkeypatch.setattr(networks, "create", counting_create)
    bulk = [{"project_id": "p", "name": f"n{i}"} for i in range(500)]
    with pytest.raises(Conflict, match=r"Quota exceeded for resources: \['network'\]"):
        store.create("network", bulk)
    assert made == ["n0", "n1", "n2"]
    assert _names(store, "network", "p") == ["a"]
    # Other projects and unowned objects in the same bulk do not count against p.
    mixed = [{"project_id": "q", "name": "q1"}, {"name": "u"}, {"project_id": "p", "name": "b"}]
    mixed += [{"project_id": "q", "name": "q2"}, {"project_id": "p", "name": "c"}]
    assert len(store.create("network", mixed)) == 5
    store.close()


def test_projects_are_counted_apart_and_unowned_objects_not_at_all(
    db_path: str, bus: EventBus
) -> None:
    store = Store(db_path, bus, quota_defaults={"network": 1, "subnet": 1, "port": 2})
    net = store.create_network({"project_id": "p"})
    store.create_network({"tenant_id": "q"})  # the legacy alias is the same project
    for _ in range(3):  # no project: Neutron's "no project_id - no quota check"
        store.create_network({})
    with pytest.raises(Conflict, match=r"\['network'\]"):
        store.create_network({"project_id": "q"})
    store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/24", "project_id": "p"})
    with pytest.raises(Conflict, match=r"\['subnet'\]"):
        store.create_subnet({"network_id": net["id"], "cidr": "10.1.0.0/24", "project_id": "p"})
    # A port is counted for its own project, not for its network's.
    store.create("port", [{"network_id": net["id"], "project_id": "q"} for _ in range(2)])
    with pytest.raises(Conflict, match=r"\['port'\]"):
        store.create_port({"network_id": net["id"], "project_id": "q"})
    store.create_port({"network_id": net["id"], "project_id": "p"})
    used = store.quota_details("q")
    assert used["port"] == {"used": 2, "limit": 2, "reserved": 0}
    assert used["network"] == {"used": 1, "limit": 1, "reserved": 0}
    store.close()


def test_a_project_limit_wins_and_minus_one_is_unlimited(store: Store) -> None:
    assert store.update_quota("p", {"network": 1}) == {**NEUTRON_DEFAULTS, "network": 1}
    store.create_network({"project_id": "p"})
    with pytest.raises(Conflict):
        store.create_network({"project_id": "p"})
    store.update_quota("p", {"network": -1})
    store.create("network", [{"project_id": "p"} for _ in range(150)])
    assert store.quota_details("p")["network"] == {"used": 151, "limit": -1, "reserved": 0}
    assert store.quota_limits("other") == NEUTRON_DEFAULTS


def test_a_limit_below_the_usage_needs_force(store: Store) -> None:
    for _ in range(3):
        store.create_network({"project_id": "p"})
    with pytest.raises(InvalidInput) as below:
        store.update_quota("p", {"network": 2, "port": 5})
    assert str(below.value) == (
        "Quota limit 2 for network must be greater than or equal to already used 3"
    )
    assert store.quota_list() == []  # the port limit of the refused update was not kept either
    assert store.update_quota("p", {"network": 2}, force=True)["network"] == 2
    with pytest.raises(Conflict):  # over the limit now: no more networks
        store.create_network({"project_id": "p"})


def test_delete_goes_back_to_the_defaults(store: Store) -> None:
    store.update_quota("p", {"port": 7})
    store.update_quota("q", {"subnet": 0})
    assert store.quota_list() == [
        {**NEUTRON_DEFAULTS, "port": 7, "project_id": "p", "tenant_id": "p"},
        {**NEUTRON_DEFAULTS, "subnet": 0, "project_id": "q", "tenant_id": "q"},
    ]
    store.delete_quota("p")
    assert store.quota_limits("p") == NEUTRON_DEFAULTS
    with pytest.raises(NotFound, match="Quota for project p could not be found"):
        store.delete_quota("p")
    assert [q["project_id"] for q in store.quota_list()] == ["q"]


def test_a_replayed_create_is_not_counted_again(db_path: str, bus: EventBus) -> None:
    """CloudStack re-sends creates: the replay of an existing object creates nothing."""
    store = Store(db_path, bus, quota_defaults={"network": 1})
    body = {"id": "33333333-3333-4333-8333-333333333333", "project_id": "p", "name": "n"}
    store.create("network", [body], replay_ignoring=frozenset())
    again = store.create("network", [body], replay_ignoring=frozenset())
    assert again[0]["id"] == body["id"]
    store.close()


def test_an_upgraded_database_counts_what_it_already_holds(db_path: str, bus: EventBus) -> None:
    """Schema v4 indexes the existing rows' projects: old objects count against the quota."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    migrate(conn, upto=3)
    conn.execute(
        "INSERT INTO networks (id, key, seg_type, seg_id, body) "
        'VALUES (\'n1\', 1, \'vxlan\', 1, \'{"id": "n1", "project_id": "p"}\')'
    )
    conn.close()
    store = Store(db_path, bus, quota_defaults={"network": 1})
    assert store.quota_details("p")["network"]["used"] == 1
    with pytest.raises(Conflict):
        store.create_network({"project_id": "p"})
    plan = sqlite3.connect(db_path).execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM ports"
        " WHERE json_extract(body, '$.project_id') = ?",
        ("p",),
    )
    assert "ports_by_project" in str(plan.fetchall())
    store.close()


# -- no race -----------------------------------------------------------------------------------


def test_concurrent_creators_never_exceed_the_quota(tmp_path: Path) -> None:
    """Eight threads on two Store instances (two SQLite connections, as two controller
    processes on one file would have) create networks and ports of one project at once, in
    singles and bulks of 3: exactly the limit is created, and every refusal is OverQuota."""
    path = str(tmp_path / "race.db")
    limits = {"network": 10, "port": 13}
    stores = [Store(path, EventBus(), quota_defaults=limits) for _ in range(2)]
    net = stores[0].create_network({})  # no project: not counted
    start = threading.Barrier(8)
    created: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def creator(i: int) -> None:
        store = stores[i % 2]
        start.wait()
        for round_ in range(6):
            kind = ("network", "port")[(i + round_) % 2]
            size = 3 if (i + round_) % 3 == 0 else 1
            body = (
                {"project_id": "p"}
                if kind == "network"
                else {
                    "project_id": "p",
                    "network_id": net["id"],
                }
            )
            try:
                store.create(kind, [dict(body) for _ in range(size)])
            except Conflict as exc:
                with lock:
                    refused.append(exc.type)
            else:
                with lock:
                    created.append(size)

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    details = stores[1].quota_details("p")
    assert details["network"]["used"] == limits["network"]
    assert details["port"]["used"] == limits["port"]
    assert sum(created) == limits["network"] + limits["port"]  # every success is in the count
    assert refused and set(refused) == {"OverQuota"}
    for store in stores:
        store.close()


# -- the API -----------------------------------------------------------------------------------


def test_quota_documents(client: TestClient) -> None:
    assert client.get("/v2.0/quotas").json() == {"quotas": []}
    shown = client.get("/v2.0/quotas/proj-1").json()
    assert shown == {"quota": {**NEUTRON_DEFAULTS, "project_id": "proj-1"}}
    r = client.put("/v2.0/quotas/proj-1", json={"quota": {"network": 5, "port": "-1"}})
    assert r.status_code == 200, r.text
    mine = {**NEUTRON_DEFAULTS, "network": 5, "port": -1}
    assert r.json() == {"quota": {**mine, "project_id": "proj-1"}}
    assert client.get("/v2.0/quotas").json() == {
        "quotas": [{**mine, "project_id": "proj-1", "tenant_id": "proj-1"}]
    }
    default = client.get("/v2.0/quotas/proj-1/default").json()
    assert default == {"quota": {**NEUTRON_DEFAULTS, "project_id": "proj-1"}}
    net = client.post("/v2.0/networks", json={"network": {"project_id": "proj-1"}}).json()
    client.post("/v2.0/ports", json={"port": {"network_id": net["network"]["id"]}})
    assert client.get("/v2.0/quotas/proj-1/details").json() == {
        "quota": {
            "network": {"used": 1, "limit": 5, "reserved": 0},
            "subnet": {"used": 0, "limit": 100, "reserved": 0},
            "port": {"used": 0, "limit": -1, "reserved": 0},  # that port has no project
            "security_group": {"used": 0, "limit": 10, "reserved": 0},
            "security_group_rule": {"used": 0, "limit": 100, "reserved": 0},
            "router": {"used": 0, "limit": 10, "reserved": 0},
        }
    }
    assert client.delete("/v2.0/quotas/proj-1").status_code == 204
    _error(
        client.delete("/v2.0/quotas/proj-1"),
        404,
        "TenantQuotaNotFound",
        "Quota for project proj-1 could not be found.",
    )
    assert client.get("/v2.0/quotas").json() == {"quotas": []}


def test_over_quota_is_neutrons_409(client: TestClient) -> None:
    client.put("/v2.0/quotas/p", json={"quota": {"network": 1}})
    body = {"networks": [{"project_id": "p"}, {"project_id": "p"}]}
    message = _error(client.post("/v2.0/networks", json=body), 409, "OverQuota")
    assert message == "OverQuota: Quota exceeded for resources: ['network']."
    assert client.get("/v2.0/networks").json()["networks"] == []
    assert client.post("/v2.0/networks", json={"network": {"project_id": "p"}}).status_code == 201
    _error(
        client.post("/v2.0/networks", json={"network": {"tenant_id": "p"}}),
        409,
        "OverQuota",
        "['network']",
    )


def test_check_limit_and_force(client: TestClient) -> None:
    for _ in range(2):
        client.post("/v2.0/networks", json={"network": {"project_id": "p"}})
    below = {"quota": {"network": 1, "check_limit": True}}
    _error(
        client.put("/v2.0/quotas/p", json=below),
        400,
        "HTTPBadRequest",
        "Quota limit 1 for network must be greater than or equal to already used 2",
    )
    forced = client.put("/v2.0/quotas/p", json={"quota": {"network": 1, "force": "True"}})
    assert forced.status_code == 200 and forced.json()["quota"]["network"] == 1


@pytest.mark.parametrize(
    ("quota", "field"),
    [
        ({"network": -2}, "network"),
        ({"port": -100}, "port"),
        ({"subnet": "ten"}, "subnet"),
        ({"network": 1.5}, "network"),
        ({"network": True}, "network"),
        ({"network": None}, "network"),
        ({"network": [1]}, "network"),
        ({"port": 2**31}, "port"),
        ({"port": 10**40}, "port"),
        ({"floatingip": 5}, "floatingip"),
        ({"network": 5, "bogus": 1}, "bogus"),
        ({"force": "maybe"}, "force"),
    ],
)
def test_bad_quota_values_are_a_400_naming_the_field(
    client: TestClient, quota: dict[str, Any], field: str
) -> None:
    r = client.put("/v2.0/quotas/p", json={"quota": {"subnet": 7, **quota}})
    _error(r, 400, "HTTPBadRequest", field)
    assert client.get("/v2.0/quotas").json() == {"quotas": []}  # nothing half-written


@pytest.mark.parametrize(
    "body", [{}, {"quota": 5}, {"quota": []}, {"quotas": {"network": 1}}, [], "x"]
)
def test_malformed_quota_bodies_are_a_400(client: TestClient, body: Any) -> None:
    _error(client.put("/v2.0/quotas/p", json=body), 400, "HTTPBadRequest")


def test_project_ids_in_the_path_are_bounded(client: TestClient) -> None:
    long = "p" * 256
    for r in (
        client.get(f"/v2.0/quotas/{long}"),
        client.put(f"/v2.0/quotas/{long}", json={"quota": {"network": 1}}),
        client.get(f"/v2.0/quotas/{long}/details"),
        client.get(f"/v2.0/quotas/{long}/default"),
        client.delete(f"/v2.0/quotas/{long}"),
    ):
        _error(r, 400, "HTTPBadRequest", "project_id")
    assert client.get(f"/v2.0/quotas/{'p' * 255}").status_code == 200


def test_configured_defaults_reach_the_api(tmp_path: Path, make_client: ClientFactory) -> None:
    from controller.api import ApiSettings, create_app
    from tests.unit.conftest import TestClient as Client

    store = Store(str(tmp_path / "d.db"), EventBus(), quota_defaults={"network": 0})
    with Client(create_app(store, ApiSettings())) as client:
        assert client.get("/v2.0/quotas/x/default").json()["quota"]["network"] == 0
        _error(
            client.post("/v2.0/networks", json={"network": {"project_id": "x"}}), 409, "OverQuota"
        )
    store.close()
