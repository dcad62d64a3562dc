"""What `tenantnet trace` sends and prints (``POST /tenantnet/trace``; pure apart from argparse,
so the tests feed it documents)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from controller.cli_views import visible


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", help="the sending port's id")
    dst = p.add_argument_group("destination (one at least)")
    dst.add_argument("--to-ip", help="destination IP (its MAC is looked up in the network)")
    dst.add_argument("--to-mac", help="destination MAC, e.g. ff:ff:ff:ff:ff:ff")
    p.add_argument(
        "--protocol",
        default="icmp",
        help="tcp, udp, icmp, sctp, arp or an IP protocol number (default icmp)",
    )
    p.add_argument("--dport", type=int, default=0, help="destination tcp/udp/sctp port")
    p.add_argument("--sport", type=int, default=40000, help="source tcp/udp/sctp port")
    p.add_argument("--icmp-type", type=int, default=8)
    p.add_argument("--icmp-code", type=int, default=0)
    p.add_argument("--from-ip", help="send from this address instead of the port's")
    p.add_argument("--from-mac", help="send from this MAC instead of the port's")
    p.add_argument("--ct-state", action="append",
                   help="conntrack state of each pass (new, est, est,rpl, rel, inv); once: "
                        "every pass")  # fmt: skip
    p.add_argument(
        "--installed",
        action="store_true",
        help="trace the flows read from the switches now, not the desired ones",
    )
    p.add_argument("--flows", action="store_true", help="also print every flow that matched")


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    protocol: str | int = args.protocol
    if isinstance(protocol, str) and protocol.isdigit():
        protocol = int(protocol)
    body: dict[str, Any] = {
        "source_port_id": args.port,
        "protocol": protocol,
        "source_l4_port": args.sport,
        "destination_l4_port": args.dport,
        "icmp_type": args.icmp_type,
        "icmp_code": args.icmp_code,
        "installed": args.installed,
    }
    for key, value in (("destination_ip", args.to_ip), ("destination_mac", args.to_mac),
                       ("source_ip", args.from_ip), ("source_mac", args.from_mac)):  # fmt: skip
        if value is not None:
            body[key] = value
    if args.ct_state:
        body["ct_state"] = args.ct_state[0] if len(args.ct_state) == 1 else args.ct_state
    return body


def trace_view(doc: Mapping[str, Any], flows: bool = False) -> str:
    """The verdict, then each copy's path step by step (and, with ``flows``, per host the
    flows that handled it and the equivalent ``ofproto/trace`` flow)."""
    paths = doc.get("paths") or []
    lines = [f"{doc.get('packet')} ({doc.get('mode')} flows): {str(doc.get('verdict')).upper()}"]
    for i, path in enumerate(paths, 1):
        head = f"copy {i} of {len(paths)}: " if len(paths) > 1 else ""
        lines.append(f"{head}{path.get('verdict')}")
        lines += [f"  {step}" for step in path.get("steps") or ()]
    if flows:
        for host in doc.get("hosts") or ():
            lines.append(f"{host.get('host')}: ovs-appctl ofproto/trace br-int "
                         f"'{host.get('ofproto_trace')}'")  # fmt: skip
            lines += [f"  {f}" for f in host.get("flows") or ()]
    return "\n".join(map(visible, lines))
