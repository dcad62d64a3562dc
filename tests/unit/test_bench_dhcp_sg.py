"""The pure parts of the bench's DHCP/ARP (issue 15) and security-group (issue 14) scenarios:
the capture parser, the renewal generator's frames, the ACLs written for OVN, and their rows."""

from __future__ import annotations

import pytest
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from bench import report
from bench.dhcp_arp import exchanges
from bench.dhcp_load import reply_kind, request_frame
from bench.sut_ovn import OvnSystem

# tcpdump -tt -v lines of one lease (abridged from a real capture), then a retransmitted
# DISCOVER before the second lease's answers
CAPTURE = """\
1796055875.783975 IP (tos 0x0, ttl 64, id 0, offset 0, flags [none], proto UDP (17), length 328)
    0.0.0.0.68 > 255.255.255.255.67: BOOTP/DHCP, Request from 0a:00:00:02:00:02, length 300
\t    DHCP-Message (53), length 1: Discover
1796055875.786682 IP (tos 0x0, ttl 64, id 0, offset 0, flags [none], proto UDP (17), length 306)
    10.100.255.254.67 > 10.100.252.2.68: BOOTP/DHCP, Reply, length 278
\t    DHCP-Message (53), length 1: Offer
1796055875.807960 IP (tos 0x0, ttl 64, id 0, offset 0, flags [none], proto UDP (17), length 328)
\t    DHCP-Message (53), length 1: Request
1796055875.810571 IP (tos 0x0, ttl 64, id 0, offset 0, flags [none], proto UDP (17), length 306)
\t    DHCP-Message (53), length 1: ACK
1796055876.000000 IP (tos 0x0)
\t    DHCP-Message (53), length 1: Discover
1796055877.000000 IP (tos 0x0)
\t    DHCP-Message (53), length 1: Discover
1796055877.002000 IP (tos 0x0)
\t    DHCP-Message (53), length 1: Offer
1796055877.003000 IP (tos 0x0)
\t    DHCP-Message (53), length 1: Request
1796055877.004000 IP (tos 0x0)
\t    DHCP-Message (53), length 1: ACK
"""


def test_exchanges_time_discover_to_ack_and_its_parts():
    first, second = exchanges(CAPTURE.splitlines())
    assert first == {"total": 26.596, "offer": 2.707, "client": 21.278, "ack": 2.611,
                     "server": 5.318}
    # the retransmission counts against the server: timed from the first DISCOVER
    assert second["total"] == 1004.0 and second["offer"] == 1002.0


def test_exchanges_without_ack_give_nothing():
    lines = [line for line in CAPTURE.splitlines() if "ACK" not in line]
    assert exchanges(lines) == []


def _reply(xid: int, kind: int, dport: int = 68) -> bytes:
    opts = dhcp.options(option_list=[dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT,
                                                 value=bytes([kind]))])  # fmt: skip
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="0a:00:00:00:00:01", src="02:7e:4e:00:00:01"))
    pkt.add_protocol(ipv4.ipv4(src="10.100.255.254", dst="10.100.0.5", proto=17))
    pkt.add_protocol(udp.udp(src_port=67, dst_port=dport))
    pkt.add_protocol(dhcp.dhcp(op=dhcp.DHCP_BOOT_REPLY, chaddr="0a:00:00:00:00:01", xid=xid,
                               yiaddr="10.100.0.5", options=opts))
    pkt.serialize()
    return bytes(pkt.data)


def test_renewal_request_is_a_unicast_request_from_the_lease():
    frame = request_frame("0a:00:00:00:00:01", "10.100.0.5", "02:7e:4e:00:00:01",
                          "10.100.255.254", 0x10007)  # fmt: skip
    pkt = packet.Packet(frame)
    ip, msg = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(dhcp.dhcp)
    assert pkt.get_protocol(ethernet.ethernet).dst == "02:7e:4e:00:00:01"
    assert (ip.src, ip.dst) == ("10.100.0.5", "10.100.255.254")
    assert (msg.xid, msg.ciaddr) == (0x10007, "10.100.0.5")
    assert msg.options.option_list[0].value == bytes([dhcp.DHCP_REQUEST])


