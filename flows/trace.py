"""Walk one packet through one host's flow table, as OpenFlow 1.3 and OVS would (pure, no I/O).

The table is a :class:`~flows.model.Slice` of the project's own values: the desired state from
the compilers, or what a switch reported, decoded (`controller.southbound.ofp_codec`).  The
same evaluator answers both, so a difference between the two answers *is* drift.  The
operator's trace (`flows.trace_terms`, ``POST /tenantnet/trace``) and the tests use it as their
reference, so it is exact for what tenantnet emits and raises :class:`Unsupported` for anything
else (a foreign action read back from a switch, ``ct(table=..)`` followed by more actions...)
rather than guess.

Semantics followed (OpenFlow 1.3 plus the Nicira extensions tenantnet uses, as OVS implements
them; `tests/integration/test_trace_vs_ovs.py` compares verdicts with ``ofproto/trace``):

* a table picks its highest-priority matching flow; two ordinary flows of one priority matching
  one packet raise :class:`AmbiguousMatch` (OpenFlow leaves the choice undefined, so the
  compiler must never allow it); no match is a table miss (drop);
* conjunctive flows (only ``conjunction`` actions) never match by themselves: when, at the
  highest priority that has any, every clause ``1..n`` of a ``conj_id`` is matched by some flow,
  the table is looked up again with ``conj_id`` set (ordinary flows only), else the lookup
  continues below that priority (OVS's classifier);
* fields a packet does not carry read as 0 where OVS reads them as 0 (metadata, registers,
  tunnel and conntrack fields, ``vlan_vid`` = no VLAN); a protocol field the packet lacks never
  matches (every compiled flow carries its prerequisites);
* instructions in order: apply-actions, write-metadata (``md = md & ~mask | value & mask``),
  goto-table (forward only); an empty instruction list is a drop;
* actions: ``dec_ttl`` (a packet's ``nw_ttl``, 64 if it has none; at 0 or 1 the copy is
  dropped there, as OVS drops it, and nothing after it runs), ``set_field``, ``move`` (into a
  narrower destination only the source's low bits: ``move:metadata[0..31]->reg9[]``),
  ``output`` (an output to the ingress port is skipped unless it is ``IN_PORT``;
  ``CONTROLLER`` is a punt), ``output:reg``, ``group`` (type ALL: each bucket on its own
  copy), ``resubmit(,T)`` (the lookup and its actions, then back; changes persist);
* ``ct(..., table=T)`` freezes the packet; frozen packets are recirculated to ``T`` in the order
  they were frozen (OVS's queue), each with the next supplied conntrack state
  (``ofproto/trace --ct-next``; ``trk,new`` once the list is used up), registers and metadata
  kept; ``ct(commit)`` is recorded, it changes nothing the pipeline matches on.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import netaddr

from flows.model import (
    Action,
    Apply,
    Conjunction,
    Ct,
    DecTtl,
    GotoTable,
    GroupEntry,
    Move,
    Output,
    OutputReg,
    Resubmit,
    Rule,
    SetField,
    Slice,
    ToGroup,
    WriteMetadata,
    move_low_bits,
)

OFPP_MAX = 0xFFFFFF00
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD

MAX_RESUBMIT_DEPTH = 64  # OVS's limit on nested resubmits
MAX_RECIRCULATIONS = 64  # a packet recirculated more often than this is a loop
MAX_STEPS = 10_000  # every bucket and table visited, per packet: bounds a flood explosion

# conntrack state bits (OVS / Nicira, as flows.security_groups uses them)
CT_BITS = {"new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08, "inv": 0x10, "trk": 0x20,
           "snat": 0x40, "dnat": 0x80}  # fmt: skip
CT_TRK = CT_BITS["trk"]
CT_DEFAULT = CT_TRK | CT_BITS["new"]  # what ofproto/trace assumes when no state is left

_ZERO_DEFAULTS: dict[str, Any] = {
    "metadata": 0,
    "tunnel_id": 0,
    "tun_ipv4_src": "0.0.0.0",
    "tun_ipv4_dst": "0.0.0.0",
    "ct_state": 0,
    "ct_mark": 0,
    "ct_zone": 0,
    "conj_id": 0,
    "vlan_vid": 0,
    **{f"reg{i}": 0 for i in range(16)},
}
"""Fields OVS reads as 0 when nothing set them (a packet without a VLAN has vlan_vid 0)."""

Packet = Mapping[str, Any]


class TraceError(ValueError):
    """The table or the packet cannot be evaluated exactly (see `Unsupported`, `AmbiguousMatch`)."""


class Unsupported(TraceError):
    """A construct this evaluator does not model (it would have to guess what OVS does)."""


class AmbiguousMatch(TraceError):
    """Two flows of one priority match one packet in one table (OpenFlow: undefined)."""


@dataclass(frozen=True)
class Step:
    """One thing that happened to one copy of the packet.

    ``kind``: ``match`` (``rule`` handled the packet in ``table``; ``conj_ids``: the satisfied
    conjunctions that led to it), ``miss`` (no flow in ``table``: dropped), ``drop`` (``rule`` has
    no instructions), ``group`` (``group`` copied the packet, one branch per bucket), ``ct``
    (frozen for conntrack in ``zone``; ``ct_state`` is what the recirculation then saw),
    ``commit`` (``ct(commit)`` in ``zone``, ``mark`` if it set one), ``output`` (left through
    ``port``), ``skip`` (an output to its ingress ``port``, which OVS leaves out),
    ``controller`` (punted).  ``fields``: the packet as the table saw it (``match``, ``miss``,
    ``drop``) or as it left (``output``).  ``branch``: bucket indices from the original packet
    (``()``) to this copy, so a copy's history is every step whose branch is a prefix of its own.
    """

    kind: str
    branch: tuple[int, ...]
    table: int | None = None
    rule: Rule | None = None
    conj_ids: tuple[int, ...] = ()
    group: int | None = None
    port: int | None = None
    zone: int | None = None
    ct_state: int | None = None
    mark: int | None = None
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Trace:
    """Every step of one packet on one switch, in the order OVS would take them."""

    in_port: int
    steps: tuple[Step, ...]

    @property
    def outputs(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "output"]

    @property
    def ports(self) -> list[int]:
        """The ports copies left through, sorted (one entry per copy)."""
        return sorted(s.port for s in self.outputs if s.port is not None)

    @property
    def punted(self) -> bool:
        return any(s.kind == "controller" for s in self.steps)

    @property
    def dropped(self) -> bool:
        return not self.outputs and not self.punted

    def history(self, branch: tuple[int, ...]) -> list[Step]:
        """The steps that made the copy ``branch`` (its ancestors' steps included)."""
        return [s for s in self.steps if branch[: len(s.branch)] == s.branch]


def parse_ct_state(state: str | int) -> int:
    """``"est,rpl"`` / ``"+trk+est"`` / bits -> ct_state bits, ``trk`` always set."""
    if isinstance(state, int):
        return state | CT_TRK
    bits = CT_TRK
    for word in state.replace("+", ",").split(","):
        word = word.strip().lower()
        if not word:
            continue
        if word not in CT_BITS:
            raise ValueError(f"unknown conntrack state {word!r} (known: {', '.join(CT_BITS)})")
        bits |= CT_BITS[word]
    return bits


def ct_state_text(bits: int) -> str:
    """ct_state bits as ``trk,est,rpl``."""
    return ",".join(name for name, bit in sorted(CT_BITS.items(), key=lambda kv: kv[1])
                    if bits & bit) or "none"  # fmt: skip


# ------------------------------------------------------------------------------------- matching


_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


@lru_cache(maxsize=65536)
def _as_int(value: Any) -> int:
    """A field value or mask as an integer: MACs and IPv4/IPv6 addresses by netaddr."""
    if isinstance(value, int):
        return value
    text = str(value)
    if _MAC.fullmatch(text):  # the model's spelling of a MAC (flows.model)
        return int(text.replace(":", ""), 16)
    return int(netaddr.IPAddress(text))


def field_matches(want: Any, have: Any) -> bool:
    """One match field: equal, or equal under the mask of a ``(value, mask)`` pair."""
    if isinstance(want, tuple):
        value, mask = (_as_int(v) for v in want)
        return _as_int(have) & mask == value & mask
    if want == have:
        return True
    if isinstance(want, int) or isinstance(have, int):
        return False
    return _as_int(want) == _as_int(have)  # two spellings of one address


def matches(rule: Rule, fields: Packet) -> bool:
    """Whether ``rule``'s match accepts the packet ``fields`` (see the module docstring)."""
    for name, want in rule.match:
        if name in fields:
            have = fields[name]
        elif name in _ZERO_DEFAULTS:
            have = _ZERO_DEFAULTS[name]
        else:
            return False
        if not field_matches(want, have):
            return False
    return True


def _moved(act: Move, fields: Packet) -> Any:
    """What ``act`` writes into its destination: the source (0 for metadata or a register no
    action set, as OVS reads them), cut to its low bits when the destination is narrower
    (``move:metadata[0..31]->reg9[]``)."""
    value = fields.get(act.src, _ZERO_DEFAULTS.get(act.src))
    if value is None:
        raise Unsupported(f"move from {act.src}, which the packet does not have")
    n_bits = move_low_bits(act)
    return value if n_bits is None else int(value) & ((1 << n_bits) - 1)


def _conjunctions(rule: Rule) -> tuple[Conjunction, ...] | None:
    """The conjunction actions of a conjunctive flow, None for an ordinary flow."""
    acts = [a for ins in rule.instructions if isinstance(ins, Apply) for a in ins.actions]
    conj = tuple(a for a in acts if isinstance(a, Conjunction))
    if not conj:
        return None
    if len(conj) != len(acts) or len(rule.instructions) != 1:
        raise Unsupported(f"table {rule.table}: a flow mixes conjunction with other actions")
    return conj


# ------------------------------------------------------------------------------------- the table


class _Level:
    """The flows of one priority in one table, split into ordinary and conjunctive flows, each
    indexed by the exact-match field most of them have (an L2 table's ``eth_dst``, port
    security's ``in_port``): a lookup only tests the flows whose value equals the packet's,
    plus those without that field.  Pruning only: every candidate is still fully matched."""

    MIN_INDEXED = 8

    def __init__(self, rules: list[Rule]) -> None:
        plain: list[Rule] = []
        self.conj_of: dict[Rule, tuple[Conjunction, ...]] = {}
        for r in rules:
            c = _conjunctions(r)
            if c is None:
                plain.append(r)
            else:
                self.conj_of[r] = c
        self.plain = _Index(plain)
        self.conj = _Index(list(self.conj_of))

    def ordinary(self, fields: Packet) -> list[Rule]:
        return [r for r in self.plain.candidates(fields) if matches(r, fields)]

    def conjunctive(self, fields: Packet) -> list[tuple[Rule, tuple[Conjunction, ...]]]:
        return [(r, self.conj_of[r]) for r in self.conj.candidates(fields)
                if matches(r, fields)]  # fmt: skip


class _Index:
    def __init__(self, rules: list[Rule]) -> None:
        counts: dict[str, int] = {}
        values: dict[str, set[Any]] = {}
        for r in rules:
            for name, value in r.match:
                if not isinstance(value, tuple):
                    counts[name] = counts.get(name, 0) + 1
                    values.setdefault(name, set()).add(value)
        # the field that most flows have, and among those the one that tells them apart best
        self.field = max(counts, key=lambda n: (counts[n], len(values[n]), n)) if counts else None
        if self.field is None or counts[self.field] < _Level.MIN_INDEXED:
            self.field = None
        self.by_value: dict[int, list[Rule]] = {}
        self.rest: list[Rule] = []
        for r in rules:
            value = next((v for n, v in r.match if n == self.field), None)
            if value is None or isinstance(value, tuple):
                self.rest.append(r)
            else:
                self.by_value.setdefault(_as_int(value), []).append(r)

    def candidates(self, fields: Packet) -> list[Rule]:
        if self.field is None:
            return self.rest
        have = fields.get(self.field, _ZERO_DEFAULTS.get(self.field))
        if have is None:
            return self.rest
        return self.by_value.get(_as_int(have), []) + self.rest


class FlowTable:
    """One host's flows and groups, indexed for lookups (build once, trace many packets)."""

    def __init__(self, state: Slice) -> None:
        by_table: dict[int, dict[int, list[Rule]]] = {}
        for rule in state.rules:
            by_table.setdefault(rule.table, {}).setdefault(rule.priority, []).append(rule)
        # per table: (priority, its flows), highest priority first
        self.tables: dict[int, list[tuple[int, _Level]]] = {
            table: [(prio, _Level(levels[prio])) for prio in sorted(levels, reverse=True)]
            for table, levels in by_table.items()
        }
        self.groups: dict[int, GroupEntry] = {g.group_id: g for g in state.groups}

    def lookup(self, table: int, fields: Packet) -> tuple[Rule | None, tuple[int, ...]]:
        """The flow that handles ``fields`` in ``table`` and the conjunctions that led to it."""
        for prio, level in self.tables.get(table, ()):
            hits = _one(level.ordinary(fields), f"table {table}")
            done = self._satisfied(level.conjunctive(fields))
            if hits:
                if done:
                    raise AmbiguousMatch(
                        f"table {table} priority {prio}: a flow and conjunction {done[0]} match"
                    )
                return hits[0], ()
            if done:
                return self._conj_target(table, fields, done), tuple(done)
        return None, ()

    @staticmethod
    def _satisfied(matched: list[tuple[Rule, tuple[Conjunction, ...]]]) -> list[int]:
        """conj_ids whose every clause is matched by some flow of this priority, ascending."""
        seen: dict[int, set[int]] = {}
        needed: dict[int, int] = {}
        for _rule, acts in matched:
            for a in acts:
                seen.setdefault(a.conj_id, set()).add(a.clause)
                needed[a.conj_id] = a.n_clauses
        return sorted(i for i, clauses in seen.items()
                      if clauses >= set(range(1, needed[i] + 1)))  # fmt: skip

    def _conj_target(self, table: int, fields: Packet, ids: list[int]) -> Rule | None:
        """The ordinary flow a satisfied conjunction leads to (lookup again with conj_id)."""
        found: list[Rule | None] = []
        for conj_id in ids:
            probe = {**fields, "conj_id": conj_id}
            rule = None
            for _prio, level in self.tables.get(table, ()):
                hits = _one(level.ordinary(probe), f"table {table}")
                if hits:
                    rule = hits[0]
                    break
            found.append(rule)
        if len({None if r is None else r.instructions for r in found}) > 1:
            raise AmbiguousMatch(f"table {table}: conjunctions {ids} lead to different actions")
        return found[0]


def _one(hits: list[Rule], where: str) -> list[Rule]:
    """At most one of several same-priority flows that match one packet: which one OVS takes
    is undefined, which only matters if their instructions differ (the ARP responder's two
    exclusions of one address both match the owner's own gratuitous ARP, and both flood)."""
    if len(hits) > 1:
        if len({r.instructions for r in hits}) > 1:
            raise AmbiguousMatch(
                f"{where} priority {hits[0].priority}: {len(hits)} flows with different "
                "instructions match"
            )
        return [min(hits, key=repr)]  # the same whichever: a deterministic report
    return hits


# ------------------------------------------------------------------------------------- the walk


@dataclass
class _Frozen:
    """A copy waiting for conntrack: where it resumes and with what."""

    table: int
    fields: dict[str, Any]
    branch: tuple[int, ...]
    zone: int


class _Walk:
    def __init__(self, table: FlowTable, ct_states: Sequence[str | int]) -> None:
        self.t = table
        self.ct_states = deque(parse_ct_state(s) for s in ct_states)
        self.steps: list[Step] = []
        self.frozen: deque[_Frozen] = deque()
        self.current: tuple[int, Rule] | None = None  # the flow whose actions run (dec_ttl)
        self.halted = False  # the current copy was dropped by dec_ttl: nothing more runs

    def add(self, step: Step) -> None:
        self.steps.append(step)
        if len(self.steps) > MAX_STEPS:
            raise TraceError(f"more than {MAX_STEPS} steps: a loop or a flood explosion")

    def run(self, fields: dict[str, Any]) -> None:
        self.table(0, fields, (), depth=0)
        passes = 0
        while self.frozen:
            passes += 1
            if passes > MAX_RECIRCULATIONS:
                raise TraceError(f"more than {MAX_RECIRCULATIONS} recirculations")
            f = self.frozen.popleft()
            state = self.ct_states.popleft() if self.ct_states else CT_DEFAULT
            f.fields["ct_state"] = state
            f.fields["ct_zone"] = f.zone
            self.halted = False
            self.add(Step("ct", f.branch, table=f.table, zone=f.zone, ct_state=state))
            self.table(f.table, f.fields, f.branch, depth=0)

    def table(self, table: int, fields: dict[str, Any], branch: tuple[int, ...],
              depth: int) -> bool:  # fmt: skip
        """Look ``table`` up and run the flow's instructions; True if the copy was frozen."""
        while True:
            rule, conj_ids = self.t.lookup(table, fields)
            seen = tuple(sorted(fields.items()))
            if rule is None:
                self.add(Step("miss", branch, table=table, fields=seen))
                return False
            if not rule.instructions:
                self.add(Step("drop", branch, table=table, rule=rule, conj_ids=conj_ids,
                              fields=seen))  # fmt: skip
                return False
            self.add(Step("match", branch, table=table, rule=rule, conj_ids=conj_ids, fields=seen))
            goto: int | None = None
            frozen = False
            self.current = (table, rule)
            for ins in rule.instructions:
                if frozen:
                    raise Unsupported(f"table {table}: instructions after ct(table=..)")
                if isinstance(ins, Apply):
                    frozen = self.actions(ins.actions, fields, branch, depth)
                    if self.halted:
                        return False
                elif isinstance(ins, WriteMetadata):
                    md = fields.get("metadata", 0)
                    fields["metadata"] = (md & ~ins.mask) | (ins.value & ins.mask)
                elif isinstance(ins, GotoTable):
                    if ins.table <= table:
                        raise Unsupported(f"table {table}: goto_table:{ins.table} goes backwards")
                    goto = ins.table
                else:  # pragma: no cover - the model has no other instruction
                    raise Unsupported(f"instruction {ins!r}")
            if goto is None or frozen:
                return frozen
            table = goto

    def actions(self, actions: Iterable[Action], fields: dict[str, Any],
                branch: tuple[int, ...], depth: int) -> bool:  # fmt: skip
        """Run an action list on ``fields`` (in place); True if it ended frozen for conntrack."""
        acts = list(actions)
        for i, act in enumerate(acts):
            if isinstance(act, SetField):
                if act.field == "__foreign__":
                    raise Unsupported(f"an action tenantnet never writes: {act.value}")
                fields[act.field] = act.value
            elif isinstance(act, Move):
                fields[act.dst] = _moved(act, fields)
            elif isinstance(act, Output):
                self.output(act.port, fields, branch)
            elif isinstance(act, OutputReg):
                self.output(int(fields.get(act.reg, 0)), fields, branch)
            elif isinstance(act, ToGroup):
                self.group(act.group_id, fields, branch, depth)
            elif isinstance(act, Resubmit):
                if depth >= MAX_RESUBMIT_DEPTH:
                    raise TraceError(f"resubmits nested deeper than {MAX_RESUBMIT_DEPTH}")
                resubmitted = self.table(act.table, fields, branch, depth + 1)
                if self.halted:
                    return False
                if resubmitted:
                    if i + 1 < len(acts):
                        raise Unsupported("actions after a resubmit that ended in ct(table=..)")
                    return True
            elif isinstance(act, Ct):
                zone = (int(fields.get(act.zone_reg, 0)) & 0xFFFF) if act.zone_reg else act.zone
                if act.commit:
                    self.add(Step("commit", branch, zone=zone, mark=act.mark))
                if act.table is not None:
                    if i + 1 < len(acts):
                        raise Unsupported("actions after ct(table=..)")
                    self.frozen.append(_Frozen(act.table, dict(fields), branch, zone))
                    return True
            elif isinstance(act, DecTtl):
                if self.dec_ttl(fields, branch):
                    self.halted = True  # dropped: nothing more runs for this copy
                    return False
            elif isinstance(act, Conjunction):
                raise Unsupported("a conjunction action outside a conjunctive flow")
            else:  # pragma: no cover - the model has no other action
                raise Unsupported(f"action {act!r}")
        return False

    def dec_ttl(self, fields: dict[str, Any], branch: tuple[int, ...]) -> bool:
        """``dec_ttl`` on ``fields``; True if the TTL had run out (the copy is dropped)."""
        if fields.get("eth_type") != 0x0800:
            raise Unsupported("dec_ttl on a packet that is not IPv4")
        ttl = int(fields.get("nw_ttl", 64))
        if ttl > 1:
            fields["nw_ttl"] = ttl - 1
            return False
        table, rule = self.current if self.current is not None else (None, None)
        self.add(Step("drop", branch, table=table, rule=rule,
                      fields=tuple(sorted(fields.items()))))  # fmt: skip
        return True

    def output(self, port: int, fields: dict[str, Any], branch: tuple[int, ...]) -> None:
        in_port = fields["in_port"]
        if port == OFPP_CONTROLLER:
            self.add(Step("controller", branch, port=port))
        elif port == OFPP_IN_PORT:
            self.add(Step("output", branch, port=in_port, fields=tuple(sorted(fields.items()))))
        elif port == in_port:
            self.add(Step("skip", branch, port=port))
        elif 0 < port <= OFPP_MAX:
            self.add(Step("output", branch, port=port, fields=tuple(sorted(fields.items()))))
        else:
            raise Unsupported(f"output to reserved port {port:#x}")

    def group(self, group_id: int, fields: dict[str, Any], branch: tuple[int, ...],
              depth: int) -> None:  # fmt: skip
        group = self.t.groups.get(group_id)
        if group is None:
            raise TraceError(f"a flow sends to group {group_id}, which the table does not have")
        self.add(Step("group", branch, group=group_id))
        for i, bucket in enumerate(group.buckets):
            self.actions(bucket, dict(fields), (*branch, i), depth)
            self.halted = False  # a copy dropped by dec_ttl: the next bucket's copy runs


def trace(
    table: FlowTable | Slice,
    in_port: int,
    packet: Packet,
    ct_states: Sequence[str | int] = (),
) -> Trace:
    """Every step of ``packet`` entering the switch through ``in_port`` (see the module doc).

    ``packet``: OXM field names to values as `flows.model` spells them (`make_packet` builds
    one); a packet from a tunnel carries ``tunnel_id`` and ``tun_ipv4_src``.  ``ct_states``: the
    conntrack state each recirculation sees, in order (``"new"``, ``"est,rpl"``...).
    """
    ft = table if isinstance(table, FlowTable) else FlowTable(table)
    fields = {**packet, "in_port": in_port}
    walk = _Walk(ft, ct_states)
    walk.run(fields)
    return Trace(in_port, tuple(walk.steps))


# ------------------------------------------------------------------------------------ packets

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
_L4_PORTS = {6: "tcp", 17: "udp", 132: "sctp"}


def make_packet(
    eth_src: str,
    eth_dst: str,
    *,
    ip_src: str | None = None,
    ip_dst: str | None = None,
    protocol: int | None = None,
    src_port: int = 0,
    dst_port: int = 0,
    icmp_type: int = 0,
    icmp_code: int = 0,
    arp_op: int | None = None,
    arp_sha: str | None = None,
    arp_tha: str | None = None,
    eth_type: int | None = None,
    ct_mark: int = 0,
) -> dict[str, Any]:
    """A packet as `trace` reads it, with every field its protocol has (OVS reads a missing L4
    port as 0).  ARP when ``arp_op`` is given (``ip_src``/``ip_dst`` are spa/tpa), else IPv4 or
    IPv6 by the addresses, else an Ethernet frame of ``eth_type``."""
    pkt: dict[str, Any] = {"eth_src": _mac(eth_src), "eth_dst": _mac(eth_dst)}
    if ct_mark:
        pkt["ct_mark"] = ct_mark
    if arp_op is not None:
        pkt.update(eth_type=ETH_TYPE_ARP, arp_op=arp_op,
                   arp_spa=_ip(ip_src or "0.0.0.0", 4), arp_tpa=_ip(ip_dst or "0.0.0.0", 4),
                   arp_sha=_mac(arp_sha or eth_src),
                   arp_tha=_mac(arp_tha or "00:00:00:00:00:00"))  # fmt: skip
        return pkt
    if ip_src is None or ip_dst is None:
        if ip_src is not None or ip_dst is not None:
            raise ValueError("an IP packet needs both a source and a destination address")
        if eth_type is None:
            raise ValueError("a packet needs an ARP operation, IP addresses or an eth_type")
        pkt["eth_type"] = eth_type
        return pkt
    version = netaddr.IPAddress(ip_src).version
    if netaddr.IPAddress(ip_dst).version != version:
        raise ValueError("source and destination addresses are of different families")
    v = "ipv4" if version == 4 else "ipv6"
    pkt.update(eth_type=ETH_TYPE_IPV4 if version == 4 else ETH_TYPE_IPV6,
               **{f"{v}_src": _ip(ip_src, version), f"{v}_dst": _ip(ip_dst, version)})
    if protocol is None:
        return pkt
    if version == 6 and protocol == PROTOCOLS["icmp"]:
        protocol = PROTOCOLS["icmpv6"]
    pkt["ip_proto"] = protocol
    if protocol in _L4_PORTS:
        name = _L4_PORTS[protocol]
        pkt.update({f"{name}_src": src_port, f"{name}_dst": dst_port})
    elif protocol in (PROTOCOLS["icmp"], PROTOCOLS["icmpv6"]):
        kind = "icmpv4" if protocol == PROTOCOLS["icmp"] else "icmpv6"
        pkt.update({f"{kind}_type": icmp_type, f"{kind}_code": icmp_code})
    return pkt


def _mac(text: str) -> str:
    return str(netaddr.EUI(text, dialect=netaddr.mac_unix_expanded))


def _ip(text: str, version: int) -> str:
    ip = netaddr.IPAddress(text)
    if ip.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    return str(ip)


_OVS_NAMES = {
    "eth_src": "dl_src", "eth_dst": "dl_dst", "eth_type": "dl_type", "vlan_vid": None,
    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "ip_proto": "nw_proto",
    "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code", "tunnel_id": "tun_id",
    "tun_ipv4_src": "tun_src", "tun_ipv4_dst": "tun_dst",
}  # fmt: skip


def ovs_flow_text(in_port: int, packet: Packet) -> str:
    """The packet in ``ovs-appctl ofproto/trace`` syntax, so an operator (and the tests) can
    ask OVS the same question: ``in_port=3,dl_src=..,dl_type=0x0800,nw_src=..``."""
    parts = [f"in_port={in_port}"]
    for name, value in sorted(packet.items(), key=lambda kv: (_ovs_rank(kv[0]), kv[0])):
        ovs = _OVS_NAMES.get(name, name)
        if name == "vlan_vid" and value:
            parts.append(f"dl_vlan={value & 0xFFF}")
        if ovs is None or name == "in_port":
            continue
        if isinstance(value, int) and name in ("eth_type", "tunnel_id", "metadata"):
            parts.append(f"{ovs}={value:#x}")
        else:
            parts.append(f"{ovs}={value}")
    return ",".join(parts)


def _ovs_rank(name: str) -> int:
    """OVS parses a flow left to right and wants a field's prerequisites before it."""
    if name == "eth_type":
        return 1
    if name == "ip_proto":
        return 3
    if name.split("_")[0] in ("tcp", "udp", "sctp", "icmpv4", "icmpv6"):
        return 4
    if name.startswith(("ipv4", "ipv6", "arp")):
        return 2
    return 0
