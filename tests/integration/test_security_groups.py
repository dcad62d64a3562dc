"""Security groups (issue 14) through the whole controller on real OVS, with real packets.

One lab of three emulated hypervisors and one controller for the module (``dp_env``); groups and
rules are created through the API, VMs are network namespaces plugged into br-int.  The probes
are real connections, each answered by the server VM, so an allowed verdict needs the request
through the server's ingress filter *and* the answer back through the client's (which has no
ingress rule at all: replies pass by conntrack alone):

* TCP: connect, send ``PING``, expect ``PONG``; UDP: a datagram, expect an answer; ICMP: ping.
* Rule sets in sequence (no rule, TCP from anywhere, UDP + ICMP from a remote group) against an
  expected allow/deny matrix, for a server on the client's host and one on another host.
* Removing the rule of an established TCP stream stops it (the connection gets ``ct_mark=1``
  in the same bundle that removes the rule's flows).
* Remote-group membership opens and closes access as a port joins and leaves the group.
* Deleting a port flushes its conntrack zone on its host (``NXT_CT_FLUSH_ZONE``), read back
  with ``ovs-appctl dpctl/dump-conntrack zone=N``.
"""

from __future__ import annotations

import signal
import time

import pytest

from lab.hypervisors import Vm
from tests.integration import dataplane_fixtures, sg_probes
from tests.integration.dataplane_fixtures import DataplaneEnv, Tenancy, wait_for
from tests.integration.sg_probes import (
    PROBES,
    PROJECT,
    STREAM_PORT,
    TCP_PORT,
    UDP_PORT,
    Servers,
    create_group,
    create_rule,
    delete_group,
    delete_rule,
    icmp_ok,
    set_groups,
    settle,
    start_stream,
    tcp_ok,
    udp_ok,
    verdicts,
)

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy
servers = sg_probes.servers


# ------------------------------------------------------------------------------------ tests


def test_rule_sets_give_the_expected_allow_deny_matrix(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """Client ``a`` (hv1, group ``client``: egress only) and servers ``b`` (hv1, same host) and
    ``c`` (hv2) in group ``server``; the servers never answer ``a`` unless a rule lets the
    request in, and ``a`` needs no ingress rule for the answers."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.5.0/24")
    client_g, server_g = create_group(api, "client"), create_group(api, "server")
    try:
        a = tenancy.vm(1, "sga", net, ip="10.0.5.11", security_groups=[client_g["id"]])
        b = tenancy.vm(1, "sgb", net, ip="10.0.5.12", security_groups=[server_g["id"]])
        c = tenancy.vm(2, "sgc", net, ip="10.0.5.13", security_groups=[server_g["id"]])
        tenancy.wait_active([a, b, c])
        for vm in (b, c, a):
            servers.start(vm)
        pairs = {"same host": (a, b), "across hosts": (a, c)}
        deny_all = {(n, p): False for n in pairs for p in PROBES}

        # 1. the server group has no ingress rule: nothing gets in
        assert verdicts(pairs) == deny_all
        # 2. TCP to the service port from anywhere: TCP only (the answer passes a's filter by
        #    conntrack: a has no ingress rule)
        tcp = create_rule(api, server_g, protocol="tcp", port_range_min=TCP_PORT,
                          port_range_max=TCP_PORT, remote_ip_prefix="0.0.0.0/0")  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs) == {**deny_all, **{(n, "tcp"): True for n in pairs}}
        # ... and a rule that lets in a port range that misses the service port: nothing
        delete_rule(api, tcp)
        miss = create_rule(api, server_g, protocol="tcp", port_range_min=TCP_PORT + 10,
                           port_range_max=TCP_PORT + 20)  # fmt: skip
        settle(dp_env)
        assert verdicts(pairs) == deny_all
        delete_rule(api, miss)
        # 3. UDP and ICMP from members of the client group (remote_group_id), TCP no more
        udp = create_rule(api, server_g, protocol="udp", port_range_min=UDP_PORT,
                          port_range_max=UDP_PORT, remote_group_id=client_g["id"])  # fmt: skip
        icmp = create_rule(api, server_g, protocol="icmp", remote_group_id=client_g["id"])
        settle(dp_env)
        want = {**deny_all, **{(n, p): True for n in pairs for p in ("udp", "icmp")}}
        assert verdicts(pairs) == want
        # the other way round: the client group lets nothing in, whatever the servers may do
        assert not icmp_ok(b, a) and not tcp_ok(c, a) and not udp_ok(c, a)
        for rule in (udp, icmp):
            delete_rule(api, rule)
        settle(dp_env)
        assert verdicts(pairs) == deny_all
    finally:
        tenancy.cleanup()
        for g in (client_g, server_g):
            delete_group(api, g)


def test_remote_group_membership_opens_and_closes_access(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """``c`` (hv2) lets in ICMP and TCP from members of ``trusted``; ``d`` (hv3) gets in while
    it is a member, and no longer once it left (an established connection included)."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.6.0/24")
    trusted, server_g = create_group(api, "trusted"), create_group(api, "server")
    outside = create_group(api, "outside")  # egress anywhere, like trusted: only membership differs
    try:
        for proto in ("icmp", "tcp"):
            create_rule(api, server_g, protocol=proto, remote_group_id=trusted["id"])
        c = tenancy.vm(2, "sgc2", net, ip="10.0.6.13", security_groups=[server_g["id"]])
        d = tenancy.vm(3, "sgd2", net, ip="10.0.6.14", security_groups=[outside["id"]])
        tenancy.wait_active([c, d])
        servers.start(c)
        assert not icmp_ok(d, c) and not tcp_ok(d, c)
        set_groups(api, d, outside, trusted)
        settle(dp_env)
        assert icmp_ok(d, c) and tcp_ok(d, c)
        stream = start_stream(d, c)
        try:
            wait_for(lambda: servers.received(c) > 10_000, timeout=10, what="the stream")
            set_groups(api, d, outside)
            settle(dp_env)
            assert not icmp_ok(d, c) and not tcp_ok(d, c)
            _assert_stopped(servers, c)
        finally:
            stream.kill()
            stream.wait(5)
    finally:
        tenancy.cleanup()
        for g in (server_g, trusted, outside):
            delete_group(api, g)