def test_reply_kind_reads_server_replies_only():
    assert reply_kind(_reply(42, dhcp.DHCP_ACK)) == (42, dhcp.DHCP_ACK)
    assert reply_kind(_reply(43, 6)) == (43, 6)  # a NAK (os-ken names no constant for it)
    assert reply_kind(_reply(42, dhcp.DHCP_ACK, dport=67)) is None  # not to the client port
    assert reply_kind(_reply(42, dhcp.DHCP_ACK)[:100]) is None


def test_ovn_acls_are_what_neutrons_driver_writes():
    m = OvnSystem.acl_match
    assert m("pg_a", "ingress", "tcp", (8000, 8080), "10.0.0.0/8", None) == (
        "outport == @pg_a && ip4 && ip4.src == 10.0.0.0/8 && tcp && tcp.dst >= 8000 && "
        "tcp.dst <= 8080")
    assert m("pg_a", "ingress", "udp", (53, 53), None, "pg_b") == (
        "outport == @pg_a && ip4 && ip4.src == $pg_b_ip4 && udp && udp.dst == 53")
    assert m("pg_a", "egress", None, None, None, None, "IPv6") == "inport == @pg_a && ip6"
    assert m("pg_a", "egress", "icmp", None, "10.1.0.0/16", None) == (
        "inport == @pg_a && ip4 && ip4.dst == 10.1.0.0/16 && icmp4")


def _dhcp_run(total, server, acks):
    return {"lease": {"total": total, "server": server, "offer": [1], "client": [20],
                      "ack": [1]},
            "load": {"acks_per_s": acks, "lost": 0, "control_plane_cores": 0.5,
                     "ready_ms": [10, 20], "ping_ms": [11, 21]},
            "arp": {"arp_ms": [1.5], "static_ms": [1.0], "flood_ms": [2.5]}}


def _sg_run(flows, enforced, ready, iperf=None):
    run = {"flows": {"flows": flows, "groups": [1]}, "rule": {"enforced_s": enforced},
           "join": {"ready_ms": ready, "ping_ms": ready}}
    if iperf:
        run["dataplane"] = {"iperf": {"filtered": [iperf[0]], "unfiltered": [iperf[1]]},
                            "conn": {"filtered": {"per_s": 100}, "unfiltered": {"per_s": 120}}}
    return run


def test_dhcp_and_sg_rows_targets():
    scs = [{"name": "d", "role": "dhcp", "H": 3, "dhcp_vms": 6, "leases_per_vm": 5,
            "window": 4},
           {"name": "s", "role": "sg", "H": 3, "P": 30, "N": 3, "group_size": 20,
            "rule_probes": 3, "dataplane": True}]
    results = {"params": {"scenarios": scs, "dhcp_meter_pps": 20000}, "raw": {
        "d": {"tenantnet": [_dhcp_run([30, 32], [4, 6], 800)],
              "ovn": [_dhcp_run([29, 31], [2, 4], 1600)]},
        "s": {"tenantnet": [_sg_run([300, 310], [0.1, 0.2], [20], iperf=(95, 100))],
              "ovn": [_sg_run([1000, 1000], [0.3, None], [50], iperf=(90, 90))]},
    }}
    rows = {r.label: r for r in report.dhcp_rows(results) + report.sg_rows(results)}
    assert rows["DISCOVER -> ACK, median"].ratio == 31 / 30
    assert rows["DISCOVER -> ACK, median"].target.result == "MISS"
    assert rows["renewals answered (sustained)"].ratio == 0.5
    assert rows["flows per host (median of hosts)"].target.result == "PASS"
    # a target that never accepted makes OVN's run n/a, not a number
    assert rows["rule create -> enforced on all hosts, max"].ovn is None
    enforced = rows["rule create -> enforced on all hosts, median"]
    assert enforced.tenantnet["median"] == pytest.approx(150)
    unf = rows["TCP throughput across hosts, port security off"]
    assert unf.target.value == 0.95 and unf.target.result == "PASS"
    assert rows["TCP throughput across hosts, filtered ports"].target.result == "PASS"
    # a system that did not filter has no "filtered" figures
    results["raw"]["s"]["tenantnet"][0]["rule"]["error"] = "not filtered"
    rows = {r.label: r for r in report.sg_rows(results)}
    assert rows["TCP throughput across hosts, filtered ports"].tenantnet is None
    assert rows["new TCP connections/s across hosts, filtered ports"].tenantnet is None
    assert rows["TCP throughput across hosts, port security off"].tenantnet["median"] == 100
    assert rows["flows per host (median of hosts)"].tenantnet is None
    assert rows["port create -> ACTIVE in a group of 20, median"].tenantnet is None
    assert rows["flows per host (median of hosts)"].ovn["median"] == 1000


