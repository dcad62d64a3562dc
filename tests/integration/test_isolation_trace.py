"""Exhaustive tenant isolation check with ``ofproto/trace`` on the real bridges.

Three networks over three hosts, built through the REST API, deliberately confusable:

* ``red``   VXLAN, segmentation id 100, ports on hv1 (two), hv2, hv3, plus one unbound port;
* ``blue``  GRE,   segmentation id 100 (the same number, other encapsulation), ports on hv1 and
  hv2 only, with the SAME MACs and IPs as red's ports;
* ``green`` VXLAN, segmentation id 200, ports on hv1 (port security off), hv3, and an
  admin-down port on hv2.

plus a stray interface on hv1 whose ``iface-id`` names no port, and each bridge's LOCAL port.

For every VM port, a seeded generator produces adversarial packets (broadcast, multicast,
unknown unicast, MACs of the other networks, spoofed source MAC/IP, ARP with foreign spa/sha,
IPv6 link-local/foreign/DAD, DHCP from 0.0.0.0, VLAN-tagged frames, odd ethertypes); for every
host, both tunnel ports, valid and foreign keys and valid, foreign and own ``tun_src`` produce
tunnel packets.  Each is traced with ``ovs-appctl ofproto/trace`` and the final
``Datapath actions:`` are parsed (plain outputs, ``clone(...)``, ``tnl_push(tnl_port(..),
header(..vxlan(..vni=..)|gre(..key=..)..))`` of the userspace datapath, and the kernel-style
``set(tunnel(tun_id=..,dst=..))``); datapath port numbers are mapped back to OpenFlow ports with
``dpif/show``, OpenFlow ports to Neutron ports with OVSDB (``external_ids:iface-id``), and ports
to networks with the REST API.

Two properties are asserted on every trace:

1. isolation: a packet never leaves through a VM port of another network, nor into a tunnel
   with another network's key or encapsulation, and a tunnel packet is never sent back into a
   tunnel (split horizon);
2. exactness: the outputs equal what a small reference model of the documented pipeline
   (flows/tables.py) predicts, e.g. spoofed packets are dropped, unicast goes to exactly one
   place, floods reach exactly the network's other local ports and peer hosts, and a port
   with port security on lets in only what its security groups allow (every port here is in
   its project's ``default`` group: IP from the group's members, ARP, ND and DHCP answers).
   A packet through conntrack is traced once per pass (one ``Datapath actions:`` line each).

Static underlay neighbour entries (``tnl/neigh/set``) are installed first: without them a
tunnel output of a trace shows up as "neighbor cache miss ... Datapath actions: drop", which
would hide leaks.  As a second line of defence every ``set_field:..->tun_id`` in the OpenFlow
part of the trace is checked too.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import netaddr
import pytest

from lab.hypervisors import CommandError, Hypervisor
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import DataplaneEnv, Net, Tenancy, wait_for

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env

SEED = 0x7E4E61
PACKETS_PER_PORT = 40
INNER_PER_TUNNEL_KEY = 3
BCAST = "ff:ff:ff:ff:ff:ff"
UNKNOWN_MAC = "02:99:99:99:99:01"
UNKNOWN_TUN_SRC = str(dataplane_fixtures.PLAN.underlay_net.network_address + 77)


# ------------------------------------------------------------------------------------ topology


@dataclass
class PortInfo:
    """A Neutron port as the model needs it."""

    id: str
    net: str  # network name: red/blue/green
    mac: str
    ips: tuple[str, ...]
    port_security: bool
    admin_up: bool
    host: str | None = None  # where OVSDB shows it bound
    ofport: int | None = None

    @property
    def v6(self) -> set[str]:
        return {str(netaddr.EUI(self.mac).ipv6_link_local())}


@dataclass
class Topology:
    env: DataplaneEnv
    nets: dict[str, Net]  # name -> Net
    ports: dict[str, PortInfo]  # port id -> info
    # per host: ofport -> port id ("" for an interface that is no tenantnet port)
    ofports: dict[str, dict[int, str]] = field(default_factory=dict)
    # per host: datapath port number -> (bridge, interface name, ofport)
    odp: dict[str, dict[int, tuple[str, str, int]]] = field(default_factory=dict)
    stats: collections.Counter = field(default_factory=collections.Counter)

    @property
    def hvs(self) -> list[Hypervisor]:
        return self.env.hvs

    def net_of_type_seg(self, kind: str, seg: int) -> str | None:
        for name, n in self.nets.items():
            if n.type == kind and n.seg_id == seg:
                return name
        return None

    def bound(self, net: str) -> list[PortInfo]:
        return [p for p in self.ports.values() if p.net == net and p.host is not None]

    def usable_local(self, net: str, host: str) -> list[PortInfo]:
        return [p for p in self.bound(net) if p.host == host and p.admin_up]

    def peers(self, net: str, host: str) -> set[str]:
        """Tunnel IPs of the other hosts with a bound port of ``net``."""
        ips = {hv.name: hv.tunnel_ip for hv in self.hvs}
        return {ips[p.host] for p in self.bound(net) if p.host != host and p.host}


def _iface_ids(hv: Hypervisor) -> dict[int, str]:
    """ofport -> iface-id of br-int's interfaces, from OVSDB."""
    raw = json.loads(hv.vsctl("--format=json", "--columns=name,ofport,external_ids", "list",
                              "Interface"))
    bridge_ifaces = set(hv.vsctl("list-ifaces", "br-int").split())
    out: dict[int, str] = {}
    for name, ofport, ext in raw["data"]:
        if name in bridge_ifaces and isinstance(ofport, int) and ofport > 0:
            out[ofport] = dict(ext[1]).get("iface-id", "")
    return out


