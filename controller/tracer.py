"""The operator's packet trace (``POST /tenantnet/trace``, ``tenantnet trace``): "why can't VM A
reach VM B?" answered in the orchestrator's terms.

A request names a source port and a packet; the answer follows it through the source host's
flows, across the tunnel and through the receiving host (`flows.trace_terms`, which uses the
exact evaluator `flows.trace`).  Two sources of flows, one evaluator:

* **desired** (default): what the data plane last planned for each host - the compilers' output
  it recorded when it sent it (`HostRuntime.installed`), copied on the actor thread
  (`DataPlane.on_actor`) so the trace never sees half a step;
* **installed**: the flows and groups read from the switches now (every cookie: a foreign flow
  changes what the switch does too), one host at a time as the packet reaches it.

A difference between the two answers is drift.  The names (ports, networks, security groups)
come from the store, the hosts' ofports, tunnel addresses and port holders from the data plane;
the catalog covers the source port's network only (a packet never leaves it), so a trace costs
O(ports of that network + flows of the hosts it visits).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import netaddr

from controller.dataplane.state import ROUTER_INTERFACE_OWNERS
from controller.store.ports import VIPS_HELD
from flows.model import Slice
from flows.readable import rule_text
from flows.trace import FlowTable, Step, ct_state_text, make_packet, ovs_flow_text
from flows.trace_terms import (
    Catalog,
    HostInfo,
    NetworkInfo,
    PortInfo,
    SgRuleInfo,
    TenantTrace,
    follow,
)

SNAPSHOT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
READ_BUDGET_S = 30.0  # every switch read of one installed trace together (a flood visits many)
MAX_INSTALLED_TRACES = 4  # installed traces at once: each dumps whole switches, like drift
CT_PASSES = 16  # a single ct_state given for "every pass": more than any path has

ReadSwitch = Callable[[int, Callable[..., None]], bool]
"""``read_all(dpid, on_done(Slice | None, why))`` of the OpenFlow app: every flow and group."""


class TraceInputError(ValueError):
    """The request cannot be traced; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class HostSnap:
    """One host as the data plane knows it, copied on the actor."""

    id: str
    tunnel_ip: str
    dpid: int
    tunnel_ofports: Mapping[str, int]
    ofports: Mapping[str, int]
    owners: Mapping[int, Slice] | None  # what it last planned there, by owner; None: unknown


@dataclass(frozen=True)
class Snapshot:
    hosts: Mapping[str, HostSnap]
    holders: Mapping[str, str | None]  # port id -> the host holding it


def snapshot(dp: Any, port_ids: list[str]) -> Snapshot:
    """Run on the actor (`DataPlane.on_actor`): copies, never references to what it changes."""
    hosts = {}
    for host_id, rt in dp.hosts.items():
        obs = rt.obs
        hosts[host_id] = HostSnap(
            host_id,
            rt.rec.tunnel_ip,
            rt.dpid,
            dict(obs.tunnel_ofports) if obs is not None else {},
            dict(obs.bindings) if obs is not None else {},
            dict(rt.installed) if rt.installed is not None else None,
        )
    return Snapshot(hosts, {pid: dp.bindings.holder(pid) for pid in port_ids})


@dataclass(frozen=True)
class Request:
    """A validated request (see `controller.api.trace.TraceRequest` for the fields' meaning)."""

    source_port_id: str
    destination_ip: str | None = None
    destination_mac: str | None = None
    protocol: str | int = "icmp"
    source_l4_port: int = 40000
    destination_l4_port: int = 0
    icmp_type: int = 8
    icmp_code: int = 0
    source_ip: str | None = None
    source_mac: str | None = None
    ct_state: tuple[str, ...] = ()
    installed: bool = False


