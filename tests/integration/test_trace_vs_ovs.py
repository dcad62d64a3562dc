"""The packet evaluator (flows/trace.py) against OVS's own ``ofproto/trace``, on real bridges.

The bridge is test_sg_trace's (one emulated hypervisor, the core pipeline of two networks with
overlapping addresses plus the security-group flows, loaded through the codec and read back):
every flow tenantnet emits is on it, ct and conjunctions included.  Seeded random packets are
given to both, with the same conntrack state per pass (``--ct-next``): the SG test's packets
(filtered and unfiltered ports, broadcasts, ARP/ND/DHCP, every conntrack state, marked
connections) and adversarial ones for the core tables (spoofed MACs and addresses, ARP with
foreign sender fields, unknown unicast, tunnel packets with foreign keys or sources).  The
evaluator must name the same receivers (VM ports, the tunnel) and mark the same conntrack zones
as OVS, packet for packet; both verdicts must occur.

Then the same on the switches a running controller programmed (test_isolation_trace's three
hosts and confusable networks, its adversarial packets from every VM port and its tunnel
packets with valid and foreign keys and sources): the flows and groups read back from each
br-int through its management socket, evaluated, give exactly the datapath outputs OVS gives -
the same ports, the same tunnels with the same key and destination, the same punts.
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from flows.trace import FlowTable, make_packet, ovs_flow_text, trace
from tests.integration import dataplane_fixtures
from tests.integration import test_isolation_trace as iso
from tests.integration import test_sg_trace as sgt
from tests.integration.ofp_unix import MgmtClient
from tests.integration.test_isolation_trace import topo
from tests.integration.test_sg_trace import bridge
from tests.unit.test_flows_trace import sg_packet, sg_verdict

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
__all__ = ["bridge", "dp_env", "topo"]  # module-scoped fixtures, shared with their modules

SEED = 0x7ACE
N_SG = 250
N_CORE = 250
STATES = ("new", "est", "est,rpl", "rel", "inv")


def _core_packet(rng: random.Random) -> tuple[int, dict[str, Any], tuple[str, ...]]:
    """An adversarial packet for the core tables, with enough conntrack states for any path."""
    src = rng.choice(sgt.PORTS)
    macs = [p.mac for p in sgt.PORTS] + [sgt.BCAST, "02:99:99:99:99:01", "33:33:00:00:00:01"]
    ips = [ip for p in sgt.PORTS for ip in p.ips if ":" not in ip] + ["10.0.0.200", "0.0.0.0"]
    mac = src.mac if rng.random() < 0.7 else rng.choice(macs[:-3])
    ip = next((a for a in src.ips if ":" not in a), "10.0.0.99")
    ip = ip if rng.random() < 0.7 else rng.choice(ips)
    dst_mac, dst_ip = rng.choice(macs), rng.choice(ips)
    if rng.random() < 0.35:
        pkt = make_packet(mac, dst_mac, ip_src=ip, ip_dst=dst_ip, arp_op=rng.choice([1, 1, 2]),
                          arp_sha=mac if rng.random() < 0.8 else rng.choice(macs[:-3]))  # fmt: skip
    else:
        pkt = make_packet(mac, dst_mac, ip_src=ip, ip_dst=dst_ip,
                          protocol=rng.choice([1, 6, 17, 132, 47]), src_port=rng.randrange(65536),
                          dst_port=rng.choice([22, 53, 67, 68, 80, 443, 5432, 1500]),
                          icmp_type=rng.choice([0, 8]))  # fmt: skip
    if src.local and rng.random() < 0.75:
        assert src.ofport is not None
        in_port = src.ofport
    else:
        in_port = sgt.TUNNEL_OFPORT
        vni = rng.choice([*sgt.SEGS.values(), 4242])
        pkt.update(tunnel_id=vni, tun_ipv4_src=rng.choice([sgt.PEER, sgt.PEER, "10.99.0.77"]))
    states = tuple(rng.choice(STATES) for _ in range(16))
    return in_port, pkt, states


def _compare(b: sgt.Bridge, state: FlowTable, in_port: int, pkt: dict[str, Any],
             states: tuple[str, ...]) -> tuple[str | None, bool]:  # fmt: skip
    flow = ovs_flow_text(in_port, pkt)
    mine = sg_verdict(state, in_port, pkt, states)
    got, marked, text = sgt.ovs_trace(b, flow, states)
    theirs = (got, sorted(marked))
    if (mine[0], sorted(mine[1])) != theirs:
        return f"{flow} {states}: evaluator {mine}, OVS {theirs}\n{text[-2500:]}", bool(got)
    return None, bool(got)


def test_evaluator_verdicts_equal_ofproto_trace(bridge: sgt.Bridge) -> None:
    state = FlowTable(bridge.state)
    rng = random.Random(SEED)
    cases: list[tuple[int, dict[str, Any], tuple[str, ...]]] = []
    sg_pkts = [p for p in (sgt.random_packet(rng) for _ in range(N_SG * 2)) if p is not None]
    for p in sg_pkts[:N_SG]:
        cases.append((*sg_packet(p), p.states))
    cases += [_core_packet(rng) for _ in range(N_CORE)]
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda c: _compare(bridge, state, *c), cases))
    problems = [p for p, _ in results if p]
    seen = Counter("delivered" if d else "dropped" for _, d in results)
    assert not problems, f"{len(problems)} of {len(cases)} differ:\n" + "\n".join(problems[:3])
    assert seen["delivered"] > 50 and seen["dropped"] > 50, seen


# --------------------------------------------------------------- the controller's own switches

_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "udp6": 17, "icmp6": 58, "ipv6": None}


def _iso_packet(p: iso.Pkt) -> dict[str, Any]:
    """test_isolation_trace's packet as the evaluator reads it."""
    f = p.fields
    if p.l3 == "arp":
        pkt = make_packet(p.eth_src, p.eth_dst, ip_src=f["spa"], ip_dst=f["tpa"],
                          arp_op=f["op"], arp_sha=f["sha"], arp_tha=f["tha"])  # fmt: skip
    elif p.l3 in ("ip", "ipv6"):
        proto = _PROTO[f["proto"]]
        pkt = make_packet(p.eth_src, p.eth_dst, ip_src=f["src"], ip_dst=f["dst"],
                          protocol=proto, src_port=f.get("sport", 0),
                          dst_port=f.get("dport", 0), icmp_type=f.get("type", 8))  # fmt: skip
    else:
        pkt = make_packet(p.eth_src, p.eth_dst, eth_type=f["dl_type"])
    if p.vlan is not None:
        pkt["vlan_vid"] = 0x1000 | p.vlan
    if p.tun is not None:
        pkt.update(tunnel_id=p.tun[0], tun_ipv4_src=p.tun[1])
    return pkt