_DPIF_BRIDGE = re.compile(r"^  (\S+):$")
_DPIF_PORT = re.compile(r"^    (\S+) (\d+)/(\d+):")


def _odp_ports(hv: Hypervisor) -> dict[int, tuple[str, str, int]]:
    """Datapath port number -> (bridge, interface, OpenFlow port) from ``dpif/show``."""
    out: dict[int, tuple[str, str, int]] = {}
    bridge = ""
    for line in hv.appctl("dpif/show").splitlines():
        m = _DPIF_BRIDGE.match(line)
        if m:
            bridge = m.group(1)
            continue
        m = _DPIF_PORT.match(line)
        if m and bridge:
            out[int(m.group(3))] = (bridge, m.group(1), int(m.group(2)))
    return out


@pytest.fixture(scope="module")
def topo(dp_env: DataplaneEnv) -> Iterator[Topology]:
    """Build the three networks through the API, plug the VMs, wait for ACTIVE and read the
    port maps back from OVSDB and the datapath."""
    t = Tenancy(dp_env, "trace")
    try:
        red = t.network("vxlan", seg_id=100, project="red")
        blue = t.network("gre", seg_id=100, project="blue")
        green = t.network("vxlan", seg_id=200, project="green")
        nets = {"red": red, "blue": blue, "green": green}
        mac = "02:00:00:61:aa:{:02x}".format
        plan: list[tuple[str, int, int, dict[str, Any]]] = [
            # (network, host, index -> mac/ip, extra port attributes)
            ("red", 1, 1, {}), ("red", 1, 2, {}), ("red", 2, 3, {}), ("red", 3, 4, {}),
            ("blue", 1, 1, {}), ("blue", 2, 2, {}), ("blue", 2, 3, {}),
            ("green", 1, 5, {"port_security_enabled": False}), ("green", 3, 6, {}),
            ("green", 2, 7, {"admin_state_up": False}),
        ]
        vms = []
        for i, (name, hv, idx, extra) in enumerate(plan):
            port = t.port(nets[name], ip=f"10.0.0.{10 + idx}", mac=mac(idx), **extra)
            vms.append(t.vm(hv, f"tr{i}-{name}", nets[name], port=port))
        t.port(red, ip="10.0.0.99", mac=mac(0x99))  # never bound: its MAC is unknown unicast
        # an interface on br-int whose iface-id names no tenantnet port
        dp_env.lab.add_vm(1, "tr-stray", mac(0xEE), "10.0.0.254/24", "0f0f0f0f-not-a-port")
        t.vms["tr-stray"] = dp_env.lab.vms["tr-stray"]
        t.wait_active([v for v, p in zip(vms, plan, strict=True)
                       if p[3].get("admin_state_up", True)])

        names = {n.id: name for name, n in nets.items()}
        ports = {}
        for p in dp_env.api.list("port"):
            if p["network_id"] in names:
                ports[p["id"]] = PortInfo(
                    p["id"], names[p["network_id"]], p["mac_address"].lower(),
                    tuple(ip["ip_address"] for ip in p["fixed_ips"]),
                    bool(p["port_security_enabled"]), bool(p["admin_state_up"]))
        topo = Topology(dp_env, nets, ports)
        for hv in dp_env.hvs:
            # static underlay neighbours, so that traces of tunnel outputs are not "drop"
            for other in dp_env.hvs:
                if other is not hv:
                    hv.appctl("tnl/neigh/set", "br-phy", other.tunnel_ip, other.hwaddr)
            topo.ofports[hv.name] = _iface_ids(hv)
            topo.odp[hv.name] = _odp_ports(hv)
            for ofport, pid in topo.ofports[hv.name].items():
                if pid in ports:
                    ports[pid].host, ports[pid].ofport = hv.name, ofport
        # the admin-down port stays DOWN even though its interface is plugged
        down = next(p for p in ports.values() if not p.admin_up)
        wait_for(lambda: dp_env.api.show("port", down.id)["status"] == "DOWN", 10,
                 what="admin-down port DOWN")
        assert all(p.host for p in ports.values() if p.mac != mac(0x99)), ports
        yield topo
        print(f"\n[trace] {dict(topo.stats)}")
    finally:
        t.cleanup()
    dp_env.wait_base_only()


