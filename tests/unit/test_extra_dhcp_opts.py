"""Neutron's ``extra_dhcp_opt`` extension on ports: stored, shown, merged on update like Neutron,
refused with a 400 naming ``extra_dhcp_opts``, not filterable, and carried across a migration."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from controller.events import EventBus
from controller.store import Store
from controller.store.schema import migrate
from tests.unit.conftest import TestClient


def _net(client: TestClient) -> str:
    r = client.post("/v2.0/networks", json={"network": {"name": "n"}})
    net_id = str(r.json()["network"]["id"])
    r = client.post("/v2.0/subnets", json={"subnet": {"network_id": net_id, "cidr": "10.9.0.0/24"}})
    assert r.status_code == 201, r.text
    return net_id


def _port(client: TestClient, net: str, opts: Any) -> Any:
    return client.post("/v2.0/ports", json={"port": {"network_id": net, "extra_dhcp_opts": opts}})


def test_extension_is_advertised(client: TestClient) -> None:
    r = client.get("/v2.0/extensions/extra_dhcp_opt")
    assert r.status_code == 200 and r.json()["extension"]["alias"] == "extra_dhcp_opt"


def test_create_show_and_default(client: TestClient) -> None:
    net = _net(client)
    plain = client.post("/v2.0/ports", json={"port": {"network_id": net}}).json()["port"]
    assert plain["extra_dhcp_opts"] == []
    opts = [
        {"opt_name": "mtu", "opt_value": "1400"},
        {"opt_name": "66", "opt_value": "tftp.example", "ip_version": "4"},
        {"opt_name": "router", "opt_value": ""},  # blank-able: "send no router"
        {"opt_name": "dns-server", "opt_value": "[2001:db8::1]", "ip_version": 6},
        {"opt_name": "skipped", "opt_value": None},  # null on create: dropped
    ]
    r = _port(client, net, opts)
    assert r.status_code == 201, r.text
    want = [
        {"opt_name": "mtu", "opt_value": "1400", "ip_version": 4},
        {"opt_name": "66", "opt_value": "tftp.example", "ip_version": 4},
        {"opt_name": "router", "opt_value": "", "ip_version": 4},
        {"opt_name": "dns-server", "opt_value": "[2001:db8::1]", "ip_version": 6},
    ]
    assert r.json()["port"]["extra_dhcp_opts"] == want
    shown = client.get(f"/v2.0/ports/{r.json()['port']['id']}").json()["port"]
    assert shown["extra_dhcp_opts"] == want
    only = client.get("/v2.0/ports", params={"fields": "extra_dhcp_opts"}).json()["ports"]
    assert {"extra_dhcp_opts": want} in only


def test_update_merges_by_name_and_version(client: TestClient) -> None:
    net = _net(client)
    port = _port(
        client,
        net,
        [
            {"opt_name": "mtu", "opt_value": "1400"},
            {"opt_name": "mtu", "opt_value": "1280", "ip_version": 6},
            {"opt_name": "domain-name", "opt_value": "a.example"},
        ],
    ).json()["port"]
    r = client.put(
        f"/v2.0/ports/{port['id']}",
        json={
            "port": {
                "extra_dhcp_opts": [
                    {"opt_name": "mtu", "opt_value": "1450"},  # replaces v4 mtu only
                    {"opt_name": "domain-name", "opt_value": None},  # deletes
                    {"opt_name": "ntp-server", "opt_value": "10.9.0.5"},  # adds
                    {"opt_name": "absent", "opt_value": None},  # deleting nothing is fine
                ]
            }
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["port"]["extra_dhcp_opts"] == [
        {"opt_name": "mtu", "opt_value": "1450", "ip_version": 4},
        {"opt_name": "mtu", "opt_value": "1280", "ip_version": 6},
        {"opt_name": "ntp-server", "opt_value": "10.9.0.5", "ip_version": 4},
    ]
    unchanged = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"extra_dhcp_opts": []}})
    assert len(unchanged.json()["port"]["extra_dhcp_opts"]) == 3


@pytest.mark.parametrize(
    "opts",
    [
        "mtu=1400",
        [{"opt_name": "mtu"}],  # opt_value is required (null allowed, absent not)
        [{"opt_value": "1"}],
        [{"opt_name": "", "opt_value": "1"}],
        [{"opt_name": "x" * 65, "opt_value": "1"}],
        [{"opt_name": "mtu", "opt_value": "1" * 256}],
        [{"opt_name": "mtu", "opt_value": ""}],  # only router/classless-static-route blank
        [{"opt_name": "mtu", "opt_value": "1\n2"}],
        [{"opt_name": "mt\nu", "opt_value": "1"}],
        [{"opt_name": "mtu", "opt_value": 1400}],
        [{"opt_name": "mtu", "opt_value": "1", "ip_version": 5}],
        [{"opt_name": "mtu", "opt_value": "1", "ip_version": "four"}],
        [{"opt_name": "mtu", "opt_value": "1", "ip_version": True}],
        [{"opt_name": "mtu", "opt_value": "1", "extra": "x"}],
        [{"opt_name": "mtu", "opt_value": "1"}, {"opt_name": "mtu", "opt_value": "2"}],
        [{"opt_name": "mtu", "opt_value": "1"}] * 101,
        ["mtu"],
        [{"opt_name": {"x": 1}, "opt_value": "1"}],
    ],
)
def test_hostile_options_are_a_400_naming_the_field(client: TestClient, opts: Any) -> None:
    net = _net(client)
    r = _port(client, net, opts)
    assert r.status_code == 400, r.text
    assert "extra_dhcp_opts" in r.json()["NeutronError"]["message"]
    assert client.get("/v2.0/ports").json()["ports"] == []


def test_store_refuses_what_the_api_model_would_not_see(store: Store) -> None:
    """The store's own checks (the data plane and CloudStack paths use it directly)."""
    net = store.create_network({"name": "n"})
    from controller.store.errors import InvalidInput

    for bad in (
        [{"opt_name": "mtu", "opt_value": "1", "ip_version": 5}],
        [{"opt_name": "mtu", "opt_value": "1"}, {"opt_name": "mtu", "opt_value": "1"}],
        [{"opt_name": " ", "opt_value": "1"}],
        [{"opt_name": "mtu", "opt_value": " "}],
    ):
        with pytest.raises(InvalidInput, match="extra_dhcp_opts"):
            store.create_port({"network_id": net["id"], "extra_dhcp_opts": bad})
    assert store.list_ports() == []


