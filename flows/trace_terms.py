"""A packet's fate in the orchestrator's words: ports, networks, hosts, security groups.

`flows.trace` says which flow of which table handled a packet on one switch; this module follows
the packet from a tenant port through its host, across the tunnel into the receiving host, and
says what each step means, naming the objects the orchestrator created::

    port vm1 (10.0.0.5) on hv1 sends tcp 10.0.0.5:40000 -> 10.0.0.6:22
    hv1: port vm1 enters network web (vxlan 5001)
    hv1: port security: 10.0.0.5 is a fixed IP of port vm1
    hv1: L2: fa:16:3e:00:00:02 is port vm2 on hv2 -> tunnel vxlan 5001 to 198.51.100.2
    hv2: accepted from hv1 (198.51.100.1), a peer of network web
    hv2: L2: fa:16:3e:00:00:02 is port vm2
    delivered to port vm2 on hv2

or where and why it is dropped.  What a step means follows from its table (`flows.tables`), the
flow's owner (its cookie: base pipeline, network, port, security group) and the fields it
matched; names come from a `Catalog` the caller builds from its state (the store's names, the
hosts' ofports and tunnel addresses).  Pure: the flows of each host come through a callable, so
the same code explains the desired flows and the ones read back from the switches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import netaddr

from flows import tables as t
from flows.model import DecTtl, Rule, SetField, Slice
from flows.readable import rule_text
from flows.routing import PRIO_TTL_EXPIRED
from flows.trace import FlowTable, Step, Trace, TraceError, ct_state_text, trace

# ------------------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class PortInfo:
    """A tenant port as the orchestrator named it, and where it is bound (None: nowhere)."""

    id: str
    name: str
    mac: str
    network_key: int
    fixed_ips: tuple[str, ...] = ()
    host: str | None = None
    allowed_pairs: tuple[tuple[str, str], ...] = ()  # (IP or CIDR, MAC)
    security_groups: tuple[str, ...] = ()  # group names (or ids)
    port_security: bool = True
    admin_up: bool = True
    num: int = 0
    vips: tuple[str, ...] = ()  # the virtual IPs it was learnt to hold (`ports.claim_vip`)

    @property
    def label(self) -> str:
        name = self.name or self.id
        return f"{name} ({', '.join(self.fixed_ips)})" if self.fixed_ips else name


@dataclass(frozen=True)
class NetworkInfo:
    key: int
    id: str
    name: str
    seg_type: str
    seg_id: int

    @property
    def label(self) -> str:
        return f"{self.name or self.id} ({self.seg_type} {self.seg_id})"


@dataclass(frozen=True)
class HostInfo:
    """A hypervisor: its tunnel address and ports (``tunnel_ofports``: "vxlan"/"gre" -> ofport;
    ``ofports``: port id -> ofport of the ports its OVSDB shows)."""

    id: str
    tunnel_ip: str
    tunnel_ofports: Mapping[str, int] = field(default_factory=dict)
    ofports: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SgRuleInfo:
    """A security-group rule by its key (its conjunction id in the flows)."""

    key: int
    group: str
    direction: str
    ethertype: str = "IPv4"
    protocol: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group: str | None = None

    @property
    def text(self) -> str:
        what = self.protocol or "any protocol"
        if self.port_min is not None:
            hi = self.port_max if self.port_max is not None else self.port_min
            what += f"/{self.port_min}" if hi == self.port_min else f"/{self.port_min}-{hi}"
        side = "from" if self.direction == "ingress" else "to"
        who = ""
        if self.remote_group:
            who = f" {side} members of {self.remote_group}"
        elif self.remote_ip_prefix:
            who = f" {side} {self.remote_ip_prefix}"
        return f"{self.ethertype} {what} {self.direction}{who}"


@dataclass
class Catalog:
    """What the explanation names things by; indexes are built once (treat it as read-only)."""

    ports: Mapping[str, PortInfo]
    networks: Mapping[int, NetworkInfo]
    hosts: Mapping[str, HostInfo]
    sg_rules: Mapping[int, SgRuleInfo] = field(default_factory=dict)
    _by_num: dict[int, PortInfo] = field(init=False, repr=False)
    _at: dict[tuple[str, int], PortInfo] = field(init=False, repr=False)
    _by_ip: dict[str, HostInfo] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_num = {p.num: p for p in self.ports.values()}
        self._at = {(h.id, of): self.ports[pid] for h in self.hosts.values()
                    for pid, of in h.ofports.items() if pid in self.ports}  # fmt: skip
        self._by_ip = {h.tunnel_ip: h for h in self.hosts.values()}

    def port_by_num(self, num: int) -> PortInfo | None:
        return self._by_num.get(num)

    def port_at(self, host: str, ofport: int) -> PortInfo | None:
        return self._at.get((host, ofport))

    def host_by_ip(self, ip: str) -> HostInfo | None:
        return self._by_ip.get(ip)

    def network(self, key: int) -> str:
        net = self.networks.get(key)
        return net.label if net is not None else f"network #{key}"

    def port_of_mac(self, key: int, mac: str) -> PortInfo | None:
        for p in self.ports.values():
            if p.network_key == key and (p.mac == mac or any(m == mac for _, m in p.allowed_pairs)):
                return p
        return None


# ------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Path:
    """One copy of the packet from the source port to where it ended.  ``verdict``:
    ``delivered`` (to ``port``), ``answered`` (an ARP reply back to the sender), ``punted``
    (to the controller: DHCP, TTL expiry, a virtual IP's ARP), ``dropped``, or ``unknown`` (a
    host whose flows are not known)."""

    verdict: str
    steps: tuple[str, ...]
    port: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class HostTrace:
    """The raw trace of the packet on one host (every flow that handled it)."""

    host: str
    in_port: int
    trace: Trace


@dataclass(frozen=True)
class TenantTrace:
    packet: str
    paths: tuple[Path, ...]
    hosts: tuple[HostTrace, ...]

    @property
    def verdict(self) -> str:
        """``delivered`` if any copy reached a port, else the first path's verdict."""
        verdicts = [p.verdict for p in self.paths]
        for v in ("delivered", "answered", "punted", "unknown"):
            if v in verdicts:
                return v
        return "dropped"

    @property
    def delivered_to(self) -> list[str]:
        return sorted(p.port for p in self.paths if p.verdict == "delivered" and p.port)


