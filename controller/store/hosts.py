"""Hosts: the hypervisors the data plane manages, keyed by the orchestrator's host id.

A host's id is the value ports carry in ``binding:host_id``.  The orchestrator says where to reach
the host's OVSDB and which address terminates its tunnels; ``status`` and ``datapath_id`` are the
data plane's observations and clients cannot set them (they may send them, like a port's status,
and they are ignored).  Deleting a host leaves its ports alone: unbinding them is the data plane's
reaction to the host's delete event.
"""

from __future__ import annotations

from typing import Any

from controller.datapath_id import datapath_id_for
from controller.store.attrs import bump, check_read_only, reject_unknown, require, utc_now
from controller.store.errors import Conflict, invalid_attr, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import (
    as_str,
    bridge_name,
    choice,
    parse_ip,
    parse_ovsdb_target,
)
from controller.store.values import (
    host_id as valid_host_id,
)

KIND = "host"
DATAPATH_TYPES = ("system", "netdev")
STATUSES = ("connected", "degraded", "disconnected")
OVSDB_PORT = 6640

CREATE_ATTRS = frozenset(
    {
        "id",
        "name",
        "description",
        "tunnel_ip",
        "ovsdb",
        "mgmt_ip",
        "integration_bridge",
        "datapath_type",
        "status",
        "datapath_id",
    }
)
READ_ONLY = ("id", "created_at", "updated_at", "revision_number")
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY)


def load(tx: Tx, host_id: str) -> dict[str, Any] | None:
    """The host, or None."""
    row = tx.one("SELECT body FROM hosts WHERE id = ?", (host_id,))
    return None if row is None else loads(row[0])


def load_all(tx: Tx) -> list[dict[str, Any]]:
    """Every host, sorted by id."""
    return [loads(r[0]) for r in tx.all("SELECT body FROM hosts ORDER BY id")]


def must_load(tx: Tx, host_id: str) -> dict[str, Any]:
    """The host, or 404 ``HostNotFound``."""
    body = load(tx, host_id)
    if body is None:
        raise not_found(KIND, host_id)
    return body


