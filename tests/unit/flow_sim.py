"""A small symbolic OpenFlow 1.3 evaluator for compiled slices, and a multi-host "cloud" around it.

Looking at individual rules only shows that the compiler does what it was written to do; walking
packets through the tables shows what the rules *mean*: who receives a packet, how many copies,
over which tunnel.  The evaluator follows the OpenFlow semantics the pipeline relies on:

* in each table the highest-priority matching rule wins; two matching rules of the same priority
  are an error here (OpenFlow leaves the choice undefined, so the compiler must never allow it);
* a rule with no instructions, or no matching rule at all, drops the packet;
* apply-actions act immediately; a group of type ALL runs every bucket on its own copy;
* an output to the packet's own ingress port is skipped (OVS behaviour without ``IN_PORT``);
* write-metadata is ``md = (md & ~mask) | (value & mask)``; goto only moves forward.

The cloud part connects several hosts: an output to a host's tunnel port with ``tun_ipv4_dst``
arrives at the host owning that IP, on its tunnel port of the same type, with ``tunnel_id`` and
``tun_ipv4_src`` set.  A packet that came from a tunnel and is sent into a tunnel again raises
:class:`TunnelLoop`: in a full mesh that is always a bug (duplicates or loops).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import netaddr

from flows.compiler import compile_base, compile_network
from flows.model import (
    Apply,
    GotoTable,
    GroupEntry,
    HostContext,
    LocalPort,
    NetworkView,
    Output,
    RemotePort,
    Rule,
    SetField,
    Slice,
    ToGroup,
    WriteMetadata,
)
from tests.unit.wire_switch import through_the_wire

Packet = Mapping[str, Any]

BROADCAST = "ff:ff:ff:ff:ff:ff"


def merge(slices: Iterable[Slice]) -> Slice:
    """A host's whole table: the union of its slices (``merge([base, *networks])``).  Slices of
    distinct networks never share a rule key or a group id by construction, so a union is exact."""
    rules: set[Rule] = set()
    groups: set[GroupEntry] = set()
    for piece in slices:
        rules |= piece.rules
        groups |= piece.groups
    return Slice(rules=frozenset(rules), groups=frozenset(groups))


class AmbiguousMatch(AssertionError):
    """Two rules of the same priority match one packet in one table."""


class TunnelLoop(AssertionError):
    """A packet received from a tunnel was sent into a tunnel again."""


@dataclass(frozen=True, order=True)
class Emission:
    """One copy of a packet leaving a switch: the port and the tunnel fields set on the way."""

    port: int
    tunnel_id: int | None = None
    tun_ipv4_dst: str | None = None


# ----------------------------------------------------------------------------- match prerequisites

_PREREQUISITES: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {
    "arp_spa": (("eth_type", frozenset({0x0806})),),
    "arp_sha": (("eth_type", frozenset({0x0806})),),
    "ipv4_src": (("eth_type", frozenset({0x0800})),),
    "ipv6_src": (("eth_type", frozenset({0x86DD})),),
    "ip_proto": (("eth_type", frozenset({0x0800, 0x86DD})),),
    "udp_src": (("ip_proto", frozenset({17})),),
    "udp_dst": (("ip_proto", frozenset({17})),),
    "icmpv6_type": (("ip_proto", frozenset({58})), ("eth_type", frozenset({0x86DD}))),
}


def missing_prerequisites(rule: Rule) -> list[str]:
    """Fields of ``rule.match`` whose OpenFlow prerequisites are absent (OVS rejects such flows)."""
    fields = dict(rule.match)
    problems = []
    for name in fields:
        for needed, allowed in _PREREQUISITES.get(name, ()):
            if fields.get(needed) not in allowed:
                problems.append(f"{name} needs {needed} in {sorted(allowed)}")
    return problems


# ------------------------------------------------------------------------------------------ switch


class Switch:
    """Evaluates packets against one host's merged :class:`Slice`."""

    def __init__(self, state: Slice) -> None:
        """Index rules by table, highest priority first, so a lookup is a short scan."""
        self.tables: dict[int, list[Rule]] = {}
        for rule in sorted(state.rules, key=lambda r: (r.table, -r.priority)):
            self.tables.setdefault(rule.table, []).append(rule)
        self.groups = {g.group_id: g for g in state.groups}

    def lookup(self, table: int, fields: Mapping[str, Any]) -> Rule | None:
        """The rule that handles ``fields`` in ``table`` (``None`` = implicit drop)."""
        hits: list[Rule] = []
        for rule in self.tables.get(table, ()):
            if hits and rule.priority < hits[0].priority:
                break
            if _matches(rule, fields):
                hits.append(rule)
        if len(hits) > 1:
            raise AmbiguousMatch(f"table {table}: {hits}")
        return hits[0] if hits else None

    def process(
        self,
        in_port: int,
        packet: Packet,
        tunnel_id: int | None = None,
        tun_ipv4_src: str | None = None,
    ) -> list[Emission]:
        """Every copy of ``packet`` that leaves the switch, sorted."""
        fields: dict[str, Any] = dict(packet)
        fields["in_port"] = in_port
        fields["metadata"] = 0
        fields.setdefault("vlan_vid", 0)  # OFPVID_NONE: untagged unless the packet says otherwise
        if tunnel_id is not None:
            fields["tunnel_id"] = tunnel_id
            fields["tun_ipv4_src"] = tun_ipv4_src
        out: list[Emission] = []
        written: set[str] = set()
        table = 0
        while True:
            rule = self.lookup(table, fields)
            if rule is None:
                break
            goto: int | None = None
            for ins in rule.instructions:
                if isinstance(ins, Apply):
                    self._apply(ins.actions, fields, written, out)
                elif isinstance(ins, WriteMetadata):
                    fields["metadata"] = (fields["metadata"] & ~ins.mask) | (ins.value & ins.mask)
                elif isinstance(ins, GotoTable):
                    goto = ins.table
                else:  # pragma: no cover - the model has no other instruction
                    raise TypeError(ins)
            if goto is None:
                break
            assert goto > table, f"goto {goto} from table {table} (loops are not allowed)"
            table = goto
        return sorted(out)

    def _apply(
        self,
        actions: Sequence[Any],
        fields: dict[str, Any],
        written: set[str],
        out: list[Emission],
    ) -> None:
        """Run an action list on ``fields`` (modified in place), recording outputs.

        ``written`` names the fields set by actions so far: an emission reports tunnel fields only
        if this pipeline set them, not because they came in with a tunnel packet.
        """
        for action in actions:
            if isinstance(action, SetField):
                fields[action.field] = action.value
                written.add(action.field)
            elif isinstance(action, Output):
                if action.port == fields["in_port"]:
                    continue
                out.append(
                    Emission(
                        action.port,
                        fields["tunnel_id"] if "tunnel_id" in written else None,
                        fields["tun_ipv4_dst"] if "tun_ipv4_dst" in written else None,
                    )
                )
            elif isinstance(action, ToGroup):
                group = self.groups.get(action.group_id)
                assert group is not None, f"output to missing group {action.group_id}"
                for bucket in group.buckets:
                    self._apply(bucket, dict(fields), set(written), out)
            else:  # pragma: no cover
                raise TypeError(action)