Tables = Callable[[str], "Slice | FlowTable | None"]
"""A host's whole flow table (desired or read back), None if it is not known."""

_TERMINAL = ("output", "controller", "miss", "drop")
_PIPELINE_FIELDS = ("in_port", "metadata", "ct_state", "ct_zone", "ct_mark", "conj_id",
                    "tun_ipv4_dst", "tunnel_id", "tun_ipv4_src")  # fmt: skip


def follow(
    cat: Catalog,
    tables: Tables,
    port_id: str,
    packet: Mapping[str, Any],
    ct_states: Sequence[str | int] = (),
) -> TenantTrace:
    """The packet sent by port ``port_id``, through its host and, over tunnels, the hosts it
    reaches.  Raises `TraceError` for a port that is not bound or has no interface, and for a
    flow table the evaluator cannot evaluate exactly."""
    port = cat.ports.get(port_id)
    if port is None:
        raise KeyError(port_id)
    if port.host is None or port.host not in cat.hosts:
        raise TraceError(f"port {port.label} is not bound to a registered host")
    ofport = cat.hosts[port.host].ofports.get(port.id)
    if ofport is None:
        raise TraceError(f"host {port.host} shows no interface for port {port.label}")
    walker = _Follow(cat, tables, deque(ct_states))
    first = f"port {port.label} on {port.host} sends {packet_text(packet)}"
    walker.host(port.host, ofport, dict(packet), [first], from_tunnel=False)
    return TenantTrace(packet_text(packet), tuple(walker.paths), tuple(walker.hops))