class Tracer:
    """Answers trace requests from the store (names), the data plane (``on_actor``) and, for
    ``installed``, the switches (``read_switch``).  Both are asked for when a request comes
    (the API serves before the data plane starts): None means not available (yet)."""

    def __init__(
        self,
        store: Any,
        dataplane: Callable[[], Any | None],
        read_switch: Callable[[], ReadSwitch | None],
    ) -> None:
        self.store = store
        self.dataplane = dataplane
        self.read_switch = read_switch
        # An installed trace dumps every flow and group of each switch it visits and holds an
        # API worker thread while it waits: bounded like drift requests (the rest get a 429).
        self._installed_traces = threading.BoundedSemaphore(MAX_INSTALLED_TRACES)

    def trace(self, req: Request) -> dict[str, Any]:
        port_id = req.source_port_id
        cat, snap, gateways = self._catalog(port_id)
        read = self.read_switch()
        if req.installed and read is None:
            raise TraceInputError("installed", "reading the switches is not available", 503)
        src = cat.ports.get(port_id)
        if src is None:  # deleted between its read and its network's listing: a 404, not a 500
            raise TraceInputError("source_port_id", f"port {port_id} not found", 404)
        packet = build_packet(req, src, cat, gateways)
        states = req.ct_state * CT_PASSES if len(req.ct_state) == 1 else req.ct_state
        if not (req.installed and read):
            result = follow(cat, _desired(snap), port_id, packet, list(states))
            return render(result, "desired", cat)
        if not self._installed_traces.acquire(blocking=False):
            raise TraceInputError(
                "installed", "too many installed traces in progress; retry later", 429
            )
        try:
            tables = _installed(snap, read, time.monotonic() + READ_BUDGET_S)
            result = follow(cat, tables, port_id, packet, list(states))
        finally:
            self._installed_traces.release()
        return render(result, "installed", cat)

    def _catalog(self, port_id: str) -> tuple[Catalog, Snapshot, dict[int, str]]:
        """The names and flows a trace from the port needs: its network and the networks its
        routers reach (a routed packet ends in one of their ports), and the MAC of its
        network's router interface (its gateway) by network key."""
        port = self.store.get_port(port_id)
        if port is None:
            raise TraceInputError("source_port_id", f"port {port_id} not found", 404)
        net = self.store.get_network(port["network_id"])
        if net is None:  # deleted meanwhile
            raise TraceInputError("source_port_id", f"port {port_id} not found", 404)
        dp = self.dataplane()
        if dp is None:
            raise TraceInputError("source_port_id", "the data plane is not running", 503)
        try:
            routers, routed = dp.on_actor(lambda dp: routed_networks(dp.mirror, net["id"]),
                                          SNAPSHOT_TIMEOUT_S)  # fmt: skip
            nets = [net, *(n for n in map(self.store.get_network, routed) if n is not None)]
            ports = [p for n in nets for p in self.store.list_ports(network_id=n["id"])]
            snap: Snapshot = dp.on_actor(
                lambda dp: snapshot(dp, [p["id"] for p in ports]), SNAPSHOT_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise TraceInputError("source_port_id", str(exc), 503) from None
        gateways = {int(net["_key"]): p["mac_address"] for p in ports
                    if p["network_id"] == net["id"] and p.get("device_id") in routers
                    and p.get("device_owner") in ROUTER_INTERFACE_OWNERS}  # fmt: skip
        return catalog(self.store, nets, ports, snap), snap, gateways


def _installed(
    snap: Snapshot, read: ReadSwitch, deadline: float
) -> Callable[[str], FlowTable | None]:
    """The hosts' flows read from their switches, one at a time as the packet reaches them;
    none after ``deadline`` (monotonic): a flood reaches every host of the network, and one
    slow switch after another must not hold the request for READ_TIMEOUT_S each."""
    cache: dict[str, FlowTable | None] = {}

    def table(host_id: str) -> FlowTable | None:
        if host_id not in cache:
            host = snap.hosts.get(host_id)
            left = min(READ_TIMEOUT_S, deadline - time.monotonic())
            got = _read(read, host.dpid, left) if host is not None and left > 0 else None
            cache[host_id] = FlowTable(got) if got is not None else None
        return cache[host_id]

    return table


def _desired(snap: Snapshot) -> Callable[[str], FlowTable | None]:
    cache: dict[str, FlowTable | None] = {}

    def table(host_id: str) -> FlowTable | None:
        if host_id not in cache:
            host = snap.hosts.get(host_id)
            owners = host.owners if host is not None else None
            cache[host_id] = None if owners is None else FlowTable(Slice(
                frozenset(r for s in owners.values() for r in s.rules),
                frozenset(g for s in owners.values() for g in s.groups),
            ))  # fmt: skip
        return cache[host_id]

    return table


def _read(read: ReadSwitch, dpid: int, timeout_s: float = READ_TIMEOUT_S) -> Slice | None:
    """One switch's flows and groups now, or None (gone, or no answer in time)."""
    done = threading.Event()
    box: list[Slice | None] = [None]

    def on_done(result: Slice | None, why: str = "") -> None:
        del why
        box[0] = result
        done.set()

    if not read(dpid, on_done) or not done.wait(timeout_s):
        return None
    return box[0]


# ----------------------------------------------------------------------------------- catalog


def routed_networks(mirror: Any, network_id: str) -> tuple[set[str], list[str]]:
    """Run on the actor: the routers with an interface in the network and their other
    networks (`controller.dataplane.state.Mirror`)."""
    return mirror.routers_of(network_id), sorted(mirror.routed_networks(network_id))


def catalog(store: Any, nets: list[Mapping[str, Any]], ports: list[Mapping[str, Any]],
            snap: Snapshot) -> Catalog:  # fmt: skip
    """The names a trace from a port of ``nets[0]`` needs: the ports of ``nets`` (its network
    and those its routers reach) with their holders, the networks, every host, and the rules
    of the security groups the ports are in."""
    keys = {n["id"]: int(n["_key"]) for n in nets}
    group_ids = sorted({g for p in ports for g in p.get("security_groups") or ()})
    names: dict[str, str] = {}
    rules: dict[int, SgRuleInfo] = {}
    for gid in group_ids:
        group = store.get_security_group(gid)
        names[gid] = (group or {}).get("name") or gid
    for gid in group_ids:
        for r in store.list_security_group_rules(gid):
            remote = r.get("remote_group_id")
            rules[int(r["_key"])] = SgRuleInfo(
                int(r["_key"]), names[gid], r["direction"], r.get("ethertype") or "IPv4",
                None if r.get("protocol") is None else str(r["protocol"]),
                r.get("port_range_min"), r.get("port_range_max"), r.get("remote_ip_prefix"),
                names.get(remote, remote) if remote else None,
            )  # fmt: skip
    infos = {
        p["id"]: PortInfo(
            id=p["id"], name=p.get("name") or "", mac=p["mac_address"],
            network_key=keys[p["network_id"]],
            fixed_ips=tuple(ip["ip_address"] for ip in p.get("fixed_ips") or ()),
            host=snap.holders.get(p["id"]),
            allowed_pairs=tuple((a["ip_address"], a.get("mac_address") or p["mac_address"])
                                for a in p.get("allowed_address_pairs") or ()),
            security_groups=tuple(names.get(g, g) for g in p.get("security_groups") or ()),
            port_security=bool(p.get("port_security_enabled", True)),
            admin_up=bool(p.get("admin_state_up", True)), num=int(p["_num"]),
            vips=tuple((p.get("binding:vif_details") or {}).get(VIPS_HELD, ())),
        )
        for p in ports
    }  # fmt: skip
    networks = {keys[n["id"]]: NetworkInfo(keys[n["id"]], n["id"], n.get("name") or "",
                                           n.get("provider:network_type") or "vxlan",
                                           int(n["provider:segmentation_id"]))
                for n in nets}  # fmt: skip
    hosts = {h.id: HostInfo(h.id, h.tunnel_ip, h.tunnel_ofports, h.ofports)
             for h in snap.hosts.values()}  # fmt: skip
    return Catalog(infos, networks, hosts, rules)


PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132, "icmpv6": 58}