def test_a_bad_update_changes_nothing(client: TestClient) -> None:
    net = _net(client)
    port = _port(client, net, [{"opt_name": "mtu", "opt_value": "1400"}]).json()["port"]
    r = client.put(
        f"/v2.0/ports/{port['id']}",
        json={"port": {"name": "x", "extra_dhcp_opts": [{"opt_name": "mtu", "opt_value": ""}]}},
    )
    assert r.status_code == 400 and "extra_dhcp_opts" in r.text
    after = client.get(f"/v2.0/ports/{port['id']}").json()["port"]
    assert after["name"] == "" and after["extra_dhcp_opts"] == port["extra_dhcp_opts"]


def test_not_a_filter_like_neutron(client: TestClient) -> None:
    r = client.get("/v2.0/ports", params={"extra_dhcp_opts": "mtu"})
    assert r.status_code == 400 and "extra_dhcp_opts" in r.text
    r = client.get("/v2.0/ports", params={"sort_key": "extra_dhcp_opts"})
    assert r.status_code == 400


def test_migration_gives_existing_ports_an_empty_list(db_path: str, bus: EventBus) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    migrate(conn, upto=4)
    conn.execute(
        "INSERT INTO networks (id, key, seg_type, seg_id, body) VALUES ('n1', 1, 'vxlan', 1, '{}')"
    )
    conn.execute(
        "INSERT INTO ports (id, network_id, mac, body) VALUES ('p1', 'n1', 'fa:16:3e:00:00:01', ?)",
        ('{"id": "p1", "binding:host_id": ""}',),
    )
    conn.close()
    store = Store(db_path, bus)
    assert store.get_port("p1")["extra_dhcp_opts"] == []
    store.close()
