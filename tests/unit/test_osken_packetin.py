"""`osken_packetin`: the lean packet-in parser reads every packet-in exactly as os-ken's does,
and hands what it cannot read to os-ken's parser (bad input fails as before).

os-ken cannot serialise a packet-in (its switch-to-controller messages have no encoder), so the
messages are put together here from os-ken's own pieces: its header and packet-in pack strings
and its ``OFPMatch.serialize``."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from os_ken.controller import ofp_event
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto.ofproto_protocol import ProtocolDesc

from controller.southbound import osken_packetin
from controller.southbound.osken_packetin import lean_parser
from tests.unit.test_dhcp_responder import REQUEST, client_frame
from tests.unit.wire_switch import DP

FRAME = client_frame(REQUEST, ciaddr="10.0.0.5")


def packet_in(
    match: Any, data: bytes = FRAME, total_len: int | None = None,
    cookie: int = 0x0500_0000_0000_0007,
) -> bytes:  # fmt: skip
    m = bytearray()
    match.serialize(m, 0)  # padded to 8 bytes
    body = (
        struct.pack(ofp.OFP_PACKET_IN_PACK_STR, ofp.OFP_NO_BUFFER,
                    len(data) if total_len is None else total_len, ofp.OFPR_ACTION, 1, cookie)
        + bytes(m) + b"\0\0" + data
    )  # fmt: skip
    head = struct.pack(ofp.OFP_HEADER_PACK_STR, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN,
                       ofp.OFP_HEADER_SIZE + len(body), 9)  # fmt: skip
    return head + body


MESSAGES = [
    packet_in(parser.OFPMatch(in_port=3, metadata=7)),
    packet_in(parser.OFPMatch(in_port=0xFFFFFF00, metadata=0xFFFF_FFFF_FFFF_FFFF)),
    packet_in(parser.OFPMatch(in_port=3)),
    packet_in(parser.OFPMatch()),
    packet_in(parser.OFPMatch(in_port=3, metadata=(7, 0xFF), eth_type=0x800, ip_proto=17)),
    packet_in(parser.OFPMatch(in_port=3, metadata=7), data=b""),
    packet_in(parser.OFPMatch(in_port=3, metadata=7), data=FRAME + b"\0" * 6, total_len=len(FRAME)),
]


@pytest.fixture
def installed() -> Iterator[None]:
    osken_packetin.install()
    try:
        yield
    finally:
        osken_packetin.uninstall()


def _both(data: bytes) -> tuple[Any, Any]:
    args = (DP, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    return lean_parser(*args), parser.OFPPacketIn.parser(*args)


def _same(ours: Any, theirs: Any) -> None:
    assert type(ours) is parser.OFPPacketIn  # os-ken's class: the event stays EventOFPPacketIn
    assert ours.match.items() == theirs.match.items()
    for name in ("buffer_id", "total_len", "reason", "table_id", "cookie", "data", "xid",
                 "msg_len", "version", "msg_type"):  # fmt: skip
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.match.length == theirs.match.length
    assert ours.match.get("in_port") == theirs.match.get("in_port")
    assert ours.match.get("metadata") == theirs.match.get("metadata")


def test_every_packet_in_parses_as_os_ken_parses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*args: Any) -> None:
        raise AssertionError("handed to os-ken's parser")

    monkeypatch.setattr(osken_packetin, "_OS_KEN_PARSER", no_fallback)
    for data in MESSAGES:
        ours, theirs = _both(data)
        _same(ours, theirs)
    assert _both(MESSAGES[-1])[0].data == FRAME  # the alignment padding left out


def test_what_it_cannot_read_fails_or_parses_as_with_os_ken() -> None:
    """Every truncation and every corrupted byte of the match: os-ken's outcome, raised or
    parsed, exactly."""
    whole = MESSAGES[0]
    variants = [whole[:cut] for cut in range(ofp.OFP_HEADER_SIZE, len(whole))]
    match_at = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
    for at in range(match_at, match_at + 32):
        for value in (0, 1, 3, 4, 0x7F, 0xFF):
            variants.append(whole[:at] + bytes([value]) + whole[at + 1 :])
    for data in variants:
        try:
            theirs = _both(data)[1]
        except Exception as exc:
            with pytest.raises(type(exc)):
                lean_parser(DP, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
            continue
        _same(_both(data)[0], theirs)


def test_installed_it_parses_packet_ins_into_os_kens_event(installed: None) -> None:
    data = MESSAGES[0]
    msg = ofproto_parser.msg(DP, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    assert msg.match.fields == []  # the lean parse
    assert isinstance(ofp_event.ofp_msg_to_ev(msg), ofp_event.EventOFPPacketIn)
    osken_packetin.uninstall()
    reference = ofproto_parser.msg(DP, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    assert reference.match.fields
    _same(msg, reference)


class _SinkDatapath(ProtocolDesc):
    """A datapath whose packet-ins a sink takes (what `TenantnetOfpApp` sets at admission)."""

    def __init__(self, takes: bool) -> None:
        super().__init__(version=ofp.OFP_VERSION)
        self.got: list[Any] = []
        self.takes = takes

    def packet_in_sink(self, fields: Any) -> bool:
        self.got.append(fields)
        return self.takes


def test_a_sink_gets_the_fields_os_ken_parses_and_no_message_is_made() -> None:
    """With a ``packet_in_sink`` on the datapath, the parser hands it the packet-in's fields
    (each as os-ken's own parse has it) and returns None when it takes them (no message, so
    no event); when it does not, the message as before."""
    for data in MESSAGES:
        theirs = _both(data)[1]
        for takes in (True, False):
            dp = _SinkDatapath(takes)
            ours = lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
            (fields,) = dp.got
            assert fields.datapath is dp
            for name in ("buffer_id", "total_len", "reason", "table_id", "cookie", "data"):
                assert getattr(fields, name) == getattr(theirs, name), name
            assert fields.match.items() == theirs.match.items()
            if takes:
                assert ours is None
            else:
                _same(ours, theirs)


def test_what_a_sink_cannot_be_given_fails_or_parses_as_with_os_ken() -> None:
    """Truncated or corrupted packet-ins that cannot be read never reach the sink: os-ken's
    outcome, raised or parsed, exactly as without one."""
    whole = MESSAGES[0]
    variants = [whole[:cut] for cut in range(ofp.OFP_HEADER_SIZE, len(whole))]
    match_at = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
    variants += [whole[:match_at + 2] + bytes([0, v]) + whole[match_at + 4:] for v in (0, 1, 3)]
    refused = 0
    for data in variants:
        dp = _SinkDatapath(takes=True)
        args = (ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
        try:
            theirs = parser.OFPPacketIn.parser(DP, *args)
        except Exception as exc:
            with pytest.raises(type(exc)):
                lean_parser(dp, *args)
            assert not dp.got
            refused += 1
            continue
        ours = lean_parser(dp, *args)
        if dp.got:  # readable: the sink took the fields os-ken reads
            assert ours is None and dp.got[-1].match.items() == theirs.match.items()
            assert dp.got[-1].data == theirs.data
        else:
            _same(ours, theirs)
    assert refused > 10


def test_the_sink_gets_each_distinct_match_parsed_once_and_the_memo_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Repeated packet-ins with one match are parsed once (the same object each time, with
    os-ken's items); another match is parsed anew; past ``MATCHES_KEPT`` the oldest goes."""
    monkeypatch.setattr(osken_packetin, "_matches", {})
    monkeypatch.setattr(osken_packetin, "MATCHES_KEPT", 2)
    first = packet_in(parser.OFPMatch(in_port=3, metadata=7))
    expected = _both(first)[1].match.items()
    calls: list[int] = []
    real = osken_packetin.parse_match

    def counting(buf: Any, offset: int) -> Any:
        calls.append(offset)
        return real(buf, offset)

    monkeypatch.setattr(osken_packetin, "parse_match", counting)
    dp = _SinkDatapath(takes=True)
    for data in (first, first, first):
        lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    assert len(calls) == 1
    assert dp.got[0].match is dp.got[2].match
    assert dp.got[0].match.items() == expected
    for port in (4, 5):
        data = packet_in(parser.OFPMatch(in_port=port, metadata=7))
        lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
        assert dp.got[-1].match.get("in_port") == port
    assert len(calls) == 3 and len(osken_packetin._matches) == 2
    lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(first), 9, first)
    assert len(calls) == 4  # the first match was forgotten: parsed again


