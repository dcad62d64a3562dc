"""The Neutron v2.0 API over a real store: shapes, rules, errors, lists, auth, limits."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

from controller.api.listing import public
from controller.api.request_bodies import MAX_BULK
from controller.events import ChangeEvent
from controller.southbound.ovsdb_host import datapath_id_for
from controller.store import Store, hosts
from tests.unit.conftest import ClientFactory, TestClient

NET_ID = "22222222-2222-4222-8222-222222222222"
REQUIRED_EXTENSIONS = {
    "provider",
    "binding",
    "port-security",
    "standard-attr-revisions",
    "standard-attr-timestamp",
    "standard-attr-tag",
    "standard-attr-description",
    "project-id",
    "external-net",
    "tag-creation",
    "network-ip-availability",
    "quotas",
    "quota_details",
}


def error_of(response: Any, status: int, type_: str | None = None) -> str:
    """Assert a Neutron error of this status (and type) and return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"NeutronError"}
    err = body["NeutronError"]
    assert set(err) == {"type", "message", "detail"}
    assert "Traceback" not in err["message"]
    if type_ is not None:
        assert err["type"] == type_
    return str(err["message"])


def create(client: TestClient, singular: str, **attrs: Any) -> dict[str, Any]:
    r = client.post(f"/v2.0/{singular}s", json={singular: attrs})
    assert r.status_code == 201, r.text
    return dict(r.json()[singular])


def net_with_subnet(client: TestClient, cidr: str = "10.0.0.0/24") -> tuple[str, str]:
    net = create(client, "network", name="n")
    subnet = create(client, "subnet", network_id=net["id"], cidr=cidr)
    return net["id"], subnet["id"]


# -- discovery -------------------------------------------------------------------------------------


def test_version_document(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.json() == {
        "versions": [
            {"id": "v2.0", "status": "CURRENT", "links": [{"href": "/v2.0/", "rel": "self"}]}
        ]
    }


def test_discovery_links_never_reflect_the_host_header(make_client: ClientFactory) -> None:
    """Links come from the configured public URL (Neutron's public_endpoint), or are relative."""
    evil = {"Host": "evil.example:666"}
    for client, base in (
        (make_client(), ""),
        (make_client(public_url="https://net.example:9696/"), "https://net.example:9696"),
    ):
        versions = client.get("/", headers=evil).json()["versions"]
        assert versions[0]["links"][0]["href"] == f"{base}/v2.0/"
        body = client.get("/v2.0/", headers=evil).json()
        hrefs = {r["collection"]: r["links"][0]["href"] for r in body["resources"]}
        assert hrefs["ports"] == f"{base}/v2.0/ports"
        assert "evil" not in client.get("/v2.0/", headers=evil).text


def test_head_is_get_without_a_body(client: TestClient) -> None:
    get, head = client.get("/"), client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert client.head("/v2.0/networks").status_code == 200
    assert client.head("/v2.0/networks/nope").status_code == 404


def test_json_answers_say_utf8(make_client: ClientFactory) -> None:
    client = make_client(auth_token="t")
    for r in (
        client.get("/"),
        client.get("/v2.0/networks"),  # 401 from the middleware
        client.get("/v2.0/networks", headers={"X-Auth-Token": "t"}),
        client.get("/v2.0/networks/x", headers={"X-Auth-Token": "t"}),  # 404
        client.get("/openapi.json", headers={"X-Auth-Token": "t"}),
    ):
        assert r.headers["content-type"] == "application/json; charset=utf-8", r.request.url


def test_extensions(client: TestClient) -> None:
    listed = client.get("/v2.0/extensions").json()["extensions"]
    aliases = {e["alias"] for e in listed}
    assert aliases >= REQUIRED_EXTENSIONS
    assert "ext-gw-mode" not in aliases
    one = client.get("/v2.0/extensions/binding")
    assert one.status_code == 200 and one.json()["extension"]["alias"] == "binding"
    error_of(client.get("/v2.0/extensions/l3-ha"), 404, "ExtensionNotFound")


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v2.0/ports" in schema["paths"]
    post = schema["paths"]["/v2.0/networks"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    envelope = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"network", "networks"} <= set(envelope["properties"])
    assert client.get("/docs").status_code == 200


# -- networks --------------------------------------------------------------------------------------


def test_network_create_defaults_and_shape(client: TestClient) -> None:
    net = create(client, "network", id=NET_ID, name="blue", tenant_id="proj")
    assert net["id"] == NET_ID
    assert net["project_id"] == net["tenant_id"] == "proj"
    assert net["status"] == "ACTIVE" and net["admin_state_up"] is True
    assert net["shared"] is False and net["router:external"] is False
    assert net["provider:network_type"] == "vxlan"
    assert net["provider:segmentation_id"] == 1
    assert net["mtu"] == 1450
    assert net["revision_number"] == 1
    assert net["created_at"].endswith("Z") and net["updated_at"].endswith("Z")
    assert net["tags"] == [] and net["subnets"] == [] and net["description"] == ""
    assert not any(k.startswith("_") for k in net)


def test_gre_network_and_segmentation_id_rules(client: TestClient) -> None:
    gre = create(
        client,
        "network",
        **{"provider:network_type": "gre", "provider:segmentation_id": "4000000000"},
    )
    assert gre["provider:segmentation_id"] == 4000000000 and gre["mtu"] == 1458
    taken = client.post(
        "/v2.0/networks",
        json={"network": {"provider:network_type": "gre", "provider:segmentation_id": 4000000000}},
    )
    assert "4000000000" in error_of(taken, 409, "TunnelIdInUse")
    too_big = client.post(
        "/v2.0/networks", json={"network": {"provider:segmentation_id": 16777216}}
    )
    assert "provider:segmentation_id" in error_of(too_big, 400)
    assert "provider:segmentation_id" in error_of(
        client.post("/v2.0/networks", json={"network": {"provider:segmentation_id": "ten"}}), 400
    )
    assert "provider:network_type" in error_of(
        client.post("/v2.0/networks", json={"network": {"provider:network_type": "vlan"}}), 400
    )


def test_internal_fields_never_shown(client: TestClient, store: Store) -> None:
    net = create(client, "network")
    assert "_key" in store.get_network(net["id"])
    for body in (
        client.get(f"/v2.0/networks/{net['id']}").json()["network"],
        client.get("/v2.0/networks").json()["networks"][0],
        client.get(f"/v2.0/networks/{net['id']}?fields=_key&fields=id").json()["network"],
    ):
        assert not any(k.startswith("_") for k in body)


def test_network_subnets_list_follows_subnets(client: TestClient) -> None:
    net_id, subnet_id = net_with_subnet(client)
    assert client.get(f"/v2.0/networks/{net_id}").json()["network"]["subnets"] == [subnet_id]


# -- subnets ---------------------------------------------------------------------------------------


def test_subnet_defaults(client: TestClient) -> None:
    net = create(client, "network")
    sub = create(client, "subnet", network_id=net["id"], cidr="10.5.0.0/24", name="s")
    assert sub["ip_version"] == 4
    assert sub["gateway_ip"] == "10.5.0.1"
    assert sub["allocation_pools"] == [{"start": "10.5.0.2", "end": "10.5.0.254"}]
    assert sub["dns_nameservers"] == [] and sub["host_routes"] == []
    assert sub["enable_dhcp"] is True and sub["revision_number"] == 1
    v6 = create(client, "subnet", network_id=net["id"], cidr="2001:db8::/64", gateway_ip=None)
    assert v6["ip_version"] == 6 and v6["gateway_ip"] is None


@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"cidr": "10.0.0.0/33"}, "cidr"),
        ({"cidr": "banana"}, "cidr"),
        ({"cidr": "10.0.0.0/24", "ip_version": 6}, "ip_version"),
        ({"cidr": "10.0.0.0/24", "ip_version": 5}, "ip_version"),
        ({"cidr": "10.0.0.0/24", "gateway_ip": "10.0.9.1"}, "gateway_ip"),
        ({"cidr": "10.0.0.0/24", "dns_nameservers": ["8.8.8"]}, "dns_nameservers"),
        (
            {"cidr": "10.0.0.0/24", "host_routes": [{"destination": "x", "nexthop": "1.1.1.1"}]},
            "host_routes",
        ),
    ],
)
def test_subnet_validation_names_the_field(
    client: TestClient, attrs: dict[str, Any], field: str
) -> None:
    net = create(client, "network")
    r = client.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], **attrs}})
    assert field in error_of(r, 400)


