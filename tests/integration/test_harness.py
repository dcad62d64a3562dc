"""The lab harness itself, without the controller: hand-made br-int, tunnels and flows."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from lab.cleanup import LabLock
from lab.hypervisors import Lab, LabError

pytestmark = pytest.mark.ovs

VNI = 5000
VXLAN, GRE = 100, 101  # ofport_request of the flow-based tunnel ports
REPO = __file__.rsplit("/tests/", 1)[0]


def mac(n: int) -> str:
    return f"02:aa:00:00:00:{n:02x}"


def vm_ip(n: int) -> str:
    return f"10.30.0.{n}"


def tcp_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def lab(make_module_lab) -> Lab:
    lab = make_module_lab(3)
    # as a real hypervisor before the controller registers it: no br-int, only br-phy
    lab.initial_bridges = {hv.name: hv.vsctl("list-br").split() for hv in lab.hvs}
    return lab


@pytest.fixture(scope="module")
def net(lab):
    """br-int + flow-based VXLAN/GRE ports on each hypervisor, one VM per hypervisor."""
    # created before br-int exists (plug=False), plugged after: the documented path
    vms = [lab.add_vm(hv, f"vm{hv.n}", mac(hv.n), f"{vm_ip(hv.n)}/24", f"port-{hv.n}",
                      plug=False) for hv in lab.hvs]
    for hv in lab.hvs:
        hv.vsctl(
            "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
            "fail_mode=secure", "protocols=OpenFlow13",
            "--", "add-port", "br-int", "vxlan0", "--", "set", "Interface", "vxlan0",
            "type=vxlan", "options:remote_ip=flow", "options:key=flow", f"ofport_request={VXLAN}",
            "--", "add-port", "br-int", "gre0", "--", "set", "Interface", "gre0",
            "type=gre", "options:remote_ip=flow", "options:key=flow", f"ofport_request={GRE}")
    for vm in vms:
        vm.plug()
    return vms


def install_flows(lab: Lab, vms, tunnel_port: int) -> None:
    """Forward between the VMs through ``tunnel_port`` with VNI 5000 (broadcast to every host)."""
    for hv, vm in zip(lab.hvs, vms, strict=True):
        port = vm.ofport()
        assert port > 0
        flows = ["table=0,priority=0,actions=drop",
                 f"table=0,priority=10,in_port={tunnel_port},tun_id={VNI},actions=output:{port}"]
        flood = [f"set_field:{VNI}->tun_id"]
        for other_hv, other in zip(lab.hvs, vms, strict=True):
            if other_hv is hv:
                continue
            to = f"set_field:{other_hv.tunnel_ip}->tun_dst,output:{tunnel_port}"
            flows.append(f"table=0,priority=10,in_port={port},dl_dst={other.mac},"
                         f"actions=set_field:{VNI}->tun_id,{to}")
            flood.append(to)
        flows.append(f"table=0,priority=10,in_port={port},dl_dst=ff:ff:ff:ff:ff:ff,"
                     f"actions={','.join(flood)}")
        hv.ofctl("replace-flows", "br-int", "-", input="\n".join(flows) + "\n")
    lab.revalidator_wait()  # else the datapath may briefly use the old cached flows


def ping_all(vms) -> None:
    for a in vms:
        for b in vms:
            if a is not b:
                sent, received = a.ping(b.ip, count=2, interval=0.05, timeout=2)
                assert (sent, received) == (2, 2), f"{a.name} -> {b.name}"


def test_hypervisors_up(lab):
    assert [hv.name for hv in lab.hvs] == ["hv1", "hv2", "hv3"]
    assert lab.initial_bridges == {hv.name: ["br-phy"] for hv in lab.hvs}
    for hv in lab.hvs:
        assert hv.ovsdb_unix == f"unix:{hv.dir}/db.sock"
        assert hv.ovsdb_tcp == f"tcp:{hv.mgmt_ip}:6640"
        # the controller's view: OVSDB over TCP on the mgmt network, from the root namespace
        out = subprocess.run(["ovs-vsctl", f"--db={hv.ovsdb_tcp}", "--timeout=5", "get",
                              "Open_vSwitch", ".", "external_ids:system-id"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        assert out.strip().strip('"') == hv.name
        assert hv.exec("ip", "-4", "-o", "addr", "show", "br-phy").stdout.split()[3] == (
            f"{hv.tunnel_ip}/24")
        assert set(hv.rss_kb()) == {"ovsdb-server", "ovs-vswitchd"}


def test_vswitchd_reaches_controller_over_mgmt(lab):
    """A listener on lab.mgmt_ip (root namespace) gets each hypervisor's OpenFlow connection."""
    with socket.socket() as srv:
        srv.bind((lab.mgmt_ip, 0))
        srv.listen(8)
        srv.settimeout(5)
        target = f"tcp:{lab.mgmt_ip}:{srv.getsockname()[1]}"
        for hv in lab.hvs:
            hv.vsctl("add-br", "br-ctl", "--", "set", "Bridge", "br-ctl", "datapath_type=netdev",
                     "fail_mode=secure", "protocols=OpenFlow13", "--", "set-controller",
                     "br-ctl", target)
        peers = set()
        try:
            for _ in lab.hvs:
                conn, (ip, _port) = srv.accept()
                conn.close()
                peers.add(ip)
        finally:
            for hv in lab.hvs:
                hv.vsctl("del-br", "br-ctl")
    assert peers == {hv.mgmt_ip for hv in lab.hvs}


