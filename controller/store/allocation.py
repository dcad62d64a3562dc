"""Allocation of segmentation ids, network keys, MACs and IPs inside the write transaction.

Every allocator runs while the caller holds SQLite's write lock (``BEGIN IMMEDIATE``), so "find a
free value, then insert it" cannot interleave with another writer; the UNIQUE constraints of the
schema back this up.  Searches use the unique indexes rather than reading whole tables, so
allocating stays cheap as the tables grow.
"""

from __future__ import annotations

import secrets
import socket

import netaddr

from controller.store.errors import Conflict
from controller.store.tx import Tx

KEY_RANGE = (1, 2**31 - 1)
"""Network keys fit OpenFlow metadata/cookie fields as positive signed 32-bit integers."""

MAC_PREFIX = (0xFA, 0x16, 0x3E)
"""Neutron's locally administered OUI, so generated MACs look familiar to operators."""

MAC_ATTEMPTS = 16


def _lowest_free_segment(tx: Tx, seg_type: str, low: int, high: int) -> int | None:
    """The lowest unused segmentation id of a type: ``low`` itself, or one past a used id whose
    successor is free (found by walking the UNIQUE(seg_type, seg_id) index, not the table).

    The walk starts at the transaction's hint (`Tx.seg_hints`) when it has one: the ids below
    it are known to be used, and walking them again for every network of a bulk was quadratic
    (3,000 networks: 9 s under the write lock)."""
    low = max(low, tx.seg_hints.get((seg_type, low), low))
    if low > high:
        return None
    if not tx.exists("SELECT 1 FROM networks WHERE seg_type = ? AND seg_id = ?", (seg_type, low)):
        return low
    row = tx.one(
        "SELECT a.seg_id + 1 FROM networks AS a WHERE a.seg_type = ? AND a.seg_id >= ?"
        " AND a.seg_id < ? AND NOT EXISTS (SELECT 1 FROM networks AS b"
        " WHERE b.seg_type = a.seg_type AND b.seg_id = a.seg_id + 1)"
        " ORDER BY a.seg_id LIMIT 1",
        (seg_type, low, high),
    )
    return None if row is None else int(row[0])


def _lowest_free_key(tx: Tx, low: int, high: int) -> int | None:
    """The lowest unused network key, by the same index walk as segmentation ids."""
    if not tx.exists("SELECT 1 FROM networks WHERE key = ?", (low,)):
        return low
    row = tx.one(
        "SELECT a.key + 1 FROM networks AS a WHERE a.key >= ? AND a.key < ?"
        " AND NOT EXISTS (SELECT 1 FROM networks AS b WHERE b.key = a.key + 1)"
        " ORDER BY a.key LIMIT 1",
        (low, high),
    )
    return None if row is None else int(row[0])


def segmentation_id(tx: Tx, seg_type: str, low: int, high: int) -> int:
    """The lowest free segmentation id of an overlay type."""
    found = _lowest_free_segment(tx, seg_type, low, high)
    if found is None:
        raise Conflict(
            f"Unable to create the network. No {seg_type} segmentation id is available.",
            "NoNetworkAvailable",
        )
    tx.seg_hints[(seg_type, low)] = found + 1
    return found


def network_key(tx: Tx) -> int:
    """A fresh network key.

    Keys come from a counter rather than the lowest gap so that a key freed by a deleted network
    is not handed out again at once: the data plane may still be removing flows tagged with it.
    Only after the counter wraps are gaps reused.
    """
    low, high = KEY_RANGE
    row = tx.one("SELECT value FROM counters WHERE name = 'network_key'")
    candidate = low if row is None else int(row[0])
    if candidate > high or tx.exists("SELECT 1 FROM networks WHERE key = ?", (candidate,)):
        found = _lowest_free_key(tx, low, high)
        if found is None:
            raise Conflict("No network key is available.", "NoNetworkAvailable")
        candidate = found
    tx.conn.execute(
        "INSERT INTO counters (name, value) VALUES ('network_key', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (candidate + 1,),
    )
    return candidate


PORT_NUM_MAX = (1 << 40) - 1  # flows.tables.OWNER_NUM_MAX: a port number is part of a cookie


def port_number(tx: Tx) -> int:
    """A fresh port number: the next value of a counter that never goes back, so a number is
    never handed out twice (see schema._v6_port_numbers); 2**40 creates exhaust it."""
    row = tx.one("SELECT value FROM counters WHERE name = 'port_num'")
    num = 1 if row is None else int(row[0])
    if num > PORT_NUM_MAX:
        raise Conflict("No port number is available.", "PortLimitExceeded")
    tx.conn.execute(
        "INSERT INTO counters (name, value) VALUES ('port_num', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (num + 1,),
    )
    return num