def _matches(rule: Rule, fields: Mapping[str, Any]) -> bool:
    """OpenFlow match: every field present and equal (under its mask, if any)."""
    for name, want in rule.match:
        if name not in fields:
            return False
        have = fields[name]
        if isinstance(want, tuple):
            value, mask = want
            if isinstance(value, str):  # masked address: "is `have` inside value/mask?"
                if netaddr.IPAddress(have) not in netaddr.IPNetwork(f"{value}/{mask}"):
                    return False
            elif have & mask != value & mask:
                return False
        elif have != want:
            return False
    return True


# ------------------------------------------------------------------------------------------- cloud


@dataclass(frozen=True)
class Host:
    """A hypervisor: its underlay IP and its flow-based tunnel ports."""

    name: str
    tunnel_ip: str
    tunnel_ofports: Mapping[str, int] = field(default_factory=lambda: {"vxlan": 1, "gre": 2})


@dataclass(frozen=True)
class Net:
    """A tenant network."""

    key: int
    seg_type: str
    seg_id: int


@dataclass(frozen=True)
class VmPort:
    """A tenant port bound to a host."""

    port_id: str
    net_key: int
    host: str
    ofport: int
    mac: str
    fixed_ips: tuple[str, ...] = ()
    port_security: bool = True
    admin_up: bool = True


