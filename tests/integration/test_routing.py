"""Distributed routing (issue 16) through the whole controller on real OVS, with real packets.

One lab of three emulated hypervisors and one controller for the module (``dp_env``).  Each test
builds a router between two subnets of one project; VMs are network namespaces plugged into
br-int, with their default route via their subnet's gateway (the router interface's address).
Packets are routed on the sending hypervisor (`flows.routing`): ping and TCP between subnets on
one host and across hosts, the gateway answering ARP and ping from flows, TTL decremented and a
packet with TTL 1 dropped and answered (Debian's ``traceroute`` shows the gateway as the one
hop), the path cut by removing an interface, VMs that resolved their gateway to the DHCP
server's MAC before the router existed moved to the interface's MAC, two projects with the same
CIDRs and their own routers kept apart, security groups applied to routed traffic (egress at the
sender's port, ingress at the receiver's), and a controller killed with SIGKILL while a routed
ping runs.

Most VMs' groups let in what the tests send by CIDR (``remote_ip_prefix``); one test uses only
the project's default group (ingress from its members): a member's addresses also count under
the keys of the networks routed to its network.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.services.dhcp_records import DEFAULT_SERVER_MAC
from lab.hypervisors import Vm
from tests.integration import dataplane_fixtures, sg_probes
from tests.integration.dataplane_fixtures import DataplaneEnv, Net, Tenancy, wait_for
from tests.integration.sg_probes import (
    STREAM_PORT,
    TCP_PORT,
    Servers,
    clear_rules,
    create_group,
    create_rule,
    delete_group,
    icmp_ok,
    settle,
    tcp_ok,
    udp_ok,
)

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy
servers = sg_probes.servers

RIF = "network:router_interface_distributed"
XFER_PORT = 5004  # the bulk transfer's own port (the probe servers hold 5001-5003)


@dataclass
class Router:
    """A router of one project (made through the API, named for the test so that the test's
    teardown finds it) and its interface ports (one per subnet)."""

    tenancy: Tenancy
    project: str
    id: str = ""
    interfaces: dict[str, dict[str, Any]] = field(default_factory=dict)  # network id -> port

    def __post_init__(self) -> None:
        made = self.tenancy.api.create("router", name=self.tenancy.tag, project_id=self.project)
        self.id = made["id"]

    def add(self, net: Net) -> dict[str, Any]:
        """The subnet's interface: a port at its gateway address."""
        answer = self.tenancy.api.request(
            "PUT", f"/v2.0/routers/{self.id}/add_router_interface", {"subnet_id": net.subnet["id"]}
        )
        port = self.tenancy.api.show("port", answer["port_id"])
        assert port["device_owner"] == RIF and port["device_id"] == self.id
        self.interfaces[net.id] = port
        return port

    def remove(self, net: Net) -> None:
        port = self.interfaces.pop(net.id)
        self.tenancy.api.request(
            "PUT", f"/v2.0/routers/{self.id}/remove_router_interface", {"port_id": port["id"]}
        )


def remove_routers(tenancy: Tenancy) -> None:
    """The test's routers with their interfaces and routes (before its networks can go)."""
    api = tenancy.api
    for made in api.list("router", f"name={tenancy.tag}"):
        url = f"/v2.0/routers/{made['id']}"
        api.update("router", made["id"], routes=[])
        for port in api.list("port", f"device_id={made['id']}"):
            api.request("PUT", f"{url}/remove_router_interface", {"port_id": port["id"]})
        api.delete("router", made["id"])


@dataclass
class Project:
    """Two subnets joined by a router, and the group every VM of the project is in."""

    tenancy: Tenancy
    name: str
    group: dict[str, Any]
    nets: list[Net]
    router: Router

    def vm(self, hv: int, name: str, net: Net, ip: str, **kw: Any) -> Vm:
        groups = kw.pop("security_groups", [self.group["id"]])
        vm = self.tenancy.vm(hv, name, net, ip=ip, security_groups=groups, **kw)
        vm.exec("ip", "route", "add", "default", "via", net.subnet["gateway_ip"])
        return vm

    def pair(self, name: str, last_octets: tuple[int, int]) -> tuple[Vm, Vm]:
        """VM ``a`` in the first subnet on hv1 and ``c`` in the second on hv2, both ACTIVE and
        their flows in the switches."""
        n1, n2 = self.nets
        a = self.vm(1, name, n1, f"10.0.21.{last_octets[0]}")
        c = self.vm(2, f"{name}2", n2, f"10.0.22.{last_octets[1]}")
        self.tenancy.wait_active([a, c])
        settle(self.tenancy.env)
        return a, c