def test_add_vm_without_br_int_fails_clearly(lab):
    with pytest.raises(LabError, match="br-int did not appear"):
        lab.add_vm(lab.hv(1), "early", mac(0xEE), "10.30.0.238/24", "port-early",
                   plug_timeout=0.5)
    assert "early" not in lab.vms
    assert f"{lab.prefix}-early" not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_ping_vxlan_and_vni_on_underlay(lab, net):
    install_flows(lab, net, VXLAN)
    cap = lab.capture_underlay("udp port 4789", count=4, timeout=5)
    ping_all(net)
    text = "\n".join(cap.wait())
    assert f"vni {VNI}" in text, text


def test_ping_gre_and_key_on_underlay(lab, net):
    install_flows(lab, net, GRE)
    cap = lab.capture_underlay("ip proto 47", count=4, timeout=5)
    ping_all(net)
    text = "\n".join(cap.wait())
    assert f"key=0x{VNI:x}" in text, text


def test_flows_trace_and_vm_capture(lab, net):
    install_flows(lab, net, VXLAN)
    hv1, vm1, vm2 = lab.hv(1), net[0], net[1]
    flows = hv1.dump_flows()
    assert f"priority=10,tun_id={VNI:#x},in_port={VXLAN} actions=output:{vm1.ofport()}" in flows
    trace = hv1.trace("br-int", f"in_port={vm1.ofport()},dl_src={vm1.mac},dl_dst={vm2.mac}")
    assert f"tun_dst={lab.hv(2).tunnel_ip}" in trace or "tnl_push" in trace, trace
    cap = vm2.capture(bpf="icmp", count=2, timeout=5)
    assert vm1.ping(vm2.ip, count=1) == (1, 1)
    assert any("ICMP echo request" in line for line in cap.wait())


def test_tcp_transfer(lab, net):
    install_flows(lab, net, VXLAN)
    assert net[0].tcp_transfer(net[2], 20_000_000) == 20_000_000
    mbps = net[1].iperf(net[0], seconds=1)
    print(f"iperf3 hv2 -> hv1 over VXLAN: {mbps} Mbit/s")
    assert mbps > 0  # iperf3 measured a transfer; its speed belongs in bench/


def test_only_br_phy_answers_arp_for_the_underlay_address(lab):
    """On a real hypervisor the NIC under br-phy belongs to OVS and its kernel never answers
    from it; here eth1 is also a kernel veth, which would answer ARP for br-phy's address with
    its own MAC (and OVS's neighbour snooping would learn that MAC for the tunnel endpoint)."""
    hv1, hv2 = lab.hv(1), lab.hv(2)
    hv1.exec("ip", "neigh", "flush", "dev", "br-phy")
    cap = lab.capture_underlay("arp", count=4, timeout=2)
    assert hv1.exec("ping", "-c", "1", "-W", "2", hv2.tunnel_ip, check=False).returncode == 0
    replies = [line for line in cap.wait() if f"Reply {hv2.tunnel_ip} is-at" in line]
    assert replies, "no ARP reply seen on the underlay"
    answered = {line.split(" is-at ")[1].split(",")[0] for line in replies}
    assert answered == {hv2.hwaddr}, replies


