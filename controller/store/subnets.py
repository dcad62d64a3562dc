"""Subnets: a CIDR on a network, its gateway and the pools ports get addresses from.

Address arithmetic is netaddr's (``IPSet`` for "the CIDR minus the reserved addresses"); this
module only decides Neutron's defaults and refuses what would make allocation ambiguous (pools
outside the CIDR or overlapping each other, a gateway inside a pool, overlapping subnets on one
network).
"""

from __future__ import annotations

import uuid
from typing import Any

import netaddr

from controller.store import networks
from controller.store.attrs import (
    bump,
    check_read_only,
    null_only,
    reject_unknown,
    require,
    standard_attrs,
    updated_common,
)
from controller.store.errors import Conflict, InvalidInput, invalid_attr, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import as_bool, as_int, as_str, as_uuid, parse_cidr, parse_ip

KIND = "subnet"

CREATE_ATTRS = frozenset(
    {
        "id",
        "name",
        "description",
        "project_id",
        "tenant_id",
        "network_id",
        "cidr",
        "ip_version",
        "gateway_ip",
        "allocation_pools",
        "dns_nameservers",
        "host_routes",
        "enable_dhcp",
        "tags",
        "ipv6_ra_mode",
        "ipv6_address_mode",
        "subnetpool_id",
        "segment_id",
        "service_types",
    }
)
READ_ONLY = (
    "id",
    "network_id",
    "cidr",
    "ip_version",
    "created_at",
    "updated_at",
    "revision_number",
    "subnetpool_id",
    "segment_id",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "service_types",
)
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY)
UNSUPPORTED_NULL_ONLY = ("ipv6_ra_mode", "ipv6_address_mode", "subnetpool_id", "segment_id")


def load(tx: Tx, subnet_id: str) -> dict[str, Any] | None:
    """The subnet, or None."""
    row = tx.one("SELECT body FROM subnets WHERE id = ?", (subnet_id,))
    return None if row is None else loads(row[0])


def load_all(tx: Tx, network_id: str | None = None) -> list[dict[str, Any]]:
    """Subnets sorted by id, optionally of one network."""
    if network_id is None:
        rows = tx.all("SELECT body FROM subnets ORDER BY id")
    else:
        rows = tx.all("SELECT body FROM subnets WHERE network_id = ? ORDER BY id", (network_id,))
    return [loads(r[0]) for r in rows]


def of_network_in_order(tx: Tx, network_id: str) -> list[dict[str, Any]]:
    """A network's subnets in creation order (the order Neutron picks a default subnet in)."""
    rows = tx.all("SELECT body FROM subnets WHERE network_id = ? ORDER BY seq", (network_id,))
    return [loads(r[0]) for r in rows]


def must_load(tx: Tx, subnet_id: str) -> dict[str, Any]:
    """The subnet, or Neutron's 404 ``SubnetNotFound``."""
    body = load(tx, subnet_id)
    if body is None:
        raise not_found(KIND, subnet_id)
    return body


def usable(cidr: netaddr.IPNetwork) -> netaddr.IPSet:
    """Addresses a host may have: IPv4 loses its network and broadcast address (except in the
    point-to-point /31 and /32), IPv6 its subnet-router anycast address."""
    hosts = netaddr.IPSet([cidr])
    if cidr.version == 4 and cidr.prefixlen <= 30:
        hosts.remove(cidr.network)
        hosts.remove(cidr.broadcast)
    elif cidr.version == 6 and cidr.prefixlen < 128:
        hosts.remove(cidr.network)
    return hosts


def is_usable(ip: netaddr.IPAddress, cidr: netaddr.IPNetwork) -> bool:
    """``ip in usable(cidr)`` by integer comparison: this runs for every port with a fixed IP,
    and building the IPSet cost ~0.1 ms each time (most of a bulk port create)."""
    first, last = cidr.first, cidr.last
    if cidr.version == 4 and cidr.prefixlen <= 30:
        first, last = first + 1, last - 1
    elif cidr.version == 6 and cidr.prefixlen < 128:
        first += 1
    return ip.version == cidr.version and first <= int(ip) <= last


def _gateway(body: dict[str, Any], cidr: netaddr.IPNetwork) -> str | None:
    """The gateway: the first usable address unless given; an explicit null means none."""
    hosts = usable(cidr)
    if "gateway_ip" not in body:
        return str(next(iter(hosts))) if hosts.size > 1 else None
    if body["gateway_ip"] is None:
        return None
    gateway = parse_ip(body["gateway_ip"], "gateway_ip", cidr.version)
    if gateway not in hosts:
        raise invalid_attr("gateway_ip", f"'{gateway}' is not a usable address of {cidr}")
    return str(gateway)