def open_group(api: Any, project: str) -> dict[str, Any]:
    """Ingress ICMP and the probes' TCP ports from 10.0.0.0/8 (UDP stays closed)."""
    group = create_group(api, f"routed-{project}", project_id=project)
    create_rule(api, group, protocol="icmp", remote_ip_prefix="10.0.0.0/8")
    for port in (TCP_PORT, STREAM_PORT, XFER_PORT):
        create_rule(api, group, protocol="tcp", port_range_min=port, port_range_max=port,
                    remote_ip_prefix="10.0.0.0/8")  # fmt: skip
    return group


@pytest.fixture
def groups(tenancy: Tenancy, dp_env: DataplaneEnv) -> Iterator[list[dict[str, Any]]]:
    """Groups a test made, deleted once its ports are (the test's objects go first)."""
    made: list[dict[str, Any]] = []
    yield made
    remove_routers(tenancy)
    tenancy.cleanup()
    for g in made:
        delete_group(dp_env.api, g)


def project(tenancy: Tenancy, groups: list[dict[str, Any]], name: str,
            cidrs: tuple[str, str] = ("10.0.21.0/24", "10.0.22.0/24")) -> Project:  # fmt: skip
    group = open_group(tenancy.api, name)
    groups.append(group)
    nets = [tenancy.network("vxlan", project=name, cidr=c) for c in cidrs]
    router = Router(tenancy, name)
    for net in nets:
        router.add(net)
    return Project(tenancy, name, group, nets, router)


@pytest.fixture
def proj(tenancy: Tenancy, groups: list[dict[str, Any]]) -> Project:
    return project(tenancy, groups, "tenant-r1")


def test_ping_and_tcp_between_subnets_on_one_host_and_across_hosts(
    proj: Project, tenancy: Tenancy, servers: Servers, dp_env: DataplaneEnv
) -> None:
    n1, n2 = proj.nets
    a = proj.vm(1, "ra", n1, "10.0.21.11")
    b = proj.vm(1, "rb", n2, "10.0.22.12")  # a's host
    c = proj.vm(2, "rc", n2, "10.0.22.13")  # another host
    tenancy.wait_active([a, b, c])
    settle(dp_env)
    for vm in (b, c):
        servers.start(vm)
    for client, server in ((a, b), (a, c)):
        assert client.ping(server.ip, count=3, interval=0.2).received == 3
        assert tcp_ok(client, server)
    # and back: c routes through its own host's copy of the router
    assert c.ping(a.ip, count=3, interval=0.2).received == 3
    # a bulk TCP transfer across hosts, routed
    assert a.tcp_transfer(c, nbytes=2_000_000, port=XFER_PORT) == 2_000_000


