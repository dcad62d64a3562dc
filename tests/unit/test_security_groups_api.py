"""Security groups and their rules through the Neutron v2.0 API over a real store: shapes, the
per-project ``default`` group, ports and their groups, rule validation as Neutron words it,
events, quotas' counts, the schema migration, and a data plane that ignores it all for now."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest

from controller.api.listing import public
from controller.events import ChangeEvent, EventBus
from controller.store import Store
from controller.store.schema import MIGRATIONS, migrate
from tests.unit.conftest import TestClient
from tests.unit.test_api import error_of

SG = "/v2.0/security-groups"
RULES = "/v2.0/security-group-rules"
OTHER = "33333333-3333-4333-8333-333333333333"


def post(client: TestClient, path: str, singular: str, **attrs: Any) -> Any:
    return client.post(path, json={singular: attrs})


def group(client: TestClient, **attrs: Any) -> dict[str, Any]:
    r = post(client, SG, "security_group", **attrs)
    assert r.status_code == 201, r.text
    return dict(r.json()["security_group"])


def rule(client: TestClient, group_id: str, **attrs: Any) -> Any:
    return post(client, RULES, "security_group_rule", security_group_id=group_id, **attrs)


def network(client: TestClient, **attrs: Any) -> str:
    r = post(client, "/v2.0/networks", "network", name="n", **attrs)
    assert r.status_code == 201, r.text
    net_id = str(r.json()["network"]["id"])
    r = post(client, "/v2.0/subnets", "subnet", network_id=net_id, cidr="10.5.0.0/24")
    assert r.status_code == 201, r.text
    return net_id


def port(client: TestClient, net_id: str, **attrs: Any) -> Any:
    return post(client, "/v2.0/ports", "port", network_id=net_id, **attrs)


def defaults(client: TestClient, project: str = "") -> list[dict[str, Any]]:
    r = client.get(f"{SG}?name=default&project_id={project}")
    assert r.status_code == 200, r.text
    return list(r.json()["security_groups"])


def shape(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["direction"], r["ethertype"], r["protocol"], r["remote_group_id"])


# -- groups --------------------------------------------------------------------------------


def test_a_new_group_has_neutrons_egress_rules_and_its_projects_default_exists(
    client: TestClient,
) -> None:
    g = group(client, name="web", description="front", project_id="p1", tags=["a"])
    assert g["name"] == "web" and g["description"] == "front" and g["tags"] == ["a"]
    assert g["project_id"] == g["tenant_id"] == "p1"
    assert g["stateful"] is True and g["shared"] is False and g["revision_number"] == 1
    assert g["created_at"] == g["updated_at"] and g["created_at"].endswith("Z")
    assert sorted(shape(r) for r in g["security_group_rules"]) == [
        ("egress", "IPv4", None, None),
        ("egress", "IPv6", None, None),
    ]
    assert all(not r["belongs_to_default_sg"] for r in g["security_group_rules"])
    (default,) = defaults(client, "p1")
    assert default["description"] == "Default security group"
    assert sorted(shape(r) for r in default["security_group_rules"]) == [
        ("egress", "IPv4", None, None),
        ("egress", "IPv6", None, None),
        ("ingress", "IPv4", None, default["id"]),
        ("ingress", "IPv6", None, default["id"]),
    ]
    assert all(r["belongs_to_default_sg"] for r in default["security_group_rules"])
    group(client, name="web2", project_id="p1")
    assert len(defaults(client, "p1")) == 1  # created once
    assert defaults(client, "p2") == []  # nothing used in p2 yet


def test_group_show_update_delete_and_revision(client: TestClient) -> None:
    g = group(client, name="a")
    url = f"{SG}/{g['id']}"
    assert client.get(url).json()["security_group"] == g
    r = client.put(url, json={"security_group": {"name": "b", "description": "d"}})
    assert r.status_code == 200, r.text
    updated = r.json()["security_group"]
    assert (updated["name"], updated["description"], updated["revision_number"]) == ("b", "d", 2)
    r = client.put(
        url, json={"security_group": {"name": "c"}}, headers={"If-Match": "revision_number=1"}
    )
    error_of(r, 412)
    error_of(client.put(url, json={"security_group": {"id": OTHER}}), 400)
    error_of(client.put(url, json={"security_group": {"security_group_rules": []}}), 400)
    assert client.put(f"{url}/tags/blue").status_code == 201
    assert client.get(url).json()["security_group"]["tags"] == ["blue"]
    assert client.delete(url).status_code == 204
    error_of(client.get(url), 404, "SecurityGroupNotFound")
    assert client.get(f"{RULES}?security_group_id={g['id']}").json()["security_group_rules"] == []


@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
def test_only_the_default_group_is_called_default(client: TestClient, name: str) -> None:
    error_of(
        post(client, SG, "security_group", name=name), 409, "SecurityGroupDefaultAlreadyExists"
    )
    g = group(client, name="x")
    r = client.put(f"{SG}/{g['id']}", json={"security_group": {"name": name}})
    error_of(r, 409, "SecurityGroupDefaultAlreadyExists")
    (default,) = defaults(client)
    r = client.put(f"{SG}/{default['id']}", json={"security_group": {"name": "mine"}})
    error_of(r, 409, "SecurityGroupCannotUpdateDefault")
    r = client.put(f"{SG}/{default['id']}", json={"security_group": {"description": "ok"}})
    assert r.status_code == 200, r.text


def test_filters_fields_sorting_and_pages(client: TestClient) -> None:
    made = [group(client, name=f"g{i}", project_id="p") for i in range(5)]
    names = {g["name"] for g in made}
    listed = client.get(f"{SG}?project_id=p&fields=name&fields=id").json()["security_groups"]
    assert {g["name"] for g in listed} == names | {"default"}
    assert all(set(g) == {"name", "id"} for g in listed)
    r = client.get(f"{SG}?name=g1&name=g3&sort_key=name&sort_dir=desc").json()
    assert [g["name"] for g in r["security_groups"]] == ["g3", "g1"]
    seen: list[str] = []
    url = f"{SG}?limit=2"
    while url:
        page = client.get(url).json()
        seen += [g["id"] for g in page["security_groups"]]
        links = page.get("security_groups_links", [])
        url = links[0]["href"] if links else ""
    assert sorted(seen) == sorted({g["id"] for g in made} | {defaults(client, "p")[0]["id"]})
    error_of(client.get(f"{SG}?colour=red"), 400, "HTTPBadRequest")
    rules = client.get(f"{RULES}?security_group_id={made[0]['id']}&ethertype=IPv6").json()
    assert [shape(r) for r in rules["security_group_rules"]] == [("egress", "IPv6", None, None)]
    error_of(client.get(f"{RULES}?revision_number=x"), 400, "HTTPBadRequest")


def test_bulk_group_create_is_atomic(client: TestClient) -> None:
    r = client.post(SG, json={"security_groups": [{"name": "a"}, {"name": "default"}]})
    error_of(r, 409)
    assert client.get(SG).json()["security_groups"] == []
    r = client.post(SG, json={"security_groups": [{"name": "a"}, {"name": "b"}]})
    assert r.status_code == 201 and len(r.json()["security_groups"]) == 2


# -- ports ---------------------------------------------------------------------------------


def test_ports_get_their_projects_default_group(client: TestClient) -> None:
    net = network(client)
    p1 = port(client, net).json()["port"]
    p2 = port(client, net).json()["port"]
    (default,) = defaults(client)
    assert p1["security_groups"] == p2["security_groups"] == [default["id"]]
    other = port(client, net, project_id="p9").json()["port"]
    (other_default,) = defaults(client, "p9")
    assert other["security_groups"] == [other_default["id"]] != [default["id"]]
    # no default group: explicit [] or null, port security off, the network's own ports
    for attrs in (
        {"security_groups": []},
        {"security_groups": None},
        {"port_security_enabled": False},
        {"device_owner": "network:dhcp"},
    ):
        r = port(client, net, **attrs)
        assert r.status_code == 201, r.text
        assert r.json()["port"]["security_groups"] == [], attrs
    insecure = network(client, port_security_enabled=False)
    assert port(client, insecure).json()["port"]["security_groups"] == []


def test_a_ports_groups_must_exist_and_agree(client: TestClient) -> None:
    net = network(client)
    a, b = group(client, name="a"), group(client, name="b")
    r = port(client, net, security_groups=[a["id"], b["id"].upper(), a["id"]])
    assert r.json()["port"]["security_groups"] == [a["id"], b["id"]]  # canonical, once each
    msg = error_of(
        port(client, net, security_groups=[a["id"], OTHER]), 404, "SecurityGroupNotFound"
    )
    assert OTHER in msg and a["id"] not in msg
    msg = error_of(port(client, net, security_groups=["web"]), 400)
    assert "security_groups" in msg
    error_of(port(client, net, security_groups="web"), 400)
    stateless = group(client, name="s", stateful=False)
    r = port(client, net, security_groups=[a["id"], stateless["id"]])
    error_of(r, 409, "SecurityGroupConflict")
    r = port(client, net, port_security_enabled=False, security_groups=[a["id"]])
    error_of(r, 400, "PortSecurityAndIPRequiredForSecurityGroups")
    assert len(client.get("/v2.0/ports").json()["ports"]) == 1  # nothing half-written


def test_port_security_off_means_no_groups(client: TestClient) -> None:
    net = network(client)
    p = port(client, net).json()["port"]
    url = f"/v2.0/ports/{p['id']}"
    r = client.put(url, json={"port": {"port_security_enabled": False}})
    error_of(r, 409, "PortSecurityPortHasSecurityGroup")
    a = group(client, name="a")
    r = client.put(
        url, json={"port": {"port_security_enabled": False, "security_groups": [a["id"]]}}
    )
    error_of(r, 400, "PortSecurityAndIPRequiredForSecurityGroups")
    r = client.put(url, json={"port": {"port_security_enabled": False, "security_groups": []}})
    assert r.status_code == 200, r.text
    assert (
        r.json()["port"]["security_groups"] == [] and not r.json()["port"]["port_security_enabled"]
    )
    error_of(client.put(url, json={"port": {"security_groups": [a["id"]]}}), 400)
    r = client.put(
        url, json={"port": {"port_security_enabled": True, "security_groups": [a["id"]]}}
    )
    assert r.status_code == 200 and r.json()["port"]["security_groups"] == [a["id"]]
    assert client.get(f"/v2.0/ports?security_groups={a['id']}").json()["ports"][0]["id"] == p["id"]


def test_a_group_in_use_cannot_be_deleted_or_change_statefulness(
    client: TestClient, store: Store
) -> None:
    net = network(client)
    a = group(client, name="a")
    p = port(client, net, security_groups=[a["id"]]).json()["port"]
    assert [q["id"] for q in store.list_ports(security_group_id=a["id"])] == [p["id"]]
    msg = error_of(client.delete(f"{SG}/{a['id']}"), 409, "SecurityGroupInUse")
    assert a["id"] in msg
    r = client.put(f"{SG}/{a['id']}", json={"security_group": {"stateful": False}})
    error_of(r, 409, "SecurityGroupInUse")
    assert (
        client.put(f"{SG}/{a['id']}", json={"security_group": {"stateful": True}}).status_code
        == 200
    )
    client.put(f"/v2.0/ports/{p['id']}", json={"port": {"security_groups": []}})
    assert store.list_ports(security_group_id=a["id"]) == []
    r = client.put(f"{SG}/{a['id']}", json={"security_group": {"stateful": False}})
    assert r.status_code == 200 and r.json()["security_group"]["stateful"] is False
    (default,) = defaults(client)
    q = port(client, net).json()["port"]
    error_of(client.delete(f"{SG}/{default['id']}"), 409, "SecurityGroupInUse")
    assert client.delete(f"/v2.0/ports/{q['id']}").status_code == 204
    assert client.delete(f"{SG}/{default['id']}").status_code == 204  # as Neutron's admin may
    assert client.delete(f"{SG}/{a['id']}").status_code == 204


# -- rules ---------------------------------------------------------------------------------


def test_rule_shape_and_normalised_prefix(client: TestClient) -> None:
    g = group(client, name="g", project_id="p")
    r = rule(
        client,
        g["id"],
        direction="ingress",
        protocol="TCP",
        port_range_min="22",
        port_range_max=22,
        remote_ip_prefix="10.1.2.3/16",
        description="ssh",
    )
    assert r.status_code == 201, r.text
    got = r.json()["security_group_rule"]
    assert got == {
        "id": got["id"],
        "security_group_id": g["id"],
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
        "remote_ip_prefix": "10.1.0.0/16",
        "normalized_cidr": "10.1.0.0/16",
        "remote_group_id": None,
        "remote_address_group_id": None,
        "belongs_to_default_sg": False,
        "project_id": "p",
        "tenant_id": "p",
        "description": "ssh",
        "created_at": got["created_at"],
        "updated_at": got["updated_at"],
        "revision_number": 1,
    }
    assert client.get(f"{RULES}/{got['id']}").json()["security_group_rule"] == got
    host = rule(
        client, g["id"], direction="egress", ethertype="ipv6", remote_ip_prefix="2001:DB8::1"
    )
    assert host.json()["security_group_rule"]["remote_ip_prefix"] == "2001:db8::1/128"
    assert host.json()["security_group_rule"]["ethertype"] == "IPv6"
    full = rule(
        client, g["id"], direction="egress", protocol="udp", port_range_min=1, port_range_max=65535
    )
    assert full.json()["security_group_rule"]["port_range_min"] is None  # Neutron: no range
    icmp6 = rule(client, g["id"], direction="ingress", ethertype="IPv6", protocol="icmp")
    assert icmp6.json()["security_group_rule"]["protocol"] == "ipv6-icmp"
    number = rule(
        client, g["id"], direction="ingress", protocol=132, port_range_min=5, port_range_max=9
    )
    assert number.status_code == 201 and number.json()["security_group_rule"]["protocol"] == "132"
    anyproto = rule(client, g["id"], direction="ingress", protocol="any", remote_ip_prefix="")
    assert anyproto.status_code == 201
    assert anyproto.json()["security_group_rule"]["protocol"] is None
    assert anyproto.json()["security_group_rule"]["remote_ip_prefix"] is None


def test_protocol_any_is_any_protocol_in_any_case(client: TestClient) -> None:
    """Neutron's ``convert_protocol`` lowers the value before looking it up, and ``any`` is
    one of the values it looks in: ``ANY`` is any protocol there (it was a 400 here)."""
    g = group(client, name="g", project_id="p")
    r = rule(client, g["id"], direction="ingress", protocol="ANY")
    assert r.status_code == 201, r.text
    assert r.json()["security_group_rule"]["protocol"] is None
    error_of(
        rule(client, g["id"], direction="ingress", protocol="Any"), 409, "SecurityGroupRuleExists"
    )
    error_of(rule(client, g["id"], direction="ingress"), 409, "SecurityGroupRuleExists")


BAD_RULES: list[tuple[dict[str, Any], int, str, str]] = [
    ({"direction": "sideways"}, 400, "HTTPBadRequest", "direction"),
    ({"direction": "MISSING"}, 400, "HTTPBadRequest", "direction"),
    ({"ethertype": "IPv5"}, 400, "SecurityGroupRuleInvalidEtherType", "ethertype"),
    ({"ethertype": None}, 400, "SecurityGroupRuleInvalidEtherType", "ethertype"),
    ({"protocol": "tcpx"}, 400, "SecurityGroupRuleInvalidProtocol", "protocol"),
    ({"protocol": 256}, 400, "SecurityGroupRuleInvalidProtocol", "protocol"),
    ({"protocol": "-1"}, 400, "SecurityGroupRuleInvalidProtocol", "protocol"),
    ({"protocol": True}, 400, "HTTPBadRequest", "protocol"),
    (
        {"protocol": "tcp", "port_range_min": 70000, "port_range_max": 70000},
        400,
        "SecurityGroupInvalidPortValue",
        "port_range_min",
    ),
    (
        {"protocol": "tcp", "port_range_min": "x"},
        400,
        "SecurityGroupInvalidPortValue",
        "port_range_min",
    ),
    ({"protocol": "tcp", "port_range_min": 1.5}, 400, "HTTPBadRequest", "port_range_min"),
    (
        {"protocol": "tcp", "port_range_min": 0, "port_range_max": 5},
        400,
        "SecurityGroupInvalidPortValue",
        "port 0",
    ),
    (
        {"protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
        400,
        "SecurityGroupInvalidPortRange",
        "port_range_min must be <= port_range_max",
    ),
    (
        {"protocol": "udp", "port_range_min": 80},
        400,
        "SecurityGroupInvalidPortRange",
        "port_range_max",
    ),
    (
        {"port_range_min": 80, "port_range_max": 80},
        400,
        "SecurityGroupProtocolRequiredWithPorts",
        "protocol",
    ),
    (
        # Open vSwitch has no field for their ports: compiled without the range, a rule for
        # port 80 allowed every port (found by a review)
        {"protocol": "dccp", "port_range_min": 80, "port_range_max": 80},
        400,
        "SecurityGroupInvalidPortRange",
        "cannot be enforced for protocol dccp",
    ),
    (
        {"protocol": "136", "port_range_min": 80, "port_range_max": 80},
        400,
        "SecurityGroupInvalidPortRange",
        "Leave port_range_min and port_range_max out",
    ),
    (
        {"protocol": "gre", "port_range_min": 80, "port_range_max": 80},
        400,
        "SecurityGroupInvalidProtocolForPort",
        "Ports cannot be specified for protocol gre",
    ),
    (
        {"protocol": "icmp", "port_range_min": 256},
        400,
        "SecurityGroupInvalidIcmpValue",
        "port_range_min",
    ),
    (
        {"protocol": "icmp", "port_range_min": 8, "port_range_max": 300},
        400,
        "SecurityGroupInvalidIcmpValue",
        "port_range_max",
    ),
    (
        {"protocol": "icmp", "port_range_max": 0},
        400,
        "SecurityGroupMissingIcmpType",
        "port_range_min",
    ),
    ({"remote_ip_prefix": "2001:db8::/32"}, 400, "SecurityGroupRuleParameterConflict", "IPv4"),
    (
        {"ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"},
        400,
        "SecurityGroupRuleParameterConflict",
        "10.0.0.0/8",
    ),
    ({"remote_ip_prefix": "10.0.0.0/33"}, 400, "InvalidCIDR", "remote_ip_prefix"),
    ({"remote_ip_prefix": "10.1/16"}, 400, "InvalidCIDR", "remote_ip_prefix"),
    ({"remote_ip_prefix": "ten"}, 400, "InvalidCIDR", "remote_ip_prefix"),
    ({"protocol": "icmpv6"}, 400, "SecurityGroupEthertypeConflictWithProtocol", "IPv4"),
    ({"protocol": "58"}, 400, "SecurityGroupEthertypeConflictWithProtocol", "58"),
    (
        {"remote_ip_prefix": "0.0.0.0/0", "remote_group_id": "SELF"},
        400,
        "SecurityGroupMultipleRemoteEntites",
        "remote_group_id",
    ),
    ({"remote_group_id": "nope"}, 400, "HTTPBadRequest", "remote_group_id"),
    ({"remote_group_id": OTHER}, 404, "SecurityGroupNotFound", OTHER),
    ({"remote_address_group_id": OTHER}, 400, "HTTPBadRequest", "remote_address_group_id"),
    ({"tags": ["a"]}, 400, "HTTPBadRequest", "tags"),
    ({"name": "r"}, 400, "HTTPBadRequest", "name"),
    ({"description": "d" * 256}, 400, "HTTPBadRequest", "description"),
    ({"project_id": "a", "tenant_id": "b"}, 400, "InvalidInput", "tenant_id"),
]


@pytest.mark.parametrize(("attrs", "status", "type_", "word"), BAD_RULES)
def test_inconsistent_rules_are_refused_as_neutron_does(
    client: TestClient, attrs: dict[str, Any], status: int, type_: str, word: str
) -> None:
    g = group(client, name="g")
    body = {"direction": "ingress", **attrs}
    if body.get("remote_group_id") == "SELF":
        body["remote_group_id"] = g["id"]
    if body["direction"] == "MISSING":
        del body["direction"]
    msg = error_of(rule(client, g["id"], **body), status, type_)
    assert word in msg
    assert client.get(f"{SG}/{g['id']}").json()["security_group"]["revision_number"] == 1


def test_unknown_and_malformed_groups(client: TestClient) -> None:
    error_of(rule(client, OTHER, direction="ingress"), 404, "SecurityGroupNotFound")
    msg = error_of(rule(client, "web", direction="ingress"), 400)
    assert "security_group_id" in msg
    r = client.post(RULES, json={"security_group_rule": {"direction": "ingress"}})
    assert "security_group_id" in error_of(r, 400)
    error_of(client.get(f"{RULES}/{OTHER}"), 404, "SecurityGroupRuleNotFound")
    error_of(client.delete(f"{RULES}/{OTHER}"), 404, "SecurityGroupRuleNotFound")
    error_of(client.put(f"{RULES}/{OTHER}", json={"security_group_rule": {}}), 405)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
            {"protocol": "6", "port_range_min": 22, "port_range_max": 22},
        ),
        ({"protocol": "udp"}, {"protocol": 17}),
        ({"remote_ip_prefix": "0.0.0.0/0"}, {}),
        ({"remote_ip_prefix": "10.0.0.0/8"}, {"remote_ip_prefix": "10.9.9.9/8"}),
        ({"ethertype": "IPv6", "protocol": "icmp"}, {"ethertype": "ipv6", "protocol": "58"}),
        ({"protocol": "tcp", "port_range_min": 1, "port_range_max": 65535}, {"protocol": "tcp"}),
    ],
)
def test_the_same_rule_twice_is_a_409(
    client: TestClient, first: dict[str, Any], second: dict[str, Any]
) -> None:
    g = group(client, name="g")
    made = rule(client, g["id"], direction="ingress", **first)
    assert made.status_code == 201, made.text
    msg = error_of(
        rule(client, g["id"], direction="ingress", **second), 409, "SecurityGroupRuleExists"
    )
    assert made.json()["security_group_rule"]["id"] in msg
    assert rule(client, g["id"], direction="egress", **second).status_code in (201, 409)


def test_rules_change_their_groups_revision_and_publish_both(
    client: TestClient, events: list[ChangeEvent]
) -> None:
    g = group(client, name="g")
    events.clear()
    r = rule(client, g["id"], direction="ingress", protocol="tcp", remote_group_id=g["id"])
    made = r.json()["security_group_rule"]
    assert [(e.kind, e.old is None, e.new is None) for e in events] == [
        ("security_group_rule", True, False),
        ("security_group", False, False),
    ]
    assert public(events[0].new) == made
    assert events[1].new["revision_number"] == 2 and made in events[1].new["security_group_rules"]
    events.clear()
    assert client.delete(f"{RULES}/{made['id']}").status_code == 204
    assert [(e.kind, e.new is None) for e in events] == [
        ("security_group_rule", True),
        ("security_group", False),
    ]
    assert client.get(f"{SG}/{g['id']}").json()["security_group"]["revision_number"] == 3


def test_deleting_a_group_deletes_the_rules_that_name_it(
    client: TestClient, events: list[ChangeEvent]
) -> None:
    a, b = group(client, name="a"), group(client, name="b")
    from_b = rule(client, a["id"], direction="ingress", remote_group_id=b["id"]).json()
    events.clear()
    assert client.delete(f"{SG}/{b['id']}").status_code == 204
    assert client.get(f"{RULES}/{from_b['security_group_rule']['id']}").status_code == 404
    kinds = [(e.kind, e.obj_id, e.new is None) for e in events]
    assert ("security_group_rule", from_b["security_group_rule"]["id"], True) in kinds
    assert ("security_group", b["id"], True) in kinds
    assert kinds[-1] == ("security_group", a["id"], False)
    after = client.get(f"{SG}/{a['id']}").json()["security_group"]
    assert after["revision_number"] == 3 and len(after["security_group_rules"]) == 2


def test_rules_carry_a_stable_key_for_the_data_plane(
    client: TestClient, store: Store, events: list[ChangeEvent]
) -> None:
    """``_key`` (a rule's conjunction id in flows.security_groups): unique, never reused, the
    same in rule events and store reads, and never shown by the API."""
    g = group(client, name="g")
    made = rule(client, g["id"], direction="ingress", protocol="tcp").json()["security_group_rule"]
    keys = {r["id"]: r["_key"] for r in store.list_security_group_rules()}
    assert len(set(keys.values())) == len(keys) and all(k > 0 for k in keys.values())
    created = [e.new for e in events if e.kind == "security_group_rule" and e.new]
    assert {r["id"]: r["_key"] for r in created} == keys
    assert store.get("security_group_rule", made["id"])["_key"] == keys[made["id"]]
    assert "_key" not in client.get(f"{RULES}/{made['id']}").text
    listed = {x["id"]: x for x in store.list_security_groups()}  # the data plane's read
    assert listed[g["id"]] == client.get(f"{SG}/{g['id']}").json()["security_group"]
    assert len(listed[g["id"]]["security_group_rules"]) == 3
    assert "_key" not in client.get(f"{SG}/{g['id']}").text + client.get(RULES).text
    client.delete(f"{RULES}/{made['id']}")
    assert [e.old["_key"] for e in events if e.kind == "security_group_rule" and e.old] == [
        keys[made["id"]]
    ]
    again = rule(client, g["id"], direction="ingress", protocol="tcp").json()["security_group_rule"]
    assert store.get("security_group_rule", again["id"])["_key"] > max(keys.values())
    client.delete(f"{SG}/{g['id']}")
    gone = {e.old["id"]: e.old["_key"] for e in events if e.kind == "security_group_rule" and e.old}
    assert all(isinstance(k, int) for k in gone.values()) and len(gone) == 4


def test_quotas_count_the_default_group(client: TestClient, store: Store) -> None:
    group(client, name="a", project_id="p")
    used = {k: v["used"] for k, v in store.quota_details("p").items()}
    assert used["security_group"] == 2  # a and p's default
    assert used["security_group_rule"] == 2 + 4
    assert store.quota_details("q")["security_group"]["used"] == 0
    client.put("/v2.0/quotas/p", json={"quota": {"security_group": 3, "security_group_rule": 9}})
    group(client, name="b", project_id="p")
    error_of(post(client, SG, "security_group", name="c", project_id="p"), 409, "OverQuota")
    (b,) = client.get(f"{SG}?name=b").json()["security_groups"]
    assert (
        rule(client, b["id"], direction="ingress").status_code == 201
    )  # p's 9th: 4 + 2 + 2 from templates
    error_of(rule(client, b["id"], direction="ingress", protocol="tcp"), 409, "OverQuota")


def test_extensions_are_advertised(client: TestClient) -> None:
    aliases = {e["alias"] for e in client.get("/v2.0/extensions").json()["extensions"]}
    assert {"security-group", "port-security", "stateful-security-group"} <= aliases
    paths = client.get("/openapi.json").json()["paths"]
    assert {SG, f"{SG}/{{obj_id}}", RULES, f"{RULES}/{{obj_id}}"} <= set(paths)
    assert "put" not in paths[f"{RULES}/{{obj_id}}"]


# -- the schema ------------------------------------------------------------------------------


def test_upgrade_clears_the_group_ids_ports_had_before_groups_existed(tmp_path: Any) -> None:
    (step,) = [i for i, m in enumerate(MIGRATIONS) if m.__name__.endswith("_security_groups")]
    path = str(tmp_path / "old.db")
    old = Store(path, EventBus())
    net = old.create_network({})
    p = old.create_port({"network_id": net["id"]})
    old.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for later in ("router_ports", "routers"):  # the steps after it
        conn.execute(f"DROP TABLE {later}")
    conn.execute("DROP TABLE port_security_groups")
    conn.execute("DROP TABLE security_group_rules")
    conn.execute("DROP TABLE security_groups")
    conn.execute(
        "UPDATE ports SET body = json_set(body, '$.security_groups', json(?))",
        ('["not-a-group"]',),
    )
    conn.execute(f"PRAGMA user_version = {step}")  # just before security groups
    migrate(conn)
    conn.close()
    store = Store(path, EventBus())
    assert store.get_port(p["id"])["security_groups"] == []
    assert store.list_security_groups() == []  # what the old port had is gone, not replaced
    store.close()


# -- the data plane ----------------------------------------------------------------------------


def test_the_data_plane_ignores_security_groups_quietly(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_dataplane import Cloud, FakeAgent

    FakeAgent.instances.clear()
    cloud = Cloud(str(tmp_path / "dp.db"))
    try:
        cloud.start(hosts=2)
        net = cloud.network()
        p = cloud.port(net, "hv1", 1)
        cloud.port(net, "hv2", 1)
        cloud.idle()
        before = (cloud.flows("hv1"), cloud.flows("hv2"), cloud.dp.stats.flow_mods)
        with caplog.at_level(logging.INFO):
            caplog.clear()
            store = cloud.store
            g = store.create("security_group", [{"name": "g"}])[0]
            r = store.create(
                "security_group_rule",
                [{"security_group_id": g["id"], "direction": "ingress", "protocol": "tcp"}],
            )[0]
            store.update("security_group", g["id"], {"description": "x"})
            store.delete("security_group_rule", r["id"])
            store.delete("security_group", g["id"])
            cloud.idle()
        noisy = [rec for rec in caplog.records if rec.name.startswith("controller")]
        assert noisy == [], [rec.getMessage() for rec in noisy]
        assert (cloud.flows("hv1"), cloud.flows("hv2"), cloud.dp.stats.flow_mods) == before
        assert cloud.store.get_port(p["id"])["status"] == "ACTIVE"
    finally:
        cloud.dp.stop()