def _configured(body: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the orchestrator-owned attributes of ``body`` validated and applied."""
    new = dict(base)
    if "tunnel_ip" in body:
        new["tunnel_ip"] = str(parse_ip(require(body, "tunnel_ip"), "tunnel_ip", 4))
    for name in ("name", "description"):
        if name in body:
            new[name] = as_str(body[name], name)
    if body.get("ovsdb") is not None:
        new["ovsdb"] = parse_ovsdb_target(body["ovsdb"])
    if "mgmt_ip" in body:
        # Where the host's switch connects from, for admitting it without TLS when the OVSDB
        # target does not say (unix:); see controller/dataplane/admission.py.
        mgmt = body["mgmt_ip"]
        new["mgmt_ip"] = "" if mgmt in (None, "") else str(parse_ip(mgmt, "mgmt_ip"))
    if "integration_bridge" in body:
        new["integration_bridge"] = bridge_name(body["integration_bridge"])
    if "datapath_type" in body:
        new["datapath_type"] = choice(body["datapath_type"], "datapath_type", DATAPATH_TYPES)
    return new


def _check_tunnel_ip_free(tx: Tx, new: dict[str, Any]) -> None:
    """409 if another host already terminates tunnels at ``new``'s tunnel IP.

    A tunnel IP is how a host is known to its peers: they accept a network's key only from its
    hosts' addresses (``tun_src``) and send to a port's host by it (``tun_dst``).  Two hosts at
    one address would make every peer accept, from that address, the networks of both, and
    send both hosts' traffic there: the machine at that address could read and inject into
    the networks of the other host's tenants (OVN's Encap table refuses the same clash)."""
    row = tx.one(
        "SELECT id FROM hosts WHERE json_extract(body, '$.tunnel_ip') = ? AND id != ?",
        (new["tunnel_ip"], new["id"]),
    )
    if row is not None:
        raise Conflict(
            f"Tunnel IP {new['tunnel_ip']} is already in use by host {row[0]}.",
            "HostTunnelIpInUse",
        )


def _check_datapath_id_free(tx: Tx, host_id: str) -> None:
    """409 if another host's id maps to the datapath id ``host_id`` maps to.

    A host's datapath id is a 48-bit hash of its id (`datapath_id_for`), written into its
    bridge; it is how the controller recognises the host's switch when it connects (admission,
    the data plane's switch-to-host map).  A second host with the same one would share the
    first's switch identity: its switch taken for the first's (or the first's taken over), its
    flows sent to the other.  Rare (the low bit is always set: one pair in 2**47), so no column
    holds it: the ids are hashed here, in the write transaction, which keeps the check atomic
    with the insert on both backends (the etcd store runs the same transaction, again if it was
    overtaken).  The id never changes, so only a create (also CloudStack's upsert of a new
    host) needs it."""
    dpid = datapath_id_for(host_id)
    for (other,) in tx.all("SELECT id FROM hosts WHERE id != ?", (host_id,)):
        if datapath_id_for(other) == dpid:
            raise Conflict(
                f"Host {host_id} maps to datapath_id {dpid:016x}, which is already in use by "
                f"host {other}; register it under another id.",
                "HostDatapathIdInUse",
            )


def create(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """Register a host; its OVSDB target defaults to ``tcp:<tunnel_ip>:6640``."""
    reject_unknown(body, CREATE_ATTRS)
    host_id = valid_host_id(require(body, "id"), "id")
    require(body, "tunnel_ip")
    if load(tx, host_id) is not None:
        raise Conflict(f"Host {host_id} already exists.", "HostExists")
    now = utc_now()
    new = _configured(
        body,
        {
            "id": host_id,
            "name": "",
            "description": "",
            "tunnel_ip": "",
            "ovsdb": "",
            "mgmt_ip": "",
            "integration_bridge": "br-int",
            "datapath_type": "system",
            "status": "disconnected",
            "datapath_id": None,
            "created_at": now,
            "updated_at": now,
            "revision_number": 1,
        },
    )
    if not new["ovsdb"]:
        new["ovsdb"] = f"{tx.ovsdb_scheme}:{new['tunnel_ip']}:{OVSDB_PORT}"
    _check_plain_tcp(tx, new["ovsdb"])
    _check_tunnel_ip_free(tx, new)
    _check_datapath_id_free(tx, host_id)
    tx.conn.execute("INSERT INTO hosts (id, body) VALUES (?, ?)", (host_id, dumps(new)))
    tx.emit(KIND, None, new)
    return new


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Change how a host is reached or configured."""
    reject_unknown(changes, UPDATE_ATTRS)
    check_read_only(current, changes, READ_ONLY)
    new = _configured(changes, current)
    if new["ovsdb"] != current["ovsdb"]:
        _check_plain_tcp(tx, new["ovsdb"])
    if new["tunnel_ip"] != current["tunnel_ip"]:
        _check_tunnel_ip_free(tx, new)
    return save(tx, current, new)


def _check_plain_tcp(tx: Tx, target: str) -> None:
    """With TLS to the hypervisors (``tx.ovsdb_scheme`` "ssl"), a ``tcp:`` OVSDB target is
    refused: the session that reports which VM is plugged where, and through which the
    controller configures the bridge, would run in clear text and unauthenticated, so anyone
    on the path could forge port claims.  (``unix:`` stays: a socket on this machine.)"""
    if tx.ovsdb_scheme == "ssl" and target.startswith("tcp:"):
        raise invalid_attr(
            "ovsdb",
            f"'{target}' is plain TCP, and this controller speaks TLS to the hypervisors: "
            "use ssl:<address>:<port>",
        )


def save(tx: Tx, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Store ``new`` (bumping its revision) and queue the event, unless nothing changed."""
    new = bump(current, new)
    if new is not current:
        tx.conn.execute("UPDATE hosts SET body = ? WHERE id = ?", (dumps(new), current["id"]))
        tx.emit(KIND, current, new)
    return new


def set_state(
    tx: Tx, current: dict[str, Any], status: str, datapath_id: str | None
) -> dict[str, Any]:
    """The data plane's observation: connected or not, and the bridge's datapath id."""
    new = {
        **current,
        "status": choice(status, "status", STATUSES),
        "datapath_id": None if datapath_id is None else as_str(datapath_id, "datapath_id"),
    }
    return save(tx, current, new)


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Forget the host (ports bound to it stay; the data plane unbinds them)."""
    tx.conn.execute("DELETE FROM hosts WHERE id = ?", (current["id"],))
    tx.emit(KIND, current, None)