def test_gateway_answers_arp_and_ping_from_flows(proj: Project, tenancy: Tenancy,
                                                  dp_env: DataplaneEnv) -> None:  # fmt: skip
    n1, n2 = proj.nets
    a = proj.vm(1, "rg", n1, "10.0.21.21")
    tenancy.wait_active([a])
    settle(dp_env)
    assert a.ping(n1.subnet["gateway_ip"], count=3, interval=0.2).received == 3
    # the other interface's address too, through a's own gateway
    assert a.ping(n2.subnet["gateway_ip"], count=3, interval=0.2).received == 3
    neigh = a.exec("ip", "neigh", "show", n1.subnet["gateway_ip"]).stdout
    assert proj.router.interfaces[n1.id]["mac_address"] in neigh.lower()
    # the echo replies leave from the interface a sent to (its gateway's MAC, whichever
    # interface's address it pinged: the router's second pass in L3_ROUTING), back to a's port
    gw_mac = proj.router.interfaces[n1.id]["mac_address"].lower()
    for net in (n1, n2):
        flow = (f"in_port={a.ofport()},dl_src={a.mac},dl_dst={gw_mac},icmp,nw_src={a.ip},"
                f"nw_dst={net.subnet['gateway_ip']},nw_ttl=64,icmp_type=8,icmp_code=0")  # fmt: skip
        ovs = dp_env.hvs[0].trace("br-int", flow)
        final = [line for line in ovs.splitlines() if line.startswith("Datapath actions:")][-1]
        assert f"set(eth(src={gw_mac},dst={a.mac.lower()}))" in final, ovs[-3000:]
        assert f"src={net.subnet['gateway_ip']},dst={a.ip}" in final, ovs[-3000:]


def test_ttl_is_decremented_and_ttl_one_answered_time_exceeded(
    proj: Project, tenancy: Tenancy, dp_env: DataplaneEnv
) -> None:
    """Traceroute's first probe: TTL 1 gets ICMP time exceeded from the gateway (one hop),
    TTL 2 reaches the VM behind the router."""
    a, c = proj.pair("rt", (31, 32))
    gateway = proj.nets[0].subnet["gateway_ip"]
    assert a.exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-t", "2", c.ip).returncode == 0
    cp = a.exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-t", "1", c.ip, check=False)
    assert cp.returncode != 0  # no echo reply ...
    assert f"From {gateway} icmp_seq=1 Time to live exceeded" in cp.stdout  # ... the router's
    # the received echo shows the decrement (Linux answers with TTL 64: 63 after one hop)
    assert "ttl=63" in a.exec("ping", "-n", "-c", "1", "-W", "1", c.ip).stdout


def traceroute_hops(vm: Vm, dest: str, *options: str) -> list[str]:
    """What Debian's ``traceroute`` prints for each hop to ``dest`` from ``vm`` (its address,
    or ``*`` when the probe went unanswered), one probe per hop, at most 3 hops."""
    out = vm.exec("traceroute", "-n", "-q", "1", "-w", "1", "-m", "3", *options, dest).stdout
    return [line.split()[1] for line in out.splitlines()[1:] if line.split()[0].isdigit()]


def test_traceroute_shows_one_hop_at_the_gateway(
    proj: Project, tenancy: Tenancy, dp_env: DataplaneEnv
) -> None:
    """The real tool across hosts: the gateway is the one hop before the VM behind the router
    (ICMP probes, which the VM's group lets in); with UDP probes, which its group does not let
    in, the gateway still answers the first hop and the VM's group drops the rest."""
    a, c = proj.pair("tr", (35, 36))
    gateway = proj.nets[0].subnet["gateway_ip"]
    assert traceroute_hops(a, c.ip, "-I") == [gateway, c.ip]
    assert traceroute_hops(a, c.ip) == [gateway, "*", "*"]


def gateway_mac(vm: Vm, gateway: str) -> str:
    """The MAC ``vm``'s neighbour table holds for its gateway ("" if none): read with
    ``ip neigh``, which sends nothing."""
    fields = vm.exec("ip", "neigh", "show", gateway, "dev", "eth0").stdout.split()
    return fields[fields.index("lladdr") + 1].lower() if "lladdr" in fields else ""


