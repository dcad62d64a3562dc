"""The facts the DHCP responder answers from, as typed, frozen records.

Kept apart from `controller.services.dhcp` (which needs os-ken's packet library) so that the
settings and the data plane's views can build them without importing a packet parser.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import netaddr

DEFAULT_SERVER_MAC = "02:7e:4e:00:00:01"


@dataclass(frozen=True)
class DhcpOpt:
    """One of a port's ``extra_dhcp_opts``."""

    name: str
    value: str
    ip_version: int = 4


@dataclass(frozen=True)
class DhcpPort:
    """The facts of the port that sent the frame (the one owning the packet-in's in_port)."""

    mac: str
    fixed_ips: tuple[tuple[str, str], ...]  # (subnet_id, ip_address)
    admin_state_up: bool = True
    extra_dhcp_opts: tuple[DhcpOpt, ...] = ()

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.mac, self.fixed_ips, self.admin_state_up, self.extra_dhcp_opts))

    def __hash__(self) -> int:
        """The dataclass's hash, computed once: the responder looks its plans up by these
        records on every message (`controller.services.dhcp.DhcpResponder._plan`)."""
        return self._hash


@dataclass(frozen=True)
class DhcpSubnet:
    id: str
    cidr: str
    gateway_ip: str | None
    enable_dhcp: bool = True
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[tuple[str, str], ...] = ()  # (destination, nexthop)


@dataclass(frozen=True)
class DhcpNetwork:
    mtu: int
    subnets: tuple[DhcpSubnet, ...]

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.mtu, self.subnets))

    def __hash__(self) -> int:
        """Computed once, as `DhcpPort`'s."""
        return self._hash


@dataclass(frozen=True)
class DhcpSettings:
    """Operator settings (not per subnet)."""

    server_mac: str = DEFAULT_SERVER_MAC
    lease_time: int = 43200
    dns_servers: tuple[str, ...] = ()
    """Used for subnets without ``dns_nameservers``; empty: send no DNS option."""
    domain_name: str = ""
    """Option 15; empty: none."""


def server_address(subnet: DhcpSubnet) -> str:
    """The server identifier of ``subnet``: its ``gateway_ip``, or its last unicast address
    when it has none (see `controller.services.dhcp`).  Here, not there, so that the data plane
    can give the address an ARP answer without importing a packet parser."""
    if subnet.gateway_ip:
        return subnet.gateway_ip
    net = netaddr.IPNetwork(subnet.cidr)
    return str(netaddr.IPAddress(net.last - 1 if net.prefixlen < 31 else net.last))
