"""The extension list is honest: every alias ``GET /v2.0/extensions`` advertises has a check
here that exercises one behaviour the extension promises, and an advertised alias without a
check fails the walk (so nothing can be advertised that nobody verified)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.conftest import TestClient


def _create(client: TestClient, singular: str, **attrs: Any) -> dict[str, Any]:
    r = client.post(f"/v2.0/{singular}s", json={singular: attrs})
    assert r.status_code == 201, r.text
    return dict(r.json()[singular])


def _port(client: TestClient, **attrs: Any) -> dict[str, Any]:
    net = _create(client, "network")
    _create(client, "subnet", network_id=net["id"], cidr="10.5.0.0/24")
    return _create(client, "port", network_id=net["id"], **attrs)


def provider(c: TestClient) -> None:
    net = _create(c, "network", **{"provider:network_type": "gre", "provider:segmentation_id": 77})
    assert (net["provider:network_type"], net["provider:segmentation_id"]) == ("gre", 77)


def binding(c: TestClient) -> None:
    port = _port(c, **{"binding:host_id": "hv1"})
    assert port["binding:host_id"] == "hv1" and port["binding:vif_type"] == "ovs"
    assert port["binding:vnic_type"] == "normal"


def port_security(c: TestClient) -> None:
    net = _create(c, "network", port_security_enabled=False)
    port = _create(c, "port", network_id=net["id"])
    assert port["port_security_enabled"] is False and port["security_groups"] == []


def security_group(c: TestClient) -> None:
    r = c.post("/v2.0/security-groups", json={"security_group": {"name": "web"}})
    group = r.json()["security_group"]
    rule = {"security_group_id": group["id"], "direction": "ingress", "protocol": "tcp"}
    r = c.post("/v2.0/security-group-rules", json={"security_group_rule": rule})
    assert r.status_code == 201, r.text
    port = _port(c, security_groups=[group["id"]])
    assert port["security_groups"] == [group["id"]]
    assert c.delete(f"/v2.0/security-groups/{group['id']}").status_code == 409


def stateful_security_group(c: TestClient) -> None:
    body = {"security_group": {"name": "udp-fast", "stateful": False}}
    group = c.post("/v2.0/security-groups", json=body).json()["security_group"]
    assert group["stateful"] is False
    assert c.get("/v2.0/security-groups?stateful=false").json()["security_groups"] == [group]


def allowed_address_pairs(c: TestClient) -> None:
    port = _port(c, allowed_address_pairs=[{"ip_address": "10.5.0.0/28"}])
    assert port["allowed_address_pairs"] == [
        {"ip_address": "10.5.0.0/28", "mac_address": port["mac_address"]}
    ]


def extra_dhcp_opt(c: TestClient) -> None:
    port = _port(c, extra_dhcp_opts=[{"opt_name": "mtu", "opt_value": "1400"}])
    assert port["extra_dhcp_opts"] == [{"opt_name": "mtu", "opt_value": "1400", "ip_version": 4}]
    body = {"port": {"extra_dhcp_opts": [{"opt_name": "mtu", "opt_value": None}]}}
    assert c.put(f"/v2.0/ports/{port['id']}", json=body).json()["port"]["extra_dhcp_opts"] == []


def net_mtu(c: TestClient) -> None:
    assert _create(c, "network", **{"provider:network_type": "vxlan"})["mtu"] == 1450
    assert _create(c, "network", mtu=1400)["mtu"] == 1400


def external_net(c: TestClient) -> None:
    net = _create(c, "network")
    assert net["router:external"] is False
    listed = c.get("/v2.0/networks?router:external=false").json()["networks"]
    assert [n["id"] for n in listed] == [net["id"]]
    r = c.post("/v2.0/networks", json={"network": {"router:external": True}})
    assert r.status_code == 400 and "router:external" in r.text  # until north-south exists


def standard_attr_revisions(c: TestClient) -> None:
    net = _create(c, "network")
    r = c.put(f"/v2.0/networks/{net['id']}", json={"network": {"name": "x"}})
    assert r.json()["network"]["revision_number"] == net["revision_number"] + 1


def revision_if_match(c: TestClient) -> None:
    net = _create(c, "network")
    r = c.put(
        f"/v2.0/networks/{net['id']}",
        json={"network": {"name": "x"}},
        headers={"If-Match": "revision_number=99"},
    )
    assert r.status_code == 412


def standard_attr_timestamp(c: TestClient) -> None:
    net = _create(c, "network")
    assert net["created_at"].endswith("Z") and net["updated_at"] == net["created_at"]


def standard_attr_tag(c: TestClient) -> None:
    net = _create(c, "network")
    assert c.put(f"/v2.0/networks/{net['id']}/tags/red").status_code == 201
    assert c.get("/v2.0/networks?tags=red").json()["networks"][0]["id"] == net["id"]


def tag_creation(c: TestClient) -> None:
    net = _create(c, "network", tags=["a"])
    r = c.post(f"/v2.0/networks/{net['id']}/tags", json={"tags": ["b", "c"]})
    assert r.status_code == 201 and r.json() == {"tags": ["b", "c"]}
    assert c.get(f"/v2.0/networks/{net['id']}/tags").json() == {"tags": ["a", "b", "c"]}


def tag_ports_during_bulk_creation(c: TestClient) -> None:
    net = _create(c, "network")
    r = c.post(
        "/v2.0/ports",
        json={"ports": [{"network_id": net["id"], "tags": ["t1"]}, {"network_id": net["id"]}]},
    )
    assert [p["tags"] for p in r.json()["ports"]] == [["t1"], []]


def standard_attr_description(c: TestClient) -> None:
    net = _create(c, "network", description="d")
    assert net["description"] == "d"


def project_id(c: TestClient) -> None:
    net = _create(c, "network", tenant_id="t1")
    assert net["project_id"] == net["tenant_id"] == "t1"


def pagination(c: TestClient) -> None:
    for _ in range(3):
        _create(c, "network")
    page = c.get("/v2.0/networks?limit=2").json()
    assert len(page["networks"]) == 2 and page["networks_links"][0]["rel"] == "next"


def sorting(c: TestClient) -> None:
    for name in ("b", "a", "c"):
        _create(c, "network", name=name)
    listed = c.get("/v2.0/networks?sort_key=name&sort_dir=desc").json()["networks"]
    assert [n["name"] for n in listed] == ["c", "b", "a"]


def filter_validation(c: TestClient) -> None:
    assert c.get("/v2.0/networks?nmae=x").status_code == 400


def tenantnet_hosts(c: TestClient) -> None:
    _create(c, "host", id="hv1", tunnel_ip="192.0.2.1")
    assert [h["id"] for h in c.get("/v2.0/hosts").json()["hosts"]] == ["hv1"]


def network_ip_availability(c: TestClient) -> None:
    port = _port(c)
    r = c.get(f"/v2.0/network-ip-availabilities/{port['network_id']}")
    assert r.json()["network_ip_availability"]["used_ips"] == 1


def quotas(c: TestClient) -> None:
    assert c.put("/v2.0/quotas/p", json={"quota": {"network": 0}}).status_code == 200
    assert c.post("/v2.0/networks", json={"network": {"project_id": "p"}}).status_code == 409


def quota_details(c: TestClient) -> None:
    _create(c, "network", project_id="p")
    used = c.get("/v2.0/quotas/p/details").json()["quota"]["network"]
    assert used == {"used": 1, "limit": 100, "reserved": 0}


def quota_check_limit(c: TestClient) -> None:
    _create(c, "network", project_id="p")
    body = {"quota": {"network": 0, "check_limit": True}}
    assert c.put("/v2.0/quotas/p", json=body).status_code == 400


def quota_check_limit_default(c: TestClient) -> None:
    _create(c, "network", project_id="p")
    assert c.put("/v2.0/quotas/p", json={"quota": {"network": 0}}).status_code == 400
    forced = {"quota": {"network": 0, "force": True}}
    assert c.put("/v2.0/quotas/p", json=forced).status_code == 200


def _routed(c: TestClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """A router with one subnet (10.5.0.0/24) connected."""
    port = _port(c)
    router = _create(c, "router", name="r")
    subnet_id = port["fixed_ips"][0]["subnet_id"]
    r = c.put(f"/v2.0/routers/{router['id']}/add_router_interface", json={"subnet_id": subnet_id})
    assert r.status_code == 200, r.text
    return router, r.json()


def router(c: TestClient) -> None:
    router, answer = _routed(c)
    (gateway,) = c.get(f"/v2.0/ports?device_id={router['id']}").json()["ports"]
    assert (
        gateway["id"] == answer["port_id"] and gateway["fixed_ips"][0]["ip_address"] == "10.5.0.1"
    )
    assert c.delete(f"/v2.0/routers/{router['id']}").status_code == 409


def extraroute(c: TestClient) -> None:
    router, _ = _routed(c)
    route = {"destination": "10.6.0.0/16", "nexthop": "10.5.0.9"}
    r = c.put(f"/v2.0/routers/{router['id']}", json={"router": {"routes": [route]}})
    assert r.status_code == 200 and r.json()["router"]["routes"] == [route], r.text


def extraroute_atomic(c: TestClient) -> None:
    router, _ = _routed(c)
    route = {"destination": "10.6.0.0/16", "nexthop": "10.5.0.9"}
    url = f"/v2.0/routers/{router['id']}/add_extraroutes"
    r = c.put(url, json={"router": {"routes": [route]}})
    assert r.status_code == 200 and r.json()["router"]["routes"] == [route], r.text
    r = c.put(url.replace("add_", "remove_"), json={"router": {"routes": [route]}})
    assert r.status_code == 200 and r.json()["router"]["routes"] == [], r.text


def dvr(c: TestClient) -> None:
    router = _create(c, "router")
    assert router["distributed"] is True and router["ha"] is False
    assert c.post("/v2.0/routers", json={"router": {"distributed": False}}).status_code == 400


CHECKS: dict[str, Callable[[TestClient], None]] = {
    "provider": provider,
    "binding": binding,
    "port-security": port_security,
    "security-group": security_group,
    "stateful-security-group": stateful_security_group,
    "allowed-address-pairs": allowed_address_pairs,
    "extra_dhcp_opt": extra_dhcp_opt,
    "net-mtu": net_mtu,
    "external-net": external_net,
    "standard-attr-revisions": standard_attr_revisions,
    "revision-if-match": revision_if_match,
    "standard-attr-timestamp": standard_attr_timestamp,
    "standard-attr-tag": standard_attr_tag,
    "tag-creation": tag_creation,
    "tag-ports-during-bulk-creation": tag_ports_during_bulk_creation,
    "standard-attr-description": standard_attr_description,
    "project-id": project_id,
    "pagination": pagination,
    "sorting": sorting,
    "filter-validation": filter_validation,
    "tenantnet-hosts": tenantnet_hosts,
    "network-ip-availability": network_ip_availability,
    "quotas": quotas,
    "quota_details": quota_details,
    "quota-check-limit": quota_check_limit,
    "quota-check-limit-default": quota_check_limit_default,
    "router": router,
    "extraroute": extraroute,
    "extraroute-atomic": extraroute_atomic,
    "dvr": dvr,
}


def _advertised(client: TestClient) -> list[str]:
    return [e["alias"] for e in client.get("/v2.0/extensions").json()["extensions"]]


def test_every_advertised_alias_has_a_check(client: TestClient) -> None:
    advertised = _advertised(client)
    assert len(advertised) == len(set(advertised))
    assert set(advertised) == set(CHECKS), "an alias is advertised without a check, or vice versa"


@pytest.mark.parametrize("alias", sorted(CHECKS))
def test_the_advertised_behaviour(client: TestClient, alias: str) -> None:
    assert alias in _advertised(client)
    one = client.get(f"/v2.0/extensions/{alias}").json()["extension"]
    assert one["alias"] == alias and one["name"]
    CHECKS[alias](client)
