"""Shared fixtures and helpers for the data-plane integration tests (real OVS, real controller).

``dp_env`` (module scope) brings up one lab of 3 emulated hypervisors on this suite's own address
plan (prefix ``tni``, mgmt 10.251.61.0/24, underlay 10.252.61.0/24), starts ``tenantnet serve``
as a child process and registers the hosts through ``POST /v2.0/hosts`` (hv1/hv2 over OVSDB TCP,
hv3 over the OVSDB unix socket, all ``datapath_type=netdev``).

``tenancy`` (function scope) is what a test uses to create networks, subnets, ports and VMs; it
records everything it created and removes it at the end of the test, then checks that every
host is back to the bare base pipeline (the four table-miss rules, no group), so the tests
do not depend on each other's objects and a leak of flows is caught where it happened.

Test modules import the fixtures they use (``from tests.integration.dataplane_fixtures import
dp_env, tenancy``) so that pytest registers them in that module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from lab import plans
from lab.hypervisors import Hypervisor, Lab, Vm
from lab.proc import run
from lab.tenantnet_proc import Api, ApiError, TenantnetProcess

PLAN = plans.DATAPLANE_TESTS

BASE_COOKIE = 0x7E4E000000000000  # flows/tables.py: the base pipeline's owner
NETWORK_COOKIE = 0x7E4E010000000000  # flows/tables.py: network_cookie(key) = this | key
VXLAN_OFPORT, GRE_OFPORT = 64001, 64002
TUNNEL_OFPORT = {"vxlan": VXLAN_OFPORT, "gre": GRE_OFPORT}
BASE_FLOWS = 4  # one table-miss drop per table 0..3

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 10, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; return it (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------ flow inspection


def cookie_of(key: int) -> str:
    """The cookie text of network ``key``'s own owner on a host (tunnel ingress, flooding) as
    ovs-ofctl prints it; its ports' flows have their own owners' cookies."""
    return f"cookie={NETWORK_COOKIE | key:#x},"


def tenant_flows(hv: Hypervisor) -> list[str]:
    """br-int flows that belong to some network (everything but the base pipeline)."""
    return [f for f in hv.dump_flows() if not f.startswith(f"cookie={BASE_COOKIE:#x},")]


def groups(hv: Hypervisor) -> list[str]:
    """``group_id=...`` lines of br-int's group table."""
    return [g.strip() for g in hv.ofctl("dump-groups", "br-int").splitlines() if "group_id" in g]


def network_key(hv: Hypervisor, ofport: int) -> int:
    """The network key the controller gave a network, read from the table-0 rule of one of its
    VM ports (``in_port=<ofport>,vlan_tci=0x0000/0x1fff actions=write_metadata:<key>/...``)."""
    pat = re.compile(
        rf"priority=100,in_port={ofport}(?:,vlan_tci=0x0000/0x1fff)? "
        r"actions=write_metadata:(0x[0-9a-f]+)/"
    )
    for f in hv.dump_flows():
        m = pat.search(f)
        if m:
            return int(m.group(1), 16)
    raise AssertionError(f"{hv.name}: no classification rule for ofport {ofport}")


def flows_of_key(hv: Hypervisor, key: int) -> list[str]:
    """Flows of network ``key``: its own owner's, and its ports' that name the key (table 0's
    classification, the L2 tables' delivery and unicast rules)."""
    meta = (f"metadata={key:#x},", f"metadata={key:#x} ", f"write_metadata:{key:#x}/")
    return [
        f for f in tenant_flows(hv) if f.startswith(cookie_of(key)) or any(m in f for m in meta)
    ]


def mentions(lines: list[str], *needles: str) -> list[str]:
    """Lines that contain any of ``needles`` (case-insensitive)."""
    low = [n.lower() for n in needles]
    return [line for line in lines if any(n in line.lower() for n in low)]


# --------------------------------------------------------------------------------- raw frames


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame (UDP checksum 0 = none) with the given addresses."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
                      socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + hdr + udp


