"""Translation between `flows.model` values and os-ken OpenFlow 1.3 messages, both ways.

The reconciler compares what it wants with what a switch reports by set arithmetic, so a rule
decoded from a flow-stats reply must be *equal* to the rule that produced the flow-mod.  Decoding
therefore canonicalises exactly like `flows.model` does: match pairs sorted by field name (os-ken
already normalises MAC/IP spelling when parsing), instructions in OpenFlow order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from os_ken.ofproto import nicira_ext, ofproto_common, ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from flows.model import (
    Action,
    Apply,
    Conjunction,
    Ct,
    DecTtl,
    GotoTable,
    GroupEntry,
    Instruction,
    Move,
    Output,
    OutputReg,
    Resubmit,
    Rule,
    SetField,
    ToGroup,
    WriteMetadata,
    move_low_bits,
)

_INSTRUCTION_ORDER = {Apply: 0, WriteMetadata: 1, GotoTable: 2}

# Nicira action encodings tenantnet uses (the only ones it decodes back to model values; any
# other bit pattern decodes to a foreign action, so the diff replaces the flow).
_ZONE_BITS = nicira_ext.ofs_nbits(0, 15)  # ct(zone=regN[0..15])
_REG_BITS = nicira_ext.ofs_nbits(0, 31)  # output:regN[0..31]
_CT_NO_RECIRC = 0xFF  # NX_CT_RECIRC_NONE: ct() without table= continues with the next action
_NX_IN_PORT = 0xFFF8  # OFPP_IN_PORT in the 16-bit port space of Nicira actions: resubmit(,T)

# Bit widths of the OXM fields, for moves (Move).
_FIELD_BITS = {
    f.name: f.type.size * 8 for f in ofp.oxm_types if isinstance(getattr(f.type, "size", None), int)
}

# os-ken orders OXM fields by field number when it builds a match from keyword arguments.
_OXM_ORDER: dict[str, float] = {
    f.name: (f.num[0] if isinstance(f.num, tuple) else f.num) for f in ofp.oxm_types
}
# A Nicira field whose prerequisite is an OpenFlow field must follow it on the wire (OVS checks
# prerequisites in order: OFPBMC_BAD_PREREQ otherwise), but its number sorts it first.
_OXM_ORDER["nw_ttl"] = _OXM_ORDER["eth_type"] + 0.5  # the router's TTL-1 rule (flows.routing)


# ------------------------------------------------------------------------------------- encoding


def encode_actions(actions: Iterable[Action]) -> list[Any]:
    out: list[Any] = []
    for act in actions:
        if isinstance(act, Output):
            out.append(parser.OFPActionOutput(act.port, ofp.OFPCML_NO_BUFFER))
        elif isinstance(act, SetField):
            out.append(parser.OFPActionSetField(**{act.field: act.value}))
        elif isinstance(act, ToGroup):
            out.append(parser.OFPActionGroup(act.group_id))
        elif isinstance(act, OutputReg):
            out.append(parser.NXActionOutputReg(_REG_BITS, act.reg, 0))
        elif isinstance(act, Resubmit):
            out.append(parser.NXActionResubmitTable(_NX_IN_PORT, act.table))
        elif isinstance(act, Conjunction):
            # the wire counts clauses from 0, ovs-ofctl's text (and the model) from 1
            out.append(parser.NXActionConjunction(act.clause - 1, act.n_clauses, act.conj_id))
        elif isinstance(act, Ct):
            out.append(_encode_ct(act))
        elif isinstance(act, Move):
            out.append(_encode_move(act))
        elif isinstance(act, DecTtl):
            out.append(parser.OFPActionDecNwTtl())
        else:  # pragma: no cover - the model has no other action
            raise TypeError(f"unknown action {act!r}")
    return out


def _encode_ct(act: Ct) -> Any:
    flags = nicira_ext.NX_CT_F_COMMIT if act.commit else 0
    zone_src, zone = (act.zone_reg, _ZONE_BITS) if act.zone_reg else ("", act.zone)
    table = _CT_NO_RECIRC if act.table is None else act.table
    nested = [] if act.mark is None else [parser.OFPActionSetField(ct_mark=act.mark)]
    return parser.NXActionCT(flags, zone_src, zone, table, 0, nested)


def _move_bits(act: Move) -> int | None:
    """n_bits of ``move:src[0..n-1]->dst[]`` for a move tenantnet writes (dst's whole width:
    the whole of src when the widths match, its low bits when src is wider and `flows.model`
    knows both widths, so that the trace and the readable text truncate where the switch does);
    None for any other move (unknown fields, a narrower source)."""
    src, dst = _FIELD_BITS.get(act.src), _FIELD_BITS.get(act.dst)
    if src is None or dst is None or src < dst:
        return None
    if src > dst and move_low_bits(act) != dst:
        return None
    return dst


def _encode_move(act: Move) -> Any:
    bits = _move_bits(act)
    if bits is None:
        raise ValueError(
            f"move {act.src}->{act.dst}: fields unknown, or a source narrower than its "
            "destination, or different widths flows.model.MOVE_FIELD_BITS does not list"
        )
    return parser.NXActionRegMove(act.src, act.dst, bits, 0, 0)


def _oxm_name(name: str) -> str:
    """OVS reports Ethernet and ARP fields of a move by their NXM headers, which os-ken names
    ``eth_src_nxm``, ``arp_spa_nxm``...; the model names the field once, by its OXM name."""
    base = name.removesuffix("_nxm")
    return base if base != name and _FIELD_BITS.get(base) == _FIELD_BITS.get(name) else name


def _decode_move(act: Any) -> Action:
    """The inverse of `_encode_move`: only a move it would have written bit for bit (offsets 0,
    n_bits = dst's width) is a Move; any other bit range is a foreign action, since decoding it
    to the desired Move would hide a flow that differs on the switch from the reconciler."""
    move = Move(_oxm_name(act.src_field), _oxm_name(act.dst_field))
    if act.src_ofs != 0 or act.dst_ofs != 0 or act.n_bits != _move_bits(move):
        return SetField("__foreign__", repr(act))
    return move


def _decode_ct(act: Any) -> Action:
    nested = list(act.actions)
    mark: int | None = None
    if (
        len(nested) == 1
        and isinstance(nested[0], parser.OFPActionSetField)
        and (nested[0].key == "ct_mark")
    ):
        mark = nested[0].value
    elif nested or act.alg or act.flags & ~nicira_ext.NX_CT_F_COMMIT:
        return SetField("__foreign__", repr(act))
    if act.zone_src:
        if act.zone_ofs_nbits != _ZONE_BITS:
            return SetField("__foreign__", repr(act))
        zone, zone_reg = 0, act.zone_src
    else:
        zone, zone_reg = act.zone_ofs_nbits, None
    table = None if act.recirc_table == _CT_NO_RECIRC else act.recirc_table
    commit = bool(act.flags & nicira_ext.NX_CT_F_COMMIT)
    return Ct(commit=commit, zone=zone, zone_reg=zone_reg, table=table, mark=mark)


def encode_instructions(instructions: Iterable[Instruction]) -> list[Any]:
    out: list[Any] = []
    for ins in instructions:
        if isinstance(ins, Apply):
            out.append(
                parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, encode_actions(ins.actions))
            )
        elif isinstance(ins, WriteMetadata):
            out.append(parser.OFPInstructionWriteMetadata(ins.value, ins.mask))
        elif isinstance(ins, GotoTable):
            out.append(parser.OFPInstructionGotoTable(ins.table))
        else:  # pragma: no cover
            raise TypeError(f"unknown instruction {ins!r}")
    return out


def encode_match(match: Iterable[tuple[str, Any]]) -> Any:
    """An OFPMatch with the fields already in os-ken's canonical order.

    ``OFPMatch(**fields)`` normalises every value by converting it to wire form and back (for a
    MAC that is three netaddr parses and two formats) before `serialize` converts it once more;
    profiling a bulk create showed that round trip as half of the data plane's CPU.  Our rules
    are canonical already (`flows.model.match` sorts and normalises), so the fields are handed
    over in os-ken's order (``_ordered_fields``, what os-ken itself uses when it rebuilds a
    match) and converted once, when serialised.  The bytes are identical; a unit test pins
    that.  Masked values (tuples, CIDR strings) keep os-ken's normalising path, which also
    applies the mask to the value.
    """
    fields = list(match)
    if any(isinstance(v, tuple) or (isinstance(v, str) and "/" in v) for _k, v in fields):
        return parser.OFPMatch(**dict(fields))
    try:
        fields.sort(key=lambda kv: _OXM_ORDER[kv[0]])
    except KeyError:  # a field os-ken does not know: let it raise its own error
        return parser.OFPMatch(**dict(fields))
    return parser.OFPMatch(_ordered_fields=fields)


@lru_cache(maxsize=16384)
def _shared_instructions(instructions: tuple[Instruction, ...]) -> tuple[Any, ...]:
    """os-ken instruction objects per distinct instruction tuple.  Most rules share theirs
    (every port-security rule goes to the same table, a port's two delivery rules output to
    the same port); os-ken only reads them when serialising, so one object serves all."""
    return tuple(encode_instructions(instructions))


def flow_add(dp: Any, rule: Rule, hard_timeout: int = 0, instructions: bool = True) -> Any:
    """OFPFC_ADD: creates the flow, or replaces one with the same table/priority/match.  A
    ``hard_timeout`` (seconds, 0: none) makes the switch remove it by itself (transient rules
    only, `flows.tables.TRANSIENT_KINDS`).  ``instructions=False``: without them (for
    `_flow_mod_body`, which appends them serialised)."""
    return parser.OFPFlowMod(
        dp,
        cookie=rule.cookie,
        table_id=rule.table,
        command=ofp.OFPFC_ADD,
        hard_timeout=hard_timeout,
        priority=rule.priority,
        match=encode_match(rule.match),
        instructions=list(_shared_instructions(rule.instructions)) if instructions else [],
    )


def flow_delete_strict(dp: Any, rule: Rule, cookie_mask: int) -> Any:
    """OFPFC_DELETE_STRICT limited to our cookie, so a foreign flow with the same key survives."""
    return parser.OFPFlowMod(
        dp,
        cookie=rule.cookie,
        cookie_mask=cookie_mask,
        table_id=rule.table,
        command=ofp.OFPFC_DELETE_STRICT,
        priority=rule.priority,
        match=encode_match(rule.match),
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
    )


ENCODED_RULES = 16384
"""Flow-mod bodies remembered (`flow_add_encoded`): a few hundred bytes each."""


class EncodedFlowMod(ofproto_parser.MsgBase):
    """A flow-mod whose body os-ken serialised earlier (`flow_add_encoded`): os-ken writes
    its header (xid, length) when it is serialised, alone or inside a bundle-add, as for any
    message; ``rule`` is kept for whoever inspects what was sent."""

    cls_msg_type = ofp.OFPT_FLOW_MOD

    def __init__(self, dp: Any, body: bytes, rule: Rule) -> None:
        super().__init__(dp)
        self.body = body
        self.rule = rule

    def _serialize_body(self) -> None:
        self.buf += self.body


_BODY_DP = ofproto_protocol.ProtocolDesc(version=ofp.OFP_VERSION)


@lru_cache(maxsize=ENCODED_RULES)
def _flow_mod_body(rule: Rule, cookie_mask: int | None) -> bytes:
    """os-ken's serialisation of the rule's OFPFC_ADD (``cookie_mask`` None) or strict delete,
    without its 8-byte header: the same for every switch and every xid.

    An add is serialised without its instructions, which follow from `_instruction_bytes`:
    os-ken writes them right after the (padded) match, so the bytes are the same, and a new
    port's rules share a few instruction lists (its register and the next table) that are
    then serialised once, not once per rule (~20 of a rule's ~70 us)."""
    if cookie_mask is not None:
        msg = flow_delete_strict(_BODY_DP, rule, cookie_mask)
        tail = b""
    else:
        msg = flow_add(_BODY_DP, rule, instructions=False)
        tail = _instruction_bytes(rule.instructions)
    msg.xid = 0
    msg.serialize()
    return bytes(msg.buf[ofp.OFP_HEADER_SIZE:]) + tail


@lru_cache(maxsize=ENCODED_RULES)
def _instruction_bytes(instructions: tuple[Instruction, ...]) -> bytes:
    """os-ken's serialisation of an instruction list, as it ends a flow-mod."""
    buf = bytearray()
    for ins in _shared_instructions(instructions):
        ins.serialize(buf, len(buf))
    return bytes(buf)


def flow_add_encoded(dp: Any, rule: Rule) -> Any:
    """`flow_add`, its body serialised once per distinct rule (bounded LRU): a router's and a
    security group's flows are the same on every host that gets them (an interface added
    sends its routes, echo answers and re-scoped member clauses to each of the router's
    hosts), and os-ken's build and serialisation of a flow-mod (~50-100 us) were most of a
    data-plane step that sends them.  The bytes are os-ken's own (a unit test compares)."""
    return EncodedFlowMod(dp, _flow_mod_body(rule, None), rule)


def flow_delete_strict_encoded(dp: Any, rule: Rule, cookie_mask: int) -> Any:
    """`flow_delete_strict`, its body serialised once per distinct rule (as `flow_add_encoded`)."""
    return EncodedFlowMod(dp, _flow_mod_body(rule, cookie_mask), rule)


def delete_all_ours(dp: Any, cookie: int, cookie_mask: int) -> Any:
    """Non-strict delete of every flow whose cookie is ours (host removal)."""
    return parser.OFPFlowMod(
        dp,
        cookie=cookie,
        cookie_mask=cookie_mask,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(),
    )


def group_mod(dp: Any, group: GroupEntry, command: int) -> Any:
    buckets = [parser.OFPBucket(actions=encode_actions(b)) for b in group.buckets]
    return parser.OFPGroupMod(dp, command, ofp.OFPGT_ALL, group.group_id, buckets)


def group_add(dp: Any, group: GroupEntry) -> Any:
    return group_mod(dp, group, ofp.OFPGC_ADD)


def group_modify(dp: Any, group: GroupEntry) -> Any:
    return group_mod(dp, group, ofp.OFPGC_MODIFY)


ENCODED_BUCKETS = 16384
"""Group buckets remembered (`group_mod_encoded`): a few dozen bytes each."""


@lru_cache(maxsize=ENCODED_BUCKETS)
def _bucket_bytes(actions: tuple[Action, ...]) -> bytes:
    """os-ken's serialisation of one bucket of a group of type ALL: the same in every group
    that has it, on every switch."""
    bucket = parser.OFPBucket(actions=encode_actions(actions))
    buf = bytearray()
    bucket.serialize(buf, 0)
    return bytes(buf.ljust(bucket.len, b"\0"))


class EncodedGroupMod(parser.OFPGroupMod):
    """A group-mod whose buckets os-ken serialised earlier (`group_mod_encoded`): os-ken
    writes the header and the group's fixed part, the buckets are appended as remembered.
    ``group`` is kept for whoever inspects what was sent."""

    def __init__(self, dp: Any, command: int, group: GroupEntry) -> None:
        super().__init__(dp, command, ofp.OFPGT_ALL, group.group_id, [])
        self.group = group

    def _serialize_body(self) -> None:
        super()._serialize_body()
        self.buf += b"".join(_bucket_bytes(b) for b in self.group.buckets)


def group_mod_encoded(dp: Any, group: GroupEntry, command: int) -> Any:
    """`group_mod`, each bucket serialised once per distinct bucket (bounded LRU).

    A flood group has one bucket per local port of its network (OpenFlow 1.3 has no "add
    bucket": every port plugged or unplugged re-sends the group whole), so building and
    serialising its buckets with os-ken (~30 us each) made a port's own host cost O(ports of
    its network there) - most of that host's encoding on a busy host.  A port's bucket is the
    same until it changes, so a group-mod now costs one serialisation of the new bucket and
    the copy of the others.  The bytes are os-ken's own (a unit test compares)."""
    return EncodedGroupMod(dp, command, group)


def group_add_encoded(dp: Any, group: GroupEntry) -> Any:
    return group_mod_encoded(dp, group, ofp.OFPGC_ADD)


def group_modify_encoded(dp: Any, group: GroupEntry) -> Any:
    return group_mod_encoded(dp, group, ofp.OFPGC_MODIFY)


def group_delete(dp: Any, group_id: int) -> Any:
    return parser.OFPGroupMod(dp, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, group_id, [])


def packet_out(dp: Any, port: int, data: bytes) -> Any:
    """Send ``data`` out of ``port`` (a reply to a packet-in, back to the port it came from).
    ``in_port=CONTROLLER``: the frame enters no table, so nothing but this action applies."""
    return parser.OFPPacketOut(
        dp,
        buffer_id=ofp.OFP_NO_BUFFER,
        in_port=ofp.OFPP_CONTROLLER,
        actions=[parser.OFPActionOutput(port, 0)],
        data=data,
    )


NXT_CT_FLUSH_ZONE = 29
"""Nicira's "flush this conntrack zone" message; os-ken 4.2.2 has no class for it."""
_NX_ZONE_ID = struct.Struct("!6xH")  # struct nx_zone_id: 6 zero bytes, the zone (OVS nicira-ext.h)


def ct_flush_zone(dp: Any, zone: int) -> Any:
    """``NXT_CT_FLUSH_ZONE``: drop every conntrack entry of ``zone`` (a deleted port's).  Sent
    as os-ken's generic experimenter message; only its 8-byte body is laid out here."""
    if not 0 <= zone <= 0xFFFF:
        raise ValueError(f"conntrack zone {zone} outside 0..65535")
    return parser.OFPExperimenter(
        dp,
        experimenter=ofproto_common.NX_EXPERIMENTER_ID,
        exp_type=NXT_CT_FLUSH_ZONE,
        data=_NX_ZONE_ID.pack(zone),
    )


def controller_meter(dp: Any, rate_pps: int, burst: int) -> list[Any]:
    """The host's packet-in budget: OpenFlow's ``OFPM_CONTROLLER`` meter (every packet the
    switch sends to a controller passes it), ``rate_pps`` packets per second with bursts of
    ``burst``, the excess dropped by the switch.  Delete then add, so that sending it to a
    switch that has one (any one: a restart, another rate) is idempotent."""
    band = parser.OFPMeterBandDrop(rate=rate_pps, burst_size=burst)
    return [
        parser.OFPMeterMod(dp, command=ofp.OFPMC_DELETE, flags=0, meter_id=ofp.OFPM_CONTROLLER),
        parser.OFPMeterMod(
            dp,
            command=ofp.OFPMC_ADD,
            flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
            meter_id=ofp.OFPM_CONTROLLER,
            bands=[band],
        ),
    ]


def flow_dump_request(dp: Any, cookie: int, cookie_mask: int) -> Any:
    return parser.OFPFlowStatsRequest(
        dp,
        0,
        ofp.OFPTT_ALL,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
        cookie,
        cookie_mask,
        parser.OFPMatch(),
    )


def group_dump_request(dp: Any) -> Any:
    return parser.OFPGroupDescStatsRequest(dp, 0)


# ------------------------------------------------------------------------------------- decoding


def role_request(dp: Any, master: bool, generation: int) -> Any:
    """OFPT_ROLE_REQUEST: MASTER or SLAVE with a generation id.  The switch refuses a request
    whose id is older than the newest it has seen (OFPRRFC_STALE, compared as a signed 64-bit
    difference), and a new MASTER makes every other master connection a slave: how a stale
    controller is fenced (docs/ha.md)."""
    role = ofp.OFPCR_ROLE_MASTER if master else ofp.OFPCR_ROLE_SLAVE
    return parser.OFPRoleRequest(dp, role, generation & 0xFFFFFFFFFFFFFFFF)


def equal_role_request(dp: Any) -> Any:
    """OFPT_ROLE_REQUEST: EQUAL, which the switch grants whatever generation it has seen (no
    generation id is compared for it): how a master that may no longer act, and cannot read a
    generation newer than the switch's, stops being listed as the switch's master
    (`controller.dataplane.reconciler.DataPlane._apply_role_refused`)."""
    return parser.OFPRoleRequest(dp, ofp.OFPCR_ROLE_EQUAL, 0)


def decode_actions(actions: Iterable[Any]) -> tuple[Action, ...]:
    out: list[Action] = []
    for act in actions:
        if isinstance(act, parser.OFPActionOutput):
            out.append(Output(act.port))
        elif isinstance(act, parser.OFPActionSetField):
            out.append(SetField(act.key, act.value))
        elif isinstance(act, parser.OFPActionGroup):
            out.append(ToGroup(act.group_id))
        elif isinstance(act, parser.NXActionConjunction):
            out.append(Conjunction(act.id, act.clause + 1, act.n_clauses))
        elif isinstance(act, parser.NXActionCT):
            out.append(_decode_ct(act))
        elif isinstance(act, parser.NXActionOutputReg) and act.ofs_nbits == _REG_BITS:
            out.append(OutputReg(act.src))
        elif isinstance(act, parser.NXActionResubmitTable) and act.in_port == _NX_IN_PORT:
            out.append(Resubmit(act.table_id))
        elif isinstance(act, parser.NXActionRegMove):
            out.append(_decode_move(act))
        elif isinstance(act, parser.OFPActionDecNwTtl):
            out.append(DecTtl())
        else:
            # An action tenantnet never writes: keep something that can never equal a desired
            # action, so the diff replaces the flow.
            out.append(SetField("__foreign__", repr(act)))
    return tuple(out)


def decode_instructions(instructions: Iterable[Any]) -> tuple[Instruction, ...]:
    out: list[Instruction] = []
    for ins in instructions:
        if isinstance(ins, parser.OFPInstructionActions):
            if ins.type == ofp.OFPIT_APPLY_ACTIONS:
                out.append(Apply(decode_actions(ins.actions)))
            else:
                out.append(Apply((SetField("__foreign__", f"instruction {ins.type}"),)))
        elif isinstance(ins, parser.OFPInstructionWriteMetadata):
            out.append(WriteMetadata(ins.metadata, ins.metadata_mask))
        elif isinstance(ins, parser.OFPInstructionGotoTable):
            out.append(GotoTable(ins.table_id))
        else:
            out.append(Apply((SetField("__foreign__", repr(ins)),)))
    out.sort(key=lambda i: _INSTRUCTION_ORDER.get(type(i), 9))
    return tuple(out)


def decode_flow_stats(stat: Any) -> Rule:
    """One OFPFlowStats entry -> Rule (the inverse of `flow_add`)."""
    return Rule(
        table=stat.table_id,
        priority=stat.priority,
        match=tuple(sorted(stat.match.items())),
        instructions=decode_instructions(stat.instructions),
        cookie=stat.cookie,
    )


def decode_group_desc(stat: Any) -> GroupEntry:
    return GroupEntry(
        group_id=stat.group_id,
        buckets=tuple(decode_actions(b.actions) for b in stat.buckets),
    )