def test_removing_an_interface_cuts_the_path(proj: Project, tenancy: Tenancy,
                                             dp_env: DataplaneEnv) -> None:  # fmt: skip
    """...and adding it again (a new port, so a new MAC) announces the new MAC with a
    gratuitous ARP (controller/dataplane/garp.py): c's neighbour entry for its gateway takes it
    while c sends nothing (no re-ARP), and the routed path works at the first ping.  Linux
    updates an existing entry from a gratuitous ARP whatever arp_accept says (that setting only
    governs creating entries), so the VMs keep the kernel's defaults."""
    n1, n2 = proj.nets
    gateway = n2.subnet["gateway_ip"]
    a, c = proj.pair("rx", (41, 42))
    assert a.ping(c.ip, count=2, interval=0.2).received == 2
    old_mac = proj.router.interfaces[n2.id]["mac_address"]
    assert gateway_mac(c, gateway) == old_mac  # c answered a through its gateway
    proj.router.remove(n2)
    settle(dp_env)
    assert a.ping(c.ip, count=3, interval=0.2, timeout=1).received == 0
    assert a.ping(n1.subnet["gateway_ip"], count=2, interval=0.2).received == 2  # still there
    assert gateway_mac(c, gateway) == old_mac  # nothing told c yet
    new_mac = proj.router.add(n2)["mac_address"]
    assert new_mac != old_mac
    wait_for(lambda: gateway_mac(c, gateway) == new_mac, timeout=10,
             what="the gratuitous ARP to update c's entry for its gateway")  # fmt: skip
    settle(dp_env)
    assert a.ping(c.ip, count=1, timeout=1).received == 1


def test_vms_that_resolved_their_gateway_before_the_router_route_once_it_is_attached(
    tenancy: Tenancy, groups: list[dict[str, Any]], dp_env: DataplaneEnv
) -> None:
    """A cloud's usual order: VMs boot on subnets with DHCP on (Neutron's default) and use
    their gateway (cloud-init's metadata route, say) before anyone attaches a router.  Until
    then the gateway address is the DHCP server's identifier, which the ARP responder answers
    with the server's MAC, so the VMs cache that MAC for their gateway.  Attaching the router
    must move them to the interface's MAC (the interface's gratuitous ARP) without waiting for
    their entries to expire (Linux: 15-45 s reachable, then a probe): routed pings then work."""
    name = "tenant-r6"
    group = open_group(tenancy.api, name)
    groups.append(group)
    n1, n2 = (tenancy.network("vxlan", project=name, cidr=c)
              for c in ("10.0.21.0/24", "10.0.22.0/24"))  # fmt: skip
    assert n1.subnet["enable_dhcp"] and n2.subnet["enable_dhcp"]
    a = tenancy.vm(1, "rd", n1, ip="10.0.21.61", security_groups=[group["id"]])
    c = tenancy.vm(2, "rd2", n2, ip="10.0.22.62", security_groups=[group["id"]])
    tenancy.wait_active([a, c])
    settle(dp_env)
    server_mac = DEFAULT_SERVER_MAC  # the lab's controllers keep the default
    for vm, net in ((a, n1), (c, n2)):
        vm.exec("ip", "route", "add", "default", "via", net.subnet["gateway_ip"])
        # a routed packet before any router: resolves the gateway, goes nowhere
        assert vm.ping("10.0.99.1", count=1, timeout=1).received == 0
        assert gateway_mac(vm, net.subnet["gateway_ip"]) == server_mac
    router = Router(tenancy, name)
    macs = {net.id: router.add(net)["mac_address"].lower() for net in (n1, n2)}
    for vm, net in ((a, n1), (c, n2)):
        gw = net.subnet["gateway_ip"]
        wait_for(lambda vm=vm, gw=gw, mac=macs[net.id]: gateway_mac(vm, gw) == mac, timeout=10,
                 what=f"{vm.name}'s entry for its gateway to take the interface's MAC")  # fmt: skip
    settle(dp_env)
    assert a.ping(c.ip, count=3, interval=0.2, timeout=1).received == 3
    assert c.ping(a.ip, count=1, timeout=1).received == 1
    # the same when the router was down while a asked again: set up, it is announced again
    tenancy.api.update("router", router.id, admin_state_up=False)
    settle(dp_env)
    gw = n1.subnet["gateway_ip"]
    a.exec("ip", "neigh", "flush", "dev", "eth0")
    assert a.ping(c.ip, count=1, timeout=1).received == 0
    assert gateway_mac(a, gw) == server_mac
    tenancy.api.update("router", router.id, admin_state_up=True)
    wait_for(lambda: gateway_mac(a, gw) == macs[n1.id], timeout=10,
             what="the router set up again to announce its interface to a")  # fmt: skip
    settle(dp_env)
    assert a.ping(c.ip, count=2, interval=0.2, timeout=1).received == 2


