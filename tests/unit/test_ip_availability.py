"""``/v2.0/network-ip-availabilities``: Neutron's counts (pools for the total, every allocation
for the used), its filters, and refusals of anything else."""

from __future__ import annotations

from typing import Any

from controller.store import Store
from tests.unit.conftest import TestClient


def _get(client: TestClient, query: str = "") -> Any:
    r = client.get(f"/v2.0/network-ip-availabilities{query}")
    assert r.status_code == 200, r.text
    return r.json()


def _error(r: Any, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["NeutronError"]["message"]
    assert all(w in message for w in words), message


def test_totals_count_the_pools_and_used_counts_every_allocation(
    store: Store, client: TestClient
) -> None:
    net = store.create_network({"name": "web", "project_id": "p"})
    v4 = store.create_subnet(
        {
            "network_id": net["id"],
            "cidr": "10.0.0.0/24",
            "allocation_pools": [
                {"start": "10.0.0.10", "end": "10.0.0.19"},
                {"start": "10.0.0.100", "end": "10.0.0.104"},
            ],
        }
    )
    v6 = store.create_subnet({"network_id": net["id"], "cidr": "2001:db8::/64", "ip_version": 6})
    store.create_port({"network_id": net["id"]})
    store.create_port(
        {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.0.0.200"}]}  # outside pools
    )
    store.create_port({"network_id": net["id"], "fixed_ips": [{"subnet_id": v6["id"]}]})
    bare = store.create_network({"name": "bare"})
    shown = _get(client, f"/{net['id']}")["network_ip_availability"]
    assert shown == {
        "network_id": net["id"],
        "network_name": "web",
        "project_id": "p",
        "tenant_id": "p",
        "subnet_ip_availability": [
            {
                "subnet_id": v4["id"],
                "subnet_name": "",
                "cidr": "10.0.0.0/24",
                "ip_version": 4,
                "total_ips": 15,
                "used_ips": 2,
            },
            {
                "subnet_id": v6["id"],
                "subnet_name": "",
                "cidr": "2001:db8::/64",
                "ip_version": 6,
                "total_ips": 2**64 - 2,  # minus the subnet-router anycast and the gateway
                "used_ips": 1,
            },
        ],
        "total_ips": 15 + 2**64 - 2,
        "used_ips": 3,
    }
    listed = _get(client)["network_ip_availabilities"]
    assert {n["network_id"]: n["used_ips"] for n in listed} == {net["id"]: 3, bare["id"]: 0}
    assert [n for n in listed if n["network_id"] == net["id"]] == [shown]


def test_filters(store: Store, client: TestClient) -> None:
    a = store.create_network({"name": "a", "project_id": "p"})
    b = store.create_network({"name": "b", "tenant_id": "q"})
    store.create_subnet({"network_id": a["id"], "cidr": "10.0.0.0/29"})
    store.create_subnet({"network_id": a["id"], "cidr": "2001:db8::/124", "ip_version": 6})
    store.create_subnet({"network_id": b["id"], "cidr": "10.1.0.0/29"})

    def ids(query: str) -> list[str]:
        return sorted(n["network_id"] for n in _get(client, query)["network_ip_availabilities"])

    assert ids("?network_name=a") == [a["id"]]
    assert ids(f"?network_id={a['id']}&network_id={b['id']}") == sorted([a["id"], b["id"]])
    assert ids("?project_id=q") == ids("?tenant_id=q") == [b["id"]]
    v6 = _get(client, "?ip_version=6")["network_ip_availabilities"]
    assert [n["network_id"] for n in v6] == [a["id"]]
    assert [s["ip_version"] for s in v6[0]["subnet_ip_availability"]] == [6]
    assert v6[0]["total_ips"] == 14  # the v6 subnet only (16 - anycast - gateway)
    fields = _get(client, "?network_name=b&fields=network_name&fields=used_ips")
    assert fields == {"network_ip_availabilities": [{"network_name": "b", "used_ips": 0}]}


def test_refusals_name_what_is_wrong(client: TestClient) -> None:
    _error(client.get("/v2.0/network-ip-availabilities?nmae=a"), 400, "nmae")
    _error(client.get("/v2.0/network-ip-availabilities?ip_version=5"), 400, "ip_version")
    _error(client.get("/v2.0/network-ip-availabilities?ip_version=%C2%B2"), 400, "ip_version")
    _error(client.get("/v2.0/network-ip-availabilities?limit=2"), 400, "limit")
    _error(client.get("/v2.0/network-ip-availabilities?sort_key=used_ips"), 400, "sort_key")
    r = client.get("/v2.0/network-ip-availabilities/no-such-net")
    _error(r, 404, "Network no-such-net could not be found")
    assert r.json()["NeutronError"]["type"] == "NetworkNotFound"
    assert client.post("/v2.0/network-ip-availabilities", json={}).status_code == 405
