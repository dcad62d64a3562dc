"""The OpenFlow codec: the fast match path must put exactly os-ken's bytes on the wire.

`encode_match` skips os-ken's value normalisation for speed; these tests compare its messages
byte for byte with the ones os-ken builds from keyword arguments, over every rule shape the
compiler produces (port security with IPv4/IPv6/CIDR address pairs, tunnels, remote ports).
"""

from __future__ import annotations

from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound import ofp_codec as codec
from flows import security_groups as sg
from flows.compiler import compile_network
from flows.model import (
    GroupEntry,
    HostContext,
    LocalPort,
    NetworkView,
    Output,
    RemotePort,
    Resubmit,
    Rule,
    Segment,
    SetField,
    Slice,
)
from flows.routing import Interface, RouterView, Subnets, compile_router
from tests.unit.wire_switch import DP as WIRE_DP


class _Dp:
    """Just enough of an os-ken Datapath to build and serialise messages."""

    ofproto = ofp
    ofproto_parser = parser


def _rules() -> list[Rule]:
    rules = sorted(_network().rules, key=repr)
    assert len(rules) > 20
    return rules


def _network() -> Slice:
    """A network's flows and flood groups on a host: local ports with and without port
    security and address pairs, a remote port, two peer hosts."""
    local = (
        LocalPort("a", 1, "0A:00:00:00:00:01", ("10.0.0.1", "fd00::1")),
        LocalPort("b", 2, "0a:00:00:00:00:02", ("10.0.0.2",), port_security=False),
        LocalPort(
            "c",
            3,
            "0a:00:00:00:00:03",
            ("10.0.0.3",),
            allowed_pairs=(
                ("10.0.9.0/24", "0a:00:00:00:99:01"),
                ("10.0.8.8", "0a:00:00:00:00:03"),
                ("fd00:9::/64", "0a:00:00:00:99:02"),
            ),
        ),
    )
    remote = (RemotePort("r", "0a:00:00:00:01:01", "192.0.2.2", extra_macs=("0a:00:00:00:01:02",)),)
    view = NetworkView(7, "vxlan", 5007, local, remote, ("192.0.2.2", "192.0.2.3"))
    ctx = HostContext("192.0.2.1", {"vxlan": 64001, "gre": 64002})
    return compile_network(ctx, view)


def _wire(msg: Any) -> bytes:
    msg.set_xid(1)
    msg.serialize()
    return bytes(msg.buf)


def _reference_add(rule: Rule) -> Any:
    return parser.OFPFlowMod(
        _Dp(),
        cookie=rule.cookie,
        table_id=rule.table,
        command=ofp.OFPFC_ADD,
        priority=rule.priority,
        match=parser.OFPMatch(**dict(rule.match)),
        instructions=codec.encode_instructions(rule.instructions),
    )


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: f"t{r.table}-{dict(r.match)}")
def test_flow_add_bytes_equal_os_ken_keyword_match(rule: Rule) -> None:
    assert _wire(codec.flow_add(_Dp(), rule)) == _wire(_reference_add(rule))


def test_flow_delete_strict_matches_like_add() -> None:
    for rule in _rules():
        fast = codec.flow_delete_strict(_Dp(), rule, 2**64 - 1)
        ref = parser.OFPFlowMod(
            _Dp(),
            cookie=rule.cookie,
            cookie_mask=2**64 - 1,
            table_id=rule.table,
            command=ofp.OFPFC_DELETE_STRICT,
            priority=rule.priority,
            match=parser.OFPMatch(**dict(rule.match)),
            out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY,
        )
        assert _wire(fast) == _wire(ref)


def _shapes() -> list[Rule]:
    """The network's rules, a router's (routes, echo answers, neighbours, tunnel ingress) and
    a host's security-group flows (conntrack, conjunctions, registers)."""
    subnets = Subnets([Interface(9, Segment(7, "vxlan", 5007), "0a:00:00:00:09:01", "10.7.0.1",
                                 "10.7.0.0/16"),
                       Interface(10, Segment(8, "gre", 5008), "0a:00:00:00:0a:01", "10.8.0.1",
                                 "10.8.0.0/16")])  # fmt: skip
    ports = (*subnets.routed(11, Segment(7, "vxlan", 5007), "0a:00:00:00:0b:01", ("10.7.0.5",),
                             "192.0.2.1"),
             *subnets.routed(12, Segment(8, "gre", 5008), "0a:00:00:00:0c:01", ("10.8.0.6",),
                             "192.0.2.2"))  # fmt: skip
    view = RouterView(subnets.interfaces, ports, ("192.0.2.1", "192.0.2.2"), frozenset({7, 8}))
    ctx = HostContext("192.0.2.1", {"vxlan": 64001, "gre": 64002})
    router = [r for piece in compile_router(ctx, view).values() for r in piece.rules]
    # 2 x (entry with the router's mark, ARP, echo answer, route, echo source MAC, TTL,
    # ingress, undelivered-routed drop) + 2 neighbours
    assert len(router) == 18
    return [*_rules(), *sorted(router, key=repr), *sorted(sg.static_rules(99), key=repr)]