class _Follow:
    def __init__(self, cat: Catalog, tables: Tables, states: deque[str | int]) -> None:
        self.cat = cat
        self.tables = tables
        self.states = states
        self.paths: list[Path] = []
        self.hops: list[HostTrace] = []

    def host(self, host: str, in_port: int, packet: dict[str, Any], before: list[str],
             from_tunnel: bool) -> None:  # fmt: skip
        flows = self.tables(host)
        if flows is None:
            self.paths.append(Path("unknown", (*before, f"{host}: its flows are not known"),
                                   host=host))  # fmt: skip
            return
        tr = trace(flows, in_port, packet, list(self.states))
        for _ in range(sum(1 for s in tr.steps if s.kind == "ct")):
            if self.states:
                self.states.popleft()
        self.hops.append(HostTrace(host, in_port, tr))
        say = _Describer(self.cat, host, in_port)
        for i, end in enumerate(tr.steps):
            if end.kind not in _TERMINAL:
                continue
            lines = list(before)
            for s in tr.steps[:i]:
                if s.kind in _TERMINAL or end.branch[: len(s.branch)] != s.branch:
                    continue
                text = say.step(s)
                if text and (not lines or lines[-1] != f"{host}: {text}"):
                    lines.append(f"{host}: {text}")
            self.end(host, say, end, lines, from_tunnel, _rule_before(tr.steps, i))

    def end(self, host: str, say: _Describer, end: Step, lines: list[str],
            from_tunnel: bool, last_rule: Rule | None) -> None:  # fmt: skip
        hinfo = self.cat.hosts[host]
        if end.kind in ("miss", "drop"):
            if end.table == t.SG_INGRESS and end.rule and end.rule.priority == t.PRIO_SG_HAIRPIN:
                return  # a flood copy back to its sender: OVS would skip it anyway
            self.paths.append(Path("dropped", (*lines, f"{host}: dropped: {say.drop(end)}"),
                                   host=host))  # fmt: skip
            return
        if end.kind == "controller":
            why = _punt_reason(last_rule)
            self.paths.append(Path("punted", (*lines, f"{host}: sent to tenantnet ({why})"),
                                   host=host))  # fmt: skip
            return
        fields = dict(end.fields)
        kinds = {of: kind for kind, of in hinfo.tunnel_ofports.items()}
        if end.port in kinds:
            dst_ip = str(fields.get("tun_ipv4_dst"))
            dst = self.cat.host_by_ip(dst_ip)
            hop = f"tunnel {kinds[end.port]} {fields.get('tunnel_id')} to {dst_ip}"
            if dst is None:
                self.paths.append(Path("dropped", (*lines, f"{host}: {hop}: no registered host "
                                                   "has that address"), host=host))  # fmt: skip
                return
            if from_tunnel:
                self.paths.append(Path("dropped", (*lines, f"{host}: {hop}: a tunnel packet sent "
                                                   "into a tunnel again (not followed)"),
                                       host=host))  # fmt: skip
                return
            in_port = dst.tunnel_ofports.get(kinds[end.port])
            if in_port is None:
                self.paths.append(Path("dropped", (*lines, f"{host}: {hop}: {dst.id} has no "
                                                   f"{kinds[end.port]} tunnel port"),
                                       host=dst.id))  # fmt: skip
                return
            inner = {k: v for k, v in fields.items()
                     if k not in _PIPELINE_FIELDS and not k.startswith("reg")}  # fmt: skip
            inner.update(tunnel_id=fields.get("tunnel_id", 0), tun_ipv4_src=hinfo.tunnel_ip)
            self.host(dst.id, in_port, inner, [*lines, f"{host}: {hop} ({dst.id})"],
                      from_tunnel=True)  # fmt: skip
            return
        port = self.cat.port_at(host, end.port or 0)
        if end.port == say.in_port and fields.get("arp_op") == 2:
            who = port.label if port is not None else f"ofport {end.port}"
            self.paths.append(Path("answered", (*lines, f"{host}: ARP reply sent back to {who}"),
                                   port=port.id if port else None, host=host))  # fmt: skip
            return
        if port is None:
            self.paths.append(Path("delivered", (*lines, f"{host}: out of ofport {end.port}, "
                                                 "which is no tenantnet port"), host=host))
            return
        self.paths.append(Path("delivered", (*lines, f"delivered to port {port.label} on {host}"),
                               port=port.id, host=host))  # fmt: skip


# --------------------------------------------------------------------------------- describing