def _pools(
    body: dict[str, Any], cidr: netaddr.IPNetwork, gateway: str | None
) -> list[dict[str, str]]:
    """The allocation pools: given ones validated, else the usable range minus the gateway."""
    hosts = usable(cidr)
    raw = body.get("allocation_pools")
    if raw is None and "allocation_pools" in body:  # Neutron too: not "the default pools"
        raise invalid_attr("allocation_pools", "null is not a list of {start, end} pools")
    if raw is None:
        if gateway is not None:
            hosts.remove(netaddr.IPAddress(gateway))
        return [{"start": str(r[0]), "end": str(r[-1])} for r in hosts.iter_ipranges()]
    if not isinstance(raw, list):
        raise invalid_attr("allocation_pools", f"'{raw}' is not a list")
    pools: list[dict[str, str]] = []
    taken = netaddr.IPSet()
    for pool in raw:
        if not isinstance(pool, dict) or set(pool) != {"start", "end"}:
            raise invalid_attr("allocation_pools", f"'{pool}' is not a {{start, end}} pair")
        start = parse_ip(pool["start"], "allocation_pools", cidr.version)
        end = parse_ip(pool["end"], "allocation_pools", cidr.version)
        if start > end:
            raise invalid_attr("allocation_pools", f"start {start} is after end {end}")
        span = netaddr.IPSet(netaddr.IPRange(start, end))
        if not span.issubset(hosts):
            raise invalid_attr("allocation_pools", f"{start}-{end} is not within {cidr}")
        if span & taken:
            raise invalid_attr("allocation_pools", f"{start}-{end} overlaps another pool")
        if gateway is not None and netaddr.IPAddress(gateway) in span:
            raise Conflict(
                f"Gateway ip {gateway} conflicts with allocation pool {start}-{end}",
                "GatewayConflictWithAllocationPools",
            )
        taken |= span
        pools.append({"start": str(start), "end": str(end)})
    return pools


def _nameservers(value: Any, version: int) -> list[str]:
    """DNS servers as canonical IPs of the subnet's IP version, without duplicates.

    The version is checked as Neutron does (a 400): the DHCP responder offers the servers in
    an option of the subnet's family, and one it cannot encode left every port on the subnet
    without a DHCP answer."""
    if not isinstance(value, list):
        raise invalid_attr("dns_nameservers", f"'{value}' is not a list")
    servers = [str(parse_ip(v, "dns_nameservers", version)) for v in value]
    if len(set(servers)) != len(servers):
        raise invalid_attr("dns_nameservers", f"duplicate nameserver in {value}")
    return servers


def _routes(value: Any, version: int) -> list[dict[str, str]]:
    """Host routes as canonical ``{destination, nexthop}`` pairs of the subnet's IP version."""
    if not isinstance(value, list):
        raise invalid_attr("host_routes", f"'{value}' is not a list")
    routes = []
    for route in value:
        if not isinstance(route, dict) or set(route) != {"destination", "nexthop"}:
            raise invalid_attr("host_routes", f"'{route}' is not a {{destination, nexthop}} pair")
        dest = parse_cidr(route["destination"], "host_routes")
        hop = parse_ip(route["nexthop"], "host_routes", version)
        if dest.version != version:
            raise invalid_attr("host_routes", f"'{dest}' is not an IPv{version} network")
        if {"destination": str(dest), "nexthop": str(hop)} in routes:  # as Neutron: a 400
            raise invalid_attr("host_routes", f"duplicate host route '{dest} via {hop}'")
        routes.append({"destination": str(dest), "nexthop": str(hop)})
    return routes


def _null_only(body: dict[str, Any]) -> None:
    """Attributes Neutron has that tenantnet does not implement may only be null (or empty)."""
    null_only(body, UNSUPPORTED_NULL_ONLY)
    if body.get("service_types"):
        raise invalid_attr("service_types", "not supported by tenantnet")


