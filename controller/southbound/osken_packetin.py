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

Answered where it is read: a connection whose datapath carries a ``packet_in_sink`` (set by
`controller.southbound.ofp_app.TenantnetOfpApp` when it admits the switch) has its parsed
packet-ins handed to that sink right here, on the receive thread, instead of being wrapped in
an ``EventOFPPacketIn`` and dispatched through os-ken's observers to the app's ``_send_event``
- which delivered it on this same thread anyway.  The sink returns True when it took the
message; the parser then returns None, which os-ken's receive loop treats as "no event" (what
it does for a message its parser rejected).  The sink gets the packet-in's fields (`Fields`,
parsed by `_fields` exactly as the message's), not an ``OFPPacketIn``.  Why: per DHCP round
trip, building that message (~40 us) and the event's creation and dispatch
(``ofp_msg_to_ev``, ``send_event_to_observers``, the handler list: ~80 us) were a sixth of
the controller's ~0.75 ms on cold CPU caches (stamps in the running controller); skipping
them changes nothing else: same thread, same order, same checks (the sink is the app's own
packet-in delivery).  What the sink does not take, or cannot be read, is parsed as before.

The sink's match is parsed once per distinct match (`_sink_match`): a switch sends the same
few matches again and again (a DHCP punt's packet-in carries the port's ``in_port`` and the
network's ``metadata``, nothing else), and parsing one - os-ken's OXM functions and an
``OFPMatch`` - took 60-130 us of the receive thread's ~0.5 ms per DHCP packet-in on cold CPU
caches (stamps in the running controller), more than any other step before the DHCP parse.
The memo is keyed by the match's bytes and holds os-ken's parse of exactly those bytes, so
the sink sees what os-ken's parser makes of them; it is bounded (`MATCHES_KEPT`, the oldest
forgotten first: matches are switch input), a match that does not parse is never kept, and
only the sink, which reads the match and never changes it, gets the shared object (os-ken's
messages keep a match of their own).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.southbound.osken_flowstats import parse_match

_OS_KEN_PARSER = parser.OFPPacketIn.parser
_MATCH_AT = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
_FIXED = struct.Struct(ofp.OFP_PACKET_IN_PACK_STR)
_MATCH_HEADER = struct.Struct(ofp.OFP_MATCH_PACK_STR[:3])  # type, length
MATCHES_KEPT = 1024
"""Distinct packet-in matches whose parse is kept for the sink (`_sink_match`); a few hundred
bytes each.  A host sends one per punting port."""
MATCH_KEPT_MAX_BYTES = 64
"""Only matches this short are kept: a punt's match (in_port, metadata) is ~32 bytes.  A longer
one, which a hostile switch could send by the thousand with ~13,000 fields each, is parsed and
not kept, so the memo holds at most ``MATCHES_KEPT`` x 64 bytes of keys, not up to ~1 GB."""
_matches: dict[bytes, Any] = {}
_matches_lock = threading.Lock()


class Fields(NamedTuple):
    """A packet-in as a ``packet_in_sink`` reads it: the attributes of os-ken's ``OFPPacketIn``
    that tenantnet reads, parsed the same way (`_fields`), without building that message."""

    datapath: Any
    buffer_id: int
    total_len: int
    reason: int
    table_id: int
    cookie: int
    match: Any  # os-ken's OFPMatch, as `parse_match` builds it
    data: Any


def lean_parser(
    datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: Any
) -> Any:
    """``OFPPacketIn.parser`` with the OXM half of the match parse; handed to the datapath's
    ``packet_in_sink`` when it has one that takes it (module docstring)."""
    sink = getattr(datapath, "packet_in_sink", None)
    if sink is not None:
        try:
            fields = _fields(datapath, buf, _sink_match)
        except Exception:  # malformed: the parse below raises or returns what os-ken does
            fields = None
        if fields is not None and sink(fields):
            return None  # answered on this thread: no message, no event for os-ken
    try:
        return _lean(datapath, version, msg_type, msg_len, xid, buf)
    except Exception:  # malformed input: os-ken's parser raises what it always raised
        return _OS_KEN_PARSER(datapath, version, msg_type, msg_len, xid, buf)


def _fields(datapath: Any, buf: Any, match_of: Callable[[Any], Any] | None = None) -> Fields:
    """What follows the header of the packet-in in ``buf``: os-ken's layout and pack string,
    the match by `parse_match` (or ``match_of(buf)``, `_sink_match`).  Raises for anything it
    cannot read."""
    buffer_id, total_len, reason, table_id, cookie = _FIXED.unpack_from(buf, ofp.OFP_HEADER_SIZE)
    match = parse_match(buf, _MATCH_AT) if match_of is None else match_of(buf)
    if match.length < 4:  # shorter than its own header: os-ken's parser decides
        raise ValueError(f"packet-in match of {match.length} bytes")
    start = _MATCH_AT + (match.length + 7) // 8 * 8 + 2
    data = buf[start:]
    if total_len < len(data):  # padding for 8-byte alignment (as os-ken)
        data = data[:total_len]
    return Fields(datapath, buffer_id, total_len, reason, table_id, cookie, match, data)


def _sink_match(buf: Any) -> Any:
    """`parse_match` of the packet-in's match, parsed once per distinct match bytes (module
    docstring).  The parse reads the match's own bytes only (a field running past the match's
    length raises here, and os-ken's parser then decides), so what is kept under those bytes
    is what they parse to.  Raises what `parse_match` raises; nothing is kept then."""
    _, length = _MATCH_HEADER.unpack_from(buf, _MATCH_AT)
    key = bytes(buf[_MATCH_AT : _MATCH_AT + length])
    match = _matches.get(key)
    if match is None:
        match = parse_match(key, 0)
        if length > MATCH_KEPT_MAX_BYTES:
            return match
        with _matches_lock:  # every switch's receive thread
            if len(_matches) >= MATCHES_KEPT:
                del _matches[next(iter(_matches))]  # the oldest entry
            _matches[key] = match
    return match


def _lean(datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: Any) -> Any:
    # what OFPPacketIn.parser's super() call does: the header, and the buffer as msg.buf
    msg = super(parser.OFPPacketIn, parser.OFPPacketIn).parser(
        datapath, version, msg_type, msg_len, xid, buf
    )
    (_, msg.buffer_id, msg.total_len, msg.reason, msg.table_id, msg.cookie, msg.match,
     msg.data) = _fields(datapath, msg.buf)  # fmt: skip
    return msg


def install() -> None:
    """Parse packet-ins with `lean_parser` (idempotent)."""
    parser._MSG_PARSERS[ofp.OFPT_PACKET_IN] = lean_parser


def uninstall() -> None:
    """Back to os-ken's own parser (tests)."""
    parser._MSG_PARSERS[ofp.OFPT_PACKET_IN] = _OS_KEN_PARSER