def build_packet(req: Request, src: PortInfo, cat: Catalog,
                 gateways: Mapping[int, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The packet the source port would send: its MAC and fixed IP unless overridden, the
    destination's MAC looked up in the network when only an IP is given, or its gateway's
    (``gateways``: network key -> its router interface's MAC) for a port of a routed network."""
    dst_mac = req.destination_mac
    if dst_mac is None:
        assert req.destination_ip is not None  # the request model requires one of them
        owner = next((p for p in cat.ports.values() if req.destination_ip in p.fixed_ips), None)
        if owner is not None:
            dst_mac = owner.mac
        else:
            owner, dst_mac = pair_holder(cat, req.destination_ip)
        if owner.network_key != src.network_key:
            dst_mac = (gateways or {}).get(src.network_key, dst_mac)
    dst_ip = req.destination_ip
    v6 = dst_ip is not None and ":" in dst_ip
    src_ip = req.source_ip or next((ip for ip in src.fixed_ips if (":" in ip) == v6), None)
    src_mac = req.source_mac or src.mac
    if req.protocol == "arp":
        if dst_ip is None or v6:
            raise TraceInputError("destination_ip", "an ARP request needs an IPv4 destination_ip")
        if src_ip is not None and ":" in src_ip:
            # An ARP sender address is IPv4: an IPv6 source_ip is the client's mistake (400),
            # not an error of make_packet's (a 500).
            raise TraceInputError("source_ip", "an ARP request needs an IPv4 source_ip")
        return make_packet(
            src_mac,
            "ff:ff:ff:ff:ff:ff" if req.destination_mac is None else dst_mac,
            ip_src=src_ip or "0.0.0.0",
            ip_dst=dst_ip,
            arp_op=1,
        )
    if dst_ip is None:
        raise TraceInputError("destination_ip", f"a {req.protocol} packet needs destination_ip")
    if src_ip is None:
        raise TraceInputError(
            "source_ip", f"port {src.label} has no IPv{6 if v6 else 4} address; give source_ip"
        )
    if (":" in src_ip) != v6:
        raise TraceInputError("source_ip", "source_ip and destination_ip are of different families")
    proto = PROTOCOL_NUMBERS.get(str(req.protocol))
    proto = proto if proto is not None else int(req.protocol)
    return make_packet(src_mac, dst_mac, ip_src=src_ip, ip_dst=dst_ip, protocol=proto,
                       src_port=req.source_l4_port, dst_port=req.destination_l4_port,
                       icmp_type=req.icmp_type, icmp_code=req.icmp_code)  # fmt: skip


def pair_holder(cat: Catalog, ip: str) -> tuple[PortInfo, str]:
    """The port that holds ``ip`` as an allowed address pair (a VIP, keepalived's address) and
    the pair's MAC: the API lets that port receive for it, so a trace to it must not say that
    no port has it.  The most specific pair wins; of several equally specific (a VIP that
    moves between ports), the one the data plane learnt holds it now (`ports.claim_vip`),
    else ``destination_mac`` must say which one."""
    addr = netaddr.IPAddress(ip)
    found: list[tuple[int, PortInfo, str]] = []
    for p in cat.ports.values():
        for prefix, mac in p.allowed_pairs:
            try:
                net = netaddr.IPNetwork(prefix)
            except (netaddr.AddrFormatError, ValueError, TypeError):
                continue
            if net.version == addr.version and addr in net:
                found.append((net.prefixlen, p, mac))
    longest = max((n for n, _, _ in found), default=0)
    best = [(p, mac) for n, p, mac in found if n == longest]
    held = [(p, mac) for p, mac in best if str(addr) in p.vips]
    if len(best) > 1 and len(held) == 1:
        return held[0]
    if len(best) == 1:
        return best[0]
    if not best:
        raise TraceInputError(
            "destination_ip",
            f"no port of the source port's network has {ip}; give destination_mac too",
        )
    names = ", ".join(sorted(p.label for p, _ in best))
    raise TraceInputError(
        "destination_ip",
        f"{ip} is an allowed address pair of several ports ({names}); give destination_mac too",
    )


# ------------------------------------------------------------------------------------ answer


def render(result: TenantTrace, mode: str, cat: Catalog) -> dict[str, Any]:
    """The API's answer: the verdict, every copy's path in tenant terms, and per host the
    flows that handled the packet plus the same question for ``ovs-appctl ofproto/trace``."""
    return {
        "mode": mode,
        "packet": result.packet,
        "verdict": result.verdict,
        "delivered_to": result.delivered_to,
        "paths": [
            {"verdict": p.verdict, "port": p.port, "host": p.host, "steps": list(p.steps)}
            for p in result.paths
        ],
        "hosts": [
            {
                "host": h.host,
                "ofproto_trace": ovs_flow_text(h.in_port, _first_fields(h.trace.steps)),
                "flows": [_step_text(s) for s in h.trace.steps],
            }
            for h in result.hosts
        ],
    }


def _first_fields(steps: tuple[Step, ...]) -> dict[str, Any]:
    fields = dict(steps[0].fields) if steps else {}
    return {k: v for k, v in fields.items() if k not in ("metadata", "in_port")}


def _step_text(s: Step) -> str:
    branch = "".join(f"[{b}]" for b in s.branch)
    if s.rule is not None:
        conj = f" conj_id={','.join(map(str, s.conj_ids))}" if s.conj_ids else ""
        return f"{branch}{s.kind}{conj}: {rule_text(s.rule)}"
    if s.kind == "miss":
        return f"{branch}miss: table={s.table}"
    if s.kind == "ct":
        return f"{branch}ct: zone={s.zone} -> table {s.table} with {ct_state_text(s.ct_state or 0)}"
    if s.kind == "commit":
        mark = f" mark={s.mark}" if s.mark is not None else ""
        return f"{branch}commit: zone={s.zone}{mark}"
    return f"{branch}{s.kind}: " + (f"group {s.group}" if s.group is not None else f"port {s.port}")