# ------------------------------------------------------------------------------------ packets


@dataclass
class Pkt:
    """One traced packet: where it enters, its headers, and a label for the report."""

    host: str
    in_port: int | str  # OpenFlow port or "LOCAL"
    label: str
    eth_src: str
    eth_dst: str
    l3: str  # arp | ip | ipv6 | other
    fields: dict[str, Any] = field(default_factory=dict)
    vlan: int | None = None
    tun: tuple[int, str, str] | None = None  # (tun_id, tun_src, tun_dst)

    def flow(self) -> str:
        parts: list[str] = []
        f = self.fields
        if self.l3 == "arp":
            parts += ["arp", f"arp_op={f['op']}", f"arp_spa={f['spa']}", f"arp_tpa={f['tpa']}",
                      f"arp_sha={f['sha']}", f"arp_tha={f['tha']}"]
        elif self.l3 == "ip":
            proto = f["proto"]
            parts += [proto, f"nw_src={f['src']}", f"nw_dst={f['dst']}"]
            if proto in ("udp", "tcp"):
                parts += [f"{proto}_src={f['sport']}", f"{proto}_dst={f['dport']}"]
            elif proto == "icmp":
                parts += ["icmp_type=8", "icmp_code=0"]
        elif self.l3 == "ipv6":
            proto = f["proto"]
            parts += [proto, f"ipv6_src={f['src']}", f"ipv6_dst={f['dst']}"]
            if proto == "icmp6":
                parts += [f"icmpv6_type={f['type']}", "icmpv6_code=0"]
                if f["type"] == 135:
                    parts.append(f"nd_target={f['target']}")
            elif proto == "udp6":
                parts += [f"udp_src={f['sport']}", f"udp_dst={f['dport']}"]
        else:
            parts.append(f"dl_type={f['dl_type']:#06x}")
        head = [f"in_port={self.in_port}", f"dl_src={self.eth_src}", f"dl_dst={self.eth_dst}"]
        if self.vlan is not None:
            head.append(f"dl_vlan={self.vlan}")
        if self.tun is not None:
            tid, src, dst = self.tun
            head = [f"tun_id={tid:#x}", f"tun_src={src}", f"tun_dst={dst}", *head]
        return ",".join([parts[0], *head, *parts[1:]])


