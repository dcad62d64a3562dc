"""Hostile or careless input: every refusal is a 4xx naming the field, nothing is half-written,
and nothing the API accepts can break a later read."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from controller.events import EventBus
from controller.store import Store
from tests.unit.conftest import ClientFactory, TestClient


def _error(r: Any, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    message = str(r.json()["NeutronError"]["message"])
    for word in words:
        assert word in message, message
    return message


def _net(client: TestClient) -> str:
    r = client.post("/v2.0/networks", json={"network": {"name": "n"}})
    assert r.status_code == 201, r.text
    net_id = str(r.json()["network"]["id"])
    r = client.post("/v2.0/subnets", json={"subnet": {"network_id": net_id, "cidr": "10.9.0.0/24"}})
    assert r.status_code == 201, r.text
    return net_id


JSON = {"Content-Type": "application/json"}


def _post_raw(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


# -- strict JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("poison", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_field_and_nothing_is_saved(
    client: TestClient, poison: str
) -> None:
    net = _net(client)
    r = _post_raw(
        client,
        "/v2.0/ports",
        f'{{"port": {{"network_id": "{net}", "binding:profile": {{"x": {poison}}}}}}}',
    )
    _error(r, 400, "binding:profile")
    listed = client.get("/v2.0/ports")
    assert listed.status_code == 200 and listed.json()["ports"] == []


def test_poison_inside_a_bulk_names_the_field(client: TestClient) -> None:
    net = _net(client)
    body = f'{{"ports": [{{"network_id": "{net}"}}, {{"network_id": "{net}", "name": NaN}}]}}'
    _error(_post_raw(client, "/v2.0/ports", body), 400, "name")
    assert client.get("/v2.0/ports").json()["ports"] == []


def test_lone_surrogates_are_refused(client: TestClient) -> None:
    _error(_post_raw(client, "/v2.0/networks", '{"network": {"name": "a\\ud800b"}}'), 400, "name")
    _error(_post_raw(client, "/v2.0/networks", '{"network": {"tags": ["\\udfff"]}}'), 400, "tags")
    ok = _post_raw(client, "/v2.0/networks", '{"network": {"name": "\\ud83d\\ude00"}}')
    assert ok.status_code == 201 and ok.json()["network"]["name"] == "\N{GRINNING FACE}"
    assert client.get("/v2.0/networks").status_code == 200


def test_raw_utf8_surrogates_are_a_400_not_a_500(client: TestClient) -> None:
    """Bytes ED A0 80 are UTF-8's encoding of U+D800, which UTF-8 forbids.  ``json.loads(bytes)``
    decoded them with ``surrogatepass``, the escape scan saw no ``\\ud800``, and the lone
    surrogate reached the store: a 500 (UnicodeEncodeError) on a port's binding:profile and on
    add_router_interface.  The body is now decoded strictly: a 400 saying it is not UTF-8."""
    net = _net(client)
    bad = b"x\xed\xa0\x80"
    body = b'{"port": {"network_id": "%s", "binding:profile": {"a": "%s"}}}' % (net.encode(), bad)
    r = client.post("/v2.0/ports", content=body, headers=JSON)
    _error(r, 400, "Malformed request body", "not valid UTF-8")
    assert client.get("/v2.0/ports").json()["ports"] == []
    router = client.post("/v2.0/routers", json={"router": {"name": "r"}}).json()["router"]
    r = client.put(
        f"/v2.0/routers/{router['id']}/add_router_interface",
        content=b'{"subnet_id": "%s"}' % bad,
        headers=JSON,
    )
    _error(r, 400, "not valid UTF-8")
    # Valid UTF-8 (and a BOM, and UTF-16, which json.loads always accepted) still parse.
    ok = client.post(
        "/v2.0/networks", content='{"network": {"name": "\u00e9"}}'.encode(), headers=JSON
    )
    assert ok.status_code == 201 and ok.json()["network"]["name"] == "\u00e9"
    bom = client.post("/v2.0/networks", content=b"\xef\xbb\xbf" + b'{"network": {}}', headers=JSON)
    assert bom.status_code == 201, bom.text
    utf16 = client.post(
        "/v2.0/networks", content='{"network": {}}'.encode("utf-16-le"), headers=JSON
    )
    assert utf16.status_code == 201, utf16.text


def test_deep_nesting_is_a_400_not_a_crash(client: TestClient) -> None:
    _error(_post_raw(client, "/v2.0/networks", "[" * 100_000 + "]" * 100_000), 400)
    _error(_post_raw(client, "/v2.0/networks", "1" * 5000), 400, "Malformed")


def test_free_form_fields_are_bounded(client: TestClient) -> None:
    net = _net(client)

    def port(**attrs: Any) -> Any:
        return client.post("/v2.0/ports", json={"port": {"network_id": net, **attrs}})

    deep: dict[str, Any] = {}
    for _ in range(20):
        deep = {"d": deep}
    _error(port(**{"binding:profile": deep}), 400, "binding:profile", "deeper")
    _error(port(**{"binding:profile": {"x": "y" * 5000}}), 400, "binding:profile", "bytes")
    _error(port(tags=[f"t{i}" for i in range(101)]), 400, "tags")
    _error(port(tags=["x" * 61]), 400, "tags")
    _error(port(security_groups=["s" * 256]), 400, "security_groups")
    _error(port(name="n" * 256), 400, "name")
    _error(port(allowed_address_pairs=[{"ip_address": "10.9.0.9"}] * 101), 400)
    opt = {"opt_name": "mtu", "opt_value": "1400"}
    _error(port(extra_dhcp_opts=[opt] * 101), 400, "extra_dhcp_opts")
    _error(port(extra_dhcp_opts=[{**opt, "opt_value": "v" * 256}]), 400, "extra_dhcp_opts")
    _error(port(extra_dhcp_opts=[{**opt, "x": {"d": deep}}]), 400, "extra_dhcp_opts")
    assert (
        port(**{"binding:profile": {"pci_slot": "0000:00:01.0", "n": [1, 2.5]}}).status_code == 201
    )
    r = client.put(f"/v2.0/networks/{net}/tags/{'z' * 61}")
    _error(r, 400, "tags")


def test_the_store_refuses_what_it_could_not_read_back(store: Store) -> None:
    """Last line of defence behind the API: the write fails inside its transaction."""
    net = store.create_network({})
    with pytest.raises(Exception, match="cannot be stored"):
        store.create_port({"network_id": net["id"], "binding:profile": {"x": float("nan")}})
    with pytest.raises(Exception, match="cannot be stored"):
        store.create_port({"network_id": net["id"], "name": "\ud800"})
    assert store.list_ports() == []


def test_security_group_fields_are_bounded_and_named(client: TestClient) -> None:
    def group(**attrs: Any) -> Any:
        return client.post("/v2.0/security-groups", json={"security_group": attrs})

    _error(group(name="n" * 256), 400, "name")
    _error(group(tags=["x" * 61]), 400, "tags")
    _error(group(stateful="maybe"), 400, "stateful")
    _error(group(id="../x"), 400, "id")
    _error(
        _post_raw(client, "/v2.0/security-groups", '{"security_group": {"description": NaN}}'),
        400,
        "description",
    )
    r = group(name="ok")
    assert r.status_code == 201, r.text
    g = r.json()["security_group"]["id"]

    def rule(**attrs: Any) -> Any:
        body = {"security_group_id": g, "direction": "ingress", **attrs}
        return client.post("/v2.0/security-group-rules", json={"security_group_rule": body})

    message = _error(rule(protocol="x" * 5000), 400, "protocol")
    assert len(message) < 1000  # the refusal does not echo megabytes back
    _error(rule(protocol="²"), 400, "protocol")
    _error(rule(protocol="tcp", port_range_min="²", port_range_max=5), 400, "port_range_min")
    _error(rule(protocol="tcp", port_range_min="9" * 30, port_range_max=5), 400, "port_range_min")
    _error(rule(remote_ip_prefix="10.0.0.0/8\nINFO forged"), 400, "remote_ip_prefix")
    _error(rule(remote_ip_prefix="10.0.0.0/٨"), 400, "remote_ip_prefix")
    _error(rule(remote_ip_prefix=["10.0.0.0/8"]), 400, "remote_ip_prefix")
    _error(rule(ethertype="IPv4" * 100), 400, "ethertype")
    _error(rule(remote_group_id=g + "\n"), 400, "remote_group_id")
    raw = (
        f'{{"security_group_rule": {{"security_group_id": "{g}", "direction": "ingress", '
        '"description": "a\\ud800"}}'
    )
    _error(_post_raw(client, "/v2.0/security-group-rules", raw), 400, "description")
    net = _net(client)
    r = client.post("/v2.0/ports", json={"port": {"network_id": net, "security_groups": [g] * 101}})
    _error(r, 400, "security_groups")
    r = client.get(f"/v2.0/security-groups/{g}")
    assert len(r.json()["security_group"]["security_group_rules"]) == 2  # only the template's
    assert client.get("/v2.0/security-group-rules").status_code == 200


def test_a_fixed_ip_entry_naming_neither_subnet_nor_address_is_a_400(
    make_client: ClientFactory,
) -> None:
    """``{"ip_address": null}`` passed the entry check and then looked up a missing
    ``subnet_id`` (KeyError, a 500); it is Neutron's "requires subnet_id or ip_address"."""
    client = make_client(raise_server_exceptions=False)
    net = _net(client)
    neither: list[dict[str, Any]] = [{"ip_address": None}, {"subnet_id": None}]
    for entry in [*neither, {"subnet_id": None, "ip_address": None}]:
        r = client.post("/v2.0/ports", json={"port": {"network_id": net, "fixed_ips": [entry]}})
        _error(r, 400, "fixed_ips")
    port = client.post("/v2.0/ports", json={"port": {"network_id": net}}).json()["port"]
    r = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"fixed_ips": neither[:1]}})
    _error(r, 400, "fixed_ips", "requires subnet_id or ip_address")
    assert client.get(f"/v2.0/ports/{port['id']}").json()["port"] == port
    assert len(client.get("/v2.0/ports").json()["ports"]) == 1