def test_subnet_dns_nameservers_must_be_of_the_subnet_ip_version(client: TestClient) -> None:
    """An IPv6 nameserver on an IPv4 subnet (or the reverse) was accepted; the DHCP responder
    could not encode it and no port on the subnet got a DHCP answer.  A 400, as Neutron, on
    create and on update, and the subnet is left as it was."""
    net = create(client, "network")
    for cidr, wrong in (("10.0.0.0/24", "2001:db8::53"), ("2001:db8::/64", "192.0.2.53")):
        body = {"network_id": net["id"], "cidr": cidr, "dns_nameservers": [wrong]}
        r = client.post("/v2.0/subnets", json={"subnet": body})
        assert "dns_nameservers" in error_of(r, 400)
    assert client.get("/v2.0/subnets").json()["subnets"] == []
    sub = create(
        client, "subnet", network_id=net["id"], cidr="10.0.0.0/24", dns_nameservers=["192.0.2.53"]
    )
    r = client.put(
        f"/v2.0/subnets/{sub['id']}", json={"subnet": {"dns_nameservers": ["2001:db8::53"]}}
    )
    message = error_of(r, 400)
    assert "dns_nameservers" in message and "IPv4" in message
    after = client.get(f"/v2.0/subnets/{sub['id']}").json()["subnet"]
    assert after["dns_nameservers"] == ["192.0.2.53"]


def test_subnet_on_missing_network(client: TestClient) -> None:
    r = client.post("/v2.0/subnets", json={"subnet": {"network_id": "nope", "cidr": "10.0.0.0/24"}})
    assert error_of(r, 404, "NetworkNotFound") == "Network nope could not be found."


# -- ports -----------------------------------------------------------------------------------------


def test_port_create_defaults(client: TestClient) -> None:
    net_id, subnet_id = net_with_subnet(client)
    port = create(client, "port", network_id=net_id, status="ACTIVE", device_id="vm1")
    assert port["status"] == "DOWN"  # controller-owned
    assert port["mac_address"].startswith("fa:16:3e:")
    assert port["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": "10.0.0.2"}]
    assert port["binding:vif_type"] == "ovs" and port["binding:vnic_type"] == "normal"
    assert port["binding:host_id"] == ""
    assert port["port_security_enabled"] is True
    assert port["allowed_address_pairs"] == []
    (default,) = client.get("/v2.0/security-groups?name=default").json()["security_groups"]
    assert port["security_groups"] == [default["id"]]  # the project's, created on first use
    assert port["admin_state_up"] is True and port["device_id"] == "vm1"
    assert port["revision_number"] == 1


def test_port_on_missing_network(client: TestClient) -> None:
    r = client.post("/v2.0/ports", json={"port": {"network_id": "abc"}})
    assert error_of(r, 404, "NetworkNotFound") == "Network abc could not be found."


def test_port_mac_rules(client: TestClient) -> None:
    net_id, _ = net_with_subnet(client)
    bad = client.post("/v2.0/ports", json={"port": {"network_id": net_id, "mac_address": "zz"}})
    assert error_of(bad, 400) == (
        "Invalid input for mac_address. Reason: 'zz' is not a valid MAC address."
    )
    create(client, "port", network_id=net_id, mac_address="FA:16:3E:AA:BB:CC")
    dup = client.post(
        "/v2.0/ports", json={"port": {"network_id": net_id, "mac_address": "fa-16-3e-aa-bb-cc"}}
    )
    message = error_of(dup, 409, "MacAddressInUse")
    assert "fa:16:3e:aa:bb:cc" in message and "MacAddressInUse" in message


def test_port_ip_rules(client: TestClient) -> None:
    net_id, subnet_id = net_with_subnet(client)
    fixed = create(client, "port", network_id=net_id, fixed_ips=[{"ip_address": "10.0.0.20"}])
    assert fixed["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": "10.0.0.20"}]
    again = client.post(
        "/v2.0/ports",
        json={"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.20"}]}},
    )
    assert "10.0.0.20" in error_of(again, 409, "IpAddressAlreadyAllocated")
    outside = client.post(
        "/v2.0/ports",
        json={
            "port": {
                "network_id": net_id,
                "fixed_ips": [{"subnet_id": subnet_id, "ip_address": "192.168.1.1"}],
            }
        },
    )
    error_of(outside, 400, "InvalidIpForSubnet")
    bad_ip = client.post(
        "/v2.0/ports",
        json={"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.300"}]}},
    )
    assert "fixed_ips" in error_of(bad_ip, 400)
    by_subnet = create(client, "port", network_id=net_id, fixed_ips=[{"subnet_id": subnet_id}])
    assert by_subnet["fixed_ips"][0]["ip_address"] == "10.0.0.2"


def test_port_update_and_read_only(client: TestClient) -> None:
    net_id, _ = net_with_subnet(client)
    other = create(client, "network")
    port = create(client, "port", network_id=net_id)
    r = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"name": "eth0", "status": "X"}})
    assert r.status_code == 200
    updated = r.json()["port"]
    assert updated["name"] == "eth0" and updated["status"] == "DOWN"
    assert updated["revision_number"] == 2
    moved = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"network_id": other["id"]}})
    assert "network_id" in error_of(moved, 400)
    renamed = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"id": "x"}})
    assert "id" in error_of(renamed, 400)
    error_of(client.put("/v2.0/ports/nope", json={"port": {"name": "x"}}), 404, "PortNotFound")


def test_port_update_with_null_fixed_ips_is_a_400(client: TestClient) -> None:
    """``fixed_ips: null`` on update answered 200 and removed every address (null was read as
    []), though null on create means "one address by default".  Neutron answers 400; the port
    keeps its address, and [] still removes them all."""
    net_id, subnet_id = net_with_subnet(client)
    port = create(client, "port", network_id=net_id)
    url = f"/v2.0/ports/{port['id']}"
    assert "fixed_ips" in error_of(client.put(url, json={"port": {"fixed_ips": None}}), 400)
    kept = client.get(url).json()["port"]
    assert kept["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": "10.0.0.2"}]
    assert kept["revision_number"] == 1
    emptied = client.put(url, json={"port": {"fixed_ips": []}})
    assert emptied.status_code == 200 and emptied.json()["port"]["fixed_ips"] == []