class Generator:
    """Seeded adversarial packets for VM ports and tunnel ports."""

    def __init__(self, topo: Topology, seed: int = SEED):
        self.topo = topo
        self.rng = random.Random(seed)
        self.all_macs = sorted({p.mac for p in topo.ports.values()} | {UNKNOWN_MAC})
        self.all_ips = sorted({ip for p in topo.ports.values() for ip in p.ips})

    def _rand_mac(self, multicast: bool = False) -> str:
        b = [self.rng.randrange(256) for _ in range(6)]
        b[0] = (b[0] & 0xFC) | (1 if multicast else 2)
        return ":".join(f"{x:02x}" for x in b)

    def _rand_ip(self) -> str:
        return f"10.0.0.{self.rng.randrange(1, 255)}"

    def _dst(self, p: PortInfo) -> tuple[str, str]:
        """A destination MAC and its kind, seen from port ``p``'s network."""
        r = self.rng
        same = [q for q in self.topo.ports.values() if q.net == p.net and q.id != p.id]
        other = [q for q in self.topo.ports.values() if q.net != p.net]
        kind = r.choice(["bcast", "mcast4", "mcast6", "unknown", "same", "same", "same", "other",
                         "other", "self"])
        if kind == "bcast":
            return BCAST, kind
        if kind == "mcast4":
            return "01:00:5e:00:00:" + f"{r.randrange(256):02x}", kind
        if kind == "mcast6":
            return "33:33:00:00:00:" + f"{r.randrange(256):02x}", kind
        if kind == "unknown":
            return r.choice([UNKNOWN_MAC, self._rand_mac()]), kind
        if kind == "same" and same:
            return r.choice(same).mac, kind
        if kind == "self":
            return p.mac, kind
        return r.choice(other).mac, "other"

    def vm_packets(self, p: PortInfo, n: int) -> list[Pkt]:
        """``n`` packets from VM port ``p``: every category once, then random ones."""
        assert p.host is not None and p.ofport is not None
        r = self.rng
        own_ip = p.ips[0] if p.ips else "10.0.0.1"
        ll = next(iter(p.v6))
        foreign_mac = r.choice([m for m in self.all_macs if m != p.mac])
        foreign_ip = r.choice([ip for ip in [*self.all_ips, "10.0.0.200"] if ip not in p.ips])
        cats = ["arp", "arp_spoof_spa", "arp_spoof_sha", "arp_spoof_src", "ip", "ip_spoof_ip",
                "ip_spoof_mac", "dhcp", "dhcp_wrong_port", "ipv6", "ipv6_spoof", "ipv6_dad",
                "ipv6_unspec_other", "vlan_ip", "vlan_arp_spoof", "ethertype", "tcp", "icmp"]
        out = []
        for i in range(n):
            cat = cats[i] if i < len(cats) else r.choice(cats)
            dst, dkind = self._dst(p)
            src_mac = p.mac
            pkt_fields: dict[str, Any]
            l3, vlan = "ip", None
            if cat.startswith("arp") or cat == "vlan_arp_spoof":
                l3 = "arp"
                spa, sha = own_ip, p.mac
                if cat in ("arp_spoof_spa", "vlan_arp_spoof"):
                    spa = foreign_ip
                elif cat == "arp_spoof_sha":
                    sha = foreign_mac
                elif cat == "arp_spoof_src":
                    src_mac = sha = foreign_mac
                op = r.choice([1, 2])
                # half of them ask for an address some port holds (the ARP responder's)
                tpa = r.choice(self.all_ips) if r.random() < 0.5 else self._rand_ip()
                pkt_fields = {"op": op, "spa": spa, "sha": sha, "tpa": tpa,
                              "tha": "00:00:00:00:00:00" if op == 1 else dst}
                vlan = r.randrange(1, 4095) if cat == "vlan_arp_spoof" else None
            elif cat in ("ip", "ip_spoof_ip", "ip_spoof_mac", "vlan_ip", "tcp", "icmp"):
                src = foreign_ip if cat == "ip_spoof_ip" else own_ip
                if cat == "ip_spoof_mac":
                    src_mac = foreign_mac
                proto = {"tcp": "tcp", "icmp": "icmp"}.get(cat, r.choice(["udp", "tcp", "icmp"]))
                pkt_fields = {"proto": proto, "src": src, "dst": self._rand_ip(),
                              "sport": r.randrange(1, 65536), "dport": r.randrange(1, 65536)}
                vlan = r.randrange(1, 4095) if cat == "vlan_ip" else None
            elif cat in ("dhcp", "dhcp_wrong_port"):
                dst, dkind = BCAST, "bcast"
                pkt_fields = {"proto": "udp", "src": "0.0.0.0", "dst": "255.255.255.255",
                              "sport": 68, "dport": 67 if cat == "dhcp" else 53}
            elif cat.startswith("ipv6"):
                l3 = "ipv6"
                if cat == "ipv6_dad":
                    pkt_fields = {"proto": "icmp6", "src": "::", "dst": "ff02::1:ff00:1",
                                  "type": 135, "target": "fe80::1"}
                elif cat == "ipv6_unspec_other":
                    pkt_fields = {"proto": "icmp6", "src": "::", "dst": "ff02::16", "type": 143}
                else:
                    src = ll if cat == "ipv6" else "fe80::dead:beef"
                    pkt_fields = {"proto": r.choice(["udp6", "icmp6", "ipv6"]), "src": src,
                                  "dst": "ff02::1", "type": 128, "sport": 546, "dport": 547}
            else:
                l3 = "other"
                pkt_fields = {"dl_type": r.choice([0x88CC, 0x8035, 0x9000, 0x88F7])}
            out.append(Pkt(p.host, p.ofport, f"{p.net}:{cat}:{dkind}", src_mac, dst, l3,
                           pkt_fields, vlan))
        return out

    def inner(self, host: str, in_port: int | str, tun: tuple[int, str, str] | None,
              label: str) -> Pkt:
        """A random frame for a tunnel or LOCAL ingress."""
        r = self.rng
        dst = r.choice([BCAST, UNKNOWN_MAC, "01:00:5e:00:00:fb", *self.all_macs])
        src = r.choice([*self.all_macs, self._rand_mac()])
        if r.random() < 0.5:
            return Pkt(host, in_port, label, src, dst, "arp",
                       {"op": 1, "spa": r.choice(self.all_ips), "sha": src,
                        "tpa": r.choice(self.all_ips), "tha": "00:00:00:00:00:00"}, tun=tun)
        return Pkt(host, in_port, label, src, dst, "ip",
                   {"proto": "udp", "src": r.choice(self.all_ips), "dst": r.choice(self.all_ips),
                    "sport": 1000, "dport": 2000},
                   vlan=r.choice([None, None, 7]), tun=tun)

    def tunnel_packets(self) -> list[Pkt]:
        out = []
        segs = sorted({n.seg_id for n in self.topo.nets.values()})
        foreign = [0, 101, self.rng.randrange(1000, 1 << 24)]
        for hv in self.topo.hvs:
            sources = [o.tunnel_ip for o in self.topo.hvs if o is not hv]
            sources += [hv.tunnel_ip, UNKNOWN_TUN_SRC]
            for kind, ofport in dataplane_fixtures.TUNNEL_OFPORT.items():
                for tid in segs + foreign:
                    for src in sources:
                        for _ in range(INNER_PER_TUNNEL_KEY):
                            label = f"tunnel:{kind}:{tid}:{src}"
                            out.append(self.inner(hv.name, ofport, (tid, src, hv.tunnel_ip),
                                                  label))
        return out