class _Describer:
    """Turns one host's steps into sentences (see the module docstring)."""

    def __init__(self, cat: Catalog, host: str, in_port: int) -> None:
        self.cat = cat
        self.host = host
        self.in_port = in_port
        self.tunnel_kinds = {of: k for k, of in cat.hosts[host].tunnel_ofports.items()}

    def _port(self, ofport: object) -> str:
        p = self.cat.port_at(self.host, int(ofport)) if isinstance(ofport, int) else None
        return f"port {p.name or p.id}" if p is not None else f"ofport {ofport}"

    def _sg_port(self, f: Mapping[str, Any]) -> PortInfo | None:
        reg = f.get(t.REG_SG_PORT)
        return self.cat.port_at(self.host, reg) if isinstance(reg, int) else None

    def step(self, s: Step) -> str | None:
        if s.kind == "group":
            return None
        if s.kind == "ct":
            return f"conntrack zone {s.zone}: {ct_state_text(s.ct_state or 0)}"
        if s.kind == "commit":
            if s.mark == t.CT_MARK_DENIED:
                return f"connection marked denied in conntrack zone {s.zone}"
            return f"new connection committed in conntrack zone {s.zone}"
        if s.kind == "skip" or s.rule is None or s.table is None:
            return None
        f = dict(s.fields)
        m = dict(s.rule.match)
        table, prio = s.table, s.rule.priority
        if t.owner_kind(s.rule.cookie) == t.OwnerKind.ROUTER:
            return self._routing(s, f, m)
        if table == t.CLASSIFY:
            net = self.cat.network(_md(s))
            if "tunnel_id" in m:
                peer = self.cat.host_by_ip(str(m.get("tun_ipv4_src")))
                who = f"{peer.id} ({peer.tunnel_ip})" if peer else str(m.get("tun_ipv4_src"))
                return f"accepted from {who}, a peer of network {net}"
            return f"{self._port(m.get('in_port'))} enters network {net}"
        if table == t.PORT_SECURITY:
            return self._port_security(s, f, m, prio)
        if table in (t.L2_FROM_PORT, t.L2_FROM_TUNNEL):
            return self._l2(s, f, m, prio)
        if table in (t.SG_EGRESS, t.SG_INGRESS):
            return self._sg_entry(s, f, m, prio)
        if table in (t.SG_EGRESS_RULES, t.SG_INGRESS_RULES):
            if s.conj_ids:
                rules = [self.cat.sg_rules.get(k) for k in s.conj_ids]
                named = "; ".join(f"rule {r.text} of group {r.group}" if r else f"rule #{k}"
                                  for k, r in zip(s.conj_ids, rules, strict=True))  # fmt: skip
                return f"security groups: allowed by {named}"
            if prio == t.PRIO_SG_REPLY:
                return "security groups: a reply or related packet of an allowed connection"
            return None
        if table in (t.SG_EGRESS_ACCEPT, t.SG_INGRESS_ACCEPT):
            return None
        return f"table {table}: {_owner(self.cat, s.rule.cookie)}"

    def _routing(self, s: Step, f: dict[str, Any], m: dict[str, Any]) -> str:
        """A router's flow (`flows.routing`): which step of routing on the sending host."""
        assert s.rule is not None
        acts = [a for ins in s.rule.instructions for a in getattr(ins, "actions", ())]
        table = s.table
        if table == t.CLASSIFY:
            peer = self.cat.host_by_ip(str(m.get("tun_ipv4_src")))
            who = f"{peer.id} ({peer.tunnel_ip})" if peer else str(m.get("tun_ipv4_src"))
            net = self.cat.network(_md(s))
            return f"accepted from {who}, a host that routes into network {net}"
        if "arp_tpa" in m:
            mac = _answer_mac(acts)
            return f"ARP: {m['arp_tpa']} is a router interface ({mac}): answered on {self.host}"
        if table == t.L2_FROM_PORT:
            return f"to router interface {m.get('eth_dst')}: routed on {self.host}"
        if table == t.L3_ROUTING and "nw_ttl" in m:
            return "TTL 1: not routed, tenantnet answers ICMP time exceeded"
        if table == t.L3_ROUTING and int(m.get(t.REG_ROUTER_HI, 0)) & t.ROUTER_ECHO_MARK:
            return f"the echo reply leaves from interface {_answer_mac(acts)}, back to the VM"
        if table == t.L3_ROUTING and "icmpv4_type" in m:
            return f"router interface {m.get('ipv4_dst')} answers the ping"
        if table == t.L3_ROUTING:
            nw = m.get("ipv4_dst")
            cidr = str(netaddr.IPNetwork("/".join(nw))) if isinstance(nw, tuple) else str(nw)
            ttl = int(f.get("nw_ttl", 64))
            # the packet's own key (`_md` would give the one the route writes)
            src, dst_net = self.cat.network(_key_seen(s)), self.cat.network(self._written_key(s))
            return (
                f"routed from network {src} into {cidr} of network {dst_net} (TTL {ttl} -> "
                f"{ttl - 1})"
            )
        sets = {a.field: str(a.value) for a in acts if isinstance(a, SetField)}
        port = self.cat.port_of_mac(_md(s), sets.get("eth_dst", ""))
        name = port.label if port is not None else sets.get("eth_dst", "?")
        where = f"tunnelled to {sets['tun_ipv4_dst']}" if "tun_ipv4_dst" in sets else "here"
        return f"{m.get('ipv4_dst')} is port {name}: {where}"

    @staticmethod
    def _written_key(s: Step) -> int:
        assert s.rule is not None
        for ins in s.rule.instructions:
            if ins.kind == "write_metadata":
                return int(getattr(ins, "value", 0)) & t.METADATA_MASK
        return 0

    def _port_security(self, s: Step, f: dict[str, Any], m: dict[str, Any],
                       prio: int) -> str:  # fmt: skip
        who = self._port(m.get("in_port"))
        if prio == t.PRIO_DHCP_PUNT:
            return f"{who}'s DHCP goes to tenantnet's DHCP responder"
        if prio == t.PRIO_PASS:
            return f"port security is off on {who}: anything passes"
        for key, what in (("ipv4_src", "IPv4"), ("arp_spa", "ARP"), ("ipv6_src", "IPv6")):
            if key in m:
                value = m[key]
                if isinstance(value, tuple) or self._is_pair(m):
                    return f"port security: {f.get(key)} is an allowed address pair of {who}"
                if value in ("0.0.0.0", "::"):
                    return f"port security: {what} from {value} (DHCP or address detection)"
                return f"port security: {value} is a fixed IP of {who}"
        return f"port security: allowed for {who}"

    def _is_pair(self, m: dict[str, Any]) -> bool:
        """A pair's rule: another MAC than the port's, or an ARP sender address that is not
        one of its fixed IPs (a virtual IP with the port's own MAC)."""
        p = self.cat.port_at(self.host, int(m.get("in_port", 0)))
        if p is None:
            return False
        spa = m.get("arp_spa")
        return m.get("eth_src") != p.mac or (isinstance(spa, str) and spa not in p.fixed_ips)

    def _l2(self, s: Step, f: dict[str, Any], m: dict[str, Any], prio: int) -> str:
        key = _md(s)
        dst = str(f.get("eth_dst"))
        assert s.rule is not None
        acts = [a for ins in s.rule.instructions for a in getattr(ins, "actions", ())]
        if "arp_tpa" in m:
            if any(isinstance(a, SetField) and a.field == "arp_op" for a in acts):
                mac = _answer_mac(acts)
                owner = self.cat.port_of_mac(key, mac)
                if owner is not None:
                    who = owner.label
                elif t.owner_kind(s.rule.cookie) == t.OwnerKind.NETWORK:
                    who = f"tenantnet's DHCP server ({mac})"
                else:
                    who = mac
                return f"ARP: {m['arp_tpa']} is {who}: answered on {self.host}"
            return f"ARP for {m['arp_tpa']} is not answered here (gratuitous or the owner's own)"
        if prio == 170:
            return f"ARP from {self._port(m.get('in_port'))} (port security off) is never answered"
        if "eth_dst" in m:
            port = self.cat.port_of_mac(key, dst)
            name = port.label if port is not None else dst
            tun = [a for a in acts if isinstance(a, SetField) and a.field == "tun_ipv4_dst"]
            if tun:
                vni = next((a.value for a in acts if isinstance(a, SetField)
                            and a.field == "tunnel_id"), "?")  # fmt: skip
                where = port.host if port is not None and port.host else "another host"
                return f"L2: {dst} is port {name} on {where} (tunnel key {vni} to {tun[0].value})"
            if any(getattr(ins, "table", None) == t.SG_INGRESS for ins in s.rule.instructions):
                return f"L2: {dst} is port {name}, here: through its security groups"
            return f"L2: {dst} is port {name}, here"
        if prio == t.PRIO_FLOOD:
            kind = "broadcast" if dst == "ff:ff:ff:ff:ff:ff" else (
                "multicast" if int(dst.split(":")[0], 16) & 1 else "an unknown MAC")
            scope = "local ports" if s.table == t.L2_FROM_TUNNEL else "local ports and peers"
            return f"L2: {dst} is {kind} in network {self.cat.network(key)}: flooded to {scope}"
        return f"L2: {_owner(self.cat, s.rule.cookie)}"

    def _sg_entry(self, s: Step, f: dict[str, Any], m: dict[str, Any], prio: int) -> str | None:
        port = self._sg_port(f)
        who = f"port {port.name or port.id}" if port else "the port"
        side = "egress" if s.table == t.SG_EGRESS else "ingress"
        if prio == t.PRIO_SG_ALWAYS:
            return f"security groups ({side} of {who}): ARP, ND and DHCP always pass"
        if prio == t.PRIO_SG_STATELESS:
            return f"security groups ({side} of {who}): stateless groups, no conntrack"
        if prio == t.PRIO_SG_TRACK:
            return f"security groups ({side} of {who}): through conntrack"
        return None

    def drop(self, s: Step) -> str:
        """Why a copy was dropped, as precisely as the step allows."""
        f = dict(s.fields)
        table = s.table
        pkt = packet_text(f)
        if table == t.CLASSIFY:
            if f.get("in_port") in self.tunnel_kinds:
                src = f.get("tun_ipv4_src")
                return (f"{self.host} accepts no {self.tunnel_kinds[f['in_port']]} key "
                        f"{f.get('tunnel_id')} from {src}: that host is no peer of a network "
                        "with that key here")  # fmt: skip
            if f.get("vlan_vid", 0):
                return "VLAN-tagged frames from VMs are dropped"
            return f"{self._port(f.get('in_port'))} has no flows here (admin down or not bound)"
        if table == t.PORT_SECURITY:
            p = self.cat.port_at(self.host, int(f.get("in_port", 0)))
            if s.rule is not None and t.owner_kind(s.rule.cookie) == t.OwnerKind.DHCP_GUARD:
                who = f"port {p.name or p.id}" if p is not None else "the port"
                return f"{who} flooded tenantnet with DHCP: its DHCP is dropped for a while"
            if s.rule is not None and t.owner_kind(s.rule.cookie) == t.OwnerKind.ARP_COPY_GUARD:
                who = f"port {p.name or p.id}" if p is not None else "the port"
                return (f"{who} announced virtual IP {f.get('arp_spa')} too often: its "
                        "gratuitous ARPs for it are dropped for a while")  # fmt: skip
            if p is None:
                return "port security: unknown sender"
            src_ip = f.get("ipv4_src", f.get("arp_spa", f.get("ipv6_src")))
            if f.get("eth_src") != p.mac and all(m != f.get("eth_src") for _, m in p.allowed_pairs):
                return (f"port security: port {p.name or p.id} may not send from MAC "
                        f"{f.get('eth_src')} (its MAC is {p.mac})")  # fmt: skip
            if f.get("eth_type") == 0x0806 and f.get("arp_sha") != f.get("eth_src"):
                return f"port security: ARP sender MAC {f.get('arp_sha')} is not port {p.name}'s"
            if src_ip is not None:
                return (f"port security: {src_ip} is neither a fixed IP nor an allowed address "
                        f"pair of port {p.name or p.id} ({', '.join(p.fixed_ips) or 'none'})")
            return f"port security: port {p.name or p.id} may not send ethertype " \
                   f"{f.get('eth_type', 0):#06x}"
        if table in (t.L2_FROM_PORT, t.L2_FROM_TUNNEL):
            return f"no destination for {f.get('eth_dst')} in this network here"
        acts = [a for ins in (s.rule.instructions if s.rule else ()) for a in
                getattr(ins, "actions", ())]  # fmt: skip
        if any(isinstance(a, DecTtl) for a in acts):
            return f"TTL expired at the router ({pkt}, TTL {f.get('nw_ttl', 64)})"
        if table == t.L3_ROUTING:
            return f"the router has no route to {f.get('ipv4_dst')}"
        if table == t.L3_NEIGHBOURS:
            return f"no port holds {f.get('ipv4_dst')} in network {self.cat.network(_md(s))}"
        port = self._sg_port(f)
        who = port.name or port.id if port else "the port"
        side = "egress" if table in (t.SG_EGRESS, t.SG_EGRESS_RULES, t.SG_EGRESS_ACCEPT) \
            else "ingress"
        prio = s.rule.priority if s.rule is not None else None
        if table in (t.SG_EGRESS, t.SG_INGRESS):
            if prio == t.PRIO_SG_BAN:
                return f"a VM may not send that ({pkt}: DHCP server replies, router adverts)"
            return f"security groups of {who} allow only IP, ARP and ND ({pkt})"
        if table in (t.SG_EGRESS_RULES, t.SG_INGRESS_RULES):
            state = f.get("ct_state", 0)
            if prio == t.PRIO_SG_STATE:
                if f.get("ct_mark") == t.CT_MARK_DENIED:
                    return "the connection was denied by a rule change (ct_mark)"
                return f"conntrack says the packet is invalid ({ct_state_text(state)})"
            groups = ", ".join(port.security_groups) if port and port.security_groups else None
            if port is not None and not port.security_groups:
                return f"port {who} is in no security group: all IP {side} is dropped"
            why = f"no security-group rule of group(s) {groups or '?'} of port {who} allows " \
                  f"{pkt} {side}"
            near = _near_misses(self.cat, port, side, f) if port is not None else []
            return why + "".join(f"; {m}" for m in near)
        if s.rule is not None:
            return f"table {table}: {rule_text(s.rule)} ({_owner(self.cat, s.rule.cookie)})"
        return f"no flow in table {table}"