@dataclass
class Cloud:
    """Hosts, networks and ports; derives each host's views, compiles them, and moves packets."""

    hosts: Sequence[Host]
    nets: Sequence[Net]
    ports: Sequence[VmPort]
    _switches: dict[str, Switch] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        """Host by name."""
        return next(h for h in self.hosts if h.name == name)

    def port(self, port_id: str) -> VmPort:
        """Port by id."""
        return next(p for p in self.ports if p.port_id == port_id)

    def ctx(self, host: str) -> HostContext:
        """What the compiler knows about ``host`` itself."""
        h = self.host(host)
        return HostContext(h.tunnel_ip, dict(h.tunnel_ofports))

    def view(self, host: str, net: Net) -> NetworkView:
        """What ``host`` knows about ``net`` (as the store would derive it)."""
        ports = [p for p in self.ports if p.net_key == net.key]
        local = tuple(
            LocalPort(p.port_id, p.ofport, p.mac, p.fixed_ips, p.port_security, p.admin_up)
            for p in ports
            if p.host == host
        )
        remote = tuple(
            RemotePort(p.port_id, p.mac, self.host(p.host).tunnel_ip)
            for p in ports
            if p.host != host
        )
        peers = tuple(sorted({self.host(p.host).tunnel_ip for p in ports if p.host != host}))
        return NetworkView(net.key, net.seg_type, net.seg_id, local, remote, peers)

    def host_state(self, host: str) -> Slice:
        """The host's whole desired state: base pipeline plus every network's slice."""
        ctx = self.ctx(host)
        nets = [compile_network(ctx, self.view(host, n)) for n in self.nets]
        return merge([compile_base(ctx), *nets])

    def switch(self, host: str) -> Switch:
        """The (cached) evaluator of ``host``'s compiled state, as the switch holds it after the
        controller sent it: encoded with os-ken and decoded from flow/group stats."""
        if host not in self._switches:
            self._switches[host] = Switch(through_the_wire(self.host_state(host)))
        return self._switches[host]

    def send(self, port_id: str, packet: Packet) -> list[str]:
        """Port ids that receive ``packet`` sent by VM port ``port_id``, one entry per copy."""
        src = self.port(port_id)
        emitted = self.switch(src.host).process(src.ofport, packet)
        return sorted(self._deliver(src.host, emitted, packet, from_tunnel=False))

    def inject(
        self, host: str, seg_type: str, tunnel_id: int, tun_src: str, packet: Packet
    ) -> list[str]:
        """Port ids that receive ``packet`` arriving at ``host`` over a tunnel (e.g. forged)."""
        h = self.host(host)
        emitted = self.switch(host).process(h.tunnel_ofports[seg_type], packet, tunnel_id, tun_src)
        return sorted(self._deliver(host, emitted, packet, from_tunnel=True))

    def _deliver(
        self, host: str, emitted: list[Emission], packet: Packet, from_tunnel: bool
    ) -> list[str]:
        """Follow emissions to VM ports, crossing at most one tunnel."""
        h = self.host(host)
        tunnel_types = {ofport: kind for kind, ofport in h.tunnel_ofports.items()}
        by_ofport = {p.ofport: p for p in self.ports if p.host == host}
        received: list[str] = []
        for em in emitted:
            if em.port in tunnel_types:
                if from_tunnel:
                    raise TunnelLoop(f"{host}: tunnel packet sent to tunnel again: {em}")
                assert em.tunnel_id is not None and em.tun_ipv4_dst is not None, em
                dst = next((x for x in self.hosts if x.tunnel_ip == em.tun_ipv4_dst), None)
                assert dst is not None, f"tunnel to unknown host {em.tun_ipv4_dst}"
                kind = tunnel_types[em.port]
                received += self.inject(dst.name, kind, em.tunnel_id, h.tunnel_ip, packet)
            else:
                assert em.port in by_ofport, f"{host}: output to unknown port {em.port}"
                received.append(by_ofport[em.port].port_id)
        return received