# ------------------------------------------------------------------------------------ parsing


Out = tuple[Any, ...]  # ("port", ofport) | ("tunnel", kind, key, dst_ip) | ("controller",)


class TraceError(Exception):
    pass


def _split_top(s: str) -> list[str]:
    """Split a datapath action list at the commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += (ch == "(") - (ch == ")")
        cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_TNL_PUSH = re.compile(r"^tnl_push\(tnl_port\((\d+)\),header\((.*)\),out_port\((\d+)\)\)$")
_HDR_DST = re.compile(r"ipv4\(src=[\d.]+,dst=([\d.]+),")
_HDR_VNI = re.compile(r"vxlan\(flags=0x[0-9a-f]+,vni=(0x[0-9a-f]+)\)")
_HDR_GRE = re.compile(r"gre\(\(flags=0x[0-9a-f]+,proto=0x[0-9a-f]+\),key=(0x[0-9a-f]+)\)")
_SET_TUN = re.compile(r"^set\(tunnel\((.*)\)\)$")
_SET_HEADER = re.compile(r"^set\((eth|arp)\(.*\)\)$")  # the ARP responder's rewrite
_TO_CONTROLLER = re.compile(r"^sample\(sample=100\.0%,actions\(meter\(\d+\),"
                            r"userspace\(pid=0,controller\(reason=1,.*\)\)\)\)$")
_TUN_NAMES = {"tn-vxlan": "vxlan", "tn-gre": "gre"}
_CT_RECIRC = re.compile(r"^(ct\(.*\)|recirc\(0x[0-9a-f]+\))$")


def parse_actions(actions: str, odp: dict[int, tuple[str, str, int]]) -> list[Out]:
    """Outputs of a ``Datapath actions:`` string as ("port", ofport) / ("tunnel", kind, key,
    dst); raises TraceError on anything not understood (so nothing can slip through)."""
    outs: list[Out] = []

    def walk(tokens: list[str]) -> None:
        pushed = False
        pending_tunnel: dict[str, str] | None = None
        for tok in tokens:
            if tok == "drop":
                continue
            if tok.isdigit():
                bridge, name, ofport = odp.get(int(tok), ("?", "?", -1))
                if bridge == "br-int" and name in _TUN_NAMES:  # kernel-style tunnel output
                    if pending_tunnel is None:
                        raise TraceError(f"tunnel output without set(tunnel) in {actions}")
                    outs.append(("tunnel", _TUN_NAMES[name],
                                 int(pending_tunnel["tun_id"], 16), pending_tunnel["dst"]))
                elif bridge == "br-int":
                    outs.append(("port", ofport))
                elif bridge == "br-phy" and pushed:
                    pass  # the underlay carrying a pushed tunnel header
                else:
                    raise TraceError(f"output to unexpected datapath port {tok} {bridge}/{name}")
                continue
            if tok.startswith("clone(") and tok.endswith(")"):
                walk(_split_top(tok[len("clone("):-1]))
                continue
            m = _TNL_PUSH.match(tok)
            if m:
                bridge, name, _ = odp.get(int(m.group(1)), ("?", "?", -1))
                header = m.group(2)
                dst = _HDR_DST.search(header)
                vni, gre = _HDR_VNI.search(header), _HDR_GRE.search(header)
                if name not in _TUN_NAMES or dst is None or (vni is None) == (gre is None):
                    raise TraceError(f"unparsed tnl_push: {tok}")
                kind = "vxlan" if vni else "gre"
                if kind != _TUN_NAMES[name]:
                    raise TraceError(f"{name} pushed a {kind} header: {tok}")
                found = vni or gre
                assert found is not None
                key = int(found.group(1), 16)
                outs.append(("tunnel", kind, key, dst.group(1)))
                pushed = True
                continue
            if _SET_HEADER.match(tok) or _CT_RECIRC.match(tok):
                continue  # the passes after a recirculation are traced (and parsed) on their own
            if _TO_CONTROLLER.match(tok):  # a punt (DHCP), metered
                outs.append(("controller",))
                continue
            m = _SET_TUN.match(tok)
            if m:
                pending_tunnel = dict(kv.split("=", 1) for kv in _split_top(m.group(1))
                                      if "=" in kv)
                continue
            raise TraceError(f"unknown datapath action {tok!r} in {actions}")

    walk(_split_top(actions))
    return outs


_OF_TUN_ID = re.compile(r"set_field:(0x[0-9a-f]+)->tun_id")


def trace(topo: Topology, pkt: Pkt) -> tuple[list[Out], list[int], str]:
    """(datapath outputs, tun_ids set in the OpenFlow pipeline, raw text) of one trace."""
    hv = next(h for h in topo.hvs if h.name == pkt.host)
    text = hv.trace("br-int", pkt.flow())
    if "neighbor cache miss" in text:
        raise TraceError(f"underlay neighbour missing on {hv.name}: static entries lost?")
    # One line per pass: a packet through a filtered port's conntrack (security groups) is
    # traced again after each recirculation; the outputs are those of every pass.
    lines = [ln for ln in text.splitlines() if ln.startswith("Datapath actions:")]
    if not lines:
        raise TraceError(f"no 'Datapath actions:' line in trace of {pkt.flow()}")
    outs = [o for ln in lines
            for o in parse_actions(ln.split(":", 1)[1].strip(), topo.odp[pkt.host])]
    tun_ids = [int(x, 16) for x in _OF_TUN_ID.findall(text)]
    return outs, tun_ids, text


# ------------------------------------------------------------------------------------ the model


def _port_security_allows(p: PortInfo, pkt: Pkt) -> bool:
    if pkt.vlan is not None:  # VM ports are access ports: table 0 only takes untagged frames
        return False
    if not p.port_security:
        return True
    if pkt.eth_src != p.mac:
        return False
    f = pkt.fields
    if pkt.l3 == "arp":
        return f["spa"] in p.ips and f["sha"] == p.mac
    if pkt.l3 == "ip":
        dhcp = (f["src"] == "0.0.0.0" and f["proto"] == "udp" and f["sport"] == 68
                and f["dport"] == 67)
        return f["src"] in p.ips or dhcp
    if pkt.l3 == "ipv6":
        dad = f["src"] == "::" and f["proto"] == "icmp6" and f.get("type") == 135
        v6 = {str(ipaddress.ip_address(ip)) for ip in p.ips if ":" in ip} | p.v6
        return f["src"] in v6 or dad
    return False


_ND_MLD = (130, 131, 132, 134, 135, 136, 143)  # ICMPv6 a filtered port always receives


def _sg_admits(topo: Topology, ofport_out: Out, host: str, pkt: Pkt) -> bool:
    """Whether the receiver's security groups let the packet in: each network here is its own
    project, whose ports are all in its ``default`` group (ingress from the group's members,
    by their fixed IPs in that network); ARP, ND/MLD and DHCP answers always pass, a port with
    port security off filters nothing."""
    if ofport_out[0] != "port":
        return True
    q = topo.ports.get(topo.ofports[host].get(ofport_out[1], ""))
    if q is None or not q.port_security or pkt.l3 not in ("ip", "ipv6"):
        return True
    f = pkt.fields
    if pkt.l3 == "ipv6" and f.get("proto") == "icmp6" and f.get("type") in _ND_MLD:
        return True
    if f.get("proto") == "udp" and (f.get("sport"), f.get("dport")) in ((67, 68), (547, 546)):
        return True
    members = {ip for p in topo.ports.values() if p.net == q.net for ip in p.ips}
    return f["src"] in members


def expected(topo: Topology, pkt: Pkt) -> tuple[str | None, list[Out]]:
    """(network the packet belongs to, the outputs the documented pipeline produces)."""
    net, outs = _expected_l2(topo, pkt)
    return net, [o for o in outs if _sg_admits(topo, o, pkt.host, pkt)]


def _expected_l2(topo: Topology, pkt: Pkt) -> tuple[str | None, list[Out]]:
    """What the L2 pipeline does with the packet, before the receivers' ingress filters."""
    host_ip = {hv.name: hv.tunnel_ip for hv in topo.hvs}
    if pkt.tun is not None:
        kind = next(k for k, o in dataplane_fixtures.TUNNEL_OFPORT.items() if o == pkt.in_port)
        tid, src, _ = pkt.tun
        net = topo.net_of_type_seg(kind, tid)
        if net is None:
            return None, []
        local = topo.usable_local(net, pkt.host)
        if not local or src not in topo.peers(net, pkt.host):
            return None, []
        hit = [p for p in local if p.mac == pkt.eth_dst]
        return net, [("port", p.ofport) for p in (hit or local)]
    pid = topo.ofports[pkt.host].get(pkt.in_port) if isinstance(pkt.in_port, int) else None
    p = topo.ports.get(pid or "")
    if p is None:  # LOCAL or an interface that is no tenantnet port
        return None, []
    if not p.admin_up or pkt.vlan is not None:
        return p.net, []
    f = pkt.fields
    if pkt.l3 == "ip" and f["proto"] == "udp" and (f["sport"], f["dport"]) == (68, 67):
        return p.net, [("controller",)]  # every subnet here has DHCP on: punted, any source
    if not _port_security_allows(p, pkt):
        return p.net, []
    local = topo.usable_local(p.net, pkt.host)
    n = topo.nets[p.net]
    if pkt.l3 == "arp" and f["op"] == 1:
        if not p.port_security:  # its ARP requests are never answered: flooded
            flood_all: list[Out] = [("port", q.ofport) for q in local if q.ofport != pkt.in_port]
            flood_all += [("tunnel", n.type, n.seg_id, ip)
                          for ip in sorted(topo.peers(p.net, pkt.host))]
            return p.net, flood_all
        # answered on this host for an address a port of the network holds there (local and
        # admin up) or on a peer (bound), unless gratuitous or the owner's own request
        owners = [q for q in topo.bound(p.net) if f["tpa"] in q.ips
                  and (q.host != pkt.host or q.admin_up)]
        if owners and f["spa"] != f["tpa"] and f["sha"] != owners[0].mac:
            return p.net, [("port", pkt.in_port)]
    hit = [q for q in local if q.mac == pkt.eth_dst]
    if hit:
        return p.net, [("port", q.ofport) for q in hit if q.ofport != pkt.in_port]
    remote = [q.host for q in topo.bound(p.net) if q.mac == pkt.eth_dst and q.host != pkt.host]
    if remote and remote[0] is not None:
        return p.net, [("tunnel", n.type, n.seg_id, host_ip[remote[0]])]
    flood: list[Out] = [("port", q.ofport) for q in local if q.ofport != pkt.in_port]
    flood += [("tunnel", n.type, n.seg_id, ip) for ip in sorted(topo.peers(p.net, pkt.host))]
    return p.net, flood