def mac_address(tx: Tx, network_id: str) -> str:
    """A random ``fa:16:3e:xx:xx:xx`` MAC not yet used on the network (retrying on collision)."""
    for _ in range(MAC_ATTEMPTS):
        octets = (*MAC_PREFIX, *secrets.token_bytes(3))
        mac = ":".join(f"{o:02x}" for o in octets)
        if not mac_taken(tx, network_id, mac):
            return mac
    raise Conflict(
        f"Unable to generate unique mac on network {network_id}.", "MacAddressGenerationFailure"
    )


def mac_taken(tx: Tx, network_id: str, mac: str, except_port: str | None = None) -> bool:
    """Whether a port of the network (other than ``except_port``) has this MAC."""
    return tx.exists(
        "SELECT 1 FROM ports WHERE network_id = ? AND mac = ? AND id IS NOT ?",
        (network_id, mac, except_port),
    )


def ip_taken(tx: Tx, subnet_id: str, ip: str) -> bool:
    """Whether the address is already allocated in the subnet."""
    return tx.exists("SELECT 1 FROM ip_allocations WHERE subnet_id = ? AND ip = ?", (subnet_id, ip))


HINT_PROBES = 64
"""Indexed lookups tried from the hint before falling back to a scan of the subnet."""


def ip_address(tx: Tx, subnet: dict[str, object]) -> str | None:
    """A free address of the subnet's allocation pools (never the gateway), or None when the
    pools are exhausted.

    The common case costs one or two indexed lookups: the search starts where the previous
    allocation in this subnet stopped (kept in memory by the Store, see `Tx.ip_hints`) and probes
    addresses one by one.  Only when that finds nothing within `HINT_PROBES` (explicitly
    requested addresses ahead, or the end of the pools) does it scan the whole subnet from the
    start, which also finds addresses freed meanwhile.  After a restart the first allocation
    in a subnet is such a scan.

    A freed address is therefore not handed out again at once: the hint moves on past it, and
    it comes back only when the search wraps (the pools' end reached) or after a restart.
    Reusing it at once would leave peers that talked to the old port with a neighbour entry
    for the old MAC, which the ARP responder (answering in flows, so peers no longer see each
    other's requests) does not refresh.  Neutron's IPAM avoids the same by picking at random
    among the first free addresses of the pool (neutrondb_ipam's ``_generate_ips``).
    """
    version = int(str(subnet["ip_version"]))
    subnet_id = str(subnet["id"])
    gateway_ip = subnet.get("gateway_ip")
    gateway = int(netaddr.IPAddress(str(gateway_ip))) if gateway_ip else None
    raw_pools = subnet.get("allocation_pools") or []
    assert isinstance(raw_pools, list)
    pools = [
        (int(netaddr.IPAddress(p["start"])), int(netaddr.IPAddress(p["end"]))) for p in raw_pools
    ]
    hint = tx.ip_hint(subnet_id)
    found = None
    if hint is not None:
        found = _probe(tx, subnet_id, version, pools, gateway, hint)
    if found is None:
        found = _scan(tx, subnet_id, version, pools, gateway)
    if found is None:
        return None
    tx.new_ip_hints[subnet_id] = found + 1
    return str(netaddr.IPAddress(found, version=version))


def _probe(
    tx: Tx,
    subnet_id: str,
    version: int,
    pools: list[tuple[int, int]],
    gateway: int | None,
    start: int,
) -> int | None:
    probes = 0
    for first, last in pools:
        candidate = max(first, start)
        while candidate <= last and probes < HINT_PROBES:
            text = str(netaddr.IPAddress(candidate, version=version))
            if candidate != gateway and not ip_taken(tx, subnet_id, text):
                return candidate
            candidate += 1
            probes += 1
    return None


def _scan(
    tx: Tx,
    subnet_id: str,
    version: int,
    pools: list[tuple[int, int]],
    gateway: int | None,
) -> int | None:
    """The lowest free address, reading every allocation of the subnet once."""
    # Stored addresses are already canonical (validated with netaddr on the way in), so the
    # stdlib's inet_pton is enough here; it is ~10x cheaper per row than building IPAddress
    # objects.
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    used = {
        int.from_bytes(socket.inet_pton(family, row[0]), "big")
        for row in tx.all("SELECT ip FROM ip_allocations WHERE subnet_id = ?", (subnet_id,))
    }
    if gateway is not None:
        used.add(gateway)
    for first, last in pools:
        candidate = first
        while candidate <= last and candidate in used:
            candidate += 1
        if candidate <= last:
            return candidate
    return None
