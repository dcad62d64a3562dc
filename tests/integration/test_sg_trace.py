"""Security-group flows on a real OVS bridge, checked against Neutron's semantics with
``ofproto/trace``.

One emulated hypervisor (lab/), one netdev bridge ``br-sg`` with internal ports standing in for
VMs and a flow-based VXLAN port.  Its flows are what the controller would install on a host:
the core compiler's base and network slices (flows/compiler.py), plugged for the filtered ports
(``security_groups.plug``), plus ``security_groups.compile_host`` - loaded through
``ofp_codec`` over the bridge's management socket and read back as flow stats.

The expected verdicts come from :class:`Neutron`, a reference evaluator written from the API's
view: ports (network, MAC, IPs, groups, port security) and groups (rules, stateful), with
remote-group members computed from the ports.  It never looks at flows.  A seeded generator then
traces random packets: source and destination among local ports (both sides filtered on this
host), remote ports (arriving from the tunnel: ingress filtering only) and local to remote
(egress only); IPv4/IPv6, TCP/UDP/ICMP/ICMPv6 and other protocol numbers, random ports and ICMP
types; a conntrack state per conntrack pass (``--ct-next``: new, established, reply, related,
invalid) and sometimes ``ct_mark=1`` (a connection a rule change denied); plus ARP, ND and DHCP
which always pass, and broadcasts (flood copies pass each receiver's ingress filter).  The
networks have overlapping addresses, so an address set that is not scoped to its network lets
the wrong sender in.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import netaddr
import pytest

from flows import security_groups as sg
from flows.compiler import compile_base, compile_network
from flows.model import HostContext, LocalPort, NetworkView, RemotePort, Slice
from lab.hypervisors import Hypervisor
from tests.integration.ofp_unix import MgmtClient, odp_port_names

pytestmark = pytest.mark.ovs

SEED = 0x5E6
N_RANDOM = 500
BRIDGE = "br-sg"
TUNNEL_OFPORT = 100
PEER = "10.99.0.9"
SEGS = {7: 5007, 8: 5008}  # network key -> VNI
BCAST = "ff:ff:ff:ff:ff:ff"
COOKIES = sg.SgCookies(static=0x7E4E_0001_0000_0000, shared=0x7E4E_0001_0000_0001)

# ----------------------------------------------------------------------------- the API's view


@dataclass(frozen=True)
class Port:
    name: str
    net: int
    mac: str
    ips: tuple[str, ...]
    groups: tuple[str, ...] = ()
    port_security: bool = True
    ofport: int | None = None  # None: bound to the peer host
    pairs: tuple[tuple[str, str], ...] = ()

    @property
    def local(self) -> bool:
        return self.ofport is not None

    @property
    def filtered(self) -> bool:
        return self.local and self.port_security


@dataclass(frozen=True)
class R:
    """A rule as the API takes it (protocol by name or number, like Neutron)."""

    key: int
    direction: str
    ethertype: str = "IPv4"
    protocol: str | int | None = None
    port_min: int | None = None
    port_max: int | None = None
    prefix: str | None = None
    remote_group: str | None = None


PROTO_NUM = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}

GROUPS: dict[str, tuple[bool, tuple[R, ...]]] = {
    # name: (stateful, rules)
    "web": (True, (
        R(1, "egress"), R(2, "egress", "IPv6"),
        R(3, "ingress", protocol="tcp", port_min=80, port_max=89),
        R(4, "ingress", protocol="tcp", port_min=22, port_max=22, prefix="10.0.0.0/29"),
        R(5, "ingress", remote_group="web"),
        R(6, "ingress", protocol="icmp", port_min=8, remote_group="db"),
        R(7, "ingress", "IPv6", protocol="tcp", port_min=443, port_max=443, prefix="::/0"),
        R(8, "ingress", "IPv6", protocol="icmpv6", port_min=128, port_max=0,
          remote_group="db"),
        R(9, "ingress", protocol="icmp", port_min=0, port_max=0, prefix="10.0.0.0/24"),
    )),
    "db": (True, (
        R(11, "ingress", protocol="tcp", port_min=5432, port_max=5432, remote_group="web"),
        R(12, "egress", protocol="udp", port_min=53, port_max=53),
        R(13, "egress", protocol="tcp", remote_group="web"),
        R(14, "ingress", protocol="icmp"),
        R(15, "ingress", protocol=132, port_min=3000, port_max=3999),
        R(16, "egress", "IPv6", remote_group="web"),
    )),
    "sl": (False, (
        R(21, "ingress", protocol="udp", port_min=1000, port_max=1999),
        R(22, "egress", protocol="udp"),
        R(23, "ingress", protocol="tcp", remote_group="web"),
        R(24, "egress", protocol="tcp", port_min=1, port_max=65535, prefix="10.0.0.16/28"),
        R(25, "ingress", protocol=47),
        R(26, "ingress", protocol="icmp", port_min=3, port_max=1),
    )),
    "empty": (True, ()),
}  # fmt: skip


def _mac(i: int) -> str:
    return f"02:00:00:00:5e:{i:02x}"


PORTS: tuple[Port, ...] = (
    # network 7, on this host
    Port("a", 7, _mac(1), ("10.0.0.1", "fd07::1"), ("web",), ofport=1),
    Port("b", 7, _mac(2), ("10.0.0.2", "fd07::2"), ("db",), ofport=2),
    Port("c", 7, _mac(3), ("10.0.0.3",), ("web", "db"), ofport=3),
    Port("d", 7, _mac(4), ("10.0.0.4",), (), port_security=False, ofport=4),
    Port("e", 7, _mac(5), ("10.0.0.5",), ("sl",), ofport=5),
    Port("f", 7, _mac(6), ("10.0.0.6",), (), ofport=6),
    Port("g", 7, _mac(7), ("10.0.0.7",), ("empty",), ofport=7,
         pairs=(("10.0.0.100", _mac(7)),)),
    # network 8, on this host: addresses overlap network 7's
    Port("h", 8, _mac(11), ("10.0.0.1",), ("web",), ofport=11),
    Port("i", 8, _mac(12), ("10.0.0.2",), ("sl",), ofport=12),
    # on the peer host
    Port("r1", 7, _mac(21), ("10.0.0.21", "fd07::21"), ("db",)),
    Port("r2", 7, _mac(22), ("10.0.0.22",), ()),
    Port("r3", 7, _mac(23), ("10.0.0.23",), ("web",), pairs=(("10.0.0.48/28", _mac(24)),)),
    Port("r4", 8, _mac(25), ("10.0.0.3",), ()),  # c's address, on the other network
    Port("r5", 8, _mac(26), ("10.0.0.21",), ("db",)),
)  # fmt: skip
BY_NAME = {p.name: p for p in PORTS}


# --------------------------------------------------------------------- the reference evaluator


@dataclass(frozen=True)
class Pkt:
    src: Port
    dst: Port | None  # None: broadcast
    kind: str  # "ip" | "arp" | "nd" | "dhcp"
    v6: bool = False
    proto: int = 6
    dport: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    ip_src: str = ""
    ip_dst: str = ""
    states: tuple[str, ...] = ()  # ct state per conntrack pass, in pass order
    mark: bool = False
    nd_target: str = "fd07::99"  # of a neighbour solicitation or advertisement


def own_v6(port: Port) -> list[ipaddress._BaseNetwork]:
    """The IPv6 addresses a port may advertise: its link-local, fixed IPs and pairs."""
    ll = str(netaddr.EUI(port.mac).ipv6_link_local())
    addrs = [ll, *(a for a in port.ips if ":" in a), *(a for a, _ in port.pairs if ":" in a)]
    return [ipaddress.ip_network(a) for a in addrs]


class Neutron:
    """Allow/deny as Neutron documents it, from ports and groups only (and, since its
    CVE-2021-20267 fix, a port's neighbour advertisements only for its own addresses)."""

    def members(self, group: str, net: int, v6: bool) -> list[ipaddress._BaseNetwork]:
        out = []
        for p in PORTS:
            if group in p.groups and p.net == net and p.port_security:
                for a in (*p.ips, *(ip for ip, _mac in p.pairs)):
                    n = ipaddress.ip_network(a)
                    if (n.version == 6) == v6:
                        out.append(n)
        return out

    def rule_allows(self, r: R, direction: str, pkt: Pkt, net: int) -> bool:
        if r.direction != direction or (r.ethertype == "IPv6") != pkt.v6:
            return False
        proto = PROTO_NUM.get(r.protocol, r.protocol) if isinstance(r.protocol, str) else r.protocol
        if proto == 1 and pkt.v6:
            proto = 58
        if proto is not None and proto != pkt.proto:
            return False
        if proto in (6, 17, 132) and r.port_min is not None:
            hi = r.port_max if r.port_max is not None else r.port_min
            if not r.port_min <= pkt.dport <= hi:
                return False
        if proto in (1, 58) and r.port_min is not None:
            if pkt.icmp_type != r.port_min:
                return False
            if r.port_max is not None and pkt.icmp_code != r.port_max:
                return False
        remote = ipaddress.ip_address(pkt.ip_src if direction == "ingress" else pkt.ip_dst)
        if r.prefix is not None and remote not in ipaddress.ip_network(r.prefix):
            return False
        if r.remote_group is not None:
            return any(remote in n for n in self.members(r.remote_group, net, pkt.v6))
        return True

    @staticmethod
    def always(pkt: Pkt, direction: str) -> bool | None:
        """ARP, ND and DHCP: True/False whatever the rules (None: the rules decide).  A VM may
        not act as a router (RA) or DHCP server; a DHCP request reaching a VM is ordinary
        traffic."""
        if pkt.kind == "arp":
            return True
        if pkt.kind == "nd":
            return direction == "ingress" or pkt.icmp_type != 134
        if pkt.kind == "dhcp":
            return True if direction == "egress" else None
        if pkt.kind == "dhcp_server":
            return direction == "ingress"
        return None

    def passes(self, port: Port, direction: str, pkt: Pkt, state: str | None) -> bool:
        """Whether ``port``'s filter lets ``pkt`` through in ``direction``."""
        fixed = self.always(pkt, direction)
        if fixed is not None:
            return fixed
        groups = [GROUPS[g] for g in port.groups]
        if self.stateful(port):
            assert state is not None
            if "inv" in state or pkt.mark:
                return False
            if "rpl" in state or state == "rel":
                return True
        return any(self.rule_allows(r, direction, pkt, port.net) for _, rules in groups
                   for r in rules)  # fmt: skip

    @staticmethod
    def stateful(port: Port) -> bool:
        """Neutron refuses to mix; no group at all is stateful (and allows nothing new)."""
        groups = [GROUPS[g] for g in port.groups]
        return not groups or any(s for s, _ in groups)

    def deliveries(self, pkt: Pkt) -> tuple[set[str], list[str]]:
        """(names of the ports the packet reaches - "tunnel" for the peer host, the conntrack
        passes it makes, by port name, in order)."""
        passes: list[str] = []
        src = pkt.src
        states = iter(pkt.states)

        def check(port: Port, direction: str) -> bool:
            state = None
            if self.always(pkt, direction) is None and self.stateful(port):
                passes.append(port.name)
                state = next(states)
            return self.passes(port, direction, pkt, state)

        if pkt.kind == "nd" and pkt.icmp_type == 136 and src.filtered and not any(
            ipaddress.ip_address(pkt.nd_target) in n for n in own_v6(src)
        ):
            return set(), passes  # a port advertises only its own addresses
        if src.filtered and not check(src, "egress"):
            return set(), passes
        if pkt.kind == "arp" and src.local and src.port_security and any(
            p.local and p.net == src.net and pkt.ip_dst in p.ips for p in PORTS
        ):
            return {src.name}, passes  # answered on the host by the port's ARP entry
        if pkt.kind == "arp" and src.local and not src.port_security:
            # never answered: the bypass floods its requests, unicast or not
            dsts = [p for p in PORTS if p.net == src.net and p is not src]
        elif pkt.dst is not None:
            dsts = [pkt.dst]
        else:
            dsts = [p for p in PORTS if p.net == src.net and p is not src
                    and (p.local or src.local)]  # fmt: skip
        got: set[str] = set()
        for d in sorted(dsts, key=lambda p: p.ofport or 0):
            if not d.local:
                got.add("tunnel")
            elif not d.filtered or check(d, "ingress"):
                got.add(d.name)
        return got, passes


# ---------------------------------------------------------------------------- the real bridge


def compile_state(hv_tunnel_ip: str) -> Slice:
    """What the controller would install on this host (core + hooks + security groups)."""
    ctx = HostContext(hv_tunnel_ip, {"vxlan": TUNNEL_OFPORT})
    core_rules = set(compile_base(ctx).rules)
    core_groups = set()
    for key, seg in SEGS.items():
        ports = [p for p in PORTS if p.net == key]
        local = tuple(LocalPort(p.name, p.ofport, p.mac, p.ips, p.port_security,
                                allowed_pairs=p.pairs)
                      for p in ports if p.ofport is not None)  # fmt: skip
        remote = tuple(RemotePort(p.name, p.mac, PEER) for p in ports if p.ofport is None)
        s = compile_network(ctx, NetworkView(key, "vxlan", seg, local, remote, (PEER,)))
        core_rules |= s.rules
        core_groups |= s.groups
    core = sg.plug(Slice(frozenset(core_rules), frozenset(core_groups)),
                   {p.ofport for p in PORTS if p.filtered and p.ofport is not None})  # fmt: skip
    groups = {}
    for name, (stateful, rules) in GROUPS.items():
        members = tuple(
            a for p in PORTS if name in p.groups and p.port_security
            for a in sg.member_addresses(sg.FilteredPort(p.name, 1, p.mac, p.net, p.ips, p.pairs))
        )  # fmt: skip
        sg_rules = tuple(
            sg.SgRule(r.key, r.direction, r.ethertype,
                      PROTO_NUM.get(r.protocol) if isinstance(r.protocol, str)
                      else r.protocol,
                      r.port_min, r.port_max, r.prefix, r.remote_group)
            for r in rules
        )  # fmt: skip
        groups[name] = sg.SecurityGroup(name, sg_rules, members, stateful)
    filtered = [sg.FilteredPort(p.name, p.ofport, p.mac, p.net, p.ips, p.pairs, p.groups)
                for p in PORTS if p.filtered and p.ofport is not None]  # fmt: skip
    sgs = sg.compile_host(filtered, groups, COOKIES)
    return Slice(core.rules | sgs.rules, core.groups)


@dataclass
class Bridge:
    hv: Hypervisor
    state: Slice
    odp_to_name: dict[int, str]


@pytest.fixture(scope="module")
def bridge(make_module_lab) -> Iterator[Bridge]:
    lab = make_module_lab(1)
    hv = lab.hv(1)
    args = ["add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
            "fail_mode=secure", "protocols=OpenFlow13",
            "--", "add-port", BRIDGE, "sgtun", "--", "set", "Interface", "sgtun", "type=vxlan",
            "options:key=flow", "options:remote_ip=flow", f"ofport_request={TUNNEL_OFPORT}"]
    for p in PORTS:
        if p.ofport is not None:
            args += ["--", "add-port", BRIDGE, f"sg{p.name}", "--", "set", "Interface",
                     f"sg{p.name}", "type=internal", f"ofport_request={p.ofport}"]
    hv.vsctl(*args)
    state = compile_state(hv.tunnel_ip)
    with MgmtClient(f"{hv.dir}/{BRIDGE}.mgmt") as client:
        client.install(state)
        installed = client.dump_rules()
    assert installed == state.rules, (
        f"the switch holds other flows than were sent: extra {sorted(installed - state.rules)[:3]}"
        f" missing {sorted(state.rules - installed)[:3]}"
    )
    odp = odp_port_names(hv.appctl("dpif/show"), BRIDGE, "sg", "sgtun")
    yield Bridge(hv, state, odp)
    hv.vsctl("--if-exists", "del-br", BRIDGE)


# ------------------------------------------------------------------------------ the traces

STATES = ("new", "est", "est,rpl", "rel", "inv")


def flow_text(pkt: Pkt) -> str:
    src = pkt.src
    dst_mac = pkt.dst.mac if pkt.dst is not None else BCAST
    if src.local:
        head = f"in_port={src.ofport}"
    else:
        head = f"in_port={TUNNEL_OFPORT},tun_id={SEGS[src.net]:#x},tun_src={PEER}"
    head += f",dl_src={src.mac},dl_dst={dst_mac}"
    if pkt.mark:
        head += ",ct_mark=1"
    if pkt.kind == "arp":
        return f"arp,{head},arp_op=1,arp_spa={pkt.ip_src},arp_tpa={pkt.ip_dst},arp_sha={src.mac}"
    if pkt.kind == "dhcp":
        return f"udp,{head},nw_src={pkt.ip_src},nw_dst={pkt.ip_dst},udp_src=68,udp_dst=67"
    if pkt.kind == "dhcp_server":
        return f"udp,{head},nw_src={pkt.ip_src},nw_dst={pkt.ip_dst},udp_src=67,udp_dst=68"
    if pkt.kind == "nd":
        ll = netaddr.EUI(src.mac).ipv6_link_local()
        target = f",nd_target={pkt.nd_target}" if pkt.icmp_type in (135, 136) else ""
        return (f"icmp6,{head},ipv6_src={pkt.ip_src or ll},ipv6_dst=ff02::1,"
                f"icmpv6_type={pkt.icmp_type},icmpv6_code=0{target}")
    named = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmp"}
    if pkt.v6:
        proto = f"{named[pkt.proto]}6" if pkt.proto in named else f"ipv6,nw_proto={pkt.proto}"
        l3 = f"{proto},{head},ipv6_src={pkt.ip_src},ipv6_dst={pkt.ip_dst}"
    else:
        proto = named.get(pkt.proto, f"ip,nw_proto={pkt.proto}")
        l3 = f"{proto},{head},nw_src={pkt.ip_src},nw_dst={pkt.ip_dst}"
    if pkt.proto in (6, 17, 132):
        l4 = named[pkt.proto]
        l3 += f",{l4}_src=40000,{l4}_dst={pkt.dport}"
    elif pkt.proto in (1, 58):
        kind = "icmp" if pkt.proto == 1 else "icmpv6"
        l3 += f",{kind}_type={pkt.icmp_type},{kind}_code={pkt.icmp_code}"
    return l3


_ACTIONS = re.compile(r"^Datapath actions: (.*)$", re.M)
_COMMIT_MARK = re.compile(r"ct\(commit,zone=(\d+),mark=0x1/")


def run_trace(b: Bridge, pkt: Pkt) -> tuple[set[str], list[int], str]:
    """(ports reached - "tunnel" for the peer -, zones marked denied, raw trace)."""
    return ovs_trace(b, flow_text(pkt), pkt.states)


def ovs_trace(b: Bridge, flow: str, states: tuple[str, ...]) -> tuple[set[str], list[int], str]:
    """``run_trace`` for a flow in ofproto/trace syntax and the conntrack states in order."""
    args = ["ofproto/trace", BRIDGE, flow]
    for state in states:
        args += ["--ct-next", f"trk,{state}"]
    text = b.hv.appctl(*args)
    got: set[str] = set()
    marked: list[int] = []
    for actions in _ACTIONS.findall(text):
        marked += [int(z) for z in _COMMIT_MARK.findall(actions)]
        for tok in re.split(r",(?![^(]*\))", actions):
            if tok.isdigit():
                got.add(b.odp_to_name.get(int(tok), f"?{tok}"))
    if "output to native tunnel" in text:
        got.add("tunnel")
    return got, marked, text


def _ip(port: Port, v6: bool) -> str | None:
    return next((a for a in port.ips if (":" in a) == v6), None)


def random_packet(rng: random.Random) -> Pkt | None:
    src = rng.choice(PORTS)
    same = [p for p in PORTS if p.net == src.net and p is not src and (p.local or src.local)]
    roll = rng.random()
    dst = None if roll < 0.08 else rng.choice(same)
    kind = "ip"
    if 0.08 <= roll < 0.16:
        kind = rng.choice(["arp", "nd", "dhcp", "dhcp_server"])
    v6 = kind == "nd" or (kind == "ip" and rng.random() < 0.25)
    ip_src = _ip(src, v6)
    ip_dst = _ip(dst, v6) if dst is not None else ("ff02::1" if v6 else "10.0.0.255")
    if kind == "ip" and (ip_src is None or ip_dst is None):
        return None
    proto = rng.choice([6, 6, 6, 17, 17, 1, 1, 1, 132, 47, 99])
    if proto == 1 and v6:
        proto = 58
    dport = rng.choice([22, 53, 80, 85, 89, 90, 443, 1000, 1500, 1999, 2000, 3000, 3999, 5432,
                        rng.randrange(1, 65536)])  # fmt: skip
    icmp_type, icmp_code = rng.choice([0, 8, 128, 129, 3]), rng.choice([0, 1])
    if kind in ("dhcp", "dhcp_server"):
        proto, dport = 17, 67 if kind == "dhcp" else 68
    nd_target = "fd07::99"
    if kind == "nd":
        proto, icmp_type, icmp_code = 58, rng.choice([134, 135, 136]), 0
        # its own link-local or fixed address, nobody's, or a neighbour's
        nd_target = rng.choice([str(netaddr.EUI(src.mac).ipv6_link_local()),
                                _ip(src, True) or "fd07::99", "fd07::99", "fd07::2"])  # fmt: skip
    pkt = Pkt(src, dst, kind, v6, proto, dport, icmp_type, icmp_code, ip_src or "",
              ip_dst or "", (), rng.random() < 0.1, nd_target)  # fmt: skip
    if dst is None:  # a broadcast: every conntrack pass sees the same state
        state = rng.choice(STATES)
        n = len(Neutron().deliveries(replace(pkt, states=(state,) * 20))[1])
        return replace(pkt, states=(state,) * n)
    states = tuple(rng.choice(STATES) for _ in range(20))
    n = len(Neutron().deliveries(replace(pkt, states=states))[1])
    return replace(pkt, states=states[:n])


def _check(b: Bridge, pkt: Pkt) -> tuple[str | None, Counter[str]]:
    want, passes = Neutron().deliveries(pkt)
    got, marked, text = run_trace(b, pkt)
    stats: Counter[str] = Counter()
    stats["delivered" if got else "dropped"] += 1
    stats[f"kind_{pkt.kind}"] += 1
    if pkt.dst is None:
        stats["broadcast"] += 1
    if marked:
        stats["marked"] += 1
    problem = None
    if got != want:
        problem = f"{flow_text(pkt)} states={pkt.states}: OVS {sorted(got)}, Neutron {sorted(want)}"
    # an established packet in the original direction that no rule allows any more: its
    # connection is marked in that port's zone, nothing else is
    expect_marked = []
    for name, state in zip(passes, pkt.states, strict=False):
        port = BY_NAME[name]
        direction = "egress" if port is pkt.src else "ingress"
        if state == "est" and not pkt.mark and not Neutron().passes(port, direction, pkt, state):
            expect_marked.append(port.ofport)
    if problem is None and sorted(marked) != sorted(expect_marked):
        problem = f"{flow_text(pkt)} states={pkt.states}: marked {marked}, want {expect_marked}"
    if problem:
        problem += "\n" + text[-3000:]
    return problem, stats


def test_random_traces_match_neutron_semantics(bridge: Bridge) -> None:
    rng = random.Random(SEED)
    pkts = [p for p in (random_packet(rng) for _ in range(N_RANDOM * 2)) if p is not None]
    pkts = pkts[:N_RANDOM]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda p: _check(bridge, p), pkts))
    stats: Counter[str] = Counter()
    problems = []
    for problem, s in results:
        stats.update(s)
        if problem:
            problems.append(problem)
    print(f"\n[sg-trace] {len(pkts)} traces in {time.monotonic() - t0:.1f} s: {dict(stats)}")
    heads = "\n".join(p.splitlines()[0] for p in problems[:12])
    assert not problems, f"{len(problems)} of {len(pkts)} differ:\n{heads}\n{problems[0]}"
    # not vacuous: both verdicts, marks, broadcasts and every always-pass kind were exercised
    for what in ("delivered", "dropped", "marked", "broadcast", "kind_arp", "kind_nd",
                 "kind_dhcp", "kind_dhcp_server"):  # fmt: skip
        assert stats[what] > 0, f"nothing {what}: {dict(stats)}"


