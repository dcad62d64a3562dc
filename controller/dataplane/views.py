"""Turn the data plane's records plus observed ofports into the compiler's input (`flows.model`).

Which host a port is on is decided by `controller.dataplane.bindings`; this module only shapes
records (`controller.dataplane.state`) for the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from flows.compiler import normalize_mac
from flows.model import HostContext, LocalPort, RemotePort

if TYPE_CHECKING:
    from controller.dataplane.state import PortRec


def local_port_of(port: PortRec, ofport: int, dhcp: bool = False) -> LocalPort:
    """A port as the host it is plugged into compiles it; ``dhcp``: it has an IPv4 address in
    a subnet with enable_dhcp (`Mirror.dhcp_served`)."""
    return LocalPort(
        port_id=port.id,
        ofport=ofport,
        mac=port.mac,
        fixed_ips=port.fixed_ips,
        port_security=port.port_security,
        admin_up=port.admin_up,
        allowed_pairs=port.pairs,
        num=port.num,
        dhcp=dhcp,
    )


def remote_port_of(port: PortRec, host_ip: str) -> RemotePort:
    """A port as the other hosts of its network compile it."""
    extra = tuple(sorted({m for _, m in port.pairs} - {port.mac}))
    return RemotePort(port_id=port.id, mac=port.mac, host_ip=host_ip, extra_macs=extra,
                      num=port.num, fixed_ips=port.fixed_ips)  # fmt: skip


def port_macs(port: PortRec) -> frozenset[str]:
    """Every MAC a port may send from (its own and its address pairs'), normalised."""
    return frozenset(normalize_mac(m) for m in (port.mac, *(m for _, m in port.pairs)))


def host_context(tunnel_ip: str, tunnel_ofports: Mapping[str, int]) -> HostContext:
    return HostContext(tunnel_ip=tunnel_ip, tunnel_ofports=dict(tunnel_ofports))