def test_encoded_flow_mods_are_os_kens_bytes_alone_and_in_a_bundle() -> None:
    """`flow_add_encoded` / `flow_delete_strict_encoded` put the same bytes on the wire as
    os-ken's own messages, for every shape, with any xid, alone or inside a bundle-add, on
    first use and from the cache."""
    for rule in _shapes():
        for _ in range(2):  # built, then remembered
            for xid in (1, 0x7FFF_FFF3):
                for fast, ref in (
                    (codec.flow_add_encoded(_Dp(), rule), codec.flow_add(_Dp(), rule)),
                    (codec.flow_delete_strict_encoded(_Dp(), rule, 2**64 - 1),
                     codec.flow_delete_strict(_Dp(), rule, 2**64 - 1)),
                ):  # fmt: skip
                    outer = [parser.ONFBundleAddMsg(_Dp(), 3, 0, m, []) for m in (fast, ref)]
                    for m in outer:
                        m.set_xid(xid)
                        m.serialize()
                    assert bytes(outer[0].buf) == bytes(outer[1].buf), rule
                    alone = [type(m)(_Dp(), m.body, rule) if m is fast else m
                             for m in (fast, ref)]  # fmt: skip
                    for m in alone:
                        m.xid = None
                        m.set_xid(xid)
                        m.serialize()
                    assert bytes(alone[0].buf) == bytes(alone[1].buf), rule


def test_masked_and_cidr_values_keep_os_kens_normalisation() -> None:
    """A value with host bits under its mask is normalised (value & mask) like os-ken does."""
    m = (("eth_type", 0x0800), ("ipv4_src", ("10.0.9.7", "255.255.255.0")))
    buf1, buf2 = bytearray(), bytearray()
    codec.encode_match(m).serialize(buf1, 0)
    parser.OFPMatch(eth_type=0x0800, ipv4_src=("10.0.9.0", "255.255.255.0")).serialize(buf2, 0)
    assert buf1 == buf2


def test_unknown_field_is_rejected_by_os_ken() -> None:
    with pytest.raises(Exception):  # noqa: B017 - os-ken raises its own KeyError subclass
        buf = bytearray()
        codec.encode_match((("no_such_field", 1),)).serialize(buf, 0)


def test_ct_flush_zone_is_nicira_message_29_with_the_zone_in_its_last_two_bytes() -> None:
    """NXT_CT_FLUSH_ZONE as OVS parses it (nicira-ext.h: struct nx_zone_id, 6 zero bytes and
    the zone): header, Nicira experimenter id, subtype 29, body."""
    msg = codec.ct_flush_zone(WIRE_DP, 0x1234)
    msg.serialize()
    buf = bytes(msg.buf)
    assert len(buf) == 8 + 8 + 8 and buf[1] == ofp.OFPT_EXPERIMENTER
    assert buf[8:16] == bytes.fromhex("00002320" "0000001d")
    assert buf[16:] == bytes(6) + bytes.fromhex("1234")
    with pytest.raises(ValueError):
        codec.ct_flush_zone(WIRE_DP, 0x10000)


def test_encoded_group_mods_are_os_kens_bytes_alone_and_in_a_bundle() -> None:
    """`group_add_encoded` / `group_modify_encoded` put the same bytes on the wire as os-ken's
    own group-mods, for every bucket shape the compiler makes (flood buckets into the
    security-group tables, outputs, tunnel buckets), with any xid, alone or inside a
    bundle-add, on first use and with the buckets remembered."""
    filtered = GroupEntry(9, ((SetField("reg5", 13), Resubmit(20)), (Output(2),)))
    groups = [*_network().groups, filtered, GroupEntry(10, ())]  # the last: no bucket left
    assert any(len(g.buckets) > 1 for g in groups)
    for group in groups:
        for _ in range(2):  # built, then remembered
            for xid in (1, 0x7FFF_FFF3):
                for fast, ref in (
                    (codec.group_add_encoded(_Dp(), group), codec.group_add(_Dp(), group)),
                    (codec.group_modify_encoded(_Dp(), group), codec.group_modify(_Dp(), group)),
                ):
                    for m in (fast, ref):
                        m.set_xid(xid)
                        m.serialize()
                    assert bytes(fast.buf) == bytes(ref.buf), group
                    outer = [parser.ONFBundleAddMsg(_Dp(), 3, 0, m, []) for m in (fast, ref)]
                    for m in outer:
                        m.set_xid(xid)
                        m.serialize()
                    assert bytes(outer[0].buf) == bytes(outer[1].buf), group