def test_if_match_revision(client: TestClient) -> None:
    net = create(client, "network")
    url = f"/v2.0/networks/{net['id']}"
    stale = client.put(
        url, json={"network": {"name": "a"}}, headers={"If-Match": "revision_number=5"}
    )
    assert "current revision is 1" in error_of(stale, 412, "RevisionNumberConstraintFailed")
    ok = client.put(url, json={"network": {"name": "a"}}, headers={"If-Match": "revision_number=1"})
    assert ok.status_code == 200 and ok.json()["network"]["revision_number"] == 2
    error_of(client.delete(url, headers={"If-Match": "revision_number=1"}), 412)
    error_of(client.put(url, json={"network": {}}, headers={"If-Match": "revision_number=x"}), 400)
    # other If-Match forms (ETags, other names) are not ours: ignored, as Neutron does, and a
    # revision_number among them is still found
    for other in ('"etag-9"', "generation=9", 'W/"x", rev=9'):
        answer = client.put(url, json={"network": {"name": "b"}}, headers={"If-Match": other})
        assert answer.status_code == 200, (other, answer.text)
    error_of(client.delete(url, headers={"If-Match": 'W/"x", revision_number=1'}), 412)
    revision = client.get(url).json()["network"]["revision_number"]
    deleted = client.delete(url, headers={"If-Match": f"revision_number={revision}"})
    assert deleted.status_code == 204


def test_delete_rules(client: TestClient) -> None:
    net_id, subnet_id = net_with_subnet(client)
    port = create(client, "port", network_id=net_id)
    error_of(client.delete(f"/v2.0/networks/{net_id}"), 409, "NetworkInUse")
    error_of(client.delete(f"/v2.0/subnets/{subnet_id}"), 409, "SubnetInUse")
    r = client.delete(f"/v2.0/ports/{port['id']}")
    assert r.status_code == 204 and r.content == b""
    assert client.delete(f"/v2.0/networks/{net_id}").status_code == 204
    error_of(client.get(f"/v2.0/subnets/{subnet_id}"), 404, "SubnetNotFound")
    error_of(client.delete(f"/v2.0/networks/{net_id}"), 404, "NetworkNotFound")


# -- bulk ------------------------------------------------------------------------------------------


def test_bulk_create(client: TestClient, events: list[ChangeEvent]) -> None:
    r = client.post("/v2.0/networks", json={"networks": [{"name": "a"}, {"name": "b"}]})
    assert r.status_code == 201
    assert [n["name"] for n in r.json()["networks"]] == ["a", "b"]
    assert len({n["provider:segmentation_id"] for n in r.json()["networks"]}) == 2
    assert len(events) == 2


def test_bulk_create_is_atomic(client: TestClient, store: Store) -> None:
    net_id, _ = net_with_subnet(client)
    r = client.post(
        "/v2.0/ports",
        json={
            "ports": [
                {"network_id": net_id, "name": "ok1"},
                {"network_id": net_id, "mac_address": "fa:16:3e:00:00:09"},
                {"network_id": net_id, "mac_address": "fa:16:3e:00:00:09"},
            ]
        },
    )
    error_of(r, 409, "MacAddressInUse")
    assert store.list_ports() == []
    bad_second = client.post("/v2.0/networks", json={"networks": [{"name": "x"}, {"name": 5}]})
    error_of(bad_second, 400)
    assert [n["name"] for n in store.list_networks()] == ["n"]


def test_bulk_create_is_bounded(client: TestClient, store: Store) -> None:
    """A bulk is one write transaction: 3,000 networks (63 KB of JSON) held the store's write
    lock for 9 s and a concurrent GET waited as long.  More than `MAX_BULK` objects is a 400
    naming the collection, before anything is written; `MAX_BULK` (the bench's chunk) is fine."""
    too_many = client.post("/v2.0/networks", json={"networks": [{}] * (MAX_BULK + 1)})
    assert "networks" in error_of(too_many, 400) and str(MAX_BULK) in too_many.text
    assert store.list_networks() == []
    net_id, _ = net_with_subnet(client, "10.0.0.0/20")
    ports = client.post("/v2.0/ports", json={"ports": [{"network_id": net_id}] * MAX_BULK})
    assert ports.status_code == 201, ports.text
    assert len(ports.json()["ports"]) == MAX_BULK


def test_body_must_name_the_resource(client: TestClient) -> None:
    error_of(client.post("/v2.0/networks", json={}), 400)
    error_of(client.post("/v2.0/networks", json={"network": {}, "networks": [{}]}), 400)
    error_of(client.post("/v2.0/networks", json={"networks": []}), 400)
    assert "Unrecognized attribute(s) 'subnet'" in error_of(
        client.post("/v2.0/networks", json={"subnet": {}}), 400
    )


# -- malformed input -------------------------------------------------------------------------------


def test_unknown_attribute(client: TestClient) -> None:
    r = client.post("/v2.0/networks", json={"network": {"name": "x", "foo": 1}})
    assert error_of(r, 400, "HTTPBadRequest") == "Unrecognized attribute(s) 'foo'"


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{not json", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b"null", {"content-type": "application/json"}),
        (b'{"network": 5}', {"content-type": "application/json"}),
        (b'{"network": {"name": "x"}}', {"content-type": "text/plain"}),
        (b"\xff\xfe", {"content-type": "application/json"}),
    ],
)
def test_malformed_bodies_are_400(
    client: TestClient, content: bytes, headers: dict[str, str]
) -> None:
    error_of(client.post("/v2.0/networks", content=content, headers=headers), 400)


@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"name": 5}, "name"),
        ({"admin_state_up": "maybe"}, "admin_state_up"),
        ({"tags": "x"}, "tags"),
        ({"mtu": 10}, "mtu"),
        ({"mtu": 9000}, "mtu"),
        ({"shared": None}, "shared"),
    ],
)
def test_wrong_types_name_the_field(client: TestClient, attrs: dict[str, Any], field: str) -> None:
    message = error_of(client.post("/v2.0/networks", json={"network": attrs}), 400)
    assert message.startswith(f"Invalid input for {field}. Reason: ")


def test_unknown_routes_and_methods(client: TestClient) -> None:
    error_of(client.get("/v2.0/floatingips"), 404)
    error_of(client.delete("/v2.0/networks"), 405, "HTTPMethodNotAllowed")
    error_of(client.get("/v2.0/ports/does-not-exist"), 404, "PortNotFound")


def test_internal_errors_are_neutron_errors_without_traceback(
    make_client: ClientFactory, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    client = make_client(raise_server_exceptions=False)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "page", broken)
    r = client.get("/v2.0/networks")
    message = error_of(r, 500, "HTTPInternalServerError")
    assert "secret" not in message and "secret" not in r.text
    assert "secret internals" in caplog.text  # logged server-side


# -- body size -------------------------------------------------------------------------------------


def test_oversized_body_is_413_before_parsing(make_client: ClientFactory, store: Store) -> None:
    client = make_client(max_body_bytes=200)
    big = b'{"network": {"name": "' + b"x" * 300 + b'"}}'
    r = client.post("/v2.0/networks", content=big, headers={"content-type": "application/json"})
    error_of(r, 413, "RequestEntityTooLarge")
    garbage = b"\x00" * 500  # not even JSON: refused for its size, not its syntax
    error_of(client.post("/v2.0/networks", content=garbage), 413)
    assert store.list_networks() == []


