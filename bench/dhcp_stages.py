"""Where tenantnet's DHCP round trip goes, wire to wire: ``python -m bench.dhcp_stages``.

The bench row (`bench.dhcp_arp`) times DISCOVER -> OFFER and REQUEST -> ACK on the VM's eth0
only, so a change to the controller shows there as a change of the server's share, mixed with
OVS's.  This sets up tenantnet alone (H=3, DHCP on, ``--vms`` VMs, as `bench.dhcp_probe`) in the
first free integration-test lab slot from the top, captures the VM's eth0 and the lab's
management bridge (the OpenFlow connections, TCP 6653: the controller listens on the bridge's
address, so a segment is stamped there as it enters or leaves the controller's host stack), takes
``--leases`` leases by ``--client`` (udhcpc or dhclient) in the last VM, and splits each round
trip (a DISCOVER or REQUEST and its reply) into:

* ``ovs_in``: the client's frame on eth0 -> the PACKET_IN on the bridge (OVS's upcall, the
  controller action, the packet-in's send);
* ``controller``: PACKET_IN -> PACKET_OUT on the bridge (the kernel waking the switch's receive
  thread, the answer, the write);
* ``ovs_out``: PACKET_OUT -> the reply on eth0 (OVS reading and executing it).

All stamps are the kernel's (tcpdump), one clock.  A round trip whose frames do not follow each
other in that order (a retransmission, another packet-in in between) is left out.  Prints the
median, mean and p90 of each part, in ms, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from os_ken.lib import pcaplib
from os_ken.lib.packet import dhcp, packet
from os_ken.ofproto import ofproto_v1_3 as ofp

from bench.dhcp_arp import CLIENTS, dhcp_vms
from bench.dhcp_probe import start_system
from bench.scenario import setup_base
from lab.proc import ns_cmd

OF_PORT = 6653
_CLIENT = {1: "discover", 3: "request"}
_SERVER = {2: "offer", 5: "ack"}


def _tcpdump(ns: str | None, iface: str, bpf: str, path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(ns_cmd(ns, ["tcpdump", "-n", "-U", "-i", iface, "-w", path, bpf]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    proc.stderr.readline()  # "listening on ...": capturing from here on
    return proc


def _frames(path: str) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        return [(ts, bytes(buf)) for ts, buf in pcaplib.Reader(f)]


def vm_events(path: str) -> list[tuple[float, str]]:
    """(time, "discover"/"request"/"offer"/"ack") of each DHCP message on the VM's eth0."""
    out = []
    for ts, buf in _frames(path):
        msg = packet.Packet(buf).get_protocol(dhcp.dhcp)
        if msg is None or msg.options is None:
            continue
        kinds = [o.value[0] for o in msg.options.option_list
                 if isinstance(o, dhcp.option) and o.tag == 53 and o.value]  # fmt: skip
        if kinds and (kinds[0] in _CLIENT or kinds[0] in _SERVER):
            out.append((ts, _CLIENT.get(kinds[0]) or _SERVER[kinds[0]]))
    return out


def openflow_events(path: str) -> list[tuple[float, str]]:
    """(time, "packet_in"/"packet_out") of each such message in the captured segments (a
    segment's messages one after the other; a message split over segments is not seen)."""
    out = []
    for ts, buf in _frames(path):
        pkt = packet.Packet(buf)
        if len(pkt.protocols) < 3:
            continue
        ip_len = 14 + (buf[14] & 0x0F) * 4
        data = buf[ip_len + (buf[ip_len + 12] >> 4) * 4 :]
        at = 0
        while at + ofp.OFP_HEADER_SIZE <= len(data):
            msg_type, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
            if msg_type == ofp.OFPT_PACKET_IN:
                out.append((ts, "packet_in"))
            elif msg_type == ofp.OFPT_PACKET_OUT:
                out.append((ts, "packet_out"))
            if length < ofp.OFP_HEADER_SIZE:
                break
            at += length
    return out


def stages(events: list[tuple[float, str]]) -> dict[str, list[float]]:
    """Each client message followed by exactly packet-in, packet-out, reply: its parts (ms)."""
    parts: dict[str, list[float]] = {"ovs_in": [], "controller": [], "ovs_out": [], "total": []}
    for i, (ts, kind) in enumerate(events[:-3]):
        nxt = events[i + 1 : i + 4]
        if kind in _CLIENT.values() and [k for _, k in nxt[:2]] == ["packet_in", "packet_out"] \
                and nxt[2][1] in _SERVER.values():  # fmt: skip
            (pin, _), (pout, _), (reply, _) = nxt
            parts["ovs_in"].append((pin - ts) * 1e3)
            parts["controller"].append((pout - pin) * 1e3)
            parts["ovs_out"].append((reply - pout) * 1e3)
            parts["total"].append((reply - ts) * 1e3)
    return parts


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "mean": round(statistics.mean(values), 3),
            "p90": round(ordered[int(0.9 * (len(values) - 1))], 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leases", type=int, default=30)
    ap.add_argument("--vms", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="keep the two captures in DIR")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="udhcpc")
    args = ap.parse_args()
    system = start_system(20_000)
    try:
        setup_base(system, 1)
        system.enable_dhcp(0)
        vm = dhcp_vms(system, args.vms)[-1]
        where = Path(args.keep or system.lab.workdir)
        where.mkdir(parents=True, exist_ok=True)
        of_pcap, vm_pcap = str(where / "openflow.pcap"), str(where / "vm.pcap")
        caps = [_tcpdump(None, f"{system.lab.prefix}-mgmt", f"tcp port {OF_PORT}", of_pcap),
                _tcpdump(vm.ns, "eth0", "udp and (port 67 or port 68)", vm_pcap)]  # fmt: skip
        try:
            take = CLIENTS[args.client]
            for _ in range(args.leases):
                take(vm, str(where))  # as bench.dhcp_arp.lease_latency
            time.sleep(0.2)
        finally:
            for cap in caps:
                cap.terminate()
                cap.wait(10)
        parts = stages(sorted(vm_events(vm_pcap) + openflow_events(of_pcap)))
        print(json.dumps({k: summary(v) for k, v in parts.items() if v}, indent=1))
    finally:
        system.stop()


if __name__ == "__main__":
    main()
