"""DHCP renewal load from inside one VM namespace: ``python -m bench.dhcp_load ...``.

Why a generator and not ``udhcpc`` in a loop: a renewal is a unicast DHCPREQUEST to the server
(RFC 2131 4.3.2, RENEWING: ``ciaddr`` = the lease, IP and MAC of the server as destination),
and the figure wanted is how many such exchanges the DHCP server answers per second when many
VMs renew at once; starting a client process per exchange would measure ``fork``/``exec``
instead.  The frames are built and parsed with os-ken's packet library, sent and received on an
``AF_PACKET`` socket bound to the VM's ``eth0`` (closed loop: at most ``--window`` requests
in flight, a request unanswered after ``--timeout`` counts as lost and is replaced).

It runs until its stdin closes (the bench holds the other end) or ``--max-seconds`` pass, then
prints one JSON line: requests sent, ACKs, NAKs, lost, seconds and the exchange latencies'
median and p90 in ms.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from bench.stats import median, percentile

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
_ETH_IP_UDP = 14 + 20 + 8  # a reply's DHCP payload offset (servers send no IP options)


def request_frame(mac: str, ip: str, server_mac: str, server_ip: str, xid: int) -> bytes:
    """A RENEWING DHCPREQUEST from (mac, ip) to the server, serialised by os-ken."""
    opts = dhcp.options(option_list=[
        dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT, value=bytes([dhcp.DHCP_REQUEST])),
    ])  # fmt: skip
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=server_mac, src=mac, ethertype=ETH_P_IP))
    pkt.add_protocol(ipv4.ipv4(src=ip, dst=server_ip, proto=17))
    pkt.add_protocol(udp.udp(src_port=68, dst_port=67))
    pkt.add_protocol(dhcp.dhcp(op=dhcp.DHCP_BOOT_REQUEST, chaddr=mac, xid=xid, ciaddr=ip,
                               options=opts))
    pkt.serialize()
    return bytes(pkt.data)


def reply_kind(frame: bytes) -> tuple[int, int] | None:
    """(xid, DHCP message type) of a server reply to port 68, None for anything else."""
    if len(frame) < _ETH_IP_UDP + 240 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    if int.from_bytes(frame[36:38], "big") != 68:
        return None
    try:
        msg, _, _ = dhcp.dhcp.parser(frame[_ETH_IP_UDP:])
    except Exception:  # a malformed frame is not a reply
        return None
    for o in msg.options.option_list if msg.options else []:
        if o.tag == dhcp.DHCP_MESSAGE_TYPE_OPT:
            return msg.xid, o.value[0]
    return None


def run(args: argparse.Namespace) -> dict[str, object]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((args.iface, 0))
    sock.setblocking(False)
    xids = [(args.seed << 16) | i for i in range(args.window * 4)]
    frames = {x: request_frame(args.mac, args.ip, args.server_mac, args.server_ip, x)
              for x in xids}  # fmt: skip
    free = list(xids)
    inflight: dict[int, float] = {}
    sent = acks = naks = lost = 0
    lat: list[float] = []
    t0 = time.monotonic()
    end = t0 + args.max_seconds
    stdin_open = True
    while time.monotonic() < end and stdin_open:
        now = time.monotonic()
        for x, ts in list(inflight.items()):
            if now - ts > args.timeout:
                del inflight[x]
                free.append(x)
                lost += 1
        while free and len(inflight) < args.window:
            x = free.pop(0)
            sock.send(frames[x])
            inflight[x] = time.monotonic()
            sent += 1
        ready, _, _ = select.select([sock, sys.stdin], [], [], 0.05)
        if sys.stdin in ready and not sys.stdin.readline():
            stdin_open = False
        if sock not in ready:
            continue
        while True:
            try:
                frame, addr = sock.recvfrom(2048)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            kind = reply_kind(frame)
            if kind is None or kind[0] not in inflight:
                continue
            xid, mtype = kind
            lat.append((time.monotonic() - inflight.pop(xid)) * 1000)
            free.append(xid)
            if mtype == dhcp.DHCP_ACK:
                acks += 1
            else:
                naks += 1
    secs = time.monotonic() - t0
    return {"sent": sent, "acks": acks, "naks": naks, "lost": lost,
            "seconds": round(secs, 3),
            "lat_ms_median": median(lat), "lat_ms_p90": percentile(lat, 90)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dhcp_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--mac", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--server-mac", required=True)
    ap.add_argument("--server-ip", required=True)
    ap.add_argument("--window", type=int, default=4, help="requests in flight")
    ap.add_argument("--timeout", type=float, default=1.0, help="s before a request is lost")
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--seed", type=int, default=1, help="high bits of the xids")
    args = ap.parse_args(argv)
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