def test_oversized_chunked_body_is_413(make_client: ClientFactory, store: Store) -> None:
    client = make_client(max_body_bytes=200)

    def chunks() -> Iterator[bytes]:
        yield b'{"network": {"name": "'
        for _ in range(10):
            yield b"y" * 50
        yield b'"}}'

    r = client.post(
        "/v2.0/networks", content=chunks(), headers={"content-type": "application/json"}
    )
    error_of(r, 413, "RequestEntityTooLarge")
    assert store.list_networks() == []


def test_body_under_the_limit_passes(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=200)
    assert client.post("/v2.0/networks", json={"network": {"name": "small"}}).status_code == 201


# -- listing ---------------------------------------------------------------------------------------


def test_filters(client: TestClient) -> None:
    net_id, subnet_id = net_with_subnet(client)
    p1 = create(client, "port", network_id=net_id, name="a", **{"binding:host_id": "hv1"})
    p2 = create(client, "port", network_id=net_id, name="b", admin_state_up=False)
    p3 = create(client, "port", network_id=net_id, name="c", **{"binding:host_id": "hv2"})

    def names(query: str) -> list[str]:
        r = client.get(f"/v2.0/ports?{query}")
        assert r.status_code == 200, r.text
        return sorted(p["name"] for p in r.json()["ports"])

    assert names("binding%3Ahost_id=hv1") == ["a"]
    assert names("binding:host_id=hv2") == ["c"]
    assert names("binding%3Ahost_id=hv1&binding%3Ahost_id=hv2") == ["a", "c"]
    assert names("name=a&name=b") == ["a", "b"]
    assert names("admin_state_up=False") == ["b"]
    assert names("admin_state_up=true") == ["a", "c"]
    assert names(f"network_id={net_id}&name=c") == ["c"]
    assert names(f"fixed_ips=ip_address%3D{p2['fixed_ips'][0]['ip_address']}") == ["b"]
    assert names(f"fixed_ips=subnet_id%3D{subnet_id}") == ["a", "b", "c"]
    assert names(f"id={p3['id']}") == ["c"]
    assert names("name=zzz") == []
    assert "nonsense" in error_of(client.get("/v2.0/ports?nonsense=1"), 400)
    networks = client.get("/v2.0/networks?provider%3Anetwork_type=vxlan").json()["networks"]
    assert [n["id"] for n in networks] == [net_id]
    del p1


def test_filters_find_what_was_stored_by_the_spelling_that_was_sent(client: TestClient) -> None:
    """The store keeps one spelling of MACs, IPs, CIDRs and rule values; a filter by the value
    the client sent (any spelling the create accepted) still finds the object."""
    net = create(client, "network", name="n")
    v6 = create(
        client, "subnet", network_id=net["id"], cidr="2001:DB8:0::/64", ip_version=6,
        gateway_ip="2001:DB8::0001",
    )  # fmt: skip
    port = create(
        client, "port", network_id=net["id"], mac_address="FA-16-3E-AA-BB-CC",
        fixed_ips=[{"subnet_id": v6["id"], "ip_address": "2001:DB8:0:0::0005"}],
    )  # fmt: skip
    create(client, "port", network_id=net["id"])  # another port, which no filter finds
    host = create(client, "host", id="hv1", tunnel_ip="192.0.2.10", mgmt_ip="2001:DB8::A")
    group = client.post("/v2.0/security-groups", json={"security_group": {"name": "g"}}).json()[
        "security_group"
    ]
    rule = client.post(
        "/v2.0/security-group-rules",
        json={"security_group_rule": {
            "security_group_id": group["id"], "direction": "ingress", "ethertype": "ipv4",
            "protocol": "TCP", "remote_ip_prefix": "10.0.0.5/24",
        }},
    ).json()["security_group_rule"]  # fmt: skip

    def ids(path: str, query: dict[str, str]) -> list[str]:
        r = client.get(f"/v2.0/{path}", params=query)
        assert r.status_code == 200, r.text
        return [o["id"] for o in next(iter(r.json().values()))]

    assert ids("ports", {"mac_address": "FA-16-3E-AA-BB-CC"}) == [port["id"]]
    assert ids("ports", {"mac_address": "fa16.3eaa.bbcc"}) == [port["id"]]
    assert ids("ports", {"fixed_ips": "ip_address=2001:DB8:0:0::0005"}) == [port["id"]]
    assert ids("subnets", {"cidr": "2001:DB8:0::/64"}) == [v6["id"]]
    assert ids("subnets", {"gateway_ip": "2001:DB8::0001"}) == [v6["id"]]
    assert ids("hosts", {"mgmt_ip": "2001:DB8::A"}) == [host["id"]]
    sent = {"ethertype": "ipv4", "protocol": "TCP", "remote_ip_prefix": "10.0.0.5/24"}
    for name, spelling in sent.items():  # each sent spelling, the others as stored
        query = {"direction": "ingress", **{n: rule[n] for n in sent}, name: spelling}
        assert ids("security-group-rules", query) == [rule["id"]], name
    # A value that does not parse still matches nothing (and is no error).
    assert ids("ports", {"mac_address": "not-a-mac"}) == []
    assert ids("ports", {"fixed_ips": "ip_address=10.0.0.0999"}) == []


def test_tag_filters_and_tag_routes(client: TestClient) -> None:
    a = create(client, "network", name="a", tags=["red", "big"])
    create(client, "network", name="b", tags=["red"])
    create(client, "network", name="c")

    def names(query: str) -> list[str]:
        return sorted(n["name"] for n in client.get(f"/v2.0/networks?{query}").json()["networks"])

    assert names("tags=red,big") == ["a"]
    assert names("tags-any=big,red") == ["a", "b"]
    assert names("not-tags=red") == ["c"]
    assert names("not-tags-any=big") == ["b", "c"]
    url = f"/v2.0/networks/{a['id']}/tags"
    assert client.put(url, json={"tags": ["x", "y"]}).json() == {"tags": ["x", "y"]}
    assert client.put(f"{url}/z").status_code == 201
    assert client.get(url).json() == {"tags": ["x", "y", "z"]}
    assert client.get(f"{url}/x").status_code == 204
    assert client.delete(f"{url}/x").status_code == 204
    error_of(client.get(f"{url}/x"), 404, "TagNotFound")
    assert client.delete(url).status_code == 204
    assert client.get(f"/v2.0/networks/{a['id']}").json()["network"]["tags"] == []


def test_a_repeated_tag_is_kept_once(client: TestClient) -> None:
    """Tags are a set: a create or update naming one twice keeps it once, so adding that tag
    again is the no-op it is (no new revision) and removing it leaves no copy behind."""
    net = create(client, "network", name="n", tags=["a", "b", "a"])
    assert net["tags"] == ["a", "b"]
    url = f"/v2.0/networks/{net['id']}"
    assert client.put(f"{url}/tags/a").status_code == 201
    assert client.get(url).json()["network"]["revision_number"] == net["revision_number"]
    updated = client.put(url, json={"network": {"tags": ["c", "c"]}}).json()["network"]
    assert updated["tags"] == ["c"]
    assert client.delete(f"{url}/tags/c").status_code == 204
    error_of(client.get(f"{url}/tags/c"), 404, "TagNotFound")
    # A CloudStack create sent again is still recognised as the same create.
    body = {"network": {"id": str(uuid4()), "name": "cs", "tags": ["x", "x"]}}
    first = client.post("/controller/nb/v2/neutron/networks", json=body)
    assert first.status_code == 201 and first.json()["network"]["tags"] == ["x"]
    again = client.post("/controller/nb/v2/neutron/networks", json=body)
    assert again.status_code == 201 and again.json() == first.json(), again.text


