"""Neutron's network IP availability: per network and subnet, how many addresses the
allocation pools hold (``total_ips``) and how many are allocated (``used_ips``).

As in Neutron, ``total_ips`` counts the pools (a subnet without pools counts its whole CIDR)
and ``used_ips`` every allocated address of the subnet, whether inside a pool or not (a fixed
IP outside the pools is still taken).  Everything is read in one snapshot, with the used
addresses counted inside SQLite (one grouped query over the ``ip_allocations`` index), so a
network and its subnets always agree.
"""

from __future__ import annotations

from typing import Any

import netaddr

from controller.store import networks
from controller.store.tx import Tx, loads


def _total(subnet: dict[str, Any]) -> int:
    pools = subnet["allocation_pools"]
    if not pools:
        return int(netaddr.IPNetwork(subnet["cidr"]).size)
    return sum(netaddr.IPRange(p["start"], p["end"]).size for p in pools)


def load_all(tx: Tx, network_id: str | None = None) -> list[dict[str, Any]]:
    """The availability of every network (or of one), sorted by network id."""
    used = dict(tx.all("SELECT subnet_id, count(*) FROM ip_allocations GROUP BY subnet_id"))
    if network_id is None:
        nets = networks.load_all(tx)
        rows = tx.all("SELECT body FROM subnets ORDER BY seq")
    else:
        net = networks.load(tx, network_id)
        nets = [] if net is None else [net]
        rows = tx.all("SELECT body FROM subnets WHERE network_id = ? ORDER BY seq", (network_id,))
    by_network: dict[str, list[dict[str, Any]]] = {}
    for (text,) in rows:
        subnet = loads(text)
        by_network.setdefault(subnet["network_id"], []).append(
            {
                "subnet_id": subnet["id"],
                "subnet_name": subnet["name"],
                "cidr": subnet["cidr"],
                "ip_version": subnet["ip_version"],
                "total_ips": _total(subnet),
                "used_ips": int(used.get(subnet["id"], 0)),
            }
        )
    result = []
    for net in nets:
        subnets = by_network.get(net["id"], [])
        result.append(
            {
                "network_id": net["id"],
                "network_name": net["name"],
                "project_id": net["project_id"],
                "tenant_id": net["project_id"],
                "subnet_ip_availability": subnets,
                "total_ips": sum(s["total_ips"] for s in subnets),
                "used_ips": sum(s["used_ips"] for s in subnets),
            }
        )
    return result