def create(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """Insert one subnet on an existing network and queue its event."""
    reject_unknown(body, CREATE_ATTRS)
    _null_only(body)
    network_id = as_str(require(body, "network_id"), "network_id")
    if not tx.exists("SELECT 1 FROM networks WHERE id = ?", (network_id,)):
        raise not_found("network", network_id)
    cidr = parse_cidr(require(body, "cidr"))
    version = as_int(body.get("ip_version", cidr.version), "ip_version", 4, 6)
    if version != cidr.version:
        raise invalid_attr("ip_version", f"{version} does not match cidr {cidr}")
    subnet_id = as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4())
    if tx.exists("SELECT 1 FROM subnets WHERE id = ?", (subnet_id,)):
        raise Conflict(f"Subnet {subnet_id} already exists.", "SubnetExists")
    for other in of_network_in_order(tx, network_id):
        if netaddr.IPSet([cidr]) & netaddr.IPSet([other["cidr"]]):
            raise InvalidInput(
                f"Invalid input for operation: Requested subnet with cidr: {cidr} for network: "
                f"{network_id} overlaps with another subnet.",
                "InvalidInput",
            )
    gateway = _gateway(body, cidr)
    before = networks.subnet_ids(tx, network_id)
    new: dict[str, Any] = {
        "id": subnet_id,
        "name": as_str(body.get("name", ""), "name"),
        "network_id": network_id,
        "ip_version": version,
        "cidr": str(cidr),
        "gateway_ip": gateway,
        "allocation_pools": _pools(body, cidr, gateway),
        "dns_nameservers": _nameservers(body.get("dns_nameservers", []), version),
        "host_routes": _routes(body.get("host_routes", []), version),
        "enable_dhcp": as_bool(body.get("enable_dhcp", True), "enable_dhcp"),
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "segment_id": None,
        "service_types": [],
        **standard_attrs(body),
    }
    tx.conn.execute(
        "INSERT INTO subnets (id, network_id, body) VALUES (?, ?, ?)",
        (subnet_id, network_id, dumps(new)),
    )
    tx.emit(KIND, None, new)
    networks.subnets_changed(tx, network_id, before)
    return new


def _check_gateway_unrouted(tx: Tx, current: dict[str, Any]) -> None:
    """The gateway may not move while it is a router's address on the subnet (its VMs route
    through that address; Neutron's ``GatewayIpInUse``)."""
    row = tx.one(
        "SELECT rp.router_id FROM router_ports rp JOIN ip_allocations a ON a.port_id = rp.port_id"
        " WHERE rp.subnet_id = ? AND a.subnet_id = ? AND a.ip = ?",
        (current["id"], current["id"], current["gateway_ip"]),
    )
    if row is not None:
        raise Conflict(
            f"Gateway ip {current['gateway_ip']} of subnet {current['id']} is the interface "
            f"address of router {row[0]}; remove the interface first (gateway_ip).",
            "GatewayIpInUse",
        )


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply a partial update (gateway and pools are re-validated together)."""
    reject_unknown(changes, UPDATE_ATTRS)
    check_read_only(current, changes, READ_ONLY)
    new = updated_common(current, changes)
    cidr = netaddr.IPNetwork(current["cidr"])
    version = current["ip_version"]
    if "gateway_ip" in changes or "allocation_pools" in changes:
        gateway = _gateway({"gateway_ip": changes.get("gateway_ip", current["gateway_ip"])}, cidr)
        pools = changes.get("allocation_pools", current["allocation_pools"])
        if gateway != current["gateway_ip"]:
            _check_gateway_unrouted(tx, current)
        new["gateway_ip"] = gateway
        new["allocation_pools"] = _pools({"allocation_pools": pools}, cidr, gateway)
    if "dns_nameservers" in changes:
        new["dns_nameservers"] = _nameservers(changes["dns_nameservers"], version)
    if "host_routes" in changes:
        new["host_routes"] = _routes(changes["host_routes"], version)
    if "enable_dhcp" in changes:
        new["enable_dhcp"] = as_bool(changes["enable_dhcp"], "enable_dhcp")
    new = bump(current, new)
    if new is not current:
        tx.conn.execute("UPDATE subnets SET body = ? WHERE id = ?", (dumps(new), current["id"]))
        tx.emit(KIND, current, new)
    return new


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete a subnet no port has an address from (409 ``SubnetInUse`` otherwise)."""
    if tx.exists("SELECT 1 FROM ip_allocations WHERE subnet_id = ?", (current["id"],)):
        raise Conflict(
            f"Unable to complete operation on subnet {current['id']}: "
            "One or more ports have an IP allocation from this subnet.",
            "SubnetInUse",
        )
    before = networks.subnet_ids(tx, current["network_id"])
    tx.conn.execute("DELETE FROM subnets WHERE id = ?", (current["id"],))
    tx.emit(KIND, current, None)
    networks.subnets_changed(tx, current["network_id"], before)