def test_a_match_field_running_past_the_match_never_reaches_the_sink_from_the_memo() -> None:
    """A field whose length runs past the match's own length is not read from the bytes after
    it: the sink does not get it (os-ken's parser decides, as for any unreadable match)."""
    whole = bytearray(MESSAGES[0])
    match_at = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
    whole[match_at + 2 : match_at + 4] = (10).to_bytes(2, "big")  # in_port runs past it
    data = bytes(whole)
    dp = _SinkDatapath(takes=True)
    try:
        theirs = parser.OFPPacketIn.parser(DP, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9,
                                           data)  # fmt: skip
    except Exception as exc:
        with pytest.raises(type(exc)):
            lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    else:
        ours = lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
        _same(ours, theirs)
    assert not dp.got


def test_a_long_match_is_parsed_for_the_sink_but_never_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A match longer than ``MATCH_KEPT_MAX_BYTES`` (a hostile switch's many fields) reaches the
    sink parsed as os-ken parses it, and the memo stays empty: the memo's size is bounded in
    bytes, not only in entries."""
    monkeypatch.setattr(osken_packetin, "_matches", {})
    fields = {f"reg{i}": i + 1 for i in range(8)}
    data = packet_in(parser.OFPMatch(in_port=3, metadata=7, **fields))
    _, length = osken_packetin._MATCH_HEADER.unpack_from(data, osken_packetin._MATCH_AT)
    assert length > osken_packetin.MATCH_KEPT_MAX_BYTES
    dp = _SinkDatapath(takes=True)
    lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(data), 9, data)
    assert dp.got[0].match.get("reg7") == 8 and dp.got[0].match.get("in_port") == 3
    assert osken_packetin._matches == {}
    short = packet_in(parser.OFPMatch(in_port=3, metadata=7))
    lean_parser(dp, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(short), 9, short)
    assert len(osken_packetin._matches) == 1
