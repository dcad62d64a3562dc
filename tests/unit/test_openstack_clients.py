"""The real, unmodified OpenStack clients against tenantnet served by uvicorn on 127.0.0.1.

If openstackclient and openstacksdk can discover the API, create, list, show, update and delete
through it, and print tenantnet's refusals readably, then orchestrators built on them will too.
Only the loopback address is ever contacted.  The CLI's commands run through its own entry point
(``openstackclient.shell.main``, what the ``openstack`` script calls) in one long-lived process
per module (openstack_cli_session.py), each with its own shell and HTTP session: the seconds
the CLI needs to start are paid once instead of per command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import openstack
import pytest
import uvicorn
from openstack import exceptions as os_exc

from controller.api import ApiSettings, create_app
from controller.events import EventBus
from controller.store import Store
from tests.unit.openstack_cli_session import CliSession

# The SDK warns about its own upcoming removals; they say nothing about tenantnet.
pytestmark = [
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store]]:
    """tenantnet on a free loopback port, in a thread; yields (base URL, store)."""
    store = Store(str(tmp_path_factory.mktemp("clients") / "db.sqlite"), EventBus())
    port = free_port()
    config = uvicorn.Config(
        create_app(store, ApiSettings()), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    srv.should_exit = True
    thread.join(timeout=10)
    store.close()


_session: CliSession | None = None


@pytest.fixture(scope="module", autouse=True)
def cli_session() -> Iterator[None]:
    """One process runs every ``openstack`` command of the module (openstack_cli_session.py):
    the CLI's start-up, seconds per command, is paid once."""
    global _session
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = env.get("HOME", "/tmp")
    _session = CliSession(env)
    yield
    _session.close()
    _session = None


