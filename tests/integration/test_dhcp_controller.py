"""Native DHCP through the whole controller, with real clients in VM namespaces (issue 15).

No DHCP server runs anywhere in this lab: every answer is the controller's (punt rule ->
packet-in -> `controller.dataplane.dhcp` -> PACKET_OUT), and each test checks the controller's
own DHCP counters moved by what the clients got.

* busybox ``udhcpc`` and ISC ``dhclient`` on three hosts, in two tenants whose subnets overlap
  (same CIDR, same addresses): each VM gets its own tenant's address, gateway, MTU, DNS and
  classless routes, applied by the client's own script and read back from the namespace.
* A VM flooding DHCP gets a temporary drop rule on its switch (logged once per offence,
  counted), while a VM on the same host still gets its lease and the API still answers.
* A client holding a lease renews by unicast to the server address after a controller restart
  and gets its ACK once the switch is back (the server's MAC from the network's ARP answer).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.hypervisors import Vm
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import DataplaneEnv, Tenancy, wait_for
from tests.unit.test_dhcp_responder import client_frame

pytestmark = [
    pytest.mark.ovs,
    pytest.mark.skipif(
        shutil.which("busybox") is None or shutil.which("dhclient") is None,
        reason="busybox (udhcpc) and isc-dhcp-client (dhclient) are needed",
    ),
]

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy

DISCOVER = 1

# The client applies what it got (address, MTU, routes) and dumps its environment per event.
UDHCPC_SCRIPT = """#!/bin/sh
env > "$0.$interface.$1"
echo "$1 $ip" >> "$0.$interface.events"
[ "$1" = bound ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface"
ip link set "$interface" mtu "$mtu"
set -- $staticroutes
while [ -n "$1" ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
"""

DHCLIENT_SCRIPT = """#!/bin/sh
env > "DUMP.$reason"
[ "$reason" = BOUND ] || exit 0
ip addr flush dev "$interface"
ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
ip link set "$interface" mtu "$new_interface_mtu"
set -- $new_rfc3442_classless_static_routes
while [ -n "$1" ]; do
  len=$1; shift; dst=""; n=$(( (len + 7) / 8 )); i=0
  while [ $i -lt 4 ]; do
    if [ $i -lt $n ]; then o=$1; shift; else o=0; fi
    dst="$dst${dst:+.}$o"; i=$((i + 1))
  done
  via="$1.$2.$3.$4"; shift 4
  ip route replace "$dst/$len" via "$via" dev "$interface"
done
"""

FLOOD = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "s.bind(('eth0',0))\n"
    "f=bytes.fromhex(sys.argv[2]);end=time.monotonic()+float(sys.argv[1])\n"
    "while time.monotonic()<end:\n"
    "    s.send(f);time.sleep(0.001)\n"
)


def _env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _unconfigure(vm: Vm) -> None:
    """Forget the address the lab configured: the client must bring its own."""
    vm.exec("ip", "addr", "flush", "dev", "eth0")
    vm.exec("ip", "route", "flush", "dev", "eth0")


def _script(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def udhcpc_once(vm: Vm, tmp: Path) -> dict[str, str]:
    """busybox udhcpc until bound (or it gives up after its bounded retries): its ``bound``
    environment, empty when it got no lease."""
    _unconfigure(vm)
    script = _script(tmp, f"udhcpc-{vm.name}.sh", UDHCPC_SCRIPT)
    cmd = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "6", "-T", "1",
           "-O", "mtu", "-O", "staticroutes", "-s", str(script)]  # fmt: skip
    vm.exec(*cmd, check=False, timeout=60)
    bound = Path(f"{script}.eth0.bound")
    return _env(bound) if bound.exists() else {}


def dhclient_once(vm: Vm, tmp: Path) -> dict[str, str]:
    """ISC dhclient once (``-1``: try one lease period's worth, then fail): its ``BOUND``
    environment, empty when it got no lease."""
    _unconfigure(vm)
    dump, pidfile = tmp / f"dhclient-{vm.name}", tmp / f"dhclient-{vm.name}.pid"
    script = _script(tmp, f"dhclient-{vm.name}.sh", DHCLIENT_SCRIPT.replace("DUMP", str(dump)))
    cmd = ["timeout", "40", "dhclient", "-1", "-v", "-sf", str(script),
           "-lf", str(tmp / f"leases-{vm.name}"), "-pf", str(pidfile), "eth0"]  # fmt: skip
    try:
        vm.exec(*cmd, check=False, timeout=60)
    finally:
        # dhclient stays in the background to renew: found by its command line, not by the
        # pid file, which may still be empty (created before dhclient writes its pid)
        subprocess.run(["pkill", "-TERM", "-f", str(pidfile)], check=False)
    bound = Path(f"{dump}.BOUND")
    return _env(bound) if bound.exists() else {}


def _configured(vm: Vm) -> tuple[str, str, str]:
    """(addresses, link, routes) of eth0 as the namespace has them now."""
    addr = vm.exec("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    link = vm.exec("ip", "link", "show", "dev", "eth0").stdout
    routes = vm.exec("ip", "-4", "route", "show").stdout
    return addr, link, routes


def _dhcp(env: DataplaneEnv) -> dict[str, Any]:
    return env.api.status()["dhcp"]


def test_udhcpc_and_dhclient_get_their_own_tenants_answer_across_hosts(
    tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Path
) -> None:
    """Two tenants with the same subnet and the same addresses, each client on another host:
    every VM is configured with its own tenant's gateway, MTU, DNS and routes."""
    tenants = {
        "a": ("10.0.0.1", 1400, "10.0.0.53", "172.31.0.0/16", "10.0.0.254"),
        "b": ("10.0.0.129", 1380, "10.0.0.54", "192.168.77.0/24", "10.0.0.253"),
    }
    nets = {}
    for name, (gw, mtu, dns, dst, hop) in tenants.items():
        subnet = {"gateway_ip": gw, "dns_nameservers": [dns],
                  "host_routes": [{"destination": dst, "nexthop": hop}]}  # fmt: skip
        nets[name] = tenancy.network(
            "vxlan", project=f"tenant-{name}", mtu=mtu, cidr="10.0.0.0/24", subnet=subnet
        )
    # same addresses in both tenants; the two clients of a tenant on different hosts
    vms = {
        ("a", "udhcpc"): tenancy.vm(1, "dca1", nets["a"], ip="10.0.0.41"),
        ("a", "dhclient"): tenancy.vm(2, "dca2", nets["a"], ip="10.0.0.42"),
        ("b", "udhcpc"): tenancy.vm(2, "dcb1", nets["b"], ip="10.0.0.41"),
        ("b", "dhclient"): tenancy.vm(3, "dcb2", nets["b"], ip="10.0.0.42"),
    }
    tenancy.wait_active(list(vms.values()))
    acks = _dhcp(dp_env)["answers"]["ack"]
    for (tenant, client), vm in vms.items():
        gw, mtu, dns, dst, hop = tenants[tenant]
        if client == "udhcpc":
            env = udhcpc_once(vm, tmp_path)
            got = (env.get("ip"), env.get("router"), env.get("dns"), env.get("mtu"))
            assert got == (vm.ip, gw, dns, str(mtu)), f"{vm.name}: {env}"
            assert env["serverid"] == gw and env["subnet"] == "255.255.255.0", env
        else:
            env = dhclient_once(vm, tmp_path)
            got = (env.get("new_ip_address"), env.get("new_routers"),
                   env.get("new_domain_name_servers"), env.get("new_interface_mtu"))  # fmt: skip
            assert got == (vm.ip, gw, dns, str(mtu)), f"{vm.name}: {env}"
            assert env["new_dhcp_server_identifier"] == gw, env
        addr, link, routes = _configured(vm)
        assert f"inet {vm.ip}/24" in addr, f"{vm.name}: {addr}"
        assert f"mtu {mtu}" in link, f"{vm.name}: {link}"
        assert f"{dst} via {hop}" in routes and f"default via {gw}" in routes, routes
    # all four answers were the controller's (no other DHCP server exists in this lab)
    assert _dhcp(dp_env)["answers"]["ack"] - acks == len(vms)


def _guard_flows(vm: Vm) -> list[str]:
    """The DHCP drop rules (owner kind DHCP_GUARD, flows.tables) on the VM's host."""
    out = vm.hv.ofctl("dump-flows", "br-int", "cookie=0x7e4e060000000000/0xffffff0000000000")
    return [line for line in out.splitlines() if "priority=120" in line]


def _dropped(rule: str) -> int:
    found = re.search(r"n_packets=(\d+)", rule)
    return int(found.group(1)) if found else 0


def test_a_flooding_vm_is_dropped_on_its_switch_and_its_neighbour_still_gets_a_lease(
    tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Path
) -> None:
    net = tenancy.network("vxlan", cidr="10.0.0.0/24")
    flooder = tenancy.vm(1, "dfl1", net, ip="10.0.0.61")
    victim = tenancy.vm(1, "dfl2", net, ip="10.0.0.62")  # same host: same packet-in budget
    tenancy.wait_active([flooder, victim])
    before = _dhcp(dp_env)
    frame = client_frame(DISCOVER, flooder.mac)
    flood = subprocess.Popen(
        ["ip", "netns", "exec", flooder.ns, sys.executable, "-c", FLOOD, "60", frame.hex()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _dhcp(dp_env)["port_bans"] > before["port_bans"], 20, 0.2,
                 "the flooding port was never banned")  # fmt: skip
        (rule,) = wait_for(lambda: _guard_flows(flooder), 10, 0.2, "no drop rule on hv1")
        assert f"in_port={flooder.ofport()}" in rule and "hard_timeout=" in rule, rule
        assert flood.poll() is None, "the flood stopped early"
        # the neighbour's DHCP and the API while the flood goes on
        env = udhcpc_once(victim, tmp_path)
        assert env.get("ip") == victim.ip, f"no lease for the neighbour: {env}"
        port = tenancy.port(net, ip="10.0.0.63")
        assert tenancy.api.show("port", port["id"])["fixed_ips"][0]["ip_address"] == "10.0.0.63"
        assert flood.poll() is None, "the flood stopped before the checks were done"
        # the switch drops the flood itself (sampled until a rule has counted some: a ban may
        # just have expired and its successor be on the way)
        wait_for(lambda: any(_dropped(rule) for rule in _guard_flows(flooder)), 10, 0.2,
                 "no drop rule counted the flood")  # fmt: skip
    finally:
        flood.kill()
        flood.wait(10)
    after = _dhcp(dp_env)
    bans = after["port_bans"] - before["port_bans"]
    assert after["drops"]["flood"] > before["drops"]["flood"]
    logged = dp_env.ctl.log_tail(2000).count(f"DHCP flood from port {flooder.iface_id}")
    assert logged == bans, f"{logged} log lines for {bans} offences"


RENEW_SCRIPT = """#!/bin/sh
echo "$1 $ip $serverid" >> "$0.events"
[ "$1" = bound ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface"
"""


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_lease_is_renewed_by_unicast_after_a_controller_restart(
    tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Path
) -> None:
    """Stateless DHCP: the restarted controller answers a renewal it has no memory of.  Runs
    last in the module (it restarts the module's controller)."""
    net = tenancy.network("vxlan", cidr="10.0.0.0/24")
    vm = tenancy.vm(2, "drn1", net, ip="10.0.0.71")
    tenancy.wait_active([vm])
    _unconfigure(vm)
    script = _script(tmp_path, "renew.sh", RENEW_SCRIPT)
    events = Path(f"{script}.events")
    client = subprocess.Popen(
        ["ip", "netns", "exec", vm.ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-T", "1",
         "-A", "1", "-s", str(script)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: f"bound {vm.ip} 10.0.0.1" in _events(events), 20, 0.1, "no first lease")
        vm.neigh_flush()  # the unicast needs the server's MAC: ARP answered by flows
        dp_env.ctl.restart()
        dp_env.api.wait_reconciled(timeout=60)  # the switches are back and read
        acks = _dhcp(dp_env)["answers"]["ack"]
        assert acks == 0  # a new process: nothing remembered
        cap = vm.capture(bpf="udp dst port 67", count=1, timeout=20)
        client.send_signal(signal.SIGUSR1)  # renew now (T1 would be hours away)
        wait_for(lambda: f"renew {vm.ip} 10.0.0.1" in _events(events), 20, 0.1,
                 "no ACK to the renewal")  # fmt: skip
        request = cap.text  # the first DHCP message after the signal (tcpdump -e -vv lines)
        assert "> 02:7e:4e:00:00:01," in request, f"not to the server's MAC: {request}"
        assert f"{vm.ip}.68 > 10.0.0.1.67" in request, f"not a unicast renewal: {request}"
        neigh = vm.exec("ip", "neigh", "show", "10.0.0.1", "dev", "eth0").stdout
        assert "lladdr 02:7e:4e:00:00:01" in neigh, neigh  # the answer came from the flows
        assert _dhcp(dp_env)["answers"]["ack"] >= 1
    finally:
        client.kill()
        client.wait(10)