@pytest.mark.parametrize("plural", ["networks", "subnets", "ports"])
def test_tag_creation_adds_tags(client: TestClient, plural: str) -> None:
    """Extension tag-creation: ``POST .../tags`` adds (Neutron answers 201 with the posted
    tags), keeps what was there, and is refused as a whole when a tag is bad."""
    net_id, subnet_id = net_with_subnet(client)
    obj_id = {"networks": net_id, "subnets": subnet_id}.get(plural) or create(
        client, "port", network_id=net_id, tags=["old"]
    )["id"]
    url = f"/v2.0/{plural}/{obj_id}/tags"
    client.put(url, json={"tags": ["old"]})
    r = client.post(url, json={"tags": ["new", "old", "new"]})
    assert r.status_code == 201 and r.json() == {"tags": ["new", "old"]}
    assert client.get(url).json() == {"tags": ["old", "new"]}
    error_of(client.post(url, json={"tags": ["ok", "x" * 61]}), 400, "HTTPBadRequest")
    error_of(client.post(url, json={"tags": [f"t{i}" for i in range(99)]}), 400)  # 101 in all
    error_of(client.post(url, json={"tag": ["a"]}), 400)
    assert client.get(url).json() == {"tags": ["old", "new"]}
    missing = f"/v2.0/{plural}/{uuid4()}/tags"
    error_of(client.post(missing, json={"tags": ["a"]}), 404)


def test_concurrent_tag_adds_lose_nothing(client: TestClient) -> None:
    """Adding reads the tags and writes them on that revision only, retrying otherwise."""
    import threading

    net = create(client, "network")
    url = f"/v2.0/networks/{net['id']}/tags"
    start = threading.Barrier(6)
    statuses: list[int] = []

    def add(i: int) -> None:
        start.wait()
        for j in range(3):
            if j % 2:
                statuses.append(client.put(f"{url}/t{i}-{j}").status_code)
            else:
                statuses.append(client.post(url, json={"tags": [f"t{i}-{j}"]}).status_code)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wanted = {f"t{i}-{j}" for i in range(6) for j in range(3)}
    got = set(client.get(url).json()["tags"])
    assert set(statuses) == {201}
    assert got == wanted


def test_405_names_every_method_of_the_path(client: TestClient) -> None:
    net = create(client, "network")
    r = client.patch(f"/v2.0/networks/{net['id']}/tags")
    error_of(r, 405, "HTTPMethodNotAllowed")
    assert r.headers["allow"] == "DELETE, GET, HEAD, POST, PUT"
    assert client.delete("/v2.0/networks").headers["allow"] == "GET, HEAD, POST"
    assert client.post(f"/v2.0/networks/{net['id']}").headers["allow"] == "DELETE, GET, HEAD, PUT"
    assert client.post("/v2.0/quotas/p").headers["allow"] == "DELETE, GET, HEAD, PUT"


def test_fields_projection(client: TestClient) -> None:
    net = create(client, "network", name="p")
    listed = client.get("/v2.0/networks?fields=id&fields=name").json()["networks"]
    assert listed == [{"id": net["id"], "name": "p"}]
    comma = client.get("/v2.0/networks?fields=name,mtu").json()["networks"]
    assert comma == [{"name": "p", "mtu": 1450}]
    shown = client.get(f"/v2.0/networks/{net['id']}?fields=provider:segmentation_id").json()
    assert shown == {"network": {"provider:segmentation_id": 1}}


def test_pagination(client: TestClient) -> None:
    made = sorted(create(client, "network", name=f"n{i}")["id"] for i in range(7))
    seen: list[str] = []
    url: str | None = "/v2.0/networks?limit=3&fields=id"
    pages = 0
    while url:
        body = client.get(url).json()
        seen.extend(n["id"] for n in body["networks"])
        links = body.get("networks_links", [])
        url = next((link["href"] for link in links if link["rel"] == "next"), None)
        pages += 1
    assert seen == made  # sorted by id, nothing twice, nothing lost
    assert pages == 3
    past_end = client.get(f"/v2.0/networks?marker={made[-1]}").json()
    assert past_end == {"networks": []}
    middle = client.get(f"/v2.0/networks?marker={made[2]}&limit=2").json()
    assert [n["id"] for n in middle["networks"]] == made[3:5]
    assert "marker=" + made[4] in middle["networks_links"][0]["href"]
    error_of(client.get("/v2.0/networks?marker=nope"), 404, "NetworkNotFound")
    error_of(client.get("/v2.0/networks?limit=-1"), 400)
    error_of(client.get("/v2.0/networks?limit=abc"), 400)
    error_of(client.get("/v2.0/networks?page_reverse=True"), 400)
    assert client.get("/v2.0/networks?page_reverse=False").status_code == 200
    desc = client.get("/v2.0/networks?sort_key=name&sort_dir=desc&limit=2").json()
    assert [n["name"] for n in desc["networks"]] == ["n6", "n5"]


def test_pagination_keeps_filters(client: TestClient) -> None:
    for i in range(4):
        create(client, "network", name="even" if i % 2 == 0 else "odd")
    first = client.get("/v2.0/networks?name=even&limit=1").json()
    href = first["networks_links"][0]["href"]
    assert "name=even" in href
    second = client.get(href).json()
    assert [n["name"] for n in second["networks"]] == ["even"]
    assert second["networks"][0]["id"] != first["networks"][0]["id"]


# -- hosts -----------------------------------------------------------------------------------------


def test_hosts_api(client: TestClient, store: Store) -> None:
    host = create(client, "host", id="hv1", tunnel_ip="192.0.2.1")
    assert host == {
        **host,
        "ovsdb": "tcp:192.0.2.1:6640",
        "integration_bridge": "br-int",
        "datapath_type": "system",
        "status": "disconnected",
        "datapath_id": None,
    }
    error_of(
        client.post("/v2.0/hosts", json={"host": {"id": "hv1", "tunnel_ip": "192.0.2.1"}}),
        409,
        "HostExists",
    )
    bad = client.post(
        "/v2.0/hosts", json={"host": {"id": "hv2", "tunnel_ip": "192.0.2.2", "ovsdb": "tcp:x"}}
    )
    assert "ovsdb" in error_of(bad, 400)
    missing = client.post("/v2.0/hosts", json={"host": {"id": "hv2"}})
    assert "tunnel_ip" in error_of(missing, 400)
    store.set_host_state("hv1", "connected", "00000000000000aa")
    shown = client.get("/v2.0/hosts/hv1").json()["host"]
    assert shown["status"] == "connected" and shown["datapath_id"] == "00000000000000aa"
    r = client.put("/v2.0/hosts/hv1", json={"host": {"ovsdb": "unix:/var/run/openvswitch/db.sock"}})
    assert r.status_code == 200 and r.json()["host"]["ovsdb"].startswith("unix:")
    assert [h["id"] for h in client.get("/v2.0/hosts?status=connected").json()["hosts"]] == ["hv1"]
    assert client.delete("/v2.0/hosts/hv1").status_code == 204
    error_of(client.get("/v2.0/hosts/hv1"), 404, "HostNotFound")


