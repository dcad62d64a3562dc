"""A fake OpenFlow 1.3 switch that only ever sees bytes, for unit tests of the data plane.

A fake that stores the controller's own `Rule` objects and hands them back proves nothing about
the codec: a rule the controller encodes one way and decodes another would still compare equal.
This switch sits behind the wire instead.  Every message the controller would send is built with
`controller.southbound.ofp_codec` and serialised by os-ken; the switch parses it back with os-ken
(as a switch would, rejecting what does not parse), keeps each flow's match and instructions as
the bytes it received, and answers a dump the way OVS does: as flow-stats and group-desc entries,
which the controller decodes with os-ken's stats parsers and `ofp_codec.decode_*`.  The unit
tests therefore cover the same encode/decode path as a real switch session.

Flow-mod semantics follow OpenFlow 1.3 as far as tenantnet uses them: ADD replaces the flow with
the same table, priority and match; DELETE_STRICT removes that flow if its cookie matches under the
mask; a non-strict DELETE with an empty match removes every flow whose cookie matches.
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from os_ken.ofproto.ofproto_protocol import ProtocolDesc

from controller.southbound import ofp_codec as codec
from flows.diff import FlowDiff
from flows.model import Slice

DP = ProtocolDesc(version=ofp.OFP_VERSION)
FULL_MASK = 0xFFFFFFFFFFFFFFFF

FlowKey = tuple[int, int, tuple[tuple[str, Any], ...]]  # table, priority, match as parsed


def diff_messages(diff: FlowDiff) -> list[Any]:
    """The messages of one diff, in the order `TenantnetOfpApp.apply` sends them."""
    return [
        *(codec.group_add(DP, g) for g in diff.add_groups),
        *(codec.group_modify(DP, g) for g in diff.mod_groups),
        *(codec.flow_add(DP, r) for r in diff.add_rules),
        *(codec.flow_delete_strict(DP, r, FULL_MASK) for r in diff.del_rules),
        *(codec.group_delete(DP, gid) for gid in diff.del_groups),
    ]


class WireSwitch:
    """One switch's flow and group tables, fed and read as OpenFlow bytes."""

    def __init__(self) -> None:
        self.flows: dict[FlowKey, tuple[int, bytes]] = {}  # -> cookie, flow-stats entry
        self.groups: dict[int, bytes] = {}  # group id -> group-desc entry
        self.received = 0

    # ------------------------------------------------------------------------ receiving

    def receive(self, msg: Any) -> None:
        """Serialise ``msg`` as the controller's session would, and apply what arrives."""
        msg.serialize()
        buf = bytes(msg.buf)
        version, msg_type, msg_len, xid = ofproto_parser.header(buf)
        assert version == ofp.OFP_VERSION and msg_len == len(buf), (version, msg_len, len(buf))
        self.received += 1
        if msg_type == ofp.OFPT_FLOW_MOD:
            self._flow_mod(ofproto_parser.msg(DP, version, msg_type, msg_len, xid, buf), buf)
        elif msg_type == ofp.OFPT_GROUP_MOD:
            self._group_mod(buf)
        else:
            raise AssertionError(f"unexpected message type {msg_type}")

    def _flow_mod(self, fm: Any, buf: bytes) -> None:
        key: FlowKey = (fm.table_id, fm.priority, tuple(sorted(fm.match.items())))
        if fm.command == ofp.OFPFC_ADD:
            # A flow-stats entry: os-ken's fixed part, then match and instructions as received.
            body = buf[ofp.OFP_FLOW_MOD_SIZE - ofp.OFP_MATCH_SIZE :]
            head = struct.pack(
                ofp.OFP_FLOW_STATS_0_PACK_STR, ofp.OFP_FLOW_STATS_0_SIZE + len(body),
                fm.table_id, 0, 0, fm.priority, fm.idle_timeout, fm.hard_timeout, fm.flags,
                fm.cookie, 0, 0,
            )  # fmt: skip
            self.flows[key] = (fm.cookie, head + body)
        elif fm.command == ofp.OFPFC_DELETE_STRICT:
            held = self.flows.get(key)
            if held is not None and held[0] & fm.cookie_mask == fm.cookie & fm.cookie_mask:
                del self.flows[key]
        elif fm.command == ofp.OFPFC_DELETE:
            assert not fm.match.items() and fm.table_id == ofp.OFPTT_ALL, fm
            for k, (cookie, _) in list(self.flows.items()):
                if cookie & fm.cookie_mask == fm.cookie & fm.cookie_mask:
                    del self.flows[k]
        else:
            raise AssertionError(f"unexpected flow-mod command {fm.command}")

    def _group_mod(self, buf: bytes) -> None:
        # os-ken parses no OFPGroupMod (switches receive those), so the fixed part is unpacked
        # with os-ken's own layout and the buckets with its bucket parser.
        command, type_, group_id = struct.unpack_from(
            ofp.OFP_GROUP_MOD_PACK_STR, buf, ofp.OFP_HEADER_SIZE
        )
        assert type_ == ofp.OFPGT_ALL, type_
        raw = buf[ofp.OFP_GROUP_MOD_SIZE :]
        offset = 0
        while offset < len(raw):
            offset += parser.OFPBucket.parser(raw, offset).len
        if command == ofp.OFPGC_DELETE:
            self.groups.pop(group_id, None)
            return
        exists = group_id in self.groups
        assert exists == (command == ofp.OFPGC_MODIFY), (command, group_id, exists)
        head = struct.pack(
            ofp.OFP_GROUP_DESC_STATS_PACK_STR, ofp.OFP_GROUP_DESC_STATS_SIZE + len(raw), type_,
            group_id,
        )  # fmt: skip
        self.groups[group_id] = head + raw

    # ------------------------------------------------------------------------ dumping

    def dump(self, cookie: int = 0, cookie_mask: int = 0) -> Slice:
        """What the controller reads back: each entry parsed by os-ken's stats parsers and
        decoded by `ofp_codec`, as `TenantnetOfpApp` does with a switch's replies."""
        rules = frozenset(
            codec.decode_flow_stats(parser.OFPFlowStats.parser(entry, 0))
            for c, entry in self.flows.values()
            if c & cookie_mask == cookie & cookie_mask
        )
        groups = frozenset(
            codec.decode_group_desc(parser.OFPGroupDescStats.parser(entry, 0))
            for entry in self.groups.values()
        )
        return Slice(rules, groups)


def through_the_wire(state: Slice) -> Slice:
    """``state`` as a switch holds it after the controller installed it: sent as flow-mods and
    group-mods, read back as stats."""
    sw = WireSwitch()
    install = FlowDiff(add_rules=tuple(state.rules), add_groups=tuple(state.groups))
    for msg in diff_messages(install):
        sw.receive(msg)
    return sw.dump()