def test_extra_route_to_a_vm_acting_as_nexthop(proj: Project, tenancy: Tenancy,
                                               dp_env: DataplaneEnv) -> None:  # fmt: skip
    """``10.0.99.0/24 via r`` (on another host) and ``10.0.98.0/24 via s`` (on the sender's):
    r and s (port security off, as appliance VMs are) hold 10.0.99.1 and 10.0.98.1 and answer
    from them; the answers go back through their own gateway (its ARP answered from flows
    although their ARP otherwise floods)."""
    n1, n2 = proj.nets
    a = proj.vm(1, "re", n1, "10.0.21.81")
    r = proj.vm(2, "re2", n2, "10.0.22.82", port_security_enabled=False, security_groups=[])
    s = proj.vm(1, "re3", n2, "10.0.22.83", port_security_enabled=False, security_groups=[])
    r.exec("ip", "addr", "add", "10.0.99.1/32", "dev", "lo")
    s.exec("ip", "addr", "add", "10.0.98.1/32", "dev", "lo")
    tenancy.wait_active([a, r, s])
    url = f"/v2.0/routers/{proj.router.id}"
    route = {"router": {"routes": [{"destination": "10.0.99.0/24", "nexthop": r.ip},
                                   {"destination": "10.0.98.0/24", "nexthop": s.ip}]}}  # fmt: skip
    dp_env.api.request("PUT", f"{url}/add_extraroutes", route)
    settle(dp_env)
    assert a.ping("10.0.99.1", count=3, interval=0.2).received == 3
    assert a.ping("10.0.98.1", count=3, interval=0.2).received == 3
    dp_env.api.request("PUT", f"{url}/remove_extraroutes", route)
    settle(dp_env)
    assert a.ping("10.0.99.1", count=3, interval=0.2, timeout=1).received == 0


def test_two_projects_with_the_same_cidrs_stay_apart(
    proj: Project, tenancy: Tenancy, groups: list[dict[str, Any]], dp_env: DataplaneEnv
) -> None:
    other = project(tenancy, groups, "tenant-r2")  # the same two CIDRs, its own router
    a1 = proj.vm(1, "ri1", proj.nets[0], "10.0.21.51")
    c1 = proj.vm(2, "ri2", proj.nets[1], "10.0.22.52")
    a2 = other.vm(1, "ri3", other.nets[0], "10.0.21.51")  # the same address as a1
    c2 = other.vm(2, "ri4", other.nets[1], "10.0.22.53")  # only the other project has .53
    tenancy.wait_active([a1, c1, a2, c2])
    settle(dp_env)
    assert a1.ping(c1.ip, count=2, interval=0.2).received == 2
    assert a2.ping(c2.ip, count=2, interval=0.2).received == 2
    # neither router carries the other project's packets
    assert a1.ping("10.0.22.53", count=3, interval=0.2, timeout=1).received == 0
    assert a2.ping("10.0.22.52", count=3, interval=0.2, timeout=1).received == 0


def test_security_groups_apply_to_routed_traffic(
    proj: Project, tenancy: Tenancy, servers: Servers, groups: list[dict[str, Any]],
    dp_env: DataplaneEnv,
) -> None:  # fmt: skip
    """Ingress at the receiver's port (its group lets in ICMP and TCP, not UDP), egress at the
    sender's (a client whose group lets out ICMP only)."""
    api = dp_env.api
    n1, n2 = proj.nets
    icmp_only = create_group(api, "icmp-out", project_id=proj.name)
    groups.append(icmp_only)
    clear_rules(api, icmp_only)
    create_rule(api, icmp_only, direction="egress", protocol="icmp")
    a = proj.vm(1, "rs", n1, "10.0.21.61")
    d = proj.vm(1, "rs2", n1, "10.0.21.62", security_groups=[icmp_only["id"]])
    c = proj.vm(2, "rs3", n2, "10.0.22.63")
    tenancy.wait_active([a, c, d])
    settle(dp_env)
    servers.start(c)
    assert (icmp_ok(a, c), tcp_ok(a, c), udp_ok(a, c)) == (True, True, False)
    assert (icmp_ok(d, c), tcp_ok(d, c)) == (True, False)


