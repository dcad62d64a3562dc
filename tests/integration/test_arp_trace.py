"""The ARP responder's flows on a real OVS bridge, checked with ``ofproto/trace``.

One emulated hypervisor (lab/), a netdev bridge ``br-arp`` with internal ports standing in for
VMs and a flow-based VXLAN port; its flows are the core compiler's base and network slices plus
`flows.arp_responder` for both networks, loaded through ``ofp_codec`` and read back (the Nicira
moves must survive the switch's own encoding).  Two tenants use the same addresses: each must be
answered with its own MACs.  An answered request goes back out of the asking port only (never to
another VM, never into the tunnel); what the responder must not answer (gratuitous ARP, unknown
and allowed-address-pair addresses, a port with port security off) floods as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flows.compiler import compile_base, compile_network
from flows.model import HostContext, LocalPort, NetworkView, RemotePort, Rule, Slice
from lab.hypervisors import Hypervisor
from tests.integration.ofp_unix import MgmtClient, odp_port_names

pytestmark = pytest.mark.ovs

BRIDGE = "br-arp"
TUNNEL_OFPORT = 100
PEER = "10.98.0.9"
BCAST = "ff:ff:ff:ff:ff:ff"
VIP = "10.0.0.50"  # an allowed address pair of a1: never answered

A = {  # name -> (ofport, mac, ip)
    "a1": (1, "fa:16:3e:0a:00:01", "10.0.0.5"),
    "a2": (2, "fa:16:3e:0a:00:02", "10.0.0.6"),
    "a3": (5, "fa:16:3e:0a:00:03", "10.0.0.8"),  # port security off
}
B = {
    "b1": (3, "fa:16:3e:0b:00:01", "10.0.0.5"),
    "b2": (4, "fa:16:3e:0b:00:02", "10.0.0.6"),
}
REMOTE_A = ("fa:16:3e:0a:00:99", "10.0.0.7")  # a port of network A on the peer host


def _views() -> tuple[NetworkView, NetworkView]:
    a_ports = tuple(
        LocalPort(n, of, mac, (ip,), port_security=n != "a3",
                  allowed_pairs=((VIP, mac),) if n == "a1" else (), num=of)
        for n, (of, mac, ip) in A.items()
    )  # fmt: skip
    b_ports = tuple(LocalPort(n, of, mac, (ip,), num=of) for n, (of, mac, ip) in B.items())
    remote = (RemotePort("ar", REMOTE_A[0], PEER, num=99, fixed_ips=(REMOTE_A[1],)),)
    return (
        NetworkView(7, "vxlan", 5007, a_ports, remote, (PEER,)),
        NetworkView(8, "vxlan", 5008, b_ports, (), ()),
    )


def _state(tunnel_ip: str) -> tuple[frozenset[Rule], frozenset]:  # type: ignore[type-arg]
    ctx = HostContext(tunnel_ip, {"vxlan": TUNNEL_OFPORT})
    rules, groups = set(compile_base(ctx).rules), set()
    for view in _views():
        # the compiler adds each port's answers (local and remote) and a3's bypass, under the
        # port's owner cookie (the port's ofport stands in for its number)
        sl = compile_network(ctx, view)
        rules |= sl.rules
        groups |= sl.groups
    return frozenset(rules), frozenset(groups)


@dataclass
class Bridge:
    hv: Hypervisor
    odp_to_name: dict[int, str]


@pytest.fixture(scope="module")
def bridge(make_module_lab) -> Iterator[Bridge]:  # type: ignore[no-untyped-def]
    hv = make_module_lab(1).hv(1)
    args = ["add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
            "fail_mode=secure", "protocols=OpenFlow13",
            "--", "add-port", BRIDGE, "arptun", "--", "set", "Interface", "arptun",
            "type=vxlan", "options:key=flow", "options:remote_ip=flow",
            f"ofport_request={TUNNEL_OFPORT}"]  # fmt: skip
    for name, (ofport, _, _) in {**A, **B}.items():
        args += ["--", "add-port", BRIDGE, f"arp{name}", "--", "set", "Interface",
                 f"arp{name}", "type=internal", f"ofport_request={ofport}"]  # fmt: skip
    hv.vsctl(*args)
    rules, groups = _state(hv.tunnel_ip)
    with MgmtClient(f"{hv.dir}/{BRIDGE}.mgmt") as client:
        client.install(Slice(rules, groups))
        installed = client.dump_rules()
    assert installed == rules, (
        f"extra {sorted(installed - rules)[:2]} missing {sorted(rules - installed)[:2]}"
    )
    odp = odp_port_names(hv.appctl("dpif/show"), BRIDGE, "arp", "arptun")
    yield Bridge(hv, odp)
    hv.vsctl("--if-exists", "del-br", BRIDGE)


_ACTIONS = re.compile(r"^Datapath actions: (.*)$", re.M)
_FINAL = re.compile(r"^Final flow: (.*)$", re.M)


@dataclass
class Trace:
    outputs: set[str]
    final: str
    text: str


def trace(b: Bridge, src: str, tpa: str, spa: str | None = None, dst: str = BCAST) -> Trace:
    ofport, mac, ip = {**A, **B}[src]
    flow = (f"arp,in_port={ofport},dl_src={mac},dl_dst={dst},arp_op=1,arp_spa={spa or ip},"
            f"arp_tpa={tpa},arp_sha={mac},arp_tha=00:00:00:00:00:00")  # fmt: skip
    text = b.hv.appctl("ofproto/trace", BRIDGE, flow)
    outputs: set[str] = set()
    for actions in _ACTIONS.findall(text):
        for tok in re.split(r",(?![^(]*\))", actions):
            if tok.isdigit():
                outputs.add(b.odp_to_name.get(int(tok), f"?{tok}"))
    if "output to native tunnel" in text:
        outputs.add("tunnel")
    finals = _FINAL.findall(text)
    return Trace(outputs, finals[0] if finals else "", text)


def _answered(t: Trace, asker: str, ip: str, mac: str) -> None:
    _, asker_mac, asker_ip = {**A, **B}[asker]
    assert t.outputs == {asker}, t.text
    for want in (f"dl_src={mac}", f"dl_dst={asker_mac}", "arp_op=2", f"arp_spa={ip}",
                 f"arp_tpa={asker_ip}", f"arp_sha={mac}", f"arp_tha={asker_mac}"):  # fmt: skip
        assert want in t.final, f"{want} not in {t.final}\n{t.text}"


def test_each_tenant_is_answered_with_its_own_mac(bridge: Bridge) -> None:
    _answered(trace(bridge, "a1", "10.0.0.6"), "a1", "10.0.0.6", A["a2"][1])
    _answered(trace(bridge, "b1", "10.0.0.6"), "b1", "10.0.0.6", B["b2"][1])
    _answered(trace(bridge, "b2", "10.0.0.5"), "b2", "10.0.0.5", B["b1"][1])


def test_a_remote_address_is_answered_locally_and_nothing_enters_the_tunnel(bridge: Bridge) -> None:
    t = trace(bridge, "a1", REMOTE_A[1])
    _answered(t, "a1", REMOTE_A[1], REMOTE_A[0])
    assert "tunnel" not in t.outputs


def test_unicast_refresh_is_answered_too(bridge: Bridge) -> None:
    _answered(trace(bridge, "a2", "10.0.0.5", dst=A["a1"][1]), "a2", "10.0.0.5", A["a1"][1])


def test_what_is_not_answered_floods_as_before(bridge: Bridge) -> None:
    flood_a = {"a2", "a3", "tunnel"}  # a1's flood: every other local port of A and the peer
    gratuitous = trace(bridge, "a1", "10.0.0.5", spa="10.0.0.5")
    assert gratuitous.outputs == flood_a and "arp_op=2" not in gratuitous.final, gratuitous.text
    # the owner asking for its own address from another of its addresses (its pair): its port's
    # pass, not an answer that would report a conflict with itself
    own = trace(bridge, "a1", "10.0.0.5", spa=VIP)
    assert own.outputs == flood_a and "arp_op=2" not in own.final, own.text
    unknown = trace(bridge, "a1", "10.0.0.99")
    assert unknown.outputs == flood_a, unknown.text
    vip = trace(bridge, "a2", VIP)  # allowed address pair of a1: VRRP keeps working
    assert vip.outputs == {"a1", "a3", "tunnel"}, vip.text
    # b has no peer: its flood stays local, and never reaches tenant A
    assert trace(bridge, "b1", "10.0.0.99").outputs == {"b2"}


def test_a_port_with_port_security_off_is_never_answered(bridge: Bridge) -> None:
    t = trace(bridge, "a3", "10.0.0.5")
    assert t.outputs == {"a1", "a2", "tunnel"} and "arp_op=2" not in t.final, t.text
