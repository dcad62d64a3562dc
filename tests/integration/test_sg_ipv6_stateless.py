"""Security groups (issue 14) with real packets: IPv6, stateless groups, port security off, and
what passes under any rule set (ARP, IPv6 ND, DHCP).

Same lab and probes as ``test_security_groups`` (`tests.integration.sg_probes`): every verdict
is a real connection answered by the server VM.  VMs that need IPv6 are created with an IPv6
address (``Lab.add_vm(ip6_cidr=...)``: IPv6 on in that VM only, the rest of the lab keeps it
off) on a network with an IPv4 and an IPv6 subnet, their ports holding a fixed IP of each.

* IPv6 (ICMPv6 echo, TCP, UDP, same host and across hosts) against an allow/deny matrix: no
  rule; an IPv4 rule (does not open IPv6); an IPv6 TCP rule from a prefix that holds the
  client, then from one that does not; UDP and ICMPv6 from a remote group (its members' IPv6
  fixed IPs).
* Neighbour discovery under a group with no rule at all (no egress either): the VMs resolve
  each other (IPv6 ND and ARP) while their pings are dropped.
* ``stateful=false``: nothing is implicit; a reply needs its own rule at the client.  A port
  moving to a stateful group gets its replies by conntrack, and loses them again moving back.
* Port security off: no filtering at all (any protocol both ways, even from an address that is
  not the port's).
* DHCP: a real client (busybox udhcpc) gets its lease through a port whose only group has no
  rules.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.hypervisors import Vm
from lab.proc import base_env, ns_cmd
from tests.integration import dataplane_fixtures, sg_probes
from tests.integration.dataplane_fixtures import DataplaneEnv, Net, Tenancy
from tests.integration.sg_probes import (
    PROBES,
    PROJECT,
    Servers,
    clear_rules,
    create_group,
    create_rule,
    delete_group,
    delete_rule,
    icmp_ok,
    set_groups,
    settle,
    verdicts,
)
from tests.integration.test_dhcp_controller import udhcpc_once

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy
servers = sg_probes.servers


# ------------------------------------------------------------------------------ dual stack


def dual_stack(tenancy: Tenancy, n: int) -> tuple[Net, dict[str, Any]]:
    """Network ``10.0.<n>.0/24`` + ``fd14:<n>::/64`` (no DHCP for IPv6: addresses are static
    in the VMs); returns the network and its IPv6 subnet."""
    net = tenancy.network("vxlan", project=PROJECT, cidr=f"10.0.{n}.0/24")
    sub6 = tenancy.api.create("subnet", network_id=net.id, cidr=f"fd14:{n}::/64", ip_version=6,
                              enable_dhcp=False, project_id=PROJECT)  # fmt: skip
    return net, sub6


def dual_vm(tenancy: Tenancy, hv: int, name: str, net: Net, sub6: dict[str, Any], host: int,
            groups: list[dict[str, Any]]) -> Vm:
    """A VM with ``10.0.<n>.<host>`` and ``fd14:<n>::<host>`` on a port in ``groups``."""
    ip = re.sub(r"\.0/24$", f".{host}", net.subnet["cidr"])
    ip6 = sub6["cidr"].replace("::/64", f"::{host:x}")
    port = tenancy.port(net, fixed_ips=[{"subnet_id": net.subnet["id"], "ip_address": ip},
                                        {"subnet_id": sub6["id"], "ip_address": ip6}],
                        security_groups=[g["id"] for g in groups])  # fmt: skip
    vm = tenancy.lab.add_vm(hv, name, port["mac_address"], f"{ip}/24", port["id"],
                            ip6_cidr=f"{ip6}/64")  # fmt: skip
    tenancy.vms[name] = vm
    return vm


def neighbour(vm: Vm, ip: str) -> str:
    """``ip neigh`` entry of ``ip`` in ``vm`` (e.g. ``... lladdr 02:.. REACHABLE``, or
    ``FAILED``/``INCOMPLETE`` without an lladdr, or empty)."""
    return vm.exec("ip", "neigh", "show", ip, "dev", "eth0").stdout.strip()


# ------------------------------------------------------------------------------------ tests


def test_ipv6_rules_give_the_expected_allow_deny_matrix(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """Client ``a`` (hv1, group ``client``: egress only) and servers ``b`` (hv1) and ``c``
    (hv2) in group ``server``, every probe over IPv6."""
    api = dp_env.api
    net, sub6 = dual_stack(tenancy, 21)
    client_g, server_g = create_group(api, "client6"), create_group(api, "server6")
    try:
        a = dual_vm(tenancy, 1, "s6a", net, sub6, 11, [client_g])
        b = dual_vm(tenancy, 1, "s6b", net, sub6, 12, [server_g])
        c = dual_vm(tenancy, 2, "s6c", net, sub6, 13, [server_g])
        tenancy.wait_active([a, b, c])
        for vm in (b, c):
            servers.start(vm)
        pairs = {"same host": (a, b), "across hosts": (a, c)}
        deny_all = {(n, p): False for n in pairs for p in PROBES}
        only = lambda *protos: {**deny_all, **{(n, p): True for n in pairs for p in protos}}  # noqa: E731

        # 1. no ingress rule: nothing gets in over IPv6
        assert verdicts(pairs, v6=True) == deny_all
        # 2. an IPv4 rule for everything opens IPv4 only
        v4_any = create_rule(api, server_g, remote_ip_prefix="0.0.0.0/0")
        settle(dp_env)
        assert verdicts(pairs, v6=False) == only("tcp", "udp", "icmp")
        assert verdicts(pairs, v6=True) == deny_all
        delete_rule(api, v4_any)
        # 3. IPv6 TCP from a prefix that holds the client; then from one that does not
        tcp = create_rule(api, server_g, ethertype="IPv6", protocol="tcp",
                          port_range_min=sg_probes.TCP_PORT, port_range_max=sg_probes.TCP_PORT,
                          remote_ip_prefix="fd14:21::/120")  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs, v6=True) == only("tcp")
        delete_rule(api, tcp)
        miss = create_rule(api, server_g, ethertype="IPv6", protocol="tcp",
                           remote_ip_prefix="fd14:21::100/120")  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs, v6=True) == deny_all
        delete_rule(api, miss)
        # 4. UDP and ICMPv6 from members of the client group (their IPv6 fixed IPs)
        udp = create_rule(api, server_g, ethertype="IPv6", protocol="udp",
                          port_range_min=sg_probes.UDP_PORT, port_range_max=sg_probes.UDP_PORT,
                          remote_group_id=client_g["id"])  # fmt: skip
        icmp = create_rule(api, server_g, ethertype="IPv6", protocol="ipv6-icmp",
                           remote_group_id=client_g["id"])  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs, v6=True) == only("udp", "icmp")
        assert verdicts(pairs, v6=False) == deny_all  # IPv6 rules open no IPv4
        # a leaves the client group: its IPv6 address is no member's any more
        outside = create_group(api, "outside6")
        try:
            set_groups(api, a, outside)
            settle(dp_env)
            assert verdicts(pairs, v6=True) == deny_all
            set_groups(api, a, client_g)
        finally:
            delete_group(api, outside)
        for rule in (udp, icmp):
            delete_rule(api, rule)
        settle(dp_env)
        assert verdicts(pairs, v6=True) == deny_all
    finally:
        tenancy.cleanup()
        for g in (client_g, server_g):
            delete_group(api, g)


def test_neighbour_discovery_and_arp_pass_a_group_without_rules(
    tenancy: Tenancy, dp_env: DataplaneEnv
) -> None:
    """``a`` (hv1), ``b`` (hv1) and ``c`` (hv2) in a group with no rule at all (not even
    egress): every ping is dropped, yet each VM resolves the others' IPv6 and IPv4 addresses
    (ND and ARP pass the filter both ways), and a solicited neighbour learns the solicitor."""
    api = dp_env.api
    net, sub6 = dual_stack(tenancy, 22)
    deny = create_group(api, "deny-all")
    try:
        clear_rules(api, deny)
        a = dual_vm(tenancy, 1, "nda", net, sub6, 11, [deny])
        b = dual_vm(tenancy, 1, "ndb", net, sub6, 12, [deny])
        c = dual_vm(tenancy, 2, "ndc", net, sub6, 13, [deny])
        tenancy.wait_active([a, b, c])
        settle(dp_env)
        for peer in (b, c):
            assert peer.ip6 is not None
            assert not icmp_ok(a, peer, v6=True) and not icmp_ok(a, peer)
            for ip in (peer.ip6, peer.ip):
                entry = neighbour(a, ip)
                assert f"lladdr {peer.mac}" in entry, f"{a.name} did not resolve {ip}: {entry!r}"
            # the solicitation reached the peer (ND is not answered for it by the switch)
            assert a.ip6 is not None
            assert f"lladdr {a.mac}" in neighbour(peer, a.ip6), neighbour(peer, a.ip6)
    finally:
        tenancy.cleanup()
        delete_group(api, deny)


def test_stateless_groups_need_a_rule_each_way(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """Server ``b`` (hv1) and ``c`` (hv2) in a stateless group that lets TCP and ICMP in;
    client ``a`` (hv1) in a stateless group with the egress template only: the answers do not
    get back into ``a`` (nothing is implicit without conntrack) until ``a``'s group lets them
    in, or ``a`` moves to a stateful group (replies by conntrack); moving back, they are
    dropped again."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.23.0/24")
    cl_stateless = create_group(api, "client-stateless", stateful=False)
    cl_stateful = create_group(api, "client-stateful")
    sv_stateless = create_group(api, "server-stateless", stateful=False)
    groups = (cl_stateless, cl_stateful, sv_stateless)
    try:
        assert not cl_stateless["stateful"] and cl_stateful["stateful"]
        for proto in ("tcp", "icmp"):
            create_rule(api, sv_stateless, protocol=proto, remote_ip_prefix="10.0.23.0/24")
        a = tenancy.vm(1, "sla", net, ip="10.0.23.11", security_groups=[cl_stateless["id"]])
        b = tenancy.vm(1, "slb", net, ip="10.0.23.12", security_groups=[sv_stateless["id"]])
        c = tenancy.vm(2, "slc", net, ip="10.0.23.13", security_groups=[sv_stateless["id"]])
        tenancy.wait_active([a, b, c])
        for vm in (b, c):
            servers.start(vm)
        pairs = {"same host": (a, b), "across hosts": (a, c)}
        deny_all = {(n, p): False for n in pairs for p in PROBES}
        tcp_icmp = {**deny_all, **{(n, p): True for n in pairs for p in ("tcp", "icmp")}}

        # 1. both stateless, no rule for the answers at a
        assert verdicts(pairs) == deny_all
        # 2. a stateful: its answers pass by conntrack (b and c stay stateless: their egress
        #    template lets the answers out, their ingress rules the requests in)
        set_groups(api, a, cl_stateful)
        settle(dp_env)
        assert verdicts(pairs) == tcp_icmp
        # 3. back to stateless: dropped again (a's zone still holds those connections)
        set_groups(api, a, cl_stateless)
        settle(dp_env)
        assert verdicts(pairs) == deny_all
        # 4. a rule at a for what the servers send back: TCP and ICMP from the servers
        back = [create_rule(api, cl_stateless, protocol=proto, remote_ip_prefix=f"{s.ip}/32")
                for proto in ("tcp", "icmp") for s in (b, c)]  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs) == tcp_icmp
        # ... and that rule lets the servers' own new connections into a as well (no state
        #    tells a request from an answer): a has no server, so ICMP shows it
        assert icmp_ok(b, a) and icmp_ok(c, a)
        for rule in back:
            delete_rule(api, rule)
        settle(dp_env)
        assert verdicts(pairs) == deny_all
    finally:
        tenancy.cleanup()
        for g in groups:
            delete_group(api, g)


