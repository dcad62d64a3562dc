"""`osken_flowstats`: the lean flow-stats parser reads every entry exactly as os-ken's does.

The entries are what a switch sends back: every rule shape the compilers produce (a network's
L2 and port security, security groups with conjunctions and conntrack, ARP answers) encoded by
`ofp_codec`, serialised by os-ken and stored as flow-stats entries by the wire switch.  Bad
input fails as before, except where os-ken's parser would never return.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_codec as codec
from controller.southbound import osken_flowstats
from controller.southbound.osken_flowstats import LeanFlowStats, MalformedEntry
from flows import security_groups as sg
from flows.arp_responder import ArpEntry, answer_rule
from flows.diff import FlowDiff
from flows.model import Rule
from tests.unit.test_flows_security_groups import COOKIES, _core, _scenario
from tests.unit.test_ofp_codec import _rules as network_rules
from tests.unit.wire_switch import DP, WireSwitch, diff_messages


def _all_rules() -> list[Rule]:
    ports, groups = _scenario(5, 6, 3, nets=2)
    rules = set(network_rules())
    rules |= sg.compile_host(ports, groups, COOKIES).rules | sg.plug(_core(), {1, 2}).rules
    rules |= {answer_rule(5, ArpEntry(f"10.0.0.{i}", f"fa:16:3e:00:00:{i:02x}", 0x7E4E_0001))
              for i in range(1, 6)}  # fmt: skip
    return sorted(rules, key=repr)


def _entries() -> list[bytes]:
    sw = WireSwitch()
    for msg in diff_messages(FlowDiff(add_rules=tuple(_all_rules()))):
        sw.receive(msg)
    return [entry for _, entry in sw.flows.values()]


ENTRIES = _entries()


@pytest.fixture
def installed() -> Iterator[None]:
    osken_flowstats.install()
    try:
        yield
    finally:
        osken_flowstats.uninstall()


def test_every_entry_parses_as_os_ken_parses_it() -> None:
    assert len(ENTRIES) > 50
    for entry in ENTRIES:
        ours, theirs = LeanFlowStats.parser(entry, 0), parser.OFPFlowStats.parser(entry, 0)
        assert isinstance(ours, LeanFlowStats)  # its own parse, not os-ken's as a fallback
        assert ours.match.items() == theirs.match.items()
        assert ours.match.length == theirs.match.length and ours.length == theirs.length
        assert str(ours.instructions) == str(theirs.instructions)
        assert codec.decode_flow_stats(ours) == codec.decode_flow_stats(theirs)
        for name in ("table_id", "priority", "cookie", "idle_timeout", "hard_timeout", "flags",
                     "packet_count", "byte_count", "duration_sec", "duration_nsec"):  # fmt: skip
            assert getattr(ours, name) == getattr(theirs, name), name


def _reply(entries: list[bytes]) -> bytes:
    body = struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_FLOW, 0) + b"".join(entries)
    head = struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY,
                       ofp.OFP_HEADER_SIZE + len(body), 7)  # fmt: skip
    return head + body


def _parse(data: bytes) -> object:
    return ofproto_parser.msg(DP, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(data), 7, data)


def test_installed_it_parses_whole_replies(installed: None) -> None:
    msg = _parse(_reply(ENTRIES))
    assert msg.body and all(isinstance(s, LeanFlowStats) for s in msg.body)  # none handed back
    osken_flowstats.uninstall()
    reference = _parse(_reply(ENTRIES))
    assert [codec.decode_flow_stats(s) for s in msg.body] == [
        codec.decode_flow_stats(s) for s in reference.body
    ]
    assert parser.OFPFlowStatsReply.cls_stats_body_cls is parser.OFPFlowStats


def test_a_truncated_entry_fails_as_with_os_ken() -> None:
    entry = max(ENTRIES, key=len)
    for cut in (8, ofp.OFP_FLOW_STATS_0_SIZE + 2, len(entry) - 3):
        short = entry[:cut]
        with pytest.raises(Exception) as theirs:
            parser.OFPFlowStats.parser(short, 0)
        with pytest.raises(Exception) as ours:
            LeanFlowStats.parser(short, 0)
        assert type(ours.value) is type(theirs.value)


def test_lengths_that_would_never_advance_are_refused() -> None:
    """os-ken's reply loop adds each entry's length (and its entry loop each instruction's):
    with 0 it would parse the same bytes for good.  Refused, which ends the connection."""
    entry = bytearray(max(ENTRIES, key=len))
    zero = bytearray(entry)
    struct.pack_into("!H", zero, 0, 0)
    with pytest.raises(MalformedEntry):
        LeanFlowStats.parser(bytes(zero), 0)
    match_len = struct.unpack_from("!H", entry, ofp.OFP_FLOW_STATS_0_SIZE + 2)[0]
    first_ins = ofp.OFP_FLOW_STATS_0_SIZE + (match_len + 7) // 8 * 8
    struct.pack_into("!H", entry, first_ins + 2, 0)
    with pytest.raises(MalformedEntry):
        LeanFlowStats.parser(bytes(entry), 0)