def test_rule_numbers_longer_than_int_converts_are_400s(make_client: ClientFactory) -> None:
    """``int()`` refuses more than 4300 digits with a ValueError (a 500 here, in a create
    and in a list filter); such a protocol, port or prefix length is refused as any bad one,
    while leading zeros on a small number still read as that number."""
    client = make_client(raise_server_exceptions=False)
    g = client.post("/v2.0/security-groups", json={"security_group": {"name": "g"}}).json()[
        "security_group"
    ]["id"]

    def rule(**attrs: Any) -> Any:
        body = {"security_group_id": g, "direction": "ingress", **attrs}
        return client.post("/v2.0/security-group-rules", json={"security_group_rule": body})

    long = "9" * 5000
    _error(rule(protocol=long), 400, "protocol")
    _error(rule(protocol="tcp", port_range_min=long, port_range_max=5), 400, "port_range_min")
    _error(rule(remote_ip_prefix=f"10.0.0.0/{long}"), 400, "remote_ip_prefix")
    r = client.get("/v2.0/security-group-rules", params={"remote_ip_prefix": f"10.0.0.0/{long}"})
    assert r.status_code == 200 and r.json() == {"security_group_rules": []}, r.text
    zeros = "0" * 5000
    made = rule(protocol=f"{zeros}6", port_range_min=f"{zeros}22", port_range_max=22,
                remote_ip_prefix=f"10.0.0.0/{zeros}8")  # fmt: skip
    assert made.status_code == 201, made.text
    shown = made.json()["security_group_rule"]
    assert (shown["protocol"], shown["port_range_min"], shown["remote_ip_prefix"]) == (
        "6", 22, "10.0.0.0/8",
    )  # fmt: skip


