"""Turn store records plus observed bindings into the compiler's input (`flows.model` views).

Which host a port is on is decided by `controller.dataplane.bindings`; this module only shapes
records for the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flows.compiler import normalize_mac
from flows.model import HostContext, LocalPort, RemotePort, Segment


@dataclass(frozen=True)
class LocatedPort:
    """A port record with the host it is on (None: not bound anywhere right now)."""

    port: dict[str, Any]
    host_id: str | None


def fixed_ip_addresses(port: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        sorted(ip["ip_address"] for ip in port.get("fixed_ips") or () if ip.get("ip_address"))
    )


def address_pairs(port: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(IP or CIDR, MAC) of the port's allowed_address_pairs; MAC defaults to the port's."""
    return tuple(
        sorted(
            (pair["ip_address"], pair.get("mac_address") or port["mac_address"])
            for pair in port.get("allowed_address_pairs") or ()
        )
    )


def segment_of(network: dict[str, Any]) -> Segment:
    return Segment(
        key=network["_key"],
        seg_type=network.get("provider:network_type") or "vxlan",
        seg_id=int(network["provider:segmentation_id"]),
    )


def local_port_of(port: dict[str, Any], ofport: int) -> LocalPort:
    """A port as the host it is plugged into compiles it."""
    return LocalPort(
        port_id=port["id"],
        ofport=ofport,
        mac=port["mac_address"],
        fixed_ips=fixed_ip_addresses(port),
        port_security=bool(port.get("port_security_enabled", True)),
        admin_up=bool(port.get("admin_state_up", True)),
        allowed_pairs=address_pairs(port),
        num=port["_num"],
    )


def remote_port_of(port: dict[str, Any], host_ip: str) -> RemotePort:
    """A port as the other hosts of its network compile it."""
    extra = tuple(sorted({m for _, m in address_pairs(port)} - {port["mac_address"]}))
    return RemotePort(
        port_id=port["id"],
        mac=port["mac_address"],
        host_ip=host_ip,
        extra_macs=extra,
        num=port["_num"],
    )


def port_macs(port: dict[str, Any]) -> frozenset[str]:
    """Every MAC a port may send from (its own and its address pairs'), normalised."""
    return frozenset(
        normalize_mac(m) for m in (port["mac_address"], *(m for _, m in address_pairs(port)))
    )


def host_context(tunnel_ip: str, tunnel_ofports: Mapping[str, int]) -> HostContext:
    return HostContext(tunnel_ip=tunnel_ip, tunnel_ofports=dict(tunnel_ofports))
