"""Rules and groups as one line of text an operator can read (ovs-ofctl's spelling, roughly).

Used where a switch's answer has to be shown next to what it answers: an OpenFlow error reply
names the flow-mod it rejected (southbound/ofp_app.py), so the log says *which* rule of which
table failed instead of a type/code pair and a hex dump of the message.
"""

from __future__ import annotations

from typing import Any

from flows.model import (
    Action,
    Apply,
    Conjunction,
    Ct,
    DecTtl,
    GotoTable,
    GroupEntry,
    Instruction,
    Match,
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


def rule_text(rule: Rule) -> str:
    """``table=3 priority=100 cookie=0x... match=in_port=4,eth_dst=... actions=output:2``."""
    return (
        f"table={rule.table} priority={rule.priority} cookie={rule.cookie:#x} "
        f"match={match_text(rule.match)} actions={instructions_text(rule.instructions)}"
    )


def group_text(group: GroupEntry) -> str:
    """``group_id=7 type=all buckets=[output:3][set_field:...->tun_ipv4_dst,output:1]``."""
    buckets = "".join(f"[{actions_text(b)}]" for b in group.buckets)
    return f"group_id={group.group_id} type=all buckets={buckets or '(none)'}"


def match_text(match: Match) -> str:
    return ",".join(f"{name}={_value(value)}" for name, value in match) or "*"


def instructions_text(instructions: tuple[Instruction, ...]) -> str:
    parts: list[str] = []
    for ins in instructions:
        if isinstance(ins, Apply):
            parts.append(actions_text(ins.actions))
        elif isinstance(ins, WriteMetadata):
            parts.append(f"write_metadata:{ins.value:#x}/{ins.mask:#x}")
        elif isinstance(ins, GotoTable):
            parts.append(f"goto_table:{ins.table}")
    return ",".join(p for p in parts if p) or "drop"


def actions_text(actions: tuple[Action, ...]) -> str:
    parts: list[str] = []
    for act in actions:
        if isinstance(act, Output):
            parts.append(f"output:{act.port}")
        elif isinstance(act, SetField):
            parts.append(f"set_field:{_value(act.value)}->{act.field}")
        elif isinstance(act, ToGroup):
            parts.append(f"group:{act.group_id}")
        elif isinstance(act, OutputReg):
            parts.append(f"output:{act.reg}")
        elif isinstance(act, Resubmit):
            parts.append(f"resubmit(,{act.table})")
        elif isinstance(act, Conjunction):
            parts.append(f"conjunction({act.conj_id},{act.clause}/{act.n_clauses})")
        elif isinstance(act, Ct):
            parts.append(_ct_text(act))
        elif isinstance(act, Move):
            n_bits = move_low_bits(act)
            src = f"{act.src}[]" if n_bits is None else f"{act.src}[0..{n_bits - 1}]"
            parts.append(f"move:{src}->{act.dst}[]")
        elif isinstance(act, DecTtl):
            parts.append("dec_ttl")
    return ",".join(parts)


def _ct_text(act: Ct) -> str:
    args = ["commit"] if act.commit else []
    args.append(f"zone={act.zone_reg}[0..15]" if act.zone_reg else f"zone={act.zone}")
    if act.table is not None:
        args.append(f"table={act.table}")
    if act.mark is not None:
        args.append(f"exec(set_field:{act.mark:#x}->ct_mark)")
    return f"ct({','.join(args)})"


def _value(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:  # (value, mask): bits, so hex
        return "/".join(f"{v:#x}" if isinstance(v, int) else str(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return f"{value:#x}"
    return str(value)