def test_mgmt_cut_and_heal(lab):
    hv2 = lab.hv(2)
    assert tcp_open(hv2.mgmt_ip, 6640)
    lab.cut_mgmt(2)
    try:
        assert not tcp_open(hv2.mgmt_ip, 6640)
        assert tcp_open(lab.hv(1).mgmt_ip, 6640)
    finally:
        lab.heal_mgmt(hv2)
    deadline = time.monotonic() + 5
    while not tcp_open(hv2.mgmt_ip, 6640) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tcp_open(hv2.mgmt_ip, 6640)


def test_vswitchd_restart_loses_pings_then_recovers(lab, net):
    install_flows(lab, net, VXLAN)
    vm1, vm2 = net[0], net[1]
    bg = vm1.ping_background(vm2.ip, interval=0.01)
    time.sleep(0.3)
    lab.hv(2).stop_vswitchd(kill=True)  # crash: OpenFlow flows and the br-phy tap are gone
    time.sleep(0.3)
    lab.hv(2).start_vswitchd()  # br-int comes back from the db; flows must be reinstalled
    install_flows(lab, net, VXLAN)
    time.sleep(0.5)
    stats = bg.stop()
    print(f"vswitchd kill/restart: {stats}")
    assert stats.lost > 0 and stats.max_gap_ms >= 300
    assert stats.received > 0
    assert vm1.ping(vm2.ip) == (3, 3)


def test_unplug_and_plug(lab, net):
    install_flows(lab, net, VXLAN)
    vm3 = net[2]
    vm3.unplug()
    assert "tapport-3" not in lab.hv(3).vsctl("list-ports", "br-int").split()
    assert net[0].ping(vm3.ip, count=1, timeout=0.5).received == 0
    vm3.plug()  # no ofport_request: OVS gives the port a new ofport
    iface_id = lab.hv(3).vsctl("get", "Interface", vm3.port, "external_ids:iface-id")
    assert iface_id.strip('"') == "port-3"
    install_flows(lab, net, VXLAN)
    assert net[0].ping(vm3.ip, count=2, interval=0.05) == (2, 2)
    net[1].wait_reachable(vm3.ip, timeout=5)  # raises if it is not


def test_close_leaves_nothing_and_lab_restarts(lab, make_lab):
    prefix, mgmt = lab.prefix, lab.mgmt_cidr
    assert lab.leftovers()["namespaces"]
    lab.close()
    lab.close()  # idempotent
    assert lab.leftovers() == {"namespaces": [], "links": [], "processes": [], "workdir": []}
    again = make_lab(1, prefix=prefix, mgmt_ip=mgmt)
    assert again.hv(1).has_bridge("br-phy")
    again.close()
    assert again.leftovers() == {"namespaces": [], "links": [], "processes": [], "workdir": []}


def _crash_a_lab(prefix: str, mgmt: str) -> None:
    """Start a 1-host lab in a child process and SIGKILL it: leaves everything behind."""
    code = ("import sys, time; from lab.hypervisors import Lab; "
            f"Lab(1, prefix={prefix!r}, mgmt_ip={mgmt!r}).start(); print('up', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "up"
    finally:
        child.kill()
        child.wait(10)


def test_stale_leftovers_after_crash(make_lab):
    probe = make_lab(0)  # reserves a free prefix/mgmt slot
    prefix, mgmt = probe.prefix, probe.mgmt_cidr
    probe.close()

    _crash_a_lab(prefix, mgmt)
    left = Lab(0, prefix=prefix).leftovers()
    assert left["namespaces"] and left["links"] and left["processes"]
    cli = subprocess.run([sys.executable, "-m", "lab.cleanup", "--prefix", prefix],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert not any(Lab(0, prefix=prefix).leftovers().values())

    _crash_a_lab(prefix, mgmt)
    lab = make_lab(1, prefix=prefix, mgmt_ip=mgmt)  # cleans the stale copy itself
    assert lab.hv(1).has_bridge("br-phy") and lab.hv(1).vswitchd_running()
    lab.close()
    assert not any(lab.leftovers().values())
    lock = LabLock(prefix)
    assert lock.acquire(0)
    lock.release()
