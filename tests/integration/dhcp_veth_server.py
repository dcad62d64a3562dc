"""A tiny test DHCP server: `controller.services.dhcp` on a raw socket (run inside the server's
network namespace by tests/integration/test_dhcp_clients.py).

argv: interface name, JSON of {"port": ..., "network": ..., "settings": ...} (the records'
fields).  Answers until killed; each reply goes back out of the same interface, as the
controller's PACKET_OUT to the in_port will.
"""

from __future__ import annotations

import json
import socket
import sys

from controller.services.dhcp import (
    DhcpNetwork,
    DhcpOpt,
    DhcpPort,
    DhcpResponder,
    DhcpSettings,
    DhcpSubnet,
)

ETH_P_ALL = 0x0003


def main() -> None:
    ifname, spec = sys.argv[1], json.loads(sys.argv[2])
    p = spec["port"]
    port = DhcpPort(
        mac=p["mac"],
        fixed_ips=tuple(tuple(f) for f in p["fixed_ips"]),  # type: ignore[misc]
        extra_dhcp_opts=tuple(DhcpOpt(**o) for o in p.get("extra_dhcp_opts", ())),
    )
    subnets = tuple(
        DhcpSubnet(
            id=s["id"],
            cidr=s["cidr"],
            gateway_ip=s["gateway_ip"],
            dns_nameservers=tuple(s.get("dns_nameservers", ())),
            host_routes=tuple(tuple(r) for r in s.get("host_routes", ())),  # type: ignore[misc]
        )
        for s in spec["network"]["subnets"]
    )
    network = DhcpNetwork(mtu=spec["network"]["mtu"], subnets=subnets)
    responder = DhcpResponder(DhcpSettings(**spec.get("settings", {})))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    print("ready", flush=True)
    while True:
        frame, addr = sock.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        reply = responder.respond(frame, port, network)
        if reply is not None:
            sock.send(reply)
            print(f"answered {len(reply)}", flush=True)


if __name__ == "__main__":
    main()
