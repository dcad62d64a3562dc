"""Real-packet probes and API helpers shared by the security-group integration tests.

The probes are real connections, each answered by a server in the server VM, so an allowed
verdict needs the request through the server's ingress filter *and* the answer back through the
client's:

* TCP: connect, send ``PING``, expect ``PONG``; UDP: a datagram, expect an answer; ICMP / ICMPv6:
  ping.  ``v6=True`` probes the server VM's IPv6 address (a VM created with ``ip6_cidr``).
* ``Servers``: one server process per VM, on its IPv4 address and, if it has one, its IPv6
  address; on ``STREAM_PORT`` it counts what one connection delivers into a file.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.hypervisors import Vm
from lab.proc import base_env, ns_cmd
from lab.tenantnet_proc import Api
from tests.integration.dataplane_fixtures import DataplaneEnv, wait_for

TCP_PORT, UDP_PORT, STREAM_PORT = 5001, 5002, 5003
PROJECT = "tenant-sg"

# The server in a VM, on every address given (comma-separated, IPv4 and/or IPv6): TCP PING ->
# PONG, UDP anything -> PONG, and on STREAM_PORT it counts what one connection delivers.
_SERVER = r"""
import socket, sys, threading
ips, out = sys.argv[1].split(","), sys.argv[5]
tcp_port, udp_port, stream_port = map(int, sys.argv[2:5])
def fam(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET
def echo(c):
    with c:
        c.settimeout(5)
        try:
            if c.recv(4) == b"PING":
                c.sendall(b"PONG")
        except OSError:
            pass
def count(c):
    total = 0
    with c:
        while True:
            try:
                d = c.recv(65536)
            except OSError:
                return
            if not d:
                return
            total += len(d)
            with open(out, "w") as f:
                f.write(str(total))
def serve(s, handler):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()
def udp(s):
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(b"PONG", peer)
for ip in ips:
    for port, handler in ((tcp_port, echo), (stream_port, count)):
        s = socket.socket(fam(ip)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port)); s.listen(16)
        threading.Thread(target=serve, args=(s, handler), daemon=True).start()
    s = socket.socket(fam(ip), socket.SOCK_DGRAM); s.bind((ip, udp_port))
    threading.Thread(target=udp, args=(s,), daemon=True).start()
print("READY", flush=True)
threading.Event().wait()
"""

_TCP_PROBE = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.sendall(b"PING")
    sys.exit(0 if c.recv(4) == b"PONG" else 1)
except OSError:
    sys.exit(1)
"""

_UDP_PROBE = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(float(sys.argv[3]))
for _ in range(2):
    s.sendto(b"PING", (sys.argv[1], int(sys.argv[2])))
    try:
        if s.recv(16) == b"PONG":
            sys.exit(0)
    except OSError:
        pass
sys.exit(1)
"""

# Sends a steady trickle (1 KiB every 20 ms) until killed or the connection fails.
_STREAM = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(None)
while True:
    c.sendall(b"x" * 1024)
    time.sleep(0.02)
"""


# ------------------------------------------------------------------------------ API helpers


def create_group(api: Api, name: str, **fields: Any) -> dict[str, Any]:
    """A group (Neutron's template: egress anywhere IPv4/IPv6, no ingress); ``fields`` e.g.
    ``stateful=False``."""
    body = {"security_group": {"name": name, "project_id": PROJECT, **fields}}
    return api.request("POST", "/v2.0/security-groups", body)["security_group"]


def create_rule(api: Api, group: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress",
                                    "ethertype": "IPv4", **fields}}  # fmt: skip
    return api.request("POST", "/v2.0/security-group-rules", body)["security_group_rule"]


def delete_rule(api: Api, rule: dict[str, Any]) -> None:
    api.request("DELETE", f"/v2.0/security-group-rules/{rule['id']}", expect=204)


def delete_group(api: Api, group: dict[str, Any]) -> None:
    api.request("DELETE", f"/v2.0/security-groups/{group['id']}", expect=204)


def clear_rules(api: Api, group: dict[str, Any]) -> None:
    """Delete every rule of ``group`` (the egress template too): a deny-all group."""
    current = api.request("GET", f"/v2.0/security-groups/{group['id']}")["security_group"]
    for rule in current["security_group_rules"]:
        delete_rule(api, rule)


def set_groups(api: Api, vm: Vm, *groups: dict[str, Any]) -> None:
    api.update("port", vm.iface_id, security_groups=[g["id"] for g in groups])


def settle(env: DataplaneEnv) -> None:
    """The controller has sent (and the switches confirmed) what the last API call implies."""
    wait_for(lambda: env.api.status()["idle"], timeout=10, what="the controller to settle")
    env.lab.revalidator_wait()  # the datapath's cached flows follow the new tables


# ----------------------------------------------------------------------------------- probes


class Servers:
    """The server process of each server VM, killed at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, vm: Vm) -> None:
        ips = ",".join(ip for ip in (vm.ip, vm.ip6) if ip)
        cmd = ns_cmd(vm.ns, [sys.executable, "-c", _SERVER, ips, str(TCP_PORT), str(UDP_PORT),
                             str(STREAM_PORT), str(self.count_file(vm))])  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env=base_env())  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"

    def count_file(self, vm: Vm) -> Path:
        return self.workdir / f"stream-{vm.name}"

    def received(self, vm: Vm) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(self.count_file(vm).read_text() or 0)
        return 0

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop()


def address(vm: Vm, v6: bool) -> str:
    ip = vm.ip6 if v6 else vm.ip
    assert ip is not None, f"{vm.name} has no IPv6 address (create it with ip6_cidr)"
    return ip


def tcp_ok(client: Vm, server: Vm, timeout: float = 1.5, v6: bool = False) -> bool:
    cp = client.exec(sys.executable, "-c", _TCP_PROBE, address(server, v6), str(TCP_PORT),
                     str(timeout), check=False, timeout=timeout + 10)  # fmt: skip
    return cp.returncode == 0


def udp_ok(client: Vm, server: Vm, timeout: float = 0.7, v6: bool = False) -> bool:
    cp = client.exec(sys.executable, "-c", _UDP_PROBE, address(server, v6), str(UDP_PORT),
                     str(timeout), check=False, timeout=2 * timeout + 10)  # fmt: skip
    return cp.returncode == 0


def icmp_ok(client: Vm, server: Vm, v6: bool = False) -> bool:
    return client.ping(address(server, v6), count=2, interval=0.2, timeout=1).received > 0


PROBES = {"tcp": tcp_ok, "udp": udp_ok, "icmp": icmp_ok}


def verdicts(pairs: dict[str, tuple[Vm, Vm]], v6: bool = False) -> dict[tuple[str, str], bool]:
    return {(name, proto): probe(c, s, v6=v6) for name, (c, s) in pairs.items()
            for proto, probe in PROBES.items()}  # fmt: skip


def start_stream(client: Vm, server: Vm, v6: bool = False) -> subprocess.Popen[str]:
    cmd = ns_cmd(client.ns, [sys.executable, "-c", _STREAM, address(server, v6),
                             str(STREAM_PORT)])  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=base_env(), text=True)  # fmt: skip