_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "icmpv6": 58, "ipv6-icmp": 58}


def _near_misses(cat: Catalog, port: PortInfo, side: str, f: Mapping[str, Any]) -> list[str]:
    """The rules of the port's groups that allow this protocol and port but not this remote
    address: the missing membership (or prefix) is usually the answer to "why"."""
    v6 = f.get("eth_type") == 0x86DD
    remote = f.get(("ipv6" if v6 else "ipv4") + ("_src" if side == "ingress" else "_dst"))
    if remote is None:
        return []
    out = []
    for rule in sorted(cat.sg_rules.values(), key=lambda r: r.key):
        if rule.group not in port.security_groups or rule.direction != side:
            continue
        if (rule.ethertype == "IPv6") != v6 or not _allows_l4(rule, f):
            continue
        if rule.remote_group:
            members = {netaddr.IPNetwork(ip) for p in cat.ports.values()
                       if rule.remote_group in p.security_groups
                       for ip in (*p.fixed_ips, *(a for a, _ in p.allowed_pairs))}  # fmt: skip
            if not any(netaddr.IPAddress(remote) in m for m in members):
                out.append(f"rule {rule.text} of group {rule.group} would, but {remote} is not "
                           f"an address of a member of {rule.remote_group}")  # fmt: skip
        elif rule.remote_ip_prefix and netaddr.IPAddress(remote) not in netaddr.IPNetwork(
            rule.remote_ip_prefix
        ):
            out.append(f"rule {rule.text} of group {rule.group} would, but {remote} is outside "
                       f"{rule.remote_ip_prefix}")  # fmt: skip
    return out


