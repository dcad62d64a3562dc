"""The ARP responder compiler (flows/arp_responder.py) and the codec's Nicira move (whole
fields, and the low bits of metadata into a register)."""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_codec as codec
from flows import arp_responder as arp
from flows import tables
from flows.model import MOVE_FIELD_BITS, Apply, Move, Output, SetField, ToGroup, move_low_bits
from flows.readable import actions_text

MAC = "fa:16:3e:00:00:0a"


def _wire_roundtrip(actions: tuple) -> tuple:  # type: ignore[type-arg]
    buf = bytearray()
    for act in codec.encode_actions(actions):
        act.serialize(buf, len(buf))
    parsed, offset = [], 0
    while offset < len(buf):
        act = parser.OFPAction.parser(bytes(buf), offset)
        parsed.append(act)
        offset += act.len
    return codec.decode_actions(parsed)


def test_answer_actions_survive_the_wire() -> None:
    actions = arp.answer_actions("10.0.0.5", MAC)
    assert _wire_roundtrip(actions) == actions
    assert actions_text(actions) == (
        "move:eth_src[]->eth_dst[],set_field:fa:16:3e:00:00:0a->eth_src,set_field:2->arp_op,"
        "move:arp_sha[]->arp_tha[],set_field:fa:16:3e:00:00:0a->arp_sha,"
        "move:arp_spa[]->arp_tpa[],set_field:10.0.0.5->arp_spa,output:4294967288"
    )


def test_moves_reported_by_nxm_names_decode_to_the_oxm_names() -> None:
    """OVS dumps ``move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]``, which os-ken calls ``*_nxm``."""
    reported = [
        parser.NXActionRegMove("eth_src_nxm", "eth_dst_nxm", 48, 0, 0),
        parser.NXActionRegMove("arp_spa_nxm", "arp_tpa_nxm", 32, 0, 0),
    ]
    assert codec.decode_actions(reported) == (
        Move("eth_src", "eth_dst"),
        Move("arp_spa", "arp_tpa"),
    )


def test_partial_or_mismatched_moves_are_foreign_or_refused() -> None:
    partial = parser.NXActionRegMove("eth_src", "eth_dst", 24, 0, 0)
    assert codec.decode_actions([partial])[0].field == "__foreign__"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="widths"):
        codec.encode_actions([Move("eth_src", "arp_spa")])


def test_low_bits_of_metadata_into_a_register_encode_as_a_32_bit_move_from_bit_0() -> None:
    (act,) = codec.encode_actions([Move("metadata", "reg9")])
    assert isinstance(act, parser.NXActionRegMove)
    assert (act.src_field, act.dst_field, act.n_bits, act.src_ofs, act.dst_ofs) == (
        "metadata", "reg9", 32, 0, 0)  # fmt: skip
    (whole,) = codec.encode_actions([Move("reg1", "reg9")])  # equal widths: the whole field
    assert (whole.n_bits, whole.src_ofs, whole.dst_ofs) == (32, 0, 0)


def test_partial_move_survives_the_wire_and_reads_as_ovs_writes_it() -> None:
    """What the switch reports back must decode to the very Move sent, or the reconciler
    would see drift and resend the flow forever."""
    actions = (Move("metadata", "reg9"), Move("reg1", "reg9"), Move("eth_src", "eth_dst"))
    assert _wire_roundtrip(actions) == actions
    assert actions_text(actions) == (
        "move:metadata[0..31]->reg9[],move:reg1[]->reg9[],move:eth_src[]->eth_dst[]"
    )


def test_other_bit_ranges_decode_as_foreign() -> None:
    for reported in (
        parser.NXActionRegMove("metadata", "reg9", 32, 32, 0),  # the high half
        parser.NXActionRegMove("metadata", "reg9", 16, 0, 0),  # part of the register
        parser.NXActionRegMove("metadata", "reg9", 16, 0, 16),
        parser.NXActionRegMove("metadata", "reg9", 64, 0, 0),  # wider than the register
        parser.NXActionRegMove("reg9", "metadata", 32, 0, 0),  # into part of metadata
        parser.NXActionRegMove("eth_src", "reg9", 32, 0, 0),  # a width flows does not know
    ):
        (got,) = codec.decode_actions([reported])
        assert isinstance(got, SetField) and got.field == "__foreign__", reported