def _assert_stopped(servers: Servers, server: Vm) -> None:
    """The stream delivers nothing more (sampled over 1.5 s, after a moment for what was in
    flight), while it was delivering before (the caller waited for that)."""
    time.sleep(0.5)
    before = servers.received(server)
    time.sleep(1.5)
    assert servers.received(server) == before, "the stream still delivers"


def _zone_entries(env: DataplaneEnv, hv_index: int, zone: int) -> list[str]:
    hv = env.hvs[hv_index]
    out = hv.appctl("dpctl/dump-conntrack", f"zone={zone}")
    return [line for line in out.splitlines() if line.strip()]


def test_removing_a_rule_stops_an_established_stream_and_deleting_a_port_flushes_its_zone(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """A TCP stream across hosts through the rule that let it in: the rule goes, the stream
    stops (its connection is marked denied in the server's zone).  Then the server's port is
    deleted: its zone on hv2 is empty again."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.7.0/24")
    client_g, server_g = create_group(api, "client"), create_group(api, "server")
    try:
        rule = create_rule(api, server_g, protocol="tcp", port_range_min=STREAM_PORT,
                           port_range_max=STREAM_PORT)  # fmt: skip
        a = tenancy.vm(1, "sga3", net, ip="10.0.7.11", security_groups=[client_g["id"]])
        c = tenancy.vm(2, "sgc3", net, ip="10.0.7.13", security_groups=[server_g["id"]])
        tenancy.wait_active([a, c])
        servers.start(c)
        zone = c.ofport()
        stream = start_stream(a, c)
        try:
            wait_for(lambda: servers.received(c) > 10_000, timeout=10, what="the stream")
            assert any(f"dport={STREAM_PORT}" in e for e in _zone_entries(dp_env, 1, zone))
            delete_rule(api, rule)
            settle(dp_env)
            _assert_stopped(servers, c)
            marked = [e for e in _zone_entries(dp_env, 1, zone) if f"dport={STREAM_PORT}" in e]
            assert marked and all("mark=1" in e for e in marked), marked
        finally:
            stream.kill()
            stream.wait(5)
        flushed = dp_env.api.status().get("ct_zones_flushed", 0)
        assert _zone_entries(dp_env, 1, zone), "nothing to flush: the check would prove nothing"
        tenancy.delete_port(c.iface_id)
        wait_for(lambda: not _zone_entries(dp_env, 1, zone), timeout=10,
                 what=f"zone {zone} on hv2 to be flushed")  # fmt: skip
        assert dp_env.api.status().get("ct_zones_flushed", 0) > flushed
    finally:
        tenancy.cleanup()
        for g in (server_g, client_g):
            delete_group(api, g)


def test_a_zone_reused_while_the_controller_was_down_is_flushed_before_its_new_port(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """A TCP stream into c (hv2) has an established entry in c's zone.  The controller is
    killed; c's interface is unplugged and a new filtered port's VM d is plugged on c's ofport
    (its zone).  The restarted controller finds c's flows on hv2 and none of d's: the zone is
    flushed before d's flows go in, so d does not inherit c's connection, and again right
    after the diff that removed c's flows, which admitted the stream's retransmissions until
    then (OVS's conntrack takes a mid-stream segment as a new connection).  The old controller
    flushed nothing: c's departure was not an event it saw.

    d's group admits no ingress, so any entry of the stream left in the zone is c's: a's
    retransmissions to c's MAC, no longer bound, are flooded to hv2's ports, and a rule of d's
    admitting them commits them in d's zone as d's own new connections (CI failed on this test
    twice while d shared c's group; a lab reproduced it on the first try)."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.9.0/24")
    server_g, closed_g = create_group(api, "server"), create_group(api, "closed")
    try:
        create_rule(api, server_g, protocol="tcp", port_range_min=STREAM_PORT,
                    port_range_max=STREAM_PORT)  # fmt: skip
        a = tenancy.vm(1, "sga5", net, ip="10.0.9.11")
        c = tenancy.vm(2, "sgc5", net, ip="10.0.9.13", security_groups=[server_g["id"]])
        d_port = tenancy.port(net, ip="10.0.9.14", security_groups=[closed_g["id"]])
        tenancy.wait_active([a, c])
        servers.start(c)
        zone = c.ofport()
        stream = start_stream(a, c)
        try:
            wait_for(lambda: servers.received(c) > 10_000, timeout=10, what="the stream")

            def streamed() -> list[str]:
                return [e for e in _zone_entries(dp_env, 1, zone) if f"dport={STREAM_PORT}" in e]

            assert streamed()
            dp_env.ctl.stop(signal.SIGKILL)
            c.unplug()
            d = tenancy.lab.add_vm(2, "sgd5", d_port["mac_address"], f"10.0.9.14/{net.prefixlen}",
                                   d_port["id"], ofport_request=zone)  # fmt: skip
            tenancy.vms[d.name] = d
            assert d.ofport() == zone and streamed()
            dp_env.ctl.start()
            api.wait_reconciled(timeout=30)
            tenancy.wait_active([d])
            wait_for(lambda: not streamed(), timeout=10,
                     what=f"c's connection to leave zone {zone}")  # fmt: skip
            assert api.status()["ct_zones_flushed"] >= 1
        finally:
            stream.kill()
            stream.wait(5)
    finally:
        tenancy.cleanup()
        delete_group(api, server_g)
        delete_group(api, closed_g)


def test_kill_9_of_the_controller_leaves_a_filtered_tcp_stream_alone(
    tenancy: Tenancy, dp_env: DataplaneEnv, servers: Servers
) -> None:
    """A TCP stream across hosts, let in by a remote-group rule: the controller is killed with
    SIGKILL and started again; it reads every switch back and sends nothing (zones are the
    ofports, cookies the store's numbers), and the stream never breaks."""
    api = dp_env.api
    net = tenancy.network("vxlan", project=PROJECT, cidr="10.0.8.0/24")
    client_g, server_g = create_group(api, "client"), create_group(api, "server")
    try:
        create_rule(api, server_g, protocol="tcp", port_range_min=STREAM_PORT,
                    port_range_max=STREAM_PORT, remote_group_id=client_g["id"])  # fmt: skip
        a = tenancy.vm(1, "sga4", net, ip="10.0.8.11", security_groups=[client_g["id"]])
        c = tenancy.vm(2, "sgc4", net, ip="10.0.8.13", security_groups=[server_g["id"]])
        tenancy.wait_active([a, c])
        servers.start(c)
        stream = start_stream(a, c)
        try:
            wait_for(lambda: servers.received(c) > 10_000, timeout=10, what="the stream")
            dp_env.ctl.stop(signal.SIGKILL)
            dp_env.ctl.start()
            api.wait_reconciled(timeout=30)
            settle(dp_env)
            st = api.status()
            assert st["flow_mods"] == 0 and st["group_mods"] == 0, st
            after = servers.received(c)
            wait_for(lambda: servers.received(c) > after + 10_000, timeout=10,
                     what="the stream to go on after the restart")  # fmt: skip
            assert stream.poll() is None, "the stream's connection broke"
        finally:
            stream.kill()
            stream.wait(5)
    finally:
        tenancy.cleanup()
        for g in (server_g, client_g):
            delete_group(api, g)