def test_same_host_connection_both_sides_and_its_reply(bridge: Bridge) -> None:
    """a (web) -> b (db) tcp 5432: a's egress allows (egress any), b's ingress allows (from
    web), both commit in their own zones; b's reply passes without any rule for it; a packet
    to 5433 is dropped at b; an established stream to 5433 is marked in b's zone."""
    a, b = BY_NAME["a"], BY_NAME["b"]
    base = dict(src=a, dst=b, kind="ip", proto=6, ip_src="10.0.0.1", ip_dst="10.0.0.2")
    got, _, text = run_trace(bridge, Pkt(**base, dport=5432, states=("new", "new")))
    assert got == {"b"}
    assert "ct(commit,zone=1)" in text and "ct(commit,zone=2)" in text
    reply = Pkt(src=b, dst=a, kind="ip", proto=6, ip_src="10.0.0.2", ip_dst="10.0.0.1",
                dport=40000, states=("est,rpl", "est,rpl"))
    assert run_trace(bridge, reply)[0] == {"a"}
    assert run_trace(bridge, Pkt(**base, dport=5433, states=("new", "new")))[0] == set()
    got, marked, _ = run_trace(bridge, Pkt(**base, dport=5433, states=("est", "est")))
    assert (got, marked) == (set(), [2])