def _allows_l4(rule: SgRuleInfo, f: Mapping[str, Any]) -> bool:
    """Whether the rule's protocol and port range (ICMP type/code) cover the packet."""
    if rule.protocol is None:
        return True
    proto = _PROTO_NUMBERS.get(rule.protocol.lower()) if not rule.protocol.isdigit() else int(
        rule.protocol)
    have = f.get("ip_proto")
    if proto == 1 and f.get("eth_type") == 0x86DD:
        proto = 58
    if proto != have:
        return False
    if rule.port_min is None:
        return True
    if have in (1, 58):
        kind = "icmpv4" if have == 1 else "icmpv6"
        code_ok = rule.port_max is None or f.get(f"{kind}_code") == rule.port_max
        return f.get(f"{kind}_type") == rule.port_min and code_ok
    name = {6: "tcp", 17: "udp", 132: "sctp"}.get(int(have or 0))
    hi = rule.port_max if rule.port_max is not None else rule.port_min
    return name is not None and rule.port_min <= int(f.get(f"{name}_dst", -1)) <= hi


def _md(s: Step) -> int:
    """The network key the step's packet carries (or writes, in CLASSIFY)."""
    if s.rule is not None:
        for ins in s.rule.instructions:
            value = getattr(ins, "value", None)
            if isinstance(value, int) and ins.kind == "write_metadata":
                return value
    return _key_seen(s)