def test_port_security_off_filters_nothing(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """``a`` (hv1) and ``c`` (hv2) with port security off (no groups): TCP, UDP and ICMP pass
    both ways, and ``a`` may even send from an address that is not its port's."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.24.0/24")
    a = tenancy.vm(1, "psa", net, ip="10.0.24.11", port_security_enabled=False)
    c = tenancy.vm(2, "psc", net, ip="10.0.24.13", port_security_enabled=False)
    tenancy.wait_active([a, c])
    assert api.show("port", a.iface_id)["security_groups"] == []
    for vm in (a, c):
        servers.start(vm)
    both = {"a->c": (a, c), "c->a": (c, a)}
    assert verdicts(both) == {(n, p): True for n in both for p in PROBES}
    a.exec("ip", "addr", "add", "10.0.24.99/24", "dev", "eth0")
    assert a.exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.0.24.99", c.ip,
                  check=False).returncode == 0  # fmt: skip


UDHCPD_CONF = """interface eth0
start {ip}
end {ip}
static_lease {mac} {ip}
option subnet 255.255.255.0
option router {gw}
lease_file {dir}/udhcpd.leases
pidfile {dir}/udhcpd.pid
"""


@pytest.mark.parametrize("server", ["native", "udhcpd"])
def test_dhcp_passes_a_group_without_rules(
    tenancy: Tenancy, dp_env: DataplaneEnv, tmp_path: Path, server: str
) -> None:
    """busybox udhcpc in ``d`` (hv2), whose port's only group has no rules, gets its lease
    (DHCP passes both ways whatever the rules) while its pings are dropped.  The server is
    tenantnet's own (its punt comes before the filter), or a real busybox udhcpd in a VM on
    hv3 with port security off (a DHCP server port, as Neutron's DHCP agent has): then the
    request crosses ``d``'s egress filter and the offer and ack its ingress filter."""
    api = dp_env.api
    gw = "10.0.25.1"
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.25.0/24",
                          subnet={"gateway_ip": gw, "enable_dhcp": server == "native"})
    deny = create_group(api, "deny-all-dhcp")
    proc = None
    try:
        clear_rules(api, deny)
        d = tenancy.vm(2, "dhd", net, ip="10.0.25.41", security_groups=[deny["id"]])
        e = tenancy.vm(3, "dhe", net, ip="10.0.25.42")  # default group: lets members in
        vms = [d, e]
        if server == "udhcpd":
            srv = tenancy.vm(3, "dhs", net, ip="10.0.25.2", port_security_enabled=False)
            vms.append(srv)
            conf = tmp_path / "udhcpd.conf"
            conf.write_text(UDHCPD_CONF.format(ip=d.ip, mac=d.mac, gw=gw, dir=tmp_path))
            (tmp_path / "udhcpd.leases").touch()
            proc = subprocess.Popen(ns_cmd(srv.ns, ["busybox", "udhcpd", "-f", str(conf)]),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=base_env())  # fmt: skip
        tenancy.wait_active(vms)
        settle(dp_env)
        env = udhcpc_once(d, tmp_path)
        assert env.get("ip") == d.ip and env.get("router") == gw, env
        assert f"inet {d.ip}/24" in d.exec("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        if server == "udhcpd":
            assert env.get("serverid") == "10.0.25.2", env
        assert not icmp_ok(d, e)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(5)
        tenancy.cleanup()
        delete_group(api, deny)