def isolation_violations(topo: Topology, pkt: Pkt, net: str | None, outs: list[Out],
                         tun_ids: list[int]) -> list[str]:
    """Outputs that leave the packet's network (or any output of a packet with no network)."""
    bad = []
    ports_here = topo.ofports[pkt.host]
    for o in outs:
        if o[0] == "controller":
            continue  # a punt to tenantnet (DHCP): the controller answers to the in_port only
        if o[0] == "port":
            q = topo.ports.get(ports_here.get(o[1], ""))
            if net is None or q is None or q.net != net:
                bad.append(f"delivered to ofport {o[1]} ({q.net if q else 'no network'})")
        else:
            _, kind, key, _dst = o
            n = topo.nets.get(net or "")
            if pkt.tun is not None:
                bad.append(f"tunnel packet sent back into a tunnel: {o}")
            elif n is None or (kind, key) != (n.type, n.seg_id):
                bad.append(f"tunnel output {kind} key {key} is not {net}'s")
    if net is None or pkt.tun is not None:
        if tun_ids:
            bad.append(f"set tun_id {tun_ids} in the pipeline")
    elif any(t != topo.nets[net].seg_id for t in tun_ids):
        bad.append(f"set tun_id {tun_ids} in the pipeline, {net} is {topo.nets[net].seg_id}")
    return bad