def cli(url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the openstack CLI with auth disabled and the endpoint pinned to our server."""
    assert _session is not None
    proc = _session.run(["--os-auth-type", "none", "--os-endpoint", url, *args])
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    else:
        assert proc.returncode != 0, f"{args} unexpectedly succeeded: {proc.stdout}"
    return proc


def cli_json(url: str, *args: str) -> Any:
    return json.loads(cli(url, *args, "-f", "json").stdout)


def test_openstack_cli_lifecycle(server: tuple[str, Store]) -> None:
    url, store = server
    net = cli_json(url, "network", "create", "--provider-network-type", "gre", "cli-net")
    assert net["name"] == "cli-net"
    assert net["provider:network_type"] == "gre" and net["mtu"] == 1458
    sub = cli_json(
        url, "subnet", "create", "--network", "cli-net", "--subnet-range", "10.20.0.0/24", "cli-sub"
    )
    assert sub["gateway_ip"] == "10.20.0.1"
    port = cli_json(url, "port", "create", "--network", "cli-net", "--host", "hv1", "cli-p1")
    assert port["binding_host_id"] == "hv1"
    assert port["fixed_ips"][0]["ip_address"] == "10.20.0.2"
    assert store.get_port(port["id"])["binding:host_id"] == "hv1"

    listed = cli_json(url, "network", "list")
    assert [n["Name"] for n in listed] == ["cli-net"]
    on_host = cli_json(url, "port", "list", "--host", "hv1")
    assert [p["ID"] for p in on_host] == [port["id"]]
    shown = cli_json(url, "port", "show", "cli-p1")
    assert shown["mac_address"] == port["mac_address"]

    cli(url, "port", "set", "--name", "cli-p1b", "--tag", "blue", "cli-p1")
    renamed = cli_json(url, "port", "show", port["id"])
    assert renamed["name"] == "cli-p1b" and renamed["tags"] == ["blue"]
    assert renamed["revision_number"] > port["revision_number"]

    dup_mac = cli(
        url,
        "port",
        "create",
        "--network",
        "cli-net",
        "--mac-address",
        port["mac_address"],
        "x",
        ok=False,
    )
    assert "MacAddressInUse" in dup_mac.stderr
    assert f"The mac address {port['mac_address']} is in use" in dup_mac.stderr
    dup_ip = cli(
        url,
        "port",
        "create",
        "--network",
        "cli-net",
        "--fixed-ip",
        "ip-address=10.20.0.2",
        "y",
        ok=False,
    )
    assert "IpAddressAlreadyAllocated" in dup_ip.stderr and "10.20.0.2" in dup_ip.stderr
    in_use = cli(url, "network", "delete", "cli-net", ok=False)
    assert "NetworkInUse" in in_use.stderr

    cli(url, "port", "delete", "cli-p1b")
    cli(url, "network", "delete", "cli-net")
    missing = cli(url, "network", "show", "cli-net", ok=False)
    assert "cli-net" in missing.stderr
    assert store.list_networks() == [] and store.list_all("subnet") == []


def test_openstacksdk(server: tuple[str, Store]) -> None:
    url, store = server
    conn = openstack.connect(auth_type="none", auth={"endpoint": url})
    try:
        net = conn.network.create_network(
            name="sdk-net", provider_network_type="vxlan", provider_segmentation_id=4242
        )
        assert net.provider_segmentation_id == 4242 and net.mtu == 1450
        assert conn.network.find_network("sdk-net").id == net.id
        subnet = conn.network.create_subnet(
            network_id=net.id, cidr="10.30.0.0/24", ip_version=4, name="sdk-sub"
        )
        port = conn.network.create_port(network_id=net.id, binding_host_id="hv9", name="p")
        assert port.binding_host_id == "hv9"
        assert port.fixed_ips == [{"subnet_id": subnet.id, "ip_address": "10.30.0.2"}]
        assert [p.id for p in conn.network.ports(binding_host_id="hv9")] == [port.id]

        with pytest.raises(os_exc.ConflictException) as conflict:
            conn.network.create_port(network_id=net.id, mac_address=port.mac_address)
        assert "MacAddressInUse" in str(conflict.value)
        with pytest.raises(os_exc.ConflictException):
            conn.network.create_network(
                provider_network_type="vxlan", provider_segmentation_id=4242
            )

        revision = port.revision_number
        updated = conn.network.update_port(port.id, name="renamed", if_revision=revision)
        assert updated.name == "renamed" and updated.revision_number == revision + 1
        with pytest.raises(os_exc.PreconditionFailedException):
            conn.network.update_port(port.id, name="stale", if_revision=revision)
        assert conn.network.get_port(port.id).name == "renamed"

        conn.network.set_tags(net, ["a", "b"])
        assert conn.network.get_network(net.id).tags == ["a", "b"]

        for i in range(5):
            conn.network.create_network(name=f"page-{i}")
        paged = list(conn.network.networks(limit=2))
        assert len(paged) == 6 and len({n.id for n in paged}) == 6

        store.set_ports_observed(statuses={port.id: "ACTIVE"})
        assert conn.network.get_port(port.id).status == "ACTIVE"

        conn.network.delete_port(port)
        assert conn.network.find_port(port.id) is None
        for n in list(conn.network.networks()):
            conn.network.delete_network(n)
        assert list(conn.network.networks()) == []
    finally:
        conn.close()


def test_openstacksdk_quotas(server: tuple[str, Store]) -> None:
    """get_quota / update_quota / delete_quota / get_quota_default and quotas() unmodified; an
    over-quota create is the SDK's ConflictException carrying Neutron's message."""
    url, _ = server
    conn = openstack.connect(auth_type="none", auth={"endpoint": url})
    try:
        quota = conn.network.get_quota("sdk-proj")
        assert (quota.networks, quota.subnets, quota.ports) == (100, 100, 500)
        updated = conn.network.update_quota("sdk-proj", networks=1, ports=-1)
        assert (updated.networks, updated.ports, updated.subnets) == (1, -1, 100)
        assert [q.project_id for q in conn.network.quotas()] == ["sdk-proj"]
        assert conn.network.get_quota_default("sdk-proj").networks == 100

        net = conn.network.create_network(name="quota-net", project_id="sdk-proj")
        with pytest.raises(os_exc.ConflictException) as over:
            conn.network.create_network(name="one-too-many", project_id="sdk-proj")
        assert "Quota exceeded for resources: ['network']." in str(over.value)
        details = conn.network.get_quota("sdk-proj", details=True)
        assert details.networks == {"used": 1, "limit": 1, "reserved": 0}

        with pytest.raises(os_exc.BadRequestException) as below:
            conn.network.update_quota("sdk-proj", networks=0, check_limit=True)
        assert "must be greater than or equal to already used 1" in str(below.value)

        conn.network.delete_quota("sdk-proj")
        assert conn.network.get_quota("sdk-proj").networks == 100
        assert list(conn.network.quotas()) == []
        with pytest.raises(os_exc.NotFoundException):
            conn.network.delete_quota("sdk-proj", ignore_missing=False)
        conn.network.delete_network(net)
    finally:
        conn.close()


def test_openstack_cli_quota_needs_keystone(server: tuple[str, Store]) -> None:
    """``openstack quota show/set/list`` (and ``--project``) resolve the project through
    Keystone (identity v3) before they call the network API, so without Keystone the CLI cannot
    reach tenantnet's quota API (the SDK above can); this pins that finding down."""
    url, _ = server
    for args in (("quota", "show", "--network", "p"), ("quota", "set", "--networks", "3", "p")):
        refused = cli(url, *args, ok=False)
        assert "version '3'" in refused.stderr, refused.stderr  # the identity API it wants


def test_openstacksdk_ip_availability_and_tag_creation(server: tuple[str, Store]) -> None:
    """network_ip_availabilities / get_network_ip_availability, and add_tags (which POSTs to
    /tags, extension tag-creation) unmodified."""
    url, _ = server
    conn = openstack.connect(auth_type="none", auth={"endpoint": url})
    try:
        net = conn.network.create_network(name="avail-net", tags=["a"])
        conn.network.create_subnet(network_id=net.id, cidr="10.40.0.0/29", ip_version=4)
        conn.network.create_port(network_id=net.id)
        avail = conn.network.get_network_ip_availability(net.id)
        assert (avail.total_ips, avail.used_ips, avail.network_name) == (5, 1, "avail-net")
        assert net.id in {a.network_id for a in conn.network.network_ip_availabilities()}

        conn.network.add_tags(net, ["b", "c"])
        assert sorted(conn.network.get_network(net.id).tags) == ["a", "b", "c"]

        for port in conn.network.ports(network_id=net.id):
            conn.network.delete_port(port)
        conn.network.delete_network(net)
    finally:
        conn.close()


def test_openstack_cli_extra_dhcp_options(server: tuple[str, Store]) -> None:
    """``--extra-dhcp-option`` of the unmodified CLI (port create and port set)."""
    url, store = server
    cli_json(url, "network", "create", "dhcp-net")
    cli_json(
        url, "subnet", "create", "--network", "dhcp-net", "--subnet-range", "10.21.0.0/24", "s"
    )
    port = cli_json(
        url,
        "port",
        "create",
        "--network",
        "dhcp-net",
        "--extra-dhcp-option",
        "name=mtu,value=1400,ip-version=4",
        "--extra-dhcp-option",
        "name=domain-search,value=example.org",
        "dhcp-p1",
    )
    assert port["extra_dhcp_opts"] == [
        {"opt_name": "mtu", "opt_value": "1400", "ip_version": 4},
        {"opt_name": "domain-search", "opt_value": "example.org", "ip_version": 4},
    ]
    cli(url, "port", "set", "--extra-dhcp-option", "name=mtu,value=1450", "dhcp-p1")
    assert store.get_port(port["id"])["extra_dhcp_opts"][0]["opt_value"] == "1450"
    bad = cli(
        url,
        "port",
        "set",
        "--extra-dhcp-option",
        "name=mtu,value=1,ip-version=5",
        "dhcp-p1",
        ok=False,
    )
    assert "extra_dhcp_opts" in bad.stderr
    cli(url, "port", "delete", "dhcp-p1")
    cli(url, "network", "delete", "dhcp-net")


def _rule_shapes(rules: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {
        (
            r["direction"],
            r["ethertype"],
            r["protocol"],
            r["port_range_min"],
            r["port_range_max"],
            r["remote_ip_prefix"],
            r["remote_group_id"],
        )
        for r in rules
    }


def test_openstack_cli_security_groups(server: tuple[str, Store]) -> None:
    url, store = server
    group = cli_json(url, "security", "group", "create", "--description", "web tier", "cli-web")
    assert group["name"] == "cli-web" and group["description"] == "web tier"
    assert {(r["direction"], r["ethertype"]) for r in group["rules"]} == {
        ("egress", "IPv4"),
        ("egress", "IPv6"),
    }
    listed = {g["Name"]: g["ID"] for g in cli_json(url, "security", "group", "list")}
    assert listed["cli-web"] == group["id"] and "default" in listed  # made on first use
    cli(url, "security", "group", "set", "--name", "cli-web2", "--description", "d2", "cli-web")
    shown = cli_json(url, "security", "group", "show", "cli-web2")
    assert (shown["id"], shown["description"]) == (group["id"], "d2")
    assert shown["revision_number"] > group["revision_number"]

    ssh = cli_json(
        url, "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22",
        "--remote-ip", "0.0.0.0/0", "cli-web2",
    )  # fmt: skip
    assert (ssh["port_range_min"], ssh["port_range_max"], ssh["protocol"]) == (22, 22, "tcp")
    web = cli_json(
        url, "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "80:81",
        "--remote-group", "default", "cli-web2",
    )  # fmt: skip
    assert web["remote_group_id"] == listed["default"]
    v6 = cli_json(
        url,
        "security",
        "group",
        "rule",
        "create",
        "--ethertype",
        "IPv6",
        "--protocol",
        "udp",
        "cli-web2",
    )
    assert (v6["ether_type"], v6["remote_ip_prefix"]) == ("IPv6", "::/0")
    dup = cli(
        url, "security", "group", "rule", "create", "--protocol", "6", "--dst-port", "22",
        "--remote-ip", "0.0.0.0/0", "cli-web2", ok=False,
    )  # fmt: skip
    assert "SecurityGroupRuleExists" in dup.stderr and ssh["id"] in dup.stderr
    bad = cli(
        url,
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "gre",
        "--dst-port",
        "5",
        "cli-web2",
        ok=False,
    )
    assert "Ports cannot be specified for protocol gre" in bad.stderr
    rules = cli_json(url, "security", "group", "rule", "list", "cli-web2", "--long")
    assert {r["ID"] for r in rules} >= {ssh["id"], web["id"], v6["id"]}
    assert _rule_shapes(store.get_security_group(group["id"])["security_group_rules"]) >= {
        ("ingress", "IPv4", "tcp", 22, 22, "0.0.0.0/0", None),
        ("ingress", "IPv4", "tcp", 80, 81, None, listed["default"]),
        ("ingress", "IPv6", "udp", None, None, "::/0", None),
    }

    cli(url, "network", "create", "sg-net")
    cli(url, "subnet", "create", "--network", "sg-net", "--subnet-range", "10.40.0.0/24", "sg-sub")
    port = cli_json(
        url, "port", "create", "--network", "sg-net", "--security-group", "cli-web2", "sg-p"
    )
    assert port["security_group_ids"] == [group["id"]]
    plain = cli_json(url, "port", "create", "--network", "sg-net", "sg-q")
    assert plain["security_group_ids"] == [listed["default"]]
    in_use = cli(url, "security", "group", "delete", "cli-web2", ok=False)
    assert "SecurityGroupInUse" in in_use.stderr
    lone = cli(url, "port", "set", "--disable-port-security", "sg-q", ok=False)
    assert "PortSecurityPortHasSecurityGroup" in lone.stderr
    cli(url, "port", "set", "--no-security-group", "--disable-port-security", "sg-p")
    off = cli_json(url, "port", "show", "sg-p")
    assert off["security_group_ids"] == [] and off["port_security_enabled"] is False
    cli(url, "security", "group", "rule", "delete", ssh["id"])
    cli(url, "security", "group", "delete", "cli-web2")
    missing = cli(url, "security", "group", "show", "cli-web2", ok=False)
    assert "cli-web2" in missing.stderr
    cli(url, "port", "delete", "sg-p", "sg-q")
    cli(url, "network", "delete", "sg-net")
    assert store.get_security_group(group["id"]) is None


def test_openstacksdk_security_groups(server: tuple[str, Store]) -> None:
    url, store = server
    conn = openstack.connect(auth_type="none", auth={"endpoint": url})
    try:
        group = conn.network.create_security_group(name="sdk-sg", description="d")
        assert len(group.security_group_rules) == 2 and group.stateful is True
        assert conn.network.find_security_group("sdk-sg").id == group.id
        default = conn.network.find_security_group("default")
        assert default is not None and len(default.security_group_rules) == 4
        rule = conn.network.create_security_group_rule(
            security_group_id=group.id,
            direction="ingress",
            protocol="tcp",
            port_range_min=443,
            port_range_max=443,
            remote_group_id=default.id,
        )
        assert rule.remote_group_id == default.id and rule.port_range_max == 443
        icmp6 = conn.network.create_security_group_rule(
            security_group_id=group.id, direction="ingress", ethertype="IPv6", protocol="icmp"
        )
        assert icmp6.protocol == "ipv6-icmp"
        with pytest.raises(os_exc.ConflictException) as dup:
            conn.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                protocol="6",
                port_range_min=443,
                port_range_max=443,
                remote_group_id=default.id,
            )
        assert "SecurityGroupRuleExists" in str(dup.value)
        with pytest.raises(os_exc.BadRequestException) as both:
            conn.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                remote_group_id=default.id,
                remote_ip_prefix="10.0.0.0/8",
            )
        assert "remote_ip_prefix" in str(both.value)
        with pytest.raises(os_exc.NotFoundException):
            conn.network.create_security_group_rule(
                security_group_id="44444444-4444-4444-8444-444444444444", direction="ingress"
            )
        assert {r.id for r in conn.network.security_group_rules(security_group_id=group.id)} >= {
            rule.id,
            icmp6.id,
        }
        updated = conn.network.update_security_group(group, name="sdk-sg2", stateful=False)
        assert updated.name == "sdk-sg2" and updated.stateful is False
        assert "sdk-sg2" in {g.name for g in conn.network.security_groups()}

        net = conn.network.create_network(name="sdk-sg-net")
        conn.network.create_subnet(network_id=net.id, cidr="10.50.0.0/24", ip_version=4)
        port = conn.network.create_port(network_id=net.id, security_group_ids=[group.id])
        assert port.security_group_ids == [group.id]
        assert [p["id"] for p in store.list_ports(security_group_id=group.id)] == [port.id]
        with pytest.raises(os_exc.ConflictException) as in_use:
            conn.network.delete_security_group(group)
        assert "SecurityGroupInUse" in str(in_use.value)
        with pytest.raises(os_exc.BadRequestException):
            conn.network.create_port(
                network_id=net.id, port_security_enabled=False, security_group_ids=[group.id]
            )
        off = conn.network.update_port(port, security_group_ids=[], port_security_enabled=False)
        assert off.security_group_ids == [] and off.is_port_security_enabled is False
        conn.network.delete_security_group_rule(rule)
        assert conn.network.find_security_group_rule(rule.id) is None
        conn.network.delete_security_group(group)
        assert conn.network.find_security_group(group.id) is None
        conn.network.delete_port(port)
        conn.network.delete_network(net)
    finally:
        conn.close()