# -- integers that str.isdigit() accepts but int() refuses -----------------------------------


def test_router_fields_and_actions_are_bounded_and_named(client: TestClient) -> None:
    def router(**attrs: Any) -> Any:
        return client.post("/v2.0/routers", json={"router": attrs})

    _error(router(name="n" * 256), 400, "name")
    _error(router(tags=["x" * 61]), 400, "tags")
    _error(router(admin_state_up="maybe"), 400, "admin_state_up")
    _error(router(id="../x"), 400, "id")
    _error(router(external_gateway_info="x" * 5000), 400, "external_gateway_info")
    deep: Any = {}
    for _ in range(50):
        deep = {"a": deep}
    assert router(external_gateway_info=deep).status_code == 400
    _error(
        _post_raw(client, "/v2.0/routers", '{"router": {"external_gateway_info": {"x": NaN}}}'),
        400,
        "external_gateway_info",
    )
    assert client.get("/v2.0/routers").json()["routers"] == []
    r = router(name="ok")
    assert r.status_code == 201, r.text
    url = f"/v2.0/routers/{r.json()['router']['id']}"
    net = _net(client)
    (sub,) = client.get(f"/v2.0/subnets?network_id={net}").json()["subnets"]
    assert (
        client.put(f"{url}/add_router_interface", json={"subnet_id": sub["id"]}).status_code == 200
    )

    def put(path: str, text: str) -> Any:
        return client.put(path, content=text.encode(), headers=JSON)

    for poison, field in (
        ('{"subnet_id": NaN}', "subnet_id"),
        ('{"subnet_id": ["a"]}', "subnet_id"),
        ('{"subnet_id": {"a": 1}}', "subnet_id"),
        ('{"port_id": "' + "p" * 5000 + '"}', "port_id"),
        ('{"port_id": true}', "port_id"),
    ):
        message = _error(put(f"{url}/add_router_interface", poison), 400, field)
        assert len(message) < 1000
        _error(put(f"{url}/remove_router_interface", poison), 400, field)
    for poison in ('"x"', "[]", "null", '{"subnet_id": "\\ud800"}'):
        assert 400 <= put(f"{url}/add_router_interface", poison).status_code < 500
    routes_url = f"{url}/add_extraroutes"
    for poison in (
        '{"router": {"routes": [{"destination": NaN, "nexthop": "10.9.0.5"}]}}',
        '{"router": {"routes": [{"destination": "' + "1" * 5000 + '", "nexthop": "10.9.0.5"}]}}',
        '{"router": {"routes": [{"destination": "10.1.0.0/16", "nexthop": ["10.9.0.5"]}]}}',
        '{"router": {"routes": "10.1.0.0/16"}}',
        '{"router": {"routes": ['
        + ",".join(['{"destination": "10.1.0.0/16", "nexthop": "10.9.0.5"}'] * 101)
        + "]}}",
    ):
        message = _error(put(routes_url, poison), 400, "routes")
        assert len(message) < 1000
    _error(put(url, '{"router": {"routes": [{"destination": "::/0", "nexthop": "10.9.0.5"}]}}'),
           400, "routes")  # fmt: skip
    bad_match = client.put(
        routes_url, json={"router": {"routes": []}}, headers={"If-Match": "revision_number=x"}
    )
    _error(bad_match, 400, "If-Match")
    shown = client.get(url).json()["router"]
    assert shown["routes"] == [] and shown["revision_number"] == 2  # only the interface