def run_traces(topo: Topology, pkts: list[Pkt]) -> list[str]:
    """Trace every packet (in parallel) and return the problems found, one line each."""
    def one(pkt: Pkt) -> tuple[list[str], list[Out]]:
        try:
            outs, tun_ids, _ = trace(topo, pkt)
        except (TraceError, CommandError) as exc:
            return [f"{pkt.label} [{pkt.host}] {pkt.flow()}: HARNESS {exc}"], []
        net, want = expected(topo, pkt)
        probs = [f"{pkt.label} [{pkt.host}] {pkt.flow()}: ISOLATION {b}; outputs {outs}"
                 for b in isolation_violations(topo, pkt, net, outs, tun_ids)]
        if sorted(outs) != sorted(want):
            probs.append(f"{pkt.label} [{pkt.host}] {pkt.flow()}: MODEL got {sorted(outs)}, "
                         f"want {sorted(want)}")
        return probs, outs

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(one, pkts))
    problems: list[str] = []
    for pkt, (probs, outs) in zip(pkts, results, strict=True):
        problems += probs
        kind = "drop" if not outs else "flood" if len(outs) > 1 else "unicast"
        topo.stats[f"{'tunnel' if pkt.tun else 'vm'}_{kind}"] += 1
        topo.stats.update(o[0] + (f"_{o[1]}" if o[0] == "tunnel" else "") for o in outs)
    topo.stats["traces"] += len(pkts)
    return problems


def _report(problems: list[str], n: int) -> str:
    head = "\n".join(problems[:15])
    return f"{len(problems)} problems in {n} traces:\n{head}"


