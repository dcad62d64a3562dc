"""Plain data types shared by the pipeline compiler and the southbound codec.

`flows` never imports os-ken: a rule here is a hashable value (table, priority, match, instructions,
cookie) so that desired state can be compared with what a switch reports by set arithmetic.  The
southbound turns these values into OpenFlow messages and turns flow-stats replies back into them;
both directions must produce *identical* values for identical flows, hence the normalisation rules:

* match: a tuple of (field, value) pairs sorted by field name, field names as os-ken OXM names
  (``in_port``, ``eth_dst``, ``metadata``, ``tunnel_id``, ``tun_ipv4_src``...).  MACs are lower-case
  ``aa:bb:..`` strings, IPv4/IPv6 addresses compact strings, everything else ``int``.  A masked
  field has a ``(value, mask)`` tuple as its value.
* instructions: a tuple in OpenFlow order (apply-actions, write-metadata, goto-table).  An empty
  tuple means drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# ----------------------------------------------------------------------------------------- actions
# Actions and instructions are named tuples (cheap to build, hash and compare by the thousand),
# and tuples compare by value only: without the trailing ``kind`` tag, Output(4) would equal
# ToGroup(4), so a rule that outputs to port 4 would "equal" one that floods to group 4, and
# neither the diff nor any cache keyed on instructions could tell them apart.


class Output(NamedTuple):
    """Send the packet out of an OpenFlow port."""

    port: int
    kind: str = "output"  # see the note above Output


class SetField(NamedTuple):
    """Rewrite one header or metadata field (e.g. ``tunnel_id`` or ``tun_ipv4_dst``)."""

    field: str
    value: Any
    kind: str = "set_field"  # see the note above Output


class ToGroup(NamedTuple):
    """Hand the packet to a group (flooding)."""

    group_id: int
    kind: str = "group"  # see the note above Output


class OutputReg(NamedTuple):
    """Send the packet out of the port whose number is in a register (Nicira ``output:reg``).

    Lets one shared rule deliver to whichever port the pipeline chose earlier (the security
    group tables keep the port they filter for in a register), instead of one rule per port.
    """

    reg: str  # "reg5": the whole 32-bit register is the port number
    kind: str = "output_reg"  # see the note above Output


class Resubmit(NamedTuple):
    """Continue in another table and come back (Nicira ``resubmit(,table)``).

    The only way a group bucket can run more of the pipeline (buckets cannot goto a table):
    a flood copy for a filtered port passes through its ingress filter this way.
    """

    table: int
    kind: str = "resubmit"  # see the note above Output


class Conjunction(NamedTuple):
    """Clause ``clause`` of ``n_clauses`` of conjunctive match ``conj_id`` (Nicira action).

    ``clause`` counts from 1 as in ``ovs-ofctl``'s ``conjunction(id,k/n)``; the codec writes the
    wire's 0-based value.
    """

    conj_id: int
    clause: int
    n_clauses: int
    kind: str = "conjunction"  # see the note above Output


class Ct(NamedTuple):
    """Send the packet through conntrack (Nicira ``ct``).

    ``zone_reg`` names a register whose low 16 bits are the zone (``zone=reg5[0..15]``), else
    ``zone`` is the zone itself.  ``table``: recirculate to that table with ``ct_state`` filled
    in (``None``: continue with the next action).  ``commit`` stores the connection;
    ``mark`` (with commit) sets its ``ct_mark``.
    """

    commit: bool = False
    zone: int = 0
    zone_reg: str | None = None
    table: int | None = None
    mark: int | None = None
    kind: str = "ct"  # see the note above Output


class Move(NamedTuple):
    """Copy a header field, or its low bits, into the whole of another (Nicira ``move``).

    What answering a packet from flows needs: an ARP reply's destination is the request's
    source, which no rule can know in advance (`flows.arp_responder`).  Either both fields have
    the same width (``eth_src``/``eth_dst``/``arp_sha``/``arp_tha``: 48 bits,
    ``arp_spa``/``arp_tpa``: 32), or ``src`` is wider and ``dst`` gets its low bits
    (``move:src[0..n-1]->dst[]``, n = dst's width; see `move_low_bits`): how the network key,
    which tenantnet keeps in the 64-bit metadata and is always below 2**32, reaches a 32-bit
    register (``Move("metadata", "reg9")``).  A source narrower than its destination is refused.
    """

    src: str
    dst: str
    kind: str = "move"  # see the note above Output


MOVE_FIELD_BITS: Mapping[str, int] = {"metadata": 64, **{f"reg{i}": 32 for i in range(16)}}
"""Widths of the fields between which a move may copy only the low bits: `flows` never imports
os-ken (whose field table the codec uses), and the trace and the readable text must know where a
move truncates.  The codec writes a partial move only between fields listed here (a test checks
these widths against os-ken's), so the three always agree on what a move copies."""


def move_low_bits(move: Move) -> int | None:
    """n, when ``move`` copies the low n bits of a wider ``src`` into the whole of ``dst``
    (``Move("metadata", "reg9")``: 32); None for a whole-field move (or fields not listed in
    `MOVE_FIELD_BITS`, which the codec only moves whole)."""
    src, dst = MOVE_FIELD_BITS.get(move.src), MOVE_FIELD_BITS.get(move.dst)
    return dst if src is not None and dst is not None and src > dst else None


class DecTtl(NamedTuple):
    """Decrement the IPv4 TTL (OpenFlow ``dec_nw_ttl``), as a router does.  A packet whose TTL
    is 0 or 1 is not decremented: OVS drops it and runs none of the rule's further actions or
    instructions (`flows.routing`)."""

    kind: str = "dec_ttl"  # see the note above Output


Action = Output | SetField | ToGroup | OutputReg | Resubmit | Conjunction | Ct | Move | DecTtl

# ------------------------------------------------------------------------------------ instructions


class Apply(NamedTuple):
    """OFPIT_APPLY_ACTIONS."""

    actions: tuple[Action, ...]
    kind: str = "apply"  # see the note above Output


class WriteMetadata(NamedTuple):
    """OFPIT_WRITE_METADATA; tenantnet keeps the network key in metadata."""

    value: int
    mask: int
    kind: str = "write_metadata"  # see the note above Output


class GotoTable(NamedTuple):
    """OFPIT_GOTO_TABLE."""

    table: int
    kind: str = "goto_table"  # see the note above Output


Instruction = Apply | WriteMetadata | GotoTable

Match = tuple[tuple[str, Any], ...]


def match(**fields: Any) -> Match:
    """Build a normalised match: pairs sorted by field name, ``None`` values left out (the
    names are distinct, so the sort never compares values)."""
    if None in fields.values():
        return tuple(sorted((k, v) for k, v in fields.items() if v is not None))
    return tuple(sorted(fields.items()))


# ------------------------------------------------------------------------------------ rules/groups


class Rule(NamedTuple):
    """One OpenFlow flow entry as tenantnet wants it on a switch.

    A named tuple rather than a frozen dataclass: rules are created, hashed and compared by
    the thousand on every compile and diff, and tuples do all three in C (about 3x cheaper).
    """

    table: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...]
    cookie: int

    @property
    def key(self) -> tuple[int, int, Match]:
        """What identifies a flow inside a switch (OpenFlow 'strict' identity)."""
        return (self.table, self.priority, self.match)


@dataclass(frozen=True, order=True)
class GroupEntry:
    """An OpenFlow group of type ALL (flooding); buckets are action lists in a fixed order."""

    group_id: int
    buckets: tuple[tuple[Action, ...], ...]

    def __hash__(self) -> int:
        """By id and bucket count only, not by every bucket: a flood group has one bucket per
        local port of its network, and slices holding it are hashed on every per-port patch.
        Equal groups still hash equal; equality compares the buckets."""
        return hash((self.group_id, len(self.buckets)))


@dataclass(frozen=True)
class Slice:
    """The part of a host's state that belongs to one owner (see :mod:`flows.tables`: the base
    pipeline, a network on the host, a port), or a union of such parts.

    Per-owner slices are the unit of incremental work: a change of port P is diffed against P's
    slices only, and a change in network N against the slices of N's owners on N's hosts.
    """

    rules: frozenset[Rule] = frozenset()
    groups: frozenset[GroupEntry] = frozenset()


# ------------------------------------------------------------------------------ input: host view


@dataclass(frozen=True)
class LocalPort:
    """A tenant port bound to this host (its VM interface is plugged into br-int)."""

    port_id: str
    ofport: int
    mac: str
    fixed_ips: tuple[str, ...] = ()
    port_security: bool = True
    admin_up: bool = True
    # Neutron allowed_address_pairs: (IP or CIDR, MAC) the VM may also send from (VRRP, VIPs).
    allowed_pairs: tuple[tuple[str, str], ...] = ()
    # The port's store number (``_num``): its rules carry ``flows.tables.port_cookie(num)``.
    num: int = 0
    # It has an IPv4 address in a subnet with enable_dhcp: its DHCP goes to the controller.
    dhcp: bool = False


@dataclass(frozen=True)
class RemotePort:
    """A port of the same network bound to another host, reached through a tunnel."""

    port_id: str
    mac: str
    host_ip: str
    # MACs of the port's allowed_address_pairs that differ from its own MAC.
    extra_macs: tuple[str, ...] = ()
    num: int = 0  # the port's store number, as in LocalPort
    fixed_ips: tuple[str, ...] = ()  # its IPv4 fixed IPs get ARP answers (flows.arp_responder)


@dataclass(frozen=True)
class Segment:
    """A network as its flows name it: table key (metadata, cookie, group ids) and wire id."""

    key: int
    seg_type: str  # "vxlan" | "gre"
    seg_id: int


@dataclass(frozen=True)
class NetworkView:
    """What one host needs to know about one network.

    ``peer_ips`` are the tunnel IPs of the *other* hosts that have at least one bound port of this
    network; a host only exchanges this network's traffic with them.
    """

    key: int
    seg_type: str  # "vxlan" | "gre"
    seg_id: int
    local_ports: tuple[LocalPort, ...] = ()
    remote_ports: tuple[RemotePort, ...] = ()
    peer_ips: tuple[str, ...] = ()
    service_answers: tuple[tuple[str, str], ...] = ()
    """(IPv4, MAC) of addresses the network itself answers ARP for: its DHCP servers."""

    @property
    def segment(self) -> Segment:
        return Segment(self.key, self.seg_type, self.seg_id)


@dataclass(frozen=True)
class HostContext:
    """Per-host facts the compiler needs besides the networks: the flow-based tunnel ports."""

    tunnel_ip: str
    tunnel_ofports: Mapping[str, int] = field(default_factory=dict)  # "vxlan"/"gre" -> ofport