def _routed_subnets(store: Store, *cidrs: str) -> list[dict[str, Any]]:
    """One network with a subnet per CIDR each (made in the store: the clients' network
    commands are covered above)."""
    made = []
    for cidr in cidrs:
        net = store.create_network({"name": f"rnet-{cidr}"})
        made.append(store.create_subnet({"network_id": net["id"], "cidr": cidr}))
    return made


def test_openstack_cli_routers(server: tuple[str, Store]) -> None:
    url, store = server
    a, b = _routed_subnets(store, "10.40.0.0/24", "10.41.0.0/24")
    made = cli_json(url, "router", "create", "--description", "east-west", "cli-r")
    assert made["name"] == "cli-r" and made["status"] == "ACTIVE"
    assert made["distributed"] is True and made["ha"] is False
    listed = cli_json(url, "router", "list", "--long")
    assert [(r["ID"], r["Distributed"], r["HA"]) for r in listed] == [(made["id"], True, False)]
    cli(url, "router", "set", "--name", "cli-r2", "--description", "d2", "cli-r")
    shown = cli_json(url, "router", "show", "cli-r2")
    assert (shown["id"], shown["description"]) == (made["id"], "d2")
    gateway = cli(url, "router", "set", "--external-gateway", a["network_id"], "cli-r2", ok=False)
    assert "north-south" in gateway.stderr

    cli(url, "router", "add", "subnet", "cli-r2", a["id"])
    (gw,) = store.list_ports(network_id=a["network_id"])
    assert (gw["device_owner"], gw["device_id"]) == (
        "network:router_interface_distributed",
        made["id"],
    )
    assert gw["fixed_ips"][0]["ip_address"] == "10.40.0.1"
    given = cli_json(url, "port", "create", "--network", b["network_id"], "cli-rp")
    cli(url, "router", "add", "port", "cli-r2", given["id"])
    assert store.get_port(given["id"])["device_id"] == made["id"]
    twice = cli(url, "router", "add", "subnet", "cli-r2", a["id"], ok=False)
    assert "already has a port on subnet" in twice.stderr
    # interfaces ACTIVE while the router is up, DOWN while it is admin down (OVN's DVR)
    assert cli_json(url, "port", "show", gw["id"])["status"] == "ACTIVE"
    cli(url, "router", "set", "--disable", "cli-r2")
    assert cli_json(url, "port", "show", given["id"])["status"] == "DOWN"
    listed_ports = cli_json(url, "port", "list", "--router", "cli-r2", "--long")
    assert {p["Status"] for p in listed_ports} == {"DOWN"} and len(listed_ports) == 2
    cli(url, "router", "set", "--enable", "cli-r2")
    assert cli_json(url, "port", "show", given["id"])["status"] == "ACTIVE"
    interface = cli(url, "port", "delete", gw["id"], ok=False)
    assert "ServicePortInUse" in interface.stderr or "cannot be deleted" in interface.stderr

    cli(url, "router", "set", "--route", "destination=10.50.0.0/16,gateway=10.40.0.5", "cli-r2")
    cli(url, "router", "set", "--route", "destination=10.51.0.0/16,gateway=10.41.0.9", "cli-r2")
    routes = cli_json(url, "router", "show", "cli-r2")["routes"]
    assert sorted((r["destination"], r["nexthop"]) for r in routes) == [
        ("10.50.0.0/16", "10.40.0.5"),
        ("10.51.0.0/16", "10.41.0.9"),
    ]
    unreachable = cli(
        url, "router", "set", "--route", "destination=10.52.0.0/16,gateway=10.99.0.1", "cli-r2",
        ok=False,
    )  # fmt: skip
    assert "not connected with router" in unreachable.stderr
    cli(url, "router", "unset", "--route", "destination=10.50.0.0/16,gateway=10.40.0.5", "cli-r2")
    added = cli_json(
        url, "router", "add", "route", "--route", "destination=10.53.0.0/16,gateway=10.40.0.6",
        "cli-r2",
    )  # fmt: skip
    assert len(added["routes"]) == 2
    cli(url, "router", "remove", "route", "--route", "destination=10.53.0.0/16,gateway=10.40.0.6",
        "cli-r2")  # fmt: skip
    assert [r["destination"] for r in store.list_routers()[0]["routes"]] == ["10.51.0.0/16"]

    in_use = cli(url, "router", "delete", "cli-r2", ok=False)
    assert "still has ports" in in_use.stderr
    route_needs_it = cli(url, "router", "remove", "port", "cli-r2", given["id"], ok=False)
    assert "required by one or more routes" in route_needs_it.stderr
    cli(url, "router", "set", "--no-route", "cli-r2")
    cli(url, "router", "remove", "port", "cli-r2", given["id"])
    cli(url, "router", "remove", "subnet", "cli-r2", a["id"])
    assert store.list_ports(network_id=a["network_id"]) == []
    cli(url, "router", "delete", "cli-r2")
    assert "cli-r2" in cli(url, "router", "show", "cli-r2", ok=False).stderr
    assert store.list_routers() == []
    for sub in (a, b):
        store.delete("network", sub["network_id"])


