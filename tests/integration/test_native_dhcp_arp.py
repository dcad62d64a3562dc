"""Issue 15 through the whole controller on real OVS: the ARP responder's flows and native DHCP
(punt flow -> packet-in -> `controller.dataplane.dhcp` -> PACKET_OUT), with networks, subnets
and ports created through the API and VMs on emulated hypervisors.

* ARP: a VM's request for a port's fixed IP is answered on its own host: a capture on the
  underlay sees no ARP inside a tunnel while two VMs on different hosts resolve and ping each
  other; tenants with the same IPs each get their own MAC.  The negative control: a request
  for an allowed-address-pair address (never answered by flows) does cross the tunnel, so the
  capture would have seen the others.
* DHCP: busybox ``udhcpc`` in VMs on two hosts gets its fixed IP, gateway, MTU and DNS; a VM
  of a subnet with enable_dhcp=false gets no answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.hypervisors import Vm
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import DataplaneEnv, Tenancy, arp_frame, send_frames

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy

# An ARP frame inside VXLAN: the inner EtherType sits after the UDP header (8), the VXLAN
# header (8) and the inner MACs (12).
TUNNELLED_ARP = "udp port 4789 and udp[28:2] = 0x0806"


def _neigh_mac(vm: Vm, ip: str) -> str | None:
    out = vm.exec("ip", "neigh", "show", ip, "dev", "eth0").stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def test_arp_for_a_fixed_ip_is_answered_on_the_asking_host(
    tenancy: Tenancy, dp_env: DataplaneEnv
) -> None:
    a = tenancy.network("vxlan", project="tenant-a")
    b = tenancy.network("vxlan", project="tenant-b")
    vms = {}
    for name, net in (("a", a), ("b", b)):  # same IPs, MACs allocated by the store
        vms[name] = (
            tenancy.vm(1, f"ar{name}1", net, ip="10.0.0.11"),
            tenancy.vm(2, f"ar{name}2", net, ip="10.0.0.12"),
        )
    tenancy.wait_active([vm for pair in vms.values() for vm in pair])
    assert vms["a"][1].mac != vms["b"][1].mac

    cap = dp_env.lab.capture_underlay(bpf=TUNNELLED_ARP, count=1, timeout=4)
    for first, second in vms.values():
        for vm in (first, second):
            vm.neigh_flush()
        r = first.ping(second.ip, count=3, interval=0.2, timeout=2)
        assert r.received == r.sent, f"{first.name} -> {second.name}: {r}"
        # each tenant's answer carries its own port's MAC (both ways: neither saw a request)
        assert _neigh_mac(first, second.ip) == second.mac
        assert _neigh_mac(second, first.ip) == first.mac
    crossed = [line for line in cap.wait() if line.strip()]
    assert not crossed, f"ARP for known addresses crossed a tunnel: {crossed}"

    # Negative control: an allowed-address-pair address is not answered, its request floods
    # through the tunnel (the capture above would have seen any that crossed).
    src, dst = vms["a"]
    tenancy.api.update(
        "port", dst.iface_id, allowed_address_pairs=[{"ip_address": "10.0.0.200"}]
    )
    cap = dp_env.lab.capture_underlay(bpf=TUNNELLED_ARP, count=1, timeout=6)
    request = arp_frame(src.mac, "ff:ff:ff:ff:ff:ff", 1, src.mac, src.ip,
                        "00:00:00:00:00:00", "10.0.0.200")  # fmt: skip
    send_frames(src, [request], repeat=10)
    crossed = [line for line in cap.wait() if line.strip()]
    assert any("10.0.0.200" in line for line in crossed), crossed


SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
echo "$ip $mask $router $dns $mtu" > "$0.$interface.bound"
"""


def _udhcpc(vm: Vm, script: Path, flush: bool = True) -> tuple[int, str]:
    """Run busybox udhcpc once in ``vm``; (exit code, what the bound script recorded).  The
    script only records the lease: without ``flush`` the VM keeps its address (and traffic)."""
    if flush:
        vm.exec("ip", "addr", "flush", "dev", "eth0")
    cmd = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "1",
           "-O", "mtu", "-s", str(script)]  # fmt: skip
    proc = vm.exec(*cmd, check=False, timeout=60)
    bound = Path(f"{script}.eth0.bound")
    text = bound.read_text().strip() if bound.exists() else ""
    bound.unlink(missing_ok=True)
    return proc.returncode, text


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox (udhcpc) not installed")
def test_udhcpc_gets_its_port_through_the_controller(
    tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Path
) -> None:
    served = tenancy.network("vxlan", mtu=1400, cidr="10.0.0.0/24",
                             subnet={"dns_nameservers": ["10.0.0.53"]})  # fmt: skip
    silent = tenancy.network("vxlan", cidr="10.0.0.0/24", subnet={"enable_dhcp": False})
    vm1 = tenancy.vm(1, "dh1", served, ip="10.0.0.41")
    vm2 = tenancy.vm(2, "dh2", served, ip="10.0.0.42")
    off = tenancy.vm(3, "dh3", silent, ip="10.0.0.43")
    tenancy.wait_active([vm1, vm2, off])
    script = tmp_path / "udhcpc.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    for vm in (vm1, vm2):
        code, bound = _udhcpc(vm, script)
        assert code == 0, f"{vm.name}: no lease"
        assert bound == f"{vm.ip} 24 10.0.0.1 10.0.0.53 1400", f"{vm.name}: {bound}"
    code, bound = _udhcpc(off, script)
    assert code != 0 and not bound, f"a subnet with DHCP off was answered: {bound}"
