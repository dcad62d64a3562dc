"""os-ken's flow-stats parser without its OpenFlow 1.0-era compatibility match: the same entries.

Why: reading a switch's flows back is on the path from a controller restart to every host
reconciled, and os-ken's parse of the replies was the largest single cost there (profiled with
``python -m bench.restart_probe --profile``: ~37% of the controller's CPU between the data
plane's start and reconciled at H=3, ~1,500 flows).  ``OFPMatch.parser`` parses every match
twice: once into the OXM fields everything reads (``match.items()``, ``match.get``), and once,
marked "XXXcompat" in os-ken, into ``OFPMatchField`` objects for the pre-OXM ``match.fields``
API, after building the empty ``Flow``/``FlowWildcards`` that API needs (about half of the
match's cost, a third of the whole entry's).  tenantnet never reads that API.

`LeanFlowStats.parser` is ``OFPFlowStats.parser`` with the match parsed by os-ken's own OXM
functions (``oxm_parse``, ``oxm_to_user``: the first half of ``OFPMatch.parser``, unchanged)
into an ``OFPMatch`` that carries those fields and an empty ``fields`` list; instructions and
actions are parsed by os-ken's ``OFPInstruction.parser`` as before.  Any entry it cannot parse
(truncated, malformed: switch input) is handed to os-ken's own ``OFPFlowStats.parser``, so bad
input fails exactly as it did.  `install` (called with the OpenFlow listener, like
`osken_addrconv.install`) makes it the body class of os-ken's ``OFPFlowStatsReply``.

Upstream, ``OFPMatch.parser`` could fill ``fields`` lazily on first use.
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken.lib import stringify
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

_OS_KEN_PARSER = parser.OFPFlowStats.parser
# An entry's fixed part and its smallest match (a header padded to 8 bytes).
_MIN_ENTRY = ofp.OFP_FLOW_STATS_0_SIZE + 8
_INSTRUCTION_HEADER = 4


class MalformedEntry(ValueError):
    """An entry on which os-ken's parser would loop for good (a length that does not advance):
    refused here instead of handed to it.  Like any parse error, it ends the connection."""
_MATCH_HEADER = struct.Struct("!HH")
_FLOW_STATS_0 = struct.Struct(ofp.OFP_FLOW_STATS_0_PACK_STR)


def parse_match(buf: Any, offset: int) -> Any:
    """The OXM half of ``OFPMatch.parser``: an ``OFPMatch`` with the same ``items()``."""
    match_type, length = _MATCH_HEADER.unpack_from(buf, offset)
    match = parser.OFPMatch.__new__(parser.OFPMatch)
    stringify.StringifyMixin.__init__(match)
    match.type = match_type
    match.length = length
    match.fields = []  # the compatibility API's (OFPMatchField objects): never read here
    fields = []
    offset += 4
    length -= 4
    while length > 0:
        n, value, mask, field_len = ofp.oxm_parse(buf, offset)
        fields.append(ofp.oxm_to_user(n, value, mask))
        offset += field_len
        length -= field_len
    match._fields2 = fields
    return match


class LeanFlowStats(parser.OFPFlowStats):
    """One flow-stats entry, parsed as os-ken does except for the match (module docstring)."""

    @classmethod
    def parser(cls, buf: Any, offset: int) -> Any:
        try:
            return cls._lean(buf, offset)
        except MalformedEntry:
            raise
        except Exception:  # malformed input: os-ken's parser raises what it always raised
            return _OS_KEN_PARSER.__func__(parser.OFPFlowStats, buf, offset)

    @classmethod
    def _lean(cls, buf: Any, offset: int) -> Any:
        stats = cls()
        (stats.length, stats.table_id, stats.duration_sec, stats.duration_nsec,
         stats.priority, stats.idle_timeout, stats.hard_timeout, stats.flags,
         stats.cookie, stats.packet_count, stats.byte_count) = _FLOW_STATS_0.unpack_from(
            buf, offset)  # fmt: skip
        if stats.length < _MIN_ENTRY:  # os-ken's reply body loop would not advance
            raise MalformedEntry(f"flow stats entry of {stats.length} bytes")
        end = offset + stats.length
        offset += ofp.OFP_FLOW_STATS_0_SIZE
        stats.match = parse_match(buf, offset)
        offset += (stats.match.length + 7) // 8 * 8
        instructions = []
        while offset < end:
            ins = parser.OFPInstruction.parser(buf, offset)
            if ins is not None and ins.len < _INSTRUCTION_HEADER:  # os-ken's loop: for good
                raise MalformedEntry(f"instruction of {ins.len} bytes")
            instructions.append(ins)
            offset += ins.len
        if offset != end or end > len(buf):  # os-ken's parser decides what that is
            raise ValueError("instructions do not end with the entry")
        stats.instructions = instructions
        return stats


def install() -> None:
    """Parse flow-stats replies with `LeanFlowStats` (idempotent)."""
    parser.OFPFlowStatsReply.cls_stats_body_cls = LeanFlowStats


def uninstall() -> None:
    """Back to os-ken's own parser (tests)."""
    parser.OFPFlowStatsReply.cls_stats_body_cls = parser.OFPFlowStats