def test_openstacksdk_routers(server: tuple[str, Store]) -> None:
    url, store = server
    a, b = _routed_subnets(store, "10.60.0.0/24", "10.61.0.0/24")
    conn = openstack.connect(auth_type="none", auth={"endpoint": url})
    try:
        router = conn.network.create_router(name="sdk-r", is_admin_state_up=True)
        assert router.is_distributed is True and router.is_ha is False
        assert router.status == "ACTIVE" and router.external_gateway_info is None
        assert conn.network.find_router("sdk-r").id == router.id
        assert [r.id for r in conn.network.routers(name="sdk-r")] == [router.id]
        with pytest.raises(os_exc.BadRequestException) as north_south:
            # by id: the SDK keeps a refused change on the object and would send it again
            conn.network.update_router(
                router.id, external_gateway_info={"network_id": a["network_id"]}
            )
        assert "north-south" in str(north_south.value)

        answer = conn.network.add_interface_to_router(router, subnet=a["id"])
        assert answer["subnet_id"] == a["id"] and answer["subnet_ids"] == [a["id"]]
        gw = conn.network.get_port(answer["port_id"])
        assert gw.device_id == router.id and gw.fixed_ips[0]["ip_address"] == "10.60.0.1"
        given = conn.network.create_port(network_id=b["network_id"])
        answer = conn.network.add_interface_to_router(router, port=given.id)
        assert answer["port_id"] == given.id and answer["network_id"] == b["network_id"]
        with pytest.raises(os_exc.BadRequestException):
            conn.network.add_interface_to_router(router, subnet=a["id"])
        assert {conn.network.get_port(p).status for p in (gw.id, given.id)} == {"ACTIVE"}
        conn.network.update_router(router.id, is_admin_state_up=False)
        assert {p.status for p in conn.network.ports(device_id=router.id)} == {"DOWN"}
        conn.network.update_router(router.id, is_admin_state_up=True)
        assert conn.network.get_port(gw.id).status == "ACTIVE"
        other = conn.network.create_router(name="sdk-r-other")
        with pytest.raises(os_exc.ConflictException) as second:
            conn.network.add_interface_to_router(other, subnet=a["id"])
        assert "10.60.0.1 already allocated" in str(second.value)
        conn.network.delete_router(other)

        route = {"destination": "10.70.0.0/16", "nexthop": "10.61.0.9"}
        updated = conn.network.update_router(router, routes=[route])
        assert updated.routes == [route]
        more = {"destination": "10.71.0.0/16", "nexthop": "10.60.0.9"}
        grown = conn.network.add_extra_routes_to_router(router, body={"router": {"routes": [more]}})
        assert grown.routes == [route, more]
        shrunk = conn.network.remove_extra_routes_from_router(
            router, body={"router": {"routes": [route]}}
        )
        assert shrunk.routes == [more]
        with pytest.raises(os_exc.ConflictException) as in_use:
            conn.network.delete_router(router)
        assert "RouterInUse" in str(in_use.value)

        conn.network.update_router(router, routes=[])
        conn.network.remove_interface_from_router(router, subnet=a["id"])
        conn.network.remove_interface_from_router(router, port=given.id)
        assert conn.network.find_port(given.id) is None
        conn.network.delete_router(router)
        assert conn.network.find_router("sdk-r") is None
    finally:
        conn.close()
    for sub in (a, b):
        store.delete("network", sub["network_id"])
