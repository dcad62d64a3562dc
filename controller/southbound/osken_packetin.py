"""os-ken's packet-in parser without its OpenFlow 1.0-era compatibility match: the same message.

Why: every packet-in (a DHCP request, a TTL-expired packet) is parsed on its switch's receive
thread before tenantnet sees it, and ``OFPMatch.parser`` parses each match twice (see
`controller.southbound.osken_flowstats`): once into the OXM fields that tenantnet reads
(``match.get("in_port")``, ``"metadata"``), once into the pre-OXM ``match.fields`` objects
nothing reads.  That second pass was about half of os-ken's ~40 us per DHCP packet-in
(microbenchmark on this kind of machine), on the thread that also carries the switch's
barrier replies.

`lean_parser` is ``OFPPacketIn.parser`` with the match parsed by
`osken_flowstats.parse_match` (os-ken's own OXM functions, the first half of
``OFPMatch.parser``); it returns os-ken's ``OFPPacketIn`` (so the event is still
``EventOFPPacketIn``) whose match, like the flow entries', has no pre-OXM API (``fields`` is
empty, and os-ken's ``str()`` of such a match fails: log its ``items()``).  Anything it cannot
parse (truncated, malformed: switch input) is handed to os-ken's own parser, so bad input
fails exactly as it did.  `install` (called with the
OpenFlow listener, like `osken_flowstats.install`) makes it os-ken's parser for
``OFPT_PACKET_IN``.
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound.osken_flowstats import parse_match

_OS_KEN_PARSER = parser.OFPPacketIn.parser
_MATCH_AT = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
_FIXED = struct.Struct(ofp.OFP_PACKET_IN_PACK_STR)


def lean_parser(
    datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: Any
) -> Any:
    """``OFPPacketIn.parser`` with the OXM half of the match parse (module docstring)."""
    try:
        return _lean(datapath, version, msg_type, msg_len, xid, buf)
    except Exception:  # malformed input: os-ken's parser raises what it always raised
        return _OS_KEN_PARSER(datapath, version, msg_type, msg_len, xid, buf)


def _lean(datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: Any) -> Any:
    # what OFPPacketIn.parser's super() call does: the header, and the buffer as msg.buf
    msg = super(parser.OFPPacketIn, parser.OFPPacketIn).parser(
        datapath, version, msg_type, msg_len, xid, buf
    )
    (msg.buffer_id, msg.total_len, msg.reason, msg.table_id, msg.cookie) = _FIXED.unpack_from(
        msg.buf, ofp.OFP_HEADER_SIZE
    )
    msg.match = parse_match(msg.buf, _MATCH_AT)
    if msg.match.length < 4:  # shorter than its own header: os-ken's parser decides
        raise ValueError(f"packet-in match of {msg.match.length} bytes")
    start = _MATCH_AT + (msg.match.length + 7) // 8 * 8 + 2
    msg.data = msg.buf[start:]
    if msg.total_len < len(msg.data):  # padding for 8-byte alignment (as os-ken)
        msg.data = msg.data[: msg.total_len]
    return msg


def install() -> None:
    """Parse packet-ins with `lean_parser` (idempotent)."""
    parser._MSG_PARSERS[ofp.OFPT_PACKET_IN] = lean_parser


def uninstall() -> None:
    """Back to os-ken's own parser (tests)."""
    parser._MSG_PARSERS[ofp.OFPT_PACKET_IN] = _OS_KEN_PARSER
