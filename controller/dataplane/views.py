"""Turn store records plus observed bindings into the compiler's input (`flows.model` views).

Where is a port?  The observed location wins: a host whose OVSDB shows an interface with
``iface-id=<port id>`` holds the port.  A host whose OVSDB has not been read yet since the
controller started is trusted to still hold the ports the store last recorded there
(``binding:host_id``): that is what keeps a controller restart from withdrawing flows towards
hosts that simply have not reconnected yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flows.model import HostContext, LocalPort, NetworkView, RemotePort


@dataclass(frozen=True)
class LocatedPort:
    """A port record with the host it is on (None: not bound anywhere right now)."""

    port: dict[str, Any]
    host_id: str | None


def locate(
    port: dict[str, Any],
    observed_at: Mapping[str, str],
    unsynced_hosts: set[str],
    known_hosts: Mapping[str, Any],
) -> str | None:
    """Location of one port: observed host, else the recorded host while it is still unsynced."""
    host = observed_at.get(port["id"])
    if host is not None:
        return host
    recorded = port.get("binding:host_id") or None
    if recorded in unsynced_hosts and recorded in known_hosts:
        return recorded
    return None


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


def network_view(
    network: dict[str, Any],
    located: list[LocatedPort],
    host_id: str,
    host_ofports: Mapping[str, int],
    tunnel_ips: Mapping[str, str],
) -> NetworkView:
    """What `host_id` needs to know about `network` (O(ports in the network))."""
    local: list[LocalPort] = []
    remote: list[RemotePort] = []
    peers: set[str] = set()
    for lp in located:
        if lp.host_id is None:
            continue
        p = lp.port
        if lp.host_id == host_id:
            ofport = host_ofports.get(p["id"])
            if ofport is None:
                continue
            local.append(
                LocalPort(
                    port_id=p["id"],
                    ofport=ofport,
                    mac=p["mac_address"],
                    fixed_ips=fixed_ip_addresses(p),
                    port_security=bool(p.get("port_security_enabled", True)),
                    admin_up=bool(p.get("admin_state_up", True)),
                    allowed_pairs=address_pairs(p),
                )
            )
        else:
            ip = tunnel_ips.get(lp.host_id)
            if ip is None:
                continue
            extra = tuple(sorted({m for _, m in address_pairs(p)} - {p["mac_address"]}))
            remote.append(
                RemotePort(port_id=p["id"], mac=p["mac_address"], host_ip=ip, extra_macs=extra)
            )
            peers.add(ip)
    return NetworkView(
        key=network["_key"],
        seg_type=network.get("provider:network_type") or "vxlan",
        seg_id=int(network["provider:segmentation_id"]),
        local_ports=tuple(local),
        remote_ports=tuple(remote),
        peer_ips=tuple(sorted(peers)),
    )


def host_context(tunnel_ip: str, tunnel_ofports: Mapping[str, int]) -> HostContext:
    return HostContext(tunnel_ip=tunnel_ip, tunnel_ofports=dict(tunnel_ofports))