def test_integer_filters_and_headers_never_500(client: TestClient) -> None:
    net = _net(client)
    _error(client.get("/v2.0/networks?mtu=--1"), 400, "mtu")
    _error(client.get("/v2.0/networks?provider:segmentation_id=\u00b2"), 400, "segmentation_id")
    _error(client.get("/v2.0/networks?limit=\u00b2"), 400, "limit")
    assert client.get("/v2.0/networks?mtu=-1").json()["networks"] == []
    mtu = client.get(f"/v2.0/networks/{net}").json()["network"]["mtu"]
    assert len(client.get(f"/v2.0/networks?mtu=+{mtu}").json()["networks"]) == 1
    r = client.put(
        f"/v2.0/networks/{net}",
        json={"network": {"name": "x"}},
        headers={"If-Match": b"revision_number=\xb2"},  # type: ignore[dict-item]
    )
    _error(r, 400, "If-Match")
    r = client.delete(f"/v2.0/networks/{net}", headers={"If-Match": "revision_number=--1"})
    _error(r, 400, "If-Match")


# -- host ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["hv1\nINFO forged line", "hv 1", "", "-hv", "h/v", "h\x00v", "\u00e9", "h" * 256]
)
def test_host_ids_are_a_sane_charset(client: TestClient, bad: str) -> None:
    r = client.post("/v2.0/hosts", json={"host": {"id": bad, "tunnel_ip": "192.0.2.1"}})
    assert r.status_code == 400, r.text
    assert "id" in r.json()["NeutronError"]["message"]
    net = _net(client)
    r = client.post("/v2.0/ports", json={"port": {"network_id": net, "binding:host_id": bad}})
    if bad:  # "" means unbound
        _error(r, 400, "binding:host_id")
    assert client.get("/v2.0/hosts").json()["hosts"] == []


def test_usual_host_names_are_fine(client: TestClient) -> None:
    for n, good in enumerate(("hv1", "kvm-01.pod2.example.com", "compute_7", "h" * 255)):
        ip = f"192.0.2.{n + 1}"  # a tunnel IP is one host's (store/hosts.py)
        r = client.post("/v2.0/hosts", json={"host": {"id": good, "tunnel_ip": ip}})
        assert r.status_code == 201, r.text