def _key_seen(s: Step) -> int:
    """The network key the step's packet carries as the table saw it."""
    return int(dict(s.fields).get("metadata", 0)) & t.METADATA_MASK


def _rule_before(steps: Sequence[Step], i: int) -> Rule | None:
    """The rule that ran last on the copy that ends at ``steps[i]``: for a punt, the one whose
    output to the controller it is."""
    branch = steps[i].branch
    for s in reversed(steps[:i]):
        if s.kind == "match" and branch[: len(s.branch)] == s.branch:
            return s.rule
    return None


def _punt_reason(rule: Rule | None) -> str:
    """Why a packet was sent to the controller, by the rule that sent it: `flows.routing`'s
    TTL expiry, `flows.compiler`'s virtual-IP announce, else its DHCP punt (the only other
    rule tenantnet punts with)."""
    at = (rule.table, rule.priority) if rule is not None else None
    if at == (t.L3_ROUTING, PRIO_TTL_EXPIRED):
        return "ICMP time exceeded"
    if at == (t.PORT_SECURITY, t.PRIO_VIP_ANNOUNCE):
        return "its ARP says who holds the virtual IP"
    return "DHCP"


def _answer_mac(acts: list[Any]) -> str:
    return next((str(a.value) for a in acts if isinstance(a, SetField) and a.field == "eth_src"),
                "")