def test_a_narrower_source_or_a_partial_move_flows_cannot_follow_is_refused() -> None:
    for move in (Move("reg9", "metadata"), Move("eth_src", "reg9"), Move("reg9", "nope")):
        with pytest.raises(ValueError, match="narrower"):
            codec.encode_actions([move])


def test_the_models_move_widths_are_os_kens() -> None:
    """flows cannot import os-ken: its own table of widths must agree with the codec's."""
    assert {f: codec._FIELD_BITS[f] for f in MOVE_FIELD_BITS} == dict(MOVE_FIELD_BITS)
    assert move_low_bits(Move("metadata", "reg9")) == 32
    assert move_low_bits(Move("reg1", "reg9")) is None
    assert move_low_bits(Move("reg9", "metadata")) is None


def test_one_answer_everywhere_and_the_owners_own_pass_on_its_host() -> None:
    entry = arp.ArpEntry("10.0.0.5", MAC, cookie=0xC0FFEE)
    peer = arp.compile_entries(7, [entry])
    (answer,) = peer  # a peer host: the answer only
    assert answer.priority == arp.PRIO_ARP_ANSWER > tables.PRIO_EXACT
    assert dict(answer.match) == {
        "metadata": 7, "eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.5",
    }  # fmt: skip
    assert answer.instructions == (Apply(arp.answer_actions("10.0.0.5", MAC)),)
    home = arp.compile_entries(7, [entry], owner_ofport=4)
    assert {r.cookie for r in home} == {0xC0FFEE}
    assert {r.table for r in home} == {tables.L2_FROM_PORT}
    (own,) = home - peer
    # the owner's own requests for its address (gratuitous ARP, probes), from its port only
    assert own.priority == arp.PRIO_ARP_PASS > arp.PRIO_ARP_ANSWER
    assert dict(own.match) == {
        "metadata": 7, "in_port": 4, "eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.5",
    }  # fmt: skip
    assert own.instructions == (Apply((ToGroup(tables.flood_all_group_id(7)),)),)


def test_entries_ports_first_ipv4_only_canonical_mac() -> None:
    ports = [arp.ArpEntry("10.0.0.5", "FA-16-3E-00-00-0A", 1), arp.ArpEntry("fd00::5", MAC, 1)]
    dhcp = [
        arp.ArpEntry("10.0.0.5", "02:7e:4e:00:00:01", 2),
        arp.ArpEntry("10.0.0.1", "02:7e:4e:00:00:01", 2),
    ]
    got = arp.entries_for(ports, dhcp)
    assert got == [
        arp.ArpEntry("10.0.0.5", MAC, 1),
        arp.ArpEntry("10.0.0.1", "02:7e:4e:00:00:01", 2),
    ]
    rules = arp.compile_entries(3, got)
    answers = [r for r in rules if r.priority == arp.PRIO_ARP_ANSWER]
    assert len(answers) == 2 and all(dict(r.match)["metadata"] == 3 for r in answers)


def test_bypass_for_port_security_off_is_above_every_answer() -> None:
    rule = arp.bypass_rule(3, ofport=9, cookie=5)
    assert rule.priority > arp.PRIO_ARP_PASS > arp.PRIO_ARP_ANSWER
    assert dict(rule.match)["in_port"] == 9 and rule.cookie == 5
    custom = (Apply((Output(1),)),)
    assert arp.bypass_rule(3, 9, 5, fallthrough=custom).instructions == custom


def test_answer_sets_the_known_mac_and_ip() -> None:
    actions = arp.answer_actions("10.0.0.5", MAC)
    assert SetField("arp_spa", "10.0.0.5") in actions and SetField("eth_src", MAC) in actions
    assert actions[-1] == Output(arp.OFPP_IN_PORT)
