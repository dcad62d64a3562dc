"""DHCP through a real switch: a punt flow sends a VM's DHCP to the controller as a packet-in,
`controller.services.dhcp` answers, the reply goes back as a PACKET_OUT to the in_port, and
busybox udhcpc in the VM's namespace configures what it got.

The controller side is the test itself on the bridge's management socket (the southbound's
packet-in queue is unit-tested in tests/unit/test_packet_in.py); what this proves is that the
switch delivers the punted frame intact, that the PACKET_OUT bytes of ``ofp_codec.packet_out``
reach the VM, and that OVS accepts the host's packet-in meter (``ofp_codec.controller_meter``).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.services.dhcp import DhcpNetwork, DhcpPort, DhcpResponder, DhcpSubnet
from controller.southbound import ofp_codec as codec
from flows.model import Apply, Output, Rule, Slice, match
from flows.tables import network_cookie
from tests.integration.ofp_unix import DP, MgmtClient, OfpError

pytestmark = pytest.mark.ovs

BRIDGE = "br-dh"
MAC = "fa:16:3e:62:00:05"
OFPORT = 7
SUBNET = DhcpSubnet("s1", "10.62.0.0/24", "10.62.0.1", dns_nameservers=("10.62.0.53",))
NETWORK = DhcpNetwork(mtu=1400, subnets=(SUBNET,))
PORT = DhcpPort(MAC, (("s1", "10.62.0.40"),))
PUNT = Rule(
    0,
    100,
    match(in_port=OFPORT, eth_type=0x0800, ip_proto=17, udp_src=68, udp_dst=67),
    (Apply((Output(ofp.OFPP_CONTROLLER),)),),
    network_cookie(7),
)
SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip link set "$interface" mtu "$mtu"
echo "$ip $router $dns $mtu" > "$0.bound"
"""


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox (udhcpc) not installed")
def test_udhcpc_is_answered_through_packet_in_and_packet_out(make_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(1)
    hv = lab.hv(1)
    hv.vsctl("add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
             "fail_mode=secure", "protocols=OpenFlow13")  # fmt: skip
    vm = lab.add_vm(hv, "dh1", MAC, "10.62.0.99/24", "port-dh1", plug=False, ofport_request=OFPORT)
    vm.plug(bridge=BRIDGE)
    vm.exec("ip", "addr", "flush", "dev", "eth0")
    responder = DhcpResponder()
    stop = threading.Event()
    answered: list[int] = []
    with MgmtClient(f"{hv.dir}/{BRIDGE}.mgmt") as client:
        client.install(Slice(frozenset({PUNT}), frozenset()))
        # a management-socket connection gets no packet-ins until it asks (a controller does)
        action = 1 << ofp.OFPR_ACTION
        client.send_all([parser.OFPSetAsync(DP, [action, action], [0, 0], [0, 0])])
        for _ in range(2):  # idempotent: the second one replaces the first
            client.send_all(codec.controller_meter(DP, 100, 20))
        meters = hv.ofctl("-O", "OpenFlow13", "dump-meters", BRIDGE)
        assert "meter=controller pktps burst" in meters and "rate=100" in meters, meters

        def controller() -> None:
            client.sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    msg = client.read()
                except (TimeoutError, OfpError):
                    continue
                if isinstance(msg, parser.OFPPacketIn) and msg.cookie == PUNT.cookie:
                    reply = responder.respond(bytes(msg.data), PORT, NETWORK)
                    if reply is not None:
                        client.send(codec.packet_out(DP, msg.match["in_port"], reply))
                        answered.append(msg.match["in_port"])

        thread = threading.Thread(target=controller, daemon=True)
        thread.start()
        script = tmp_path / "udhcpc.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        try:
            udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1"]
            proc = vm.exec(*udhcpc, "-O", "mtu", "-s", str(script), check=False, timeout=60)
        finally:
            stop.set()
            thread.join(5)
    assert proc.returncode == 0, proc.stderr
    assert Path(f"{script}.bound").read_text().split() == [
        "10.62.0.40",
        "10.62.0.1",
        "10.62.0.53",
        "1400",
    ]
    assert answered and set(answered) == {OFPORT}
    assert responder.counters.offers >= 1 and responder.counters.acks >= 1
    addr = vm.exec("ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "inet 10.62.0.40/24" in addr, addr