def arp_frame(src_mac: str, dst_mac: str, op: int, sha: str, spa: str, tha: str,
              tpa: str) -> bytes:
    """An Ethernet/ARP frame (op 1 request, 2 reply)."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac_bytes(sha),
                       socket.inet_aton(spa), mac_bytes(tha), socket.inet_aton(tpa))
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x06" + body + b"\0" * 18


_SENDER = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "s.bind((sys.argv[1],0))\n"
    "n=int(sys.argv[2])\n"
    "for _ in range(n):\n"
    "    for h in sys.argv[3:]:\n"
    "        s.send(bytes.fromhex(h))\n"
    "    time.sleep(0.05)\n"
)


def send_frames(vm: Vm, frames: list[bytes], repeat: int = 3, iface: str = "eth0") -> None:
    """Send raw frames from inside ``vm`` (AF_PACKET socket on ``iface``), ``repeat`` times."""
    vm.exec(sys.executable, "-c", _SENDER, iface, str(repeat), *(f.hex() for f in frames),
            timeout=20)


# ------------------------------------------------------------------------------ ping figures

_RTT_RE = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
_RX_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass
class PingFigures:
    sent: int
    received: int
    rtt_avg_ms: float | None
    rtt_max_ms: float | None


def ping_rtt(vm: Vm, ip: str, count: int = 5, interval: float = 0.05,
             timeout: float = 2) -> PingFigures:
    """Ping and return loss and RTT figures (avg/max in ms; None if nothing came back)."""
    cp = vm.exec("ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W",
                 f"{timeout:g}", ip, check=False, timeout=count * interval + timeout + 10)
    rx = _RX_RE.search(cp.stdout)
    if rx is None:
        raise AssertionError(f"ping from {vm.name} to {ip} printed no statistics: {cp.stdout!r}"
                             f" {cp.stderr!r}")
    rtt = _RTT_RE.search(cp.stdout)
    return PingFigures(int(rx.group(1)), int(rx.group(2)),
                       float(rtt.group(2)) if rtt else None, float(rtt.group(3)) if rtt else None)


# ------------------------------------------------------------------------------------ fixtures


@dataclass
class DataplaneEnv:
    """One lab + one controller for a test module."""

    lab: Lab
    ctl: TenantnetProcess
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return self.ctl.api

    @property
    def hvs(self) -> list[Hypervisor]:
        return self.lab.hvs

    def hv_by_ip(self, ip: str) -> Hypervisor:
        return next(hv for hv in self.hvs if hv.tunnel_ip == ip)

    def wait_base_only(self, timeout: float = 15) -> None:
        """Every host carries only the base pipeline again (no tenant flow, no group)."""
        def clean() -> bool:
            return all(not tenant_flows(hv) and not groups(hv) for hv in self.hvs)

        try:
            wait_for(clean, timeout, 0.1, "all hosts back to the base pipeline")
        except AssertionError:
            left = {hv.name: tenant_flows(hv) + groups(hv) for hv in self.hvs}
            raise AssertionError(f"tenant flows/groups left behind: {left}") from None


@pytest.fixture(scope="module")
def dp_env(make_module_lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataplaneEnv]:
    """A started 3-hypervisor lab with a running controller and all hosts connected."""
    lab = make_module_lab(3, lock_timeout=120, **PLAN.lab_kwargs())
    state = tmp_path_factory.mktemp("tenantnet-dp")
    ctl = TenantnetProcess(state, ofp_listen=f"{lab.mgmt_ip}:6653").start()
    try:
        t0 = time.monotonic()
        for hv in lab.hvs:
            ovsdb = hv.ovsdb_unix if hv.n == 3 else hv.ovsdb_tcp
            # A unix: target says nothing about where the switch connects from: mgmt_ip does
            # (without TLS, a switch is admitted only from its host's management address).
            ctl.api.create("host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=ovsdb,
                           mgmt_ip=hv.mgmt_ip, datapath_type="netdev")
        ctl.api.wait_hosts_connected([hv.name for hv in lab.hvs], timeout=60)
        for hv in lab.hvs:
            hv.wait_bridge("br-int", timeout=30)
        env = DataplaneEnv(lab, ctl)
        env.figures["hosts_connected_s"] = round(time.monotonic() - t0, 2)
        yield env
        print(f"\n[{PLAN.prefix}] figures: {env.figures}")
    except BaseException:
        print(f"\n--- tenantnet log (tail) ---\n{ctl.log_tail(80)}")
        raise
    finally:
        t0 = time.monotonic()
        ctl.stop()
        print(f"[{PLAN.prefix}] controller stopped in {time.monotonic() - t0:.1f} s")


_SEQ = itertools.count(1)


@dataclass
class Net:
    """A network with its one IPv4 subnet, as the API returned them."""

    net: dict[str, Any]
    subnet: dict[str, Any]

    @property
    def id(self) -> str:
        return self.net["id"]

    @property
    def type(self) -> str:
        return self.net["provider:network_type"]

    @property
    def seg_id(self) -> int:
        return int(self.net["provider:segmentation_id"])

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet["cidr"]).prefixlen


class Tenancy:
    """Creates networks/ports/VMs for one test and removes them all at the end."""

    def __init__(self, env: DataplaneEnv, tag: str):
        self.env = env
        self.api = env.api
        self.lab = env.lab
        self.tag = tag
        self.nets: list[Net] = []
        self.ports: dict[str, dict[str, Any]] = {}  # port id -> port
        self.vms: dict[str, Vm] = {}

    def network(self, net_type: str = "vxlan", seg_id: int | None = None,
                cidr: str = "10.0.0.0/24", project: str = "tenant-a",
                subnet: dict[str, Any] | None = None, **extra: Any) -> Net:
        body: dict[str, Any] = {"provider:network_type": net_type, **extra}
        if seg_id is not None:
            body["provider:segmentation_id"] = seg_id
        n = next(_SEQ)
        net = self.api.create("network", name=f"{self.tag}-net{n}", project_id=project, **body)
        self.nets.append(Net(net, {}))
        sub = self.api.create("subnet", network_id=net["id"], cidr=cidr, ip_version=4,
                              name=f"{self.tag}-sub{n}", project_id=project,
                              **(subnet or {}))
        self.nets[-1].subnet = sub
        return self.nets[-1]

    def port(self, net: Net, ip: str | None = None, mac: str | None = None,
             **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"network_id": net.id, "project_id": net.net["project_id"],
                                **extra}
        if ip is not None:
            body["fixed_ips"] = [{"subnet_id": net.subnet["id"], "ip_address": ip}]
        if mac is not None:
            body["mac_address"] = mac
        port = self.api.create("port", **body)
        self.ports[port["id"]] = port
        return port

    def vm(self, hv: Hypervisor | int, name: str, net: Net, port: dict[str, Any] | None = None,
           plug: bool = True, **port_kw: Any) -> Vm:
        """A VM (namespace) whose interface carries ``iface-id=<port id>`` (so ``vm.iface_id`` is
        its port id); creates the port unless one is given."""
        if port is None:
            port = self.port(net, **port_kw)
        ip = port["fixed_ips"][0]["ip_address"]
        vm = self.lab.add_vm(hv, name, port["mac_address"], f"{ip}/{net.prefixlen}", port["id"],
                             plug=plug)
        self.vms[name] = vm
        return vm

    def delete_port(self, port_id: str) -> None:
        self.api.delete("port", port_id)
        self.ports.pop(port_id, None)

    def remove_vm(self, vm: Vm) -> None:
        self.lab.remove_vm(vm)
        self.vms.pop(vm.name, None)

    def wait_active(self, vms_or_ports: list[Any], timeout: float = 30) -> float:
        """Seconds until all given ports (or the ports of the given VMs) are ACTIVE."""
        ids = [x.iface_id if isinstance(x, Vm) else x["id"] for x in vms_or_ports]
        t0 = time.monotonic()
        self.api.wait_ports_active(ids, timeout=timeout)
        return time.monotonic() - t0

    def cleanup(self) -> None:
        for vm in list(self.vms.values()):
            with contextlib.suppress(Exception):
                self.remove_vm(vm)
        for pid in list(self.ports):
            with contextlib.suppress(ApiError):
                self.delete_port(pid)
        for net in reversed(self.nets):
            with contextlib.suppress(ApiError):
                self.api.delete("network", net.id)
        self.nets.clear()


@pytest.fixture
def tenancy(dp_env: DataplaneEnv, request: pytest.FixtureRequest) -> Iterator[Tenancy]:
    """Per-test objects, removed at the end; then every host must be back to the base pipeline."""
    t = Tenancy(dp_env, re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40])
    yield t
    t.cleanup()
    dp_env.wait_base_only()


def run_in(ns: str, *cmd: str, timeout: float = 20) -> str:
    return run(*cmd, ns=ns, timeout=timeout).stdout
