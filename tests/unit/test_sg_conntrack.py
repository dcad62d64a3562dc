"""Security groups are stateful through conntrack (flows/security_groups.py): a new connection
a rule lets through is committed in the zone of every filtered port it crosses, which is what
makes its replies ``+est+rpl`` and lets them back without a rule.  The Neutron-model test in
test_flows_trace.py gives the packets their conntrack state; this one checks that the flows
create that state."""

from __future__ import annotations

from flows.trace import FlowTable, make_packet, trace
from tests.integration import test_sg_trace as sgt


def test_a_new_connection_is_committed_in_both_ports_zones_and_its_replies_pass() -> None:
    state = FlowTable(sgt.compile_state("10.99.0.1"))
    a, b = sgt.BY_NAME["a"], sgt.BY_NAME["b"]  # web -> db tcp/5432 is allowed
    assert a.ofport is not None and b.ofport is not None
    pkt = make_packet(a.mac, b.mac, ip_src="10.0.0.1", ip_dst="10.0.0.2", protocol=6,
                      src_port=40000, dst_port=5432)  # fmt: skip
    opened = trace(state, a.ofport, pkt, ["new", "new"])
    assert opened.ports == [b.ofport]
    commits = sorted((s.zone, s.mark) for s in opened.steps if s.kind == "commit")
    assert commits == [(a.ofport, None), (b.ofport, None)]  # zones are the ofports, no mark
    going_on = trace(state, a.ofport, pkt, ["est", "est"])
    assert going_on.ports == [b.ofport]
    assert not [s for s in going_on.steps if s.kind == "commit"]  # committed once
    # the reply: no rule allows db -> web from 5432, conntrack does
    reply = make_packet(b.mac, a.mac, ip_src="10.0.0.2", ip_dst="10.0.0.1", protocol=6,
                        src_port=5432, dst_port=40000)  # fmt: skip
    assert trace(state, b.ofport, reply, ["est,rpl", "est,rpl"]).ports == [a.ofport]
    assert trace(state, b.ofport, reply, ["new", "new"]).ports == []
    assert trace(state, b.ofport, reply, ["rel", "rel"]).ports == [a.ofport]  # e.g. ICMP errors
    # the first packet of a related connection is new: it needs a rule, as in Neutron
    assert trace(state, b.ofport, reply, ["new,rel", "new,rel"]).ports == []
    # a new connection no rule allows is not committed as allowed in the receiver's zone
    denied = trace(state, a.ofport, {**pkt, "tcp_dst": 5433}, ["new", "new"])
    assert denied.ports == []
    assert (b.ofport, None) not in [(s.zone, s.mark) for s in denied.steps if s.kind == "commit"]