def test_default_group_admits_members_across_the_router(
    proj: Project, tenancy: Tenancy, servers: Servers, dp_env: DataplaneEnv
) -> None:
    """Two VMs in different subnets, only in their project's default group (ingress from its
    members): ping and TCP across the router, both ways."""
    listed = dp_env.api.request("GET", f"/v2.0/security-groups?project_id={proj.name}")
    [default] = [g for g in listed["security_groups"] if g["name"] == "default"]
    n1, n2 = proj.nets
    a = proj.vm(1, "rd", n1, "10.0.21.71", security_groups=[default["id"]])
    c = proj.vm(2, "rd2", n2, "10.0.22.73", security_groups=[default["id"]])
    tenancy.wait_active([a, c])
    settle(dp_env)
    servers.start(c)
    assert a.ping(c.ip, count=3, interval=0.2).received == 3
    assert c.ping(a.ip, count=3, interval=0.2).received == 3
    assert tcp_ok(a, c)


def test_kill_9_with_routed_ping_running_loses_nothing_and_sends_nothing(
    proj: Project, tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Any
) -> None:
    a, c = proj.pair("rk", (71, 72))
    assert a.ping(c.ip, count=2, interval=0.2).received == 2
    bg = a.ping_background(c.ip, interval=0.02)
    try:
        wait_for(lambda: bg_replies(tmp_path, bg) > 20, timeout=10, what="the routed ping")
        dp_env.ctl.stop(signal.SIGKILL)
        dp_env.ctl.start()
        dp_env.api.wait_reconciled(timeout=30)
        settle(dp_env)
        st = dp_env.api.status()
        assert st["flow_mods"] == 0 and st["group_mods"] == 0, st
        seen = bg_replies(tmp_path, bg)
        wait_for(lambda: bg_replies(tmp_path, bg) > seen + 20, timeout=10,
                 what="the routed ping to go on after the restart")  # fmt: skip
    finally:
        stats = bg.stop()
    assert stats.sent > 40 and stats.lost == 0, stats


def bg_replies(tmp_path: Any, bg: Any) -> int:
    with open(bg.outfile) as f:
        return sum(1 for line in f if "bytes from" in line)


def test_tenant_trace_of_a_routed_packet_matches_the_switches(
    proj: Project, tenancy: Tenancy, dp_env: DataplaneEnv
) -> None:
    """``POST /tenantnet/trace`` follows a routed packet to its port, in tenant terms, on the
    desired flows and on the flows read back from the switches; OVS's own ``ofproto/trace`` of
    the same packet on the sender's host leaves through the tunnel with the destination
    network's key, TTL decremented."""
    a, c = proj.pair("rtr", (91, 92))
    body = {"source_port_id": a.iface_id, "destination_ip": c.ip, "protocol": "icmp"}
    for installed in (False, True):
        doc = dp_env.api.request("POST", "/tenantnet/trace", {**body, "installed": installed})
        answer = doc.get("trace", doc)
        assert answer["delivered_to"] == [c.iface_id], answer
        steps = "\n".join(answer["paths"][0]["steps"])
        assert "routed on hv1" in steps and "TTL 64 -> 63" in steps, steps
    gw_mac = proj.router.interfaces[proj.nets[0].id]["mac_address"]
    flow = (f"in_port={a.ofport()},dl_src={a.mac},dl_dst={gw_mac},icmp,nw_src={a.ip},"
            f"nw_dst={c.ip},nw_ttl=64,icmp_type=8")  # fmt: skip
    ovs = dp_env.hvs[0].trace("br-int", flow)  # one pass per conntrack recirculation
    seg, hv2 = proj.nets[1].seg_id, dp_env.hvs[1]
    assert "dec_ttl" in ovs and f"set_field:{seg:#x}->tun_id" in ovs, ovs
    assert f"set_field:{hv2.tunnel_ip}->tun_dst" in ovs, ovs