def _owner(cat: Catalog, cookie: int) -> str:
    """A flow's owner in tenant terms (``port vm1``, ``network web``, ``base pipeline``)."""
    if not t.is_ours(cookie):
        return f"a foreign flow (cookie {cookie:#x})"
    kind, num = t.owner_kind(cookie), t.owner_num(cookie)
    if kind == t.OwnerKind.BASE:
        return "the base pipeline"
    if kind == t.OwnerKind.NETWORK:
        return f"network {cat.network(num)}"
    if kind == t.OwnerKind.PORT:
        p = cat.port_by_num(num)
        return f"port {p.label}" if p else f"port #{num}"
    if kind == 3:
        return "security groups"
    if kind == t.OwnerKind.DHCP_GUARD:
        p = cat.port_by_num(num)
        return f"the DHCP guard of port {p.label if p else f'#{num}'}"
    if kind == t.OwnerKind.ARP_COPY_GUARD:
        p = cat.port_by_num(num)
        who = p.label if p else f"#{num}"
        return f"the gratuitous-ARP guard of port {who} (drops its announcements for a while)"
    return t.describe_owner(cookie)


def packet_text(f: Mapping[str, Any]) -> str:
    """``tcp 10.0.0.5:40000 -> 10.0.0.6:22``, ``ARP who-has 10.0.0.6 tell 10.0.0.5``..."""
    eth = f.get("eth_type")
    if eth == 0x0806:
        if f.get("arp_op") == 1:
            return f"ARP who-has {f.get('arp_tpa')} tell {f.get('arp_spa')}"
        return f"ARP reply {f.get('arp_spa')} is-at {f.get('arp_sha')}"
    v = "ipv4" if eth == 0x0800 else "ipv6" if eth == 0x86DD else None
    if v is None:
        return f"ethertype {int(eth or 0):#06x} {f.get('eth_src')} -> {f.get('eth_dst')}"
    src, dst = f.get(f"{v}_src"), f.get(f"{v}_dst")
    proto = f.get("ip_proto")
    for name, num in (("tcp", 6), ("udp", 17), ("sctp", 132)):
        if proto == num:
            return f"{name} {src}:{f.get(f'{name}_src')} -> {dst}:{f.get(f'{name}_dst')}"
    if proto in (1, 58):
        kind = "icmpv4" if proto == 1 else "icmpv6"
        return (f"{'icmp' if proto == 1 else 'icmpv6'} type {f.get(f'{kind}_type')} code "
                f"{f.get(f'{kind}_code')} {src} -> {dst}")  # fmt: skip
    what = f"IP protocol {proto}" if proto is not None else ("IPv4" if v == "ipv4" else "IPv6")
    return f"{what} {src} -> {dst}"


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (else it may be a MAC)."""
    try:
        netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False
    return True