def test_with_tls_a_hosts_ovsdb_is_ssl_and_never_plain_tcp(
    client: TestClient, store: Store
) -> None:
    """The controller speaks TLS to the hypervisors: a host registered without a target was
    dialled over plain tcp:, and an explicit tcp: target was taken, so the OVSDB session
    (which reports which VM is plugged where) ran in clear text and unauthenticated (found by
    a review).  Now the default is ssl:, tcp: is a 400 naming ovsdb, unix: stays."""
    store.ovsdb_scheme = "ssl"  # what the service sets with ofp_tls
    host = create(client, "host", id="hv1", tunnel_ip="192.0.2.1")
    assert host["ovsdb"] == "ssl:192.0.2.1:6640"
    plain = {"id": "hv2", "tunnel_ip": "192.0.2.2", "ovsdb": "tcp:192.0.2.2:6640"}
    assert "use ssl:" in error_of(client.post("/v2.0/hosts", json={"host": plain}), 400)
    assert client.get("/v2.0/hosts/hv2").status_code == 404
    moved = client.put("/v2.0/hosts/hv1", json={"host": {"ovsdb": "tcp:192.0.2.1:6640"}})
    assert "ovsdb" in error_of(moved, 400)
    assert client.get("/v2.0/hosts/hv1").json()["host"]["ovsdb"] == "ssl:192.0.2.1:6640"
    local = client.put("/v2.0/hosts/hv1", json={"host": {"ovsdb": "unix:/run/openvswitch/db.sock"}})
    assert local.status_code == 200


def test_a_host_whose_datapath_id_is_taken_is_a_409(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two host ids that hash to one datapath id (forced here): the second is refused with a
    409 naming the field, through the Neutron-style API and CloudStack's connection manager."""

    def collide(host_id: str) -> int:
        return 0x2B if host_id.startswith("hv") else datapath_id_for(host_id)

    monkeypatch.setattr(hosts, "datapath_id_for", collide, raising=False)
    create(client, "host", id="hv1", tunnel_ip="192.0.2.1")
    clash = client.post("/v2.0/hosts", json={"host": {"id": "hv2", "tunnel_ip": "192.0.2.2"}})
    message = error_of(clash, 409, "HostDatapathIdInUse")
    assert "datapath_id" in message and "hv1" in message
    url = "/controller/nb/v2/connectionmanager/node/OVS/hv3/address/192.0.2.3/port/6640"
    error_of(client.put(url), 409, "HostDatapathIdInUse")
    assert [h["id"] for h in store.list_hosts()] == ["hv1"]


# -- auth ------------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_token_auth(make_client: ClientFactory) -> None:
    client = make_client(auth_token="s3cret")
    assert client.get("/").status_code == 200  # discovery stays open
    error_of(client.get("/v2.0/networks"), 401, "HTTPUnauthorized")
    error_of(client.get("/v2.0/networks", headers={"X-Auth-Token": "wrong"}), 401)
    error_of(client.post("/v2.0/networks", json={"network": {}}), 401)
    error_of(client.get("/openapi.json"), 401)
    assert client.get("/v2.0/networks", headers={"X-Auth-Token": "s3cret"}).status_code == 200
    error_of(client.get("/v2.0/networks", headers=basic("admin", "s3cret")), 401)


def test_basic_auth(make_client: ClientFactory) -> None:
    client = make_client(auth_token="tok", basic_user="admin", basic_password="pw")
    assert client.get("/v2.0/networks", headers=basic("admin", "pw")).status_code == 200
    assert client.get("/v2.0/networks", headers={"X-Auth-Token": "tok"}).status_code == 200
    r = client.get("/v2.0/networks", headers=basic("admin", "nope"))
    error_of(r, 401)
    assert r.headers["www-authenticate"].startswith("Basic")
    error_of(client.get("/v2.0/networks", headers={"Authorization": "Basic !!!"}), 401)
    error_of(client.get("/v2.0/networks", headers={"Authorization": "Bearer tok"}), 401)


def test_unauthenticated_large_body_is_401_not_413(make_client: ClientFactory) -> None:
    client = make_client(auth_token="tok", max_body_bytes=10)
    error_of(client.post("/v2.0/networks", content=b"x" * 100), 401)


# -- CloudStack / OpenDaylight paths ---------------------------------------------------------------

ODL = "/controller/nb/v2/neutron"


def test_cloudstack_networks_never_merge(make_client: ClientFactory) -> None:
    client = make_client(basic_user="admin", basic_password="pw")
    auth = basic("admin", "pw")
    made = []
    for i in range(3):
        body = {
            "network": {
                "id": f"00000000-0000-4000-8000-00000000000{i}",
                "name": f"cs{i}",
                "shared": False,
                "tenant_id": "acct",
                "provider:network_type": "gre",
                "provider:segmentation_id": 100,
            }
        }
        r = client.post(f"{ODL}/networks", json=body, headers=auth)
        assert r.status_code == 201, r.text
        made.append(r.json()["network"])
    assert [n["id"] for n in made] == [f"00000000-0000-4000-8000-00000000000{i}" for i in range(3)]
    assert made[0]["provider:segmentation_id"] == 100
    assert len({n["provider:segmentation_id"] for n in made}) == 3
    # ...while the Neutron path keeps the strict rule.
    strict = client.post(
        "/v2.0/networks",
        json={"network": {"provider:network_type": "gre", "provider:segmentation_id": 100}},
        headers=auth,
    )
    error_of(strict, 409, "TunnelIdInUse")
    error_of(client.get(f"{ODL}/networks"), 401)


def test_cloudstack_ports(client: TestClient) -> None:
    net = client.post(f"{ODL}/networks", json={"network": {"name": "cs"}}).json()["network"]
    port_id = "33333333-3333-4333-8333-333333333333"
    body = {
        "port": {
            "id": port_id,
            "name": port_id,
            "tenant_id": "acct",
            "network_id": net["id"],
            "mac_address": "02:00:00:00:00:11",
            "device_id": "44444444-4444-4444-8444-444444444444",
            "admin_state_up": True,
            "status": "ACTIVE",
            "fixed_ips": [],
        }
    }
    r = client.post(f"{ODL}/ports", json=body)
    assert r.status_code == 201, r.text
    port = r.json()["port"]
    assert port["id"] == port_id and port["status"] == "DOWN" and port["fixed_ips"] == []
    body["port"]["name"] = "renamed"
    r = client.put(f"{ODL}/ports/{port_id}", json=body)
    assert r.status_code == 200 and r.json()["port"]["name"] == "renamed"
    listed = client.get(f"{ODL}/ports").json()["ports"]
    assert [p["id"] for p in listed] == [port_id]
    assert client.get(f"/v2.0/ports/{port_id}").json()["port"]["name"] == "renamed"
    assert client.delete(f"{ODL}/ports/{port_id}").status_code == 204
    assert client.delete(f"{ODL}/networks/{net['id']}").status_code == 204


def test_cloudstack_plain_string_fixed_ips(client: TestClient) -> None:
    net = client.post(f"{ODL}/networks", json={"network": {"name": "cs"}}).json()["network"]
    client.post(f"{ODL}/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.8.0.0/24"}})
    r = client.post(
        f"{ODL}/ports", json={"port": {"network_id": net["id"], "fixed_ips": ["10.8.0.9"]}}
    )
    assert r.status_code == 201, r.text
    assert r.json()["port"]["fixed_ips"][0]["ip_address"] == "10.8.0.9"
    # The Neutron path does not accept that dialect.
    neutron = client.post(
        "/v2.0/ports", json={"port": {"network_id": net["id"], "fixed_ips": ["10.8.0.10"]}}
    )
    error_of(neutron, 400)