# ------------------------------------------------------------------------------------ the tests


def test_trace_packets_from_vm_ports_stay_in_their_network(topo: Topology) -> None:
    """Hundreds of seeded adversarial packets from every VM port (port security on and off,
    admin-down, a stray interface) never leave their network on any host, and the outputs equal
    the reference model: spoofed MAC/IP/ARP and odd ethertypes are dropped, unicast goes to one
    place, floods reach exactly the network's other local ports and its peer hosts with the
    network's own key and encapsulation."""
    gen = Generator(topo)
    pkts: list[Pkt] = []
    for p in sorted(topo.ports.values(), key=lambda p: (p.host or "", p.ofport or 0)):
        if p.host is not None:
            pkts += gen.vm_packets(p, PACKETS_PER_PORT)
    stray = [(hv, of) for hv, m in topo.ofports.items() for of, pid in m.items()
             if pid not in topo.ports]
    assert stray, "the stray interface is missing"
    for hv, ofport in stray:
        pkts += [gen.inner(hv, ofport, None, "stray") for _ in range(10)]
    for hv in topo.hvs:
        pkts += [gen.inner(hv.name, "LOCAL", None, "LOCAL") for _ in range(4)]
    t0 = time.monotonic()
    problems = run_traces(topo, pkts)
    topo.env.figures["vm_traces"] = {"n": len(pkts), "s": round(time.monotonic() - t0, 1)}
    assert len(pkts) >= 250
    assert not problems, _report(problems, len(pkts))
    # the run was not vacuous: drops, unicasts, floods and both encapsulations were exercised
    for what in ("vm_drop", "vm_unicast", "vm_flood", "tunnel_vxlan", "tunnel_gre", "port"):
        assert topo.stats[what] > 0, f"no trace produced {what}: {dict(topo.stats)}"


def test_trace_tunnel_ingress_only_for_known_peers_and_keys(topo: Topology) -> None:
    """On every host, for both tunnel ports, every network's key plus foreign keys (0, 101, a
    random VNI), from every peer, from the host itself and from an unknown underlay address: a
    tunnel packet is delivered only if (encapsulation, key) names a network that has a usable
    port on this host AND the sender is a host with a port of that network; then only to that
    network's local ports (exactly one on a MAC hit, all of them otherwise) and never back into
    a tunnel.  Key 100 arrives on both VXLAN (red) and GRE (blue) and must not be confused."""
    pkts = Generator(topo, SEED + 1).tunnel_packets()
    t0 = time.monotonic()
    before = topo.stats["port"]
    problems = run_traces(topo, pkts)
    topo.env.figures["tunnel_traces"] = {"n": len(pkts), "s": round(time.monotonic() - t0, 1)}
    assert len(pkts) >= 150
    assert not problems, _report(problems, len(pkts))
    assert topo.stats["port"] > before, "no tunnel packet was delivered at all"


def test_trace_harness_sees_real_forwarding(topo: Topology) -> None:
    """The trace harness is checked against the real data plane once: a VXLAN unicast, a GRE
    broadcast and a dropped spoof traced on the bridges give the outputs the model predicts,
    and the same VM pair really exchanges pings."""
    red = sorted((p for p in topo.ports.values() if p.net == "red" and p.host),
                 key=lambda p: p.host or "")
    a, b = red[0], next(p for p in red if p.host != red[0].host)
    assert a.host and b.host and a.ofport
    uni = Pkt(a.host, a.ofport, "check", a.mac, b.mac, "ip",
              {"proto": "icmp", "src": a.ips[0], "dst": b.ips[0]})
    outs, _, _ = trace(topo, uni)
    b_ip = next(hv.tunnel_ip for hv in topo.hvs if hv.name == b.host)
    assert outs == [("tunnel", "vxlan", 100, b_ip)]
    blue = next(p for p in topo.ports.values() if p.net == "blue" and p.host == "hv1")
    bc = Pkt("hv1", blue.ofport or 0, "check", blue.mac, BCAST, "arp",
             {"op": 1, "spa": blue.ips[0], "sha": blue.mac, "tpa": "10.0.0.250",
              "tha": "00:00:00:00:00:00"})
    outs, _, _ = trace(topo, bc)
    hv2 = topo.hvs[1].tunnel_ip
    assert ("tunnel", "gre", 100, hv2) in outs and all(o[0] == "port" or o[3] == hv2
                                                       for o in outs)
    spoof = Pkt(a.host, a.ofport, "check", UNKNOWN_MAC, b.mac, "ip",
                {"proto": "icmp", "src": a.ips[0], "dst": b.ips[0]})
    assert trace(topo, spoof)[0] == []
    vm_a = next(v for v in topo.env.lab.vms.values() if v.iface_id == a.id)
    assert vm_a.ping(b.ips[0], count=2, interval=0.2).received == 2