# -- ports -----------------------------------------------------------------------------------


def test_the_mac_of_a_bound_port_cannot_change(client: TestClient) -> None:
    net = _net(client)
    r = client.post("/v2.0/ports", json={"port": {"network_id": net, "binding:host_id": "hv1"}})
    port = r.json()["port"]
    r = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"mac_address": "fa:16:3e:00:00:01"}})
    _error(r, 409, "PortBound", port["mac_address"])
    # Repeating the same MAC (CloudStack PUTs whole objects) is fine, and so is an unbound port.
    same = client.put(
        f"/v2.0/ports/{port['id']}", json={"port": {"mac_address": port["mac_address"].upper()}}
    )
    assert same.status_code == 200, same.text
    unbind = client.put(f"/v2.0/ports/{port['id']}", json={"port": {"binding:host_id": ""}})
    assert unbind.status_code == 200, unbind.text
    changed = client.put(
        f"/v2.0/ports/{port['id']}", json={"port": {"mac_address": "fa:16:3e:00:00:01"}}
    )
    assert (
        changed.status_code == 200 and changed.json()["port"]["mac_address"] == "fa:16:3e:00:00:01"
    )


# -- the database file -----------------------------------------------------------------------


def test_the_database_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    old_umask = os.umask(0o022)
    try:
        store = Store(str(path), EventBus())
        store.create_network({})
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        store.close()
        path.chmod(0o644)  # an older version's file is tightened on open
        Store(str(path), EventBus()).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_head_and_charset_with_authentication(make_client: ClientFactory) -> None:
    client = make_client(auth_token="t")
    assert client.head("/").status_code == 200
    assert client.head("/v2.0/networks").status_code == 401


# -- quotas, tags, IP availability -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"quota": {"network": NaN}}', "network"),
        ('{"quota": {"port": 1e999}}', "port"),
        ('{"quota": {"port": 1e30}}', "port"),
        ('{"quota": {"subnet": "\\u00b2"}}', "subnet"),
        ('{"quota": {"subnet": "--1"}}', "subnet"),
        ('{"quota": {"subnet": -1.0000001}}', "subnet"),
        ('{"quota": {"router\\u0000": 1}}', "router"),
    ],
)
def test_poisoned_quota_values_name_the_field(client: TestClient, text: str, field: str) -> None:
    _error(client.put("/v2.0/quotas/p", content=text.encode(), headers=JSON), 400, field)
    assert client.get("/v2.0/quotas").json() == {"quotas": []}


@pytest.mark.parametrize("project", ["%00", "a%0Ab", "%F0%9F%98%80", "a%20b", "%27%3B--"])
def test_odd_project_ids_are_just_names(client: TestClient, project: str) -> None:
    """Project ids are opaque (Keystone's are hex, but Neutron stores any string): they are
    bound parameters, never SQL or log syntax, and read back exactly."""
    r = client.put(f"/v2.0/quotas/{project}", json={"quota": {"network": 3}})
    assert r.status_code == 200, r.text
    stored = r.json()["quota"]["project_id"]
    assert client.get("/v2.0/quotas").json()["quotas"][0]["project_id"] == stored
    assert client.delete(f"/v2.0/quotas/{project}").status_code == 204


def test_poisoned_tag_creation_is_refused_whole(client: TestClient) -> None:
    net = _net(client)
    url = f"/v2.0/networks/{net}/tags"
    for text in ('{"tags": ["a", NaN]}', '{"tags": ["ok", "\\ud800"]}', '{"tags": "a"}', "[]"):
        _error(client.post(url, content=text.encode(), headers=JSON), 400)
    _error(client.post(url, json={"tags": ["a,b"]}), 400, "tags")
    assert client.get(url).json() == {"tags": []}


def test_ip_availability_queries_never_500(client: TestClient) -> None:
    _net(client)
    for query in ("ip_version=%00", "network_id=%FF", "fields=%00", "tenant_id=", "ip_version=4"):
        r = client.get(f"/v2.0/network-ip-availabilities?{query}")
        assert r.status_code in (200, 400), (query, r.text)
    _error(client.get("/v2.0/network-ip-availabilities?page_reverse=1"), 400, "page_reverse")