def test_cloudstack_connection_manager(client: TestClient, store: Store) -> None:
    url = "/controller/nb/v2/connectionmanager/node/OVS/hv-7/address/192.0.2.7/port/6640"
    r = client.put(url)
    assert r.status_code == 200, r.text
    assert r.json()["node"] == {"id": "hv-7", "type": "OVS"}
    host = store.get_host("hv-7")
    assert host["ovsdb"] == "tcp:192.0.2.7:6640" and host["tunnel_ip"] == "192.0.2.7"
    assert host["datapath_type"] == "system"
    moved = client.put(
        "/controller/nb/v2/connectionmanager/node/OVS/hv-7/address/192.0.2.8/port/6641"
        "?datapath_type=netdev"
    )
    assert moved.status_code == 200
    host = store.get_host("hv-7")
    assert (host["ovsdb"], host["datapath_type"]) == ("tcp:192.0.2.8:6641", "netdev")
    assert [h["id"] for h in store.list_hosts()] == ["hv-7"]
    bad_ip = client.put("/controller/nb/v2/connectionmanager/node/OVS/hv-8/address/nope/port/1")
    assert "tunnel_ip" in error_of(bad_ip, 400)
    error_of(
        client.put("/controller/nb/v2/connectionmanager/node/OVS/hv-8/address/192.0.2.9/port/0"),
        400,
    )
    nodes = client.get("/controller/nb/v2/connectionmanager/nodes").json()["nodes"]
    assert [n["node"]["id"] for n in nodes] == ["hv-7"]


# -- events ----------------------------------------------------------------------------------------


def test_api_writes_publish_events(client: TestClient, events: list[ChangeEvent]) -> None:
    net_id, _ = net_with_subnet(client)
    port = create(client, "port", network_id=net_id)
    client.put(f"/v2.0/ports/{port['id']}", json={"port": {"admin_state_up": False}})
    client.delete(f"/v2.0/ports/{port['id']}")
    kinds = [(e.kind, e.old is None, e.new is None) for e in events]
    assert kinds == [
        ("network", True, False),
        ("subnet", True, False),
        ("network", False, False),  # its subnets changed: a new revision
        # the project's default group, made for the port's first use, before the port
        ("security_group", True, False),
        *[("security_group_rule", True, False)] * 4,
        ("port", True, False),
        ("port", False, False),
        ("port", False, True),
    ]
    assert events[9].new["admin_state_up"] is False and events[9].old["admin_state_up"] is True
    assert events[3].new["security_group_rules"] == [public(e.new) for e in events[4:8]]


def _cloudstack_port(net_id: str, port_id: str, device_id: str) -> dict[str, Any]:
    """A port create as the OpenDaylight plugin's ConfigurePortCommand sends it."""
    return {
        "port": {
            "id": port_id,
            "name": port_id,
            "tenant_id": "acct",
            "network_id": net_id,
            "mac_address": "02:00:00:00:00:21",
            "device_id": device_id,  # the plugin draws a new random UUID for every send
            "admin_state_up": True,
            "status": "ACTIVE",
            "fixed_ips": [],
        }
    }


def test_cloudstack_resent_port_create_answers_the_existing_port(
    client: TestClient, events: list[Any]
) -> None:
    net = client.post(f"{ODL}/networks", json={"network": {"name": "cs"}}).json()["network"]
    port_id = "55555555-5555-4555-8555-555555555555"
    first = client.post(f"{ODL}/ports", json=_cloudstack_port(net["id"], port_id, str(uuid4())))
    assert first.status_code == 201, first.text
    before = len(events)
    again = client.post(f"{ODL}/ports", json=_cloudstack_port(net["id"], port_id, str(uuid4())))
    assert again.status_code == 201, again.text
    assert again.json()["port"] == first.json()["port"]
    assert len(events) == before, "nothing was written"
    # A create that really differs is still refused, naming what differs...
    other = _cloudstack_port(net["id"], port_id, str(uuid4()))
    other["port"]["mac_address"] = "02:00:00:00:00:22"
    assert "mac_address" in error_of(client.post(f"{ODL}/ports", json=other), 409, "PortExists")
    # ...and the Neutron path keeps Neutron's rule.
    error_of(
        client.post("/v2.0/ports", json=_cloudstack_port(net["id"], port_id, str(uuid4()))),
        409,
        "PortExists",
    )
    # The same port with the MAC in other spelling and the id in upper case is the same port.
    same = _cloudstack_port(net["id"], port_id.upper(), str(uuid4()))
    same["port"]["mac_address"] = "02-00-00-00-00-21"
    assert client.post(f"{ODL}/ports", json=same).status_code == 201


def test_cloudstack_resent_network_create_is_idempotent_too(client: TestClient) -> None:
    body = {
        "network": {
            "id": "66666666-6666-4666-8666-666666666666",
            "name": "cs",
            "tenant_id": "acct",
            "shared": False,
            "provider:network_type": "gre",
            "provider:segmentation_id": 100,
        }
    }
    first = client.post(f"{ODL}/networks", json=body)
    assert first.status_code == 201
    again = client.post(f"{ODL}/networks", json=body)
    assert again.status_code == 201 and again.json() == first.json()
    body["network"]["name"] = "other"
    assert "name" in error_of(client.post(f"{ODL}/networks", json=body), 409, "NetworkExists")


def test_cloudstack_network_put_keeps_the_segment(client: TestClient) -> None:
    """The plugin PUTs whole networks back with segmentation id 100, which another network
    holds: on these paths that is a hint, not a re-segmentation (no TunnelIdInUse)."""
    nets = []
    for i in range(2):
        body = {
            "network": {
                "name": f"cs{i}",
                "provider:network_type": "gre",
                "provider:segmentation_id": 100,
            }
        }
        nets.append(client.post(f"{ODL}/networks", json=body).json()["network"])
    second = nets[1]
    assert second["provider:segmentation_id"] != 100
    whole = {  # what the plugin's NeutronNetwork carries
        "id": second["id"],
        "name": "renamed",
        "shared": False,
        "tenant_id": second["tenant_id"],
        "provider:network_type": "gre",
        "provider:segmentation_id": 100,
    }
    r = client.put(f"{ODL}/networks/{second['id']}", json={"network": whole})
    assert r.status_code == 200, r.text
    updated = r.json()["network"]
    assert updated["name"] == "renamed"
    assert updated["provider:segmentation_id"] == second["provider:segmentation_id"]
    # The Neutron path still refuses a taken id.
    strict = client.put(
        f"/v2.0/networks/{second['id']}", json={"network": {"provider:segmentation_id": 100}}
    )
    error_of(strict, 409, "TunnelIdInUse")


# -- what the API fuzz found -----------------------------------------------------------------------