def test_rule_phases_read_the_controllers_histograms_and_differences_per_rule():
    """What the rule -> enforced row reports per rule from tenantnet's /metrics: the rule POST's
    own route only, durable commits only, steps, and the barrier as a mean round trip."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from bench.secgroups import phase_ms
    from bench.sut_tenantnet import phase_totals

    reg = CollectorRegistry()
    api = Histogram("tenantnet_api_request_seconds", "", ["method", "route"], registry=reg)
    commit = Histogram("tenantnet_store_commit_seconds", "", ["kind"], registry=reg)
    step = Histogram("tenantnet_dataplane_step_seconds", "", registry=reg)
    barrier = Histogram("tenantnet_openflow_barrier_rtt_seconds", "", registry=reg)
    api.labels("GET", "/v2.0/ports").observe(5)  # another route: not the rule's
    commit.labels("observed").observe(5)  # a data-plane write-back: not the API's commit
    before = phase_totals(generate_latest(reg).decode())
    api.labels("POST", "/v2.0/security-group-rules").observe(0.012)
    commit.labels("durable").observe(0.004)
    step.observe(0.003)
    for rtt in (0.001, 0.002, 0.003):  # one barrier per host
        barrier.observe(rtt)
    after = phase_totals(generate_latest(reg).decode())
    assert phase_ms(before, after) == {"api": 12.0, "commit": 4.0, "step": 3.0, "barrier": 2.0}
    assert phase_ms(after, after)["barrier"] is None


def test_dhclient_lease_rows_carry_the_target_and_older_results_have_none():
    """The dhclient leases (no client turnaround to hide the servers' work) are a row of
    their own with issue 15's target; a results file from before they were measured reports
    no figure for them instead of failing."""
    scs = [{"name": "d", "role": "dhcp", "H": 3, "dhcp_vms": 6, "leases_per_vm": 5,
            "window": 4}]
    ours, ovn = _dhcp_run([30, 32], [4, 6], 800), _dhcp_run([29, 31], [2, 4], 1600)
    ours["lease_dhclient"] = {"total": [2.0, 2.2], "client": [0.1]}
    ovn["lease_dhclient"] = {"total": [1.1, 1.3], "client": [0.1]}
    results = {"params": {"scenarios": scs}, "raw": {"d": {"tenantnet": [ours], "ovn": [ovn]}}}
    rows = {r.label: r for r in report.dhcp_rows(results)}
    row = rows["DISCOVER -> ACK with ISC dhclient, median"]
    assert row.ratio == pytest.approx(2.1 / 1.2)
    assert row.target.result == "MISS"
    assert rows["DISCOVER -> ACK with ISC dhclient, p90"].tenantnet["median"] == 2.2
    del ours["lease_dhclient"], ovn["lease_dhclient"]
    rows = {r.label: r for r in report.dhcp_rows(results)}
    assert rows["DISCOVER -> ACK with ISC dhclient, median"].tenantnet is None