def _evaluated(state: FlowTable, p: iso.Pkt) -> list[iso.Out]:
    assert isinstance(p.in_port, int)
    kinds = {of: kind for kind, of in dataplane_fixtures.TUNNEL_OFPORT.items()}
    outs: list[iso.Out] = []
    tr = trace(state, p.in_port, _iso_packet(p))
    for step in tr.steps:
        if step.kind == "controller":
            outs.append(("controller",))
        elif step.kind == "output" and step.port in kinds:
            f = dict(step.fields)
            outs.append(("tunnel", kinds[step.port], f["tunnel_id"], f["tun_ipv4_dst"]))
        elif step.kind == "output":
            outs.append(("port", step.port))
    return sorted(outs)


def _ovs_outputs(topo: iso.Topology, p: iso.Pkt) -> list[iso.Out]:
    """test_isolation_trace's reading of a trace, over every recirculation (security groups
    send IP through conntrack: each pass has its own "Datapath actions" line; ofproto/trace
    gives each conntrack pass the state trk,new, as the evaluator does without states)."""
    hv = next(h for h in topo.hvs if h.name == p.host)
    outs: list[iso.Out] = []
    for line in hv.trace("br-int", p.flow()).splitlines():
        if line.startswith("Datapath actions:"):
            acts = [a for a in iso._split_top(line.split(":", 1)[1].strip())
                    if not a.startswith(("ct(", "recirc("))]  # fmt: skip
            if acts:
                outs += iso.parse_actions(",".join(acts), topo.odp[p.host])
    return sorted(outs)


def test_evaluator_equals_ofproto_trace_on_the_controllers_switches(topo: iso.Topology) -> None:
    states = {}
    for hv in topo.hvs:
        with MgmtClient(f"{hv.dir}/br-int.mgmt") as client:
            states[hv.name] = FlowTable(client.dump_state())
    gen = iso.Generator(topo, SEED)
    pkts: list[iso.Pkt] = []
    for p in sorted(topo.ports.values(), key=lambda p: (p.host or "", p.ofport or 0)):
        if p.host is not None:
            pkts += gen.vm_packets(p, 25)
    pkts += gen.tunnel_packets()[::3]

    def one(p: iso.Pkt) -> tuple[str | None, bool]:
        theirs = _ovs_outputs(topo, p)
        mine = _evaluated(states[p.host], p)
        if mine == theirs:
            return None, bool(theirs)
        return f"{p.label} {p.flow()}: evaluator {mine}, OVS {theirs}", bool(theirs)

    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(one, pkts))
    problems = [p for p, _ in results if p]
    seen = Counter("delivered" if d else "dropped" for _, d in results)
    assert not problems, f"{len(problems)} of {len(pkts)} differ:\n" + "\n".join(problems[:5])
    assert seen["delivered"] > 50 and seen["dropped"] > 50, seen
