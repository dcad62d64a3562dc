"""What a switch may send, checked before os-ken parses it: no message can hang its connection.

Why: os-ken's OpenFlow parsers walk nested length fields (``while offset < end: ... offset +=
entry.length``) and trust them.  An entry, element or action whose length is 0 does not
advance: the loop never ends, and where it appends what it parsed it takes memory without
bound (~200 MB/s measured: one 24-byte multipart reply with a group-desc entry of length 0).
The receive thread never gets back to ``recv``, so neither the handshake watchdog nor the
liveness watchdog can end it.  Any TCP peer can send such a message before HELLO, long before
it is admitted; an admitted switch that lies can send it in a dump reply.  os-ken's own
``ofproto_parser.msg`` also turns any other parse error into a logged stack trace with a hex
dump of the whole message, per message: a peer could fill the log.

`install` (called with the OpenFlow listener, like `osken_flowstats.install`) puts
`guarded_msg_parser` in front of os-ken's per-version dispatch.  It does not parse anything
itself; it walks only the length fields that os-ken's loops advance by and hands the
unchanged buffer to os-ken's parser (so `osken_flowstats` and `osken_packetin` still apply):

* OpenFlow 1.3 messages of the types a switch sends (`ACCEPTED`); any other type (a FLOW_MOD
  sent to the controller, a queue-config reply nobody asked for) is refused.  Other versions:
  HELLO and ERROR only (a switch opens with a HELLO of its highest version; the negotiation
  is os-ken's).
* HELLO: every element at least its 4-byte header.
* MULTIPART_REPLY: only the kinds tenantnet or os-ken ask for (flows, group descriptions,
  port descriptions); its entries tile the body, each at least its fixed size; in flow
  entries the match header and the instructions, in group entries the buckets, and in both
  every action list, down to the actions nested in Nicira ``ct`` and the properties of
  ``controller2`` (os-ken parses both with the same kind of loop).  The walk must be os-ken's
  own: where os-ken advances by something other than the length field (an action or
  instruction of a fixed size is built at that size whatever its header says; a
  ``controller2`` property advances by what its type's parser read), a length that says
  otherwise is refused, or the two walks part and os-ken lands on bytes never checked.

A message that fails is not parsed: the connection is ended (`LiveDatapath.refuse_input`:
one throttled log line per source), the switch's later messages in the same read are dropped
unparsed, and the app sees the disconnect as for any other switch that went away.  One that
passes and still makes os-ken's parser raise (a field it asserts on) is dropped with one
throttled line (`LiveDatapath.drop_input`), instead of os-ken's stack trace and hex dump per
message; the connection stays (a foreign flow os-ken cannot parse must not make every read
of the switch's flows reconnect it).
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken import exception as ofproto_exception
from os_ken.ofproto import nicira_ext, ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

ACCEPTED = frozenset(
    {
        ofp.OFPT_HELLO,
        ofp.OFPT_ERROR,
        ofp.OFPT_ECHO_REQUEST,
        ofp.OFPT_ECHO_REPLY,
        ofp.OFPT_EXPERIMENTER,
        ofp.OFPT_FEATURES_REPLY,
        ofp.OFPT_GET_CONFIG_REPLY,
        ofp.OFPT_PACKET_IN,
        ofp.OFPT_FLOW_REMOVED,
        ofp.OFPT_PORT_STATUS,
        ofp.OFPT_MULTIPART_REPLY,
        ofp.OFPT_BARRIER_REPLY,
        ofp.OFPT_ROLE_REPLY,
        ofp.OFPT_GET_ASYNC_REPLY,
    }
)
"""The OpenFlow 1.3 message types a switch sends to its controller."""

MULTIPART_KINDS = frozenset({ofp.OFPMP_FLOW, ofp.OFPMP_GROUP_DESC, ofp.OFPMP_PORT_DESC})
"""The dumps asked for: flows and groups (the read-back), ports (os-ken's handshake)."""

_HEADER = struct.Struct("!BBHI")
_TLV = struct.Struct("!HH")  # type and length: hello elements, actions, instructions, props
_U16 = struct.Struct("!H")
_NX_HEADER = struct.Struct("!HHIH")  # type, length, experimenter, subtype
_ACTION_MIN = 8
_NX_HEADER_SIZE = _NX_HEADER.size
_INSTRUCTION_ACTIONS = (ofp.OFPIT_WRITE_ACTIONS, ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_CLEAR_ACTIONS)
_MAX_NESTING = 4  # ct(exec(...)) holds set-fields only; deeper is refused, not walked
# Actions os-ken advances over by the length in their header; every other action class it
# parses into an object of its fixed size (``cls_action_len``) and advances by that, whatever
# the header says: a header that says more made os-ken's walk and this one part ways.
_ACTIONS_SIZED_BY_HEADER = frozenset({ofp.OFPAT_SET_FIELD, ofp.OFPAT_EXPERIMENTER})
# The same for instructions: os-ken builds these at their fixed size.
_INSTRUCTION_SIZES = {
    ofp.OFPIT_GOTO_TABLE: ofp.OFP_INSTRUCTION_GOTO_TABLE_SIZE,
    ofp.OFPIT_WRITE_METADATA: ofp.OFP_INSTRUCTION_WRITE_METADATA_SIZE,
    ofp.OFPIT_METER: ofp.OFP_INSTRUCTION_METER_SIZE,
}


# Where os-ken's ``NXActionCT`` parser starts its nested actions and ``NXActionController2``
# its properties, counted from the action's start (from os-ken's own formats).
_CT_ACTIONS_AT = _NX_HEADER_SIZE + struct.calcsize(parser.NXActionCT._fmt_str)
_CONTROLLER2_PROPS_AT = _NX_HEADER_SIZE + 6


class Malformed(ValueError):
    """A message os-ken's parser would loop on, or one a switch does not send."""


def check(version: int, msg_type: int, buf: bytes | bytearray, msg_len: int) -> None:
    """Raise `Malformed` unless os-ken's parser can walk this message to its end."""
    end = min(msg_len, len(buf))
    if version != ofp.OFP_VERSION:
        if msg_type not in (ofp.OFPT_HELLO, ofp.OFPT_ERROR):
            raise Malformed(f"OpenFlow version {version:#x} message of type {msg_type}")
    elif msg_type not in ACCEPTED:
        raise Malformed(f"a message of type {msg_type}, which switches do not send")
    if msg_type == ofp.OFPT_HELLO:
        _tlvs(buf, ofp.OFP_HELLO_HEADER_SIZE, end, 4, "hello element")
    elif msg_type == ofp.OFPT_MULTIPART_REPLY and version == ofp.OFP_VERSION:
        _multipart(buf, end)


def _multipart(buf: bytes | bytearray, end: int) -> None:
    if end < ofp.OFP_MULTIPART_REPLY_SIZE:
        raise Malformed("multipart reply shorter than its header")
    (kind,) = _U16.unpack_from(buf, ofp.OFP_HEADER_SIZE)
    if kind not in MULTIPART_KINDS:
        raise Malformed(f"multipart reply of kind {kind}, never asked for")
    at = ofp.OFP_MULTIPART_REPLY_SIZE
    while at < end:
        if kind == ofp.OFPMP_PORT_DESC:
            length = ofp.OFP_PORT_SIZE
        else:
            if end - at < 2:
                raise Malformed("multipart entry cut short")
            (length,) = _U16.unpack_from(buf, at)
        if kind == ofp.OFPMP_FLOW:
            _flow_entry(buf, at, length, end)
        elif kind == ofp.OFPMP_GROUP_DESC:
            _group_entry(buf, at, length, end)
        elif at + length > end:
            raise Malformed("port description cut short")
        at += length


def _flow_entry(buf: bytes | bytearray, at: int, length: int, end: int) -> None:
    if length < ofp.OFP_FLOW_STATS_0_SIZE + 8 or at + length > end:
        raise Malformed(f"flow entry of {length} bytes")
    entry_end = at + length
    match_at = at + ofp.OFP_FLOW_STATS_0_SIZE
    _, match_len = _TLV.unpack_from(buf, match_at)
    ins = match_at + (match_len + 7) // 8 * 8
    if match_len < 4 or ins > entry_end:
        raise Malformed(f"flow entry match of {match_len} bytes")
    while ins < entry_end:
        kind, ins_len = _tlv(buf, ins, entry_end, 8, "instruction")
        if kind in _INSTRUCTION_ACTIONS:
            _actions(buf, ins + 8, ins + ins_len, 0)
        elif kind not in _INSTRUCTION_SIZES:  # os-ken parses it to None and fails on that
            raise Malformed(f"instruction of unknown type {kind}")
        elif ins_len != _INSTRUCTION_SIZES[kind]:
            raise Malformed(f"instruction of type {kind} of {ins_len} bytes")
        ins += ins_len


def _group_entry(buf: bytes | bytearray, at: int, length: int, end: int) -> None:
    if length < ofp.OFP_GROUP_DESC_SIZE or at + length > end:
        raise Malformed(f"group entry of {length} bytes")
    entry_end = at + length
    bucket = at + ofp.OFP_GROUP_DESC_SIZE
    while bucket < entry_end:
        if entry_end - bucket < ofp.OFP_BUCKET_SIZE:
            raise Malformed("group bucket cut short")
        (bucket_len,) = _U16.unpack_from(buf, bucket)
        if bucket_len < ofp.OFP_BUCKET_SIZE or bucket + bucket_len > entry_end:
            raise Malformed(f"group bucket of {bucket_len} bytes")
        _actions(buf, bucket + ofp.OFP_BUCKET_SIZE, bucket + bucket_len, 0)
        bucket += bucket_len


def _actions(buf: bytes | bytearray, at: int, end: int, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise Malformed("actions nested too deep")
    while at < end:
        kind, length = _tlv(buf, at, end, _ACTION_MIN, "action")
        cls = parser.OFPAction._ACTION_TYPES.get(kind)
        if cls is None:  # os-ken asserts on it
            raise Malformed(f"action of unknown type {kind}")
        if kind not in _ACTIONS_SIZED_BY_HEADER and length != cls.cls_action_len:
            raise Malformed(f"action of type {kind} of {length} bytes")
        if kind == ofp.OFPAT_EXPERIMENTER and length >= _NX_HEADER_SIZE:
            _, _, vendor, subtype = _NX_HEADER.unpack_from(buf, at)
            if vendor == ofproto_common.NX_EXPERIMENTER_ID:
                if subtype == nicira_ext.NXAST_CT and length >= _CT_ACTIONS_AT:
                    _actions(buf, at + _CT_ACTIONS_AT, at + length, depth + 1)
                elif subtype == nicira_ext.NXAST_CONTROLLER2:
                    _controller2_props(buf, at + _CONTROLLER2_PROPS_AT, at + length)
        at += length


def _controller2_props(buf: bytes | bytearray, at: int, end: int) -> None:
    """``controller2``'s properties, walked as os-ken walks them: not by their length but by 4
    plus what its parser for the property's type says it read.  That is the length rounded
    up to 8 (the padding OVS adds) for every property of 4 to 8 bytes and for userdata of 5
    or more; outside that, os-ken's walk and the length part ways (a userdata of length 4
    advances 4, one of length 0 does not advance at all: its loop never ends), so such a
    property is refused."""
    while at < end:
        kind, length = _tlv(buf, at, end, 4, "controller2 property")
        if kind == nicira_ext.NXAC2PT_USERDATA:
            if length < 5:
                raise Malformed(f"controller2 userdata of {length} bytes")
        elif length > 8:
            raise Malformed(f"controller2 property of type {kind} of {length} bytes")
        step = (length + 7) // 8 * 8
        if at + step > end:
            raise Malformed("controller2 property cut short")
        at += step


def _tlv(buf: bytes | bytearray, at: int, end: int, least: int, what: str) -> tuple[int, int]:
    """The type and length of the element at ``at``, which must fit before ``end``."""
    if end - at < 4:
        raise Malformed(f"{what} cut short")
    kind, length = _TLV.unpack_from(buf, at)
    if length < least or at + length > end:
        raise Malformed(f"{what} of {length} bytes")
    return kind, length


def _tlvs(buf: bytes | bytearray, at: int, end: int, least: int, what: str) -> None:
    """Elements that advance by their own length (os-ken reads the rest of each)."""
    while at < end:
        if end - at < 4:
            return  # os-ken's loops stop at a short tail or fail on it: either ends
        _, length = _TLV.unpack_from(buf, at)
        if length < least:
            raise Malformed(f"{what} of {length} bytes")
        at += length


def guarded_msg_parser(parse: Any) -> Any:
    """os-ken's per-version message parser ``parse``, behind `check`."""

    def guarded(
        datapath: Any, version: int, msg_type: int, msg_len: int, xid: int, buf: Any
    ) -> Any:
        if getattr(datapath, "end_reason", ""):
            return None  # its connection is ending: the rest of what it sent is not read
        try:
            check(version, msg_type, buf, msg_len)
        except (Malformed, struct.error) as exc:
            refuse = getattr(datapath, "refuse_input", None)
            if refuse is not None:
                refuse(f"malformed OpenFlow message: {exc}")
            return None
        try:
            return parse(datapath, version, msg_type, msg_len, xid, buf)
        except ofproto_exception.OFPTruncatedMessage:
            raise  # os-ken's own handling (`ofproto_parser.msg`)
        except Exception as exc:
            # What the walk does not cover (a field os-ken asserts on, an OXM of length 0):
            # os-ken logged each with a stack trace and a hex dump of the whole message, so a
            # peer could fill the log; one throttled line instead (`LiveDatapath.drop_input`).
            # The connection stays: its lengths walk, so nothing after it is misread.
            drop = getattr(datapath, "drop_input", None)
            if drop is not None:
                drop(f"OpenFlow message os-ken cannot parse: {type(exc).__name__}: {exc}"[:300])
            return None

    guarded.guards = parse  # type: ignore[attr-defined]
    return guarded


def install() -> None:
    """Guard every OpenFlow version's parser os-ken loaded (idempotent)."""
    table = ofproto_parser._MSG_PARSERS
    for version, parse in list(table.items()):
        if not hasattr(parse, "guards"):
            table[version] = guarded_msg_parser(parse)


def uninstall() -> None:
    """Back to os-ken's own parsers (tests)."""
    table = ofproto_parser._MSG_PARSERS
    for version, parse in list(table.items()):
        table[version] = getattr(parse, "guards", parse)