def test_a_network_put_echoing_its_own_type_keeps_its_segment(client: TestClient) -> None:
    """A client that sends back the type it read must not move the network to another VNI
    (nor be refused once it has ports)."""
    net = create(client, "network", name="n")
    create(client, "port", network_id=net["id"])
    for _ in range(2):
        r = client.put(
            f"/v2.0/networks/{net['id']}", json={"network": {"provider:network_type": "vxlan"}}
        )
        assert r.status_code == 200, r.text
        got = r.json()["network"]
        assert got["provider:segmentation_id"] == net["provider:segmentation_id"]
        assert got["revision_number"] == net["revision_number"]


def test_every_object_read_with_get_can_be_put_back_unchanged(client: TestClient) -> None:
    """Update bodies accept the read-only attributes unchanged (CloudStack PUTs whole objects
    back); a network's ``availability_zones`` was the one attribute a GET shows that a PUT
    refused as unrecognised.  Changing it is still refused."""
    net_id, subnet_id = net_with_subnet(client)
    port = create(client, "port", network_id=net_id)
    for plural, singular, obj_id in (
        ("networks", "network", net_id),
        ("subnets", "subnet", subnet_id),
        ("ports", "port", port["id"]),
    ):
        shown = client.get(f"/v2.0/{plural}/{obj_id}").json()[singular]
        r = client.put(f"/v2.0/{plural}/{obj_id}", json={singular: shown})
        assert r.status_code == 200, (plural, r.text)
        assert r.json()[singular] == shown  # nothing changed, not even the revision
    r = client.put(f"/v2.0/networks/{net_id}", json={"network": {"availability_zones": ["az"]}})
    assert "availability_zones" in error_of(r, 400)


def test_null_allocation_pools_are_refused_naming_the_field(client: TestClient) -> None:
    net = create(client, "network", name="n")
    pools = [{"start": "10.0.0.100", "end": "10.0.0.110"}]
    sub = create(client, "subnet", network_id=net["id"], cidr="10.0.0.0/24", allocation_pools=pools)
    put = client.put(f"/v2.0/subnets/{sub['id']}", json={"subnet": {"allocation_pools": None}})
    assert "allocation_pools" in error_of(put, 400)
    post = client.post(
        "/v2.0/subnets",
        json={"subnet": {"network_id": net["id"], "cidr": "10.1.0.0/24", "allocation_pools": None}},
    )
    assert "allocation_pools" in error_of(post, 400)
    assert client.get(f"/v2.0/subnets/{sub['id']}").json()["subnet"]["allocation_pools"] == pools


def test_a_subnet_added_or_removed_revises_its_network(client: TestClient) -> None:
    """The network's ``subnets`` list is part of what a client read: an If-Match on the
    revision read before the change fails (Neutron revises the network too)."""
    net = create(client, "network", name="n")
    sub = create(client, "subnet", network_id=net["id"], cidr="10.0.0.0/24")
    after = client.get(f"/v2.0/networks/{net['id']}").json()["network"]
    assert after["subnets"] == [sub["id"]]
    assert after["revision_number"] == net["revision_number"] + 1
    stale = client.put(
        f"/v2.0/networks/{net['id']}",
        json={"network": {"name": "m"}},
        headers={"If-Match": f"revision_number={net['revision_number']}"},
    )
    assert stale.status_code == 412, stale.text
    assert client.delete(f"/v2.0/subnets/{sub['id']}").status_code == 204
    gone = client.get(f"/v2.0/networks/{net['id']}").json()["network"]
    assert gone["subnets"] == [] and gone["revision_number"] == after["revision_number"] + 1


def test_duplicate_routes_and_pairs_and_pairs_without_port_security_are_refused(
    client: TestClient,
) -> None:
    net = create(client, "network", name="n")
    route = {"destination": "10.9.0.0/16", "nexthop": "10.0.0.9"}
    dup_routes = client.post(
        "/v2.0/subnets",
        json={
            "subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24", "host_routes": [route] * 2}
        },
    )
    assert "host_routes" in error_of(dup_routes, 400)
    pair = {"ip_address": "10.0.0.50"}
    dup_pairs = client.post(
        "/v2.0/ports", json={"port": {"network_id": net["id"], "allowed_address_pairs": [pair] * 2}}
    )
    error_of(dup_pairs, 400, "DuplicateAddressPairInRequest")
    off = {"network_id": net["id"], "port_security_enabled": False, "allowed_address_pairs": [pair]}
    error_of(
        client.post("/v2.0/ports", json={"port": off}), 409, "AddressPairAndPortSecurityRequired"
    )
    port = create(client, "port", network_id=net["id"], allowed_address_pairs=[pair])
    turn_off = client.put(
        f"/v2.0/ports/{port['id']}",
        json={"port": {"port_security_enabled": False, "security_groups": []}},
    )
    error_of(turn_off, 409, "AddressPairAndPortSecurityRequired")
    both = {"port_security_enabled": False, "security_groups": [], "allowed_address_pairs": []}
    assert client.put(f"/v2.0/ports/{port['id']}", json={"port": both}).status_code == 200
    assert [p["name"] for p in client.get("/v2.0/ports").json()["ports"]] == [""]


def test_a_list_filter_is_judged_on_the_query_not_on_what_is_stored(client: TestClient) -> None:
    """A value an integer or boolean attribute cannot hold is a 400 naming it, whether or not
    a stored object holds an integer there (it was a 200 while every rule's port was null,
    and a 400 once one was not; a next link could lead to a 400); null's spellings find the
    null ones either way; a boolean filter refuses what is not a boolean (it returned [])."""
    made = client.post("/v2.0/security-groups", json={"security_group": {"name": "g"}})
    group = made.json()["security_group"]

    def listed(query: str) -> Any:
        return client.get(f"/v2.0/security-group-rules?{query}")

    before = [listed("port_range_min=abc"), listed("port_range_min=")]
    rule = {
        "security_group_id": group["id"],
        "direction": "ingress",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
    }
    made = client.post("/v2.0/security-group-rules", json={"security_group_rule": rule})
    assert made.status_code == 201, made.text
    after = [listed("port_range_min=abc"), listed("port_range_min=")]
    for bad in (before[0], after[0]):
        assert "port_range_min" in error_of(bad, 400)
    nulls = [r.json()["security_group_rules"] for r in (before[1], after[1])]
    assert nulls[0] and nulls[0] == nulls[1]
    assert [
        r["port_range_min"] for r in listed("port_range_min=22").json()["security_group_rules"]
    ] == [22]
    create(client, "network", name="n")
    assert "admin_state_up" in error_of(client.get("/v2.0/networks?admin_state_up=maybe"), 400)
    assert len(client.get("/v2.0/networks?admin_state_up=True").json()["networks"]) == 1


def test_a_content_length_of_thousands_of_digits_is_a_413_not_a_500() -> None:
    """int() refuses more than 4300 digits (ValueError): a Content-Length that long, digits
    only, reached it and was a 500 instead of the 413 any too large length gets."""
    import asyncio

    from controller.api.middleware import BodyLimitMiddleware

    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the body limit let it through")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2.0/networks",
             "headers": [(b"content-length", b"9" * 5000)]}  # fmt: skip
    asyncio.run(BodyLimitMiddleware(app, 200)(scope, receive, send))
    assert sent[0]["status"] == 413
