"""Real DHCP clients (busybox udhcpc, ISC dhclient) against `controller.services.dhcp`.

Two network namespaces this test creates and removes, joined by a veth pair: the client runs in
one, the responder (tests/integration/dhcp_veth_server.py, a raw socket) in the other.  Nothing
leaves the pair.  The client's own script applies what it was given (address, MTU, classless
routes) inside its namespace and dumps its environment (DNS, domain), and the test reads both
back; the data-plane path (punt flow, packet-in, packet-out) is not involved here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_MAC = "fa:16:3e:12:34:56"
SPEC = {
    "port": {
        "mac": CLIENT_MAC,
        "fixed_ips": [["s1", "10.61.0.23"]],
        "extra_dhcp_opts": [{"name": "domain-name", "value": "vm.example"}],
    },
    "network": {
        "mtu": 1442,
        "subnets": [
            {
                "id": "s1",
                "cidr": "10.61.0.0/24",
                "gateway_ip": "10.61.0.1",
                "dns_nameservers": ["10.61.0.53", "10.61.0.54"],
                "host_routes": [["172.31.0.0/16", "10.61.0.254"]],
            }
        ],
    },
    "settings": {"lease_time": 600},
}

UDHCPC_SCRIPT = """#!/bin/sh
env > "$DUMP.$1"
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip link set "$interface" mtu "$mtu"
set -- $staticroutes
while [ -n "$1" ]; do ip route add "$1" via "$2" dev "$interface"; shift 2; done
"""

DHCLIENT_SCRIPT = """#!/bin/sh
env > "DUMP.$reason"
[ "$reason" = BOUND ] || exit 0
ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
ip link set "$interface" mtu "$new_interface_mtu"
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture
def veth(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(client namespace, client interface, tmp dir) with the responder answering on the peer."""
    tag = f"{os.getpid() % 100000}"
    cns, sns = f"tnd-c{tag}", f"tnd-s{tag}"
    cif, sif = f"tndc{tag}", f"tnds{tag}"
    run("ip", "netns", "add", cns)
    run("ip", "netns", "add", sns)
    server = None
    try:
        run(
            "ip",
            "link",
            "add",
            cif,
            "netns",
            cns,
            "address",
            CLIENT_MAC,
            "type",
            "veth",
            "peer",
            "name",
            sif,
            "netns",
            sns,
        )
        run("ip", "-n", cns, "link", "set", cif, "up")
        run("ip", "-n", sns, "link", "set", sif, "up")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                sns,
                sys.executable,
                str(ROOT / "tests/integration/dhcp_veth_server.py"),
                sif,
                json.dumps(SPEC),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield cns, cif, str(tmp_path)
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        run("ip", "netns", "del", cns, check=False)
        run("ip", "netns", "del", sns, check=False)


def _env(path: str) -> dict[str, str]:
    lines = Path(path).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _check_configured(cns: str, cif: str) -> None:
    addr = run("ip", "-n", cns, "-4", "-o", "addr", "show", cif).stdout
    assert "inet 10.61.0.23/24" in addr, addr
    link = run("ip", "-n", cns, "link", "show", cif).stdout
    assert "mtu 1442" in link, link


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox (udhcpc) not installed")
def test_udhcpc_configures_address_mtu_routes_and_dns(veth: tuple[str, str, str]) -> None:
    cns, cif, tmp = veth
    script = Path(tmp, "udhcpc.sh")
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    dump = f"{tmp}/udhcpc"
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cns,
            "env",
            f"DUMP={dump}",
            "busybox",
            "udhcpc",
            "-i",
            cif,
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-O",
            "mtu",
            "-O",
            "staticroutes",
            "-s",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    env = _env(f"{dump}.bound")
    assert env["ip"] == "10.61.0.23" and env["router"] == "10.61.0.1"
    assert env["serverid"] == "10.61.0.1" and env["lease"] == "600"
    assert env["dns"].split() == ["10.61.0.53", "10.61.0.54"]
    assert env["domain"] == "vm.example"
    _check_configured(cns, cif)
    routes = run("ip", "-n", cns, "-4", "route", "show").stdout
    assert "default via 10.61.0.1" in routes, routes
    assert "172.31.0.0/16 via 10.61.0.254" in routes, routes


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client not installed")
def test_dhclient_gets_address_mtu_routes_and_dns(veth: tuple[str, str, str]) -> None:
    cns, cif, tmp = veth
    script = Path(tmp, "dhclient.sh")
    dump, pidfile = f"{tmp}/dhclient", f"{tmp}/dhclient.pid"
    script.write_text(DHCLIENT_SCRIPT.replace("DUMP", dump))  # dhclient clears the environment
    script.chmod(0o755)
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            cns,
            "env",
            f"DUMP={dump}",
            "dhclient",
            "-1",
            "-v",
            "-sf",
            str(script),
            "-lf",
            f"{tmp}/leases",
            "-pf",
            pidfile,
            cif,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        env = _env(f"{dump}.BOUND")
    finally:
        # dhclient stays in the background to renew.  Found by its command line (the pid file
        # is unique to this test), not by reading the pid file: dhclient creates that file
        # before it writes its pid, and a read in between got '' (a failure seen in CI).
        subprocess.run(["pkill", "-TERM", "-f", pidfile], check=False)
    assert env["new_ip_address"] == "10.61.0.23"
    assert env["new_routers"] == "10.61.0.1"
    assert env["new_domain_name_servers"].split() == ["10.61.0.53", "10.61.0.54"]
    assert env["new_domain_name"] == "vm.example"
    assert env["new_dhcp_server_identifier"] == "10.61.0.1"
    # RFC 3442 as dhclient prints it: prefix length, significant octets, router
    assert env["new_rfc3442_classless_static_routes"].split() == (
        ["16", "172", "31", "10", "61", "0", "254", "0", "10", "61", "0", "1"]
    )
    _check_configured(cns, cif)
