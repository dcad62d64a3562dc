"""Networks: one overlay segment (VXLAN VNI or GRE key) and an internal key per network.

A network's ``subnets`` list is not stored in its body but read from the subnets table, so adding
a subnet cannot leave a stale copy behind.  ``_key`` is the data plane's compact handle for the
network (OpenFlow metadata and cookies); it is allocated here and never shown by the API.
"""

from __future__ import annotations

import uuid
from typing import Any

from controller.store import allocation
from controller.store.attrs import (
    bump,
    check_read_only,
    reject_unknown,
    standard_attrs,
    updated_common,
)
from controller.store.errors import Conflict, InvalidInput, invalid_attr, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import (
    SEGMENT_RANGES,
    as_bool,
    as_int,
    as_str,
    as_str_list,
    as_uuid,
    choice,
    network_mtu,
)

KIND = "network"
DEFAULT_TYPE = "vxlan"
PROVIDER_ATTRS = ("provider:network_type", "provider:segmentation_id")

CREATE_ATTRS = frozenset(
    {
        "id",
        "name",
        "description",
        "project_id",
        "tenant_id",
        "admin_state_up",
        "shared",
        "status",
        "mtu",
        "tags",
        "port_security_enabled",
        "router:external",
        "availability_zone_hints",
        "provider:network_type",
        "provider:segmentation_id",
        "provider:physical_network",
    }
)
# What a network shows but a client cannot set; an update may repeat it unchanged (CloudStack
# PUTs whole objects back, so a network read with GET must be accepted back by PUT).
READ_ONLY = (
    "id",
    "created_at",
    "updated_at",
    "revision_number",
    "subnets",
    "availability_zones",
)
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY)


def load(tx: Tx, network_id: str) -> dict[str, Any] | None:
    """The network as the API shows it (plus ``_key``), or None."""
    row = tx.one("SELECT body FROM networks WHERE id = ?", (network_id,))
    return None if row is None else with_subnets(tx, loads(row[0]))


def with_subnets(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """A stored network body with its ``subnets`` list (not stored: read from the subnets)."""
    body["subnets"] = subnet_ids(tx, body["id"])
    return body


def subnet_ids(tx: Tx, network_id: str) -> list[str]:
    """The network's subnets, as its ``subnets`` attribute lists them."""
    rows = tx.all("SELECT id FROM subnets WHERE network_id = ? ORDER BY seq", (network_id,))
    return [r[0] for r in rows]


def subnets_changed(tx: Tx, network_id: str, before: list[str]) -> None:
    """A subnet of the network was created or deleted: its ``subnets`` list, part of what
    the API shows, changed, so its revision moves (as Neutron's does), and an If-Match on the
    revision read before fails."""
    now = load(tx, network_id)
    if now is None or now["subnets"] == before:
        return
    new = bump({**now, "subnets": before}, now)
    stored = {k: v for k, v in new.items() if k != "subnets"}
    tx.conn.execute("UPDATE networks SET body = ? WHERE id = ?", (dumps(stored), network_id))
    tx.emit(KIND, {**now, "subnets": before}, new)


def load_all(tx: Tx) -> list[dict[str, Any]]:
    """Every network, sorted by id, with their subnet lists in two queries."""
    return tx.bodies_with_children(
        "SELECT body FROM networks ORDER BY id",
        "SELECT network_id, id FROM subnets ORDER BY seq",
        "subnets",
    )


def must_load(tx: Tx, network_id: str) -> dict[str, Any]:
    """The network, or Neutron's 404 ``NetworkNotFound``."""
    body = load(tx, network_id)
    if body is None:
        raise not_found(KIND, network_id)
    return body


def _segment(
    tx: Tx, body: dict[str, Any], seg_id_is_hint: bool, own_id: str | None = None
) -> tuple[str, int]:
    """The overlay type and segmentation id for a network being created or re-segmented.

    An explicit id is honoured or refused (409 ``TunnelIdInUse``); when ``seg_id_is_hint`` (the
    CloudStack paths, which send the same id for every network) a taken id is replaced by a free
    one instead, so that two tenant networks are never silently merged.
    """
    seg_type = choice(
        body.get("provider:network_type") or DEFAULT_TYPE,
        "provider:network_type",
        tuple(SEGMENT_RANGES),
    )
    if body.get("provider:physical_network") is not None:
        raise invalid_attr("provider:physical_network", f"not supported for {seg_type} networks")
    low, high = SEGMENT_RANGES[seg_type]
    requested = body.get("provider:segmentation_id")
    if requested is None:
        return seg_type, allocation.segmentation_id(tx, seg_type, low, high)
    seg_id = as_int(requested, "provider:segmentation_id", low, high)
    holder = tx.one("SELECT id FROM networks WHERE seg_type = ? AND seg_id = ?", (seg_type, seg_id))
    if holder is not None and holder[0] != own_id:
        if seg_id_is_hint:
            return seg_type, allocation.segmentation_id(tx, seg_type, low, high)
        raise Conflict(
            f"Unable to create the network. The tunnel ID {seg_id} is in use.", "TunnelIdInUse"
        )
    return seg_type, seg_id


def _mtu(tx: Tx, body: dict[str, Any], seg_type: str) -> int:
    """The network MTU: the most the underlay allows, or less if the client asks."""
    largest = network_mtu(tx.underlay_mtu, seg_type)
    if body.get("mtu") is None:
        return largest
    return as_int(body["mtu"], "mtu", 68, largest)


def create(tx: Tx, body: dict[str, Any], *, seg_id_is_hint: bool = False) -> dict[str, Any]:
    """Insert one network (allocating its segment and key) and queue its event."""
    reject_unknown(body, CREATE_ATTRS)
    net_id = as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4())
    if tx.exists("SELECT 1 FROM networks WHERE id = ?", (net_id,)):
        raise Conflict(f"Network {net_id} already exists.", "NetworkExists")
    seg_type, seg_id = _segment(tx, body, seg_id_is_hint)
    if as_bool(body.get("router:external", False), "router:external"):
        raise invalid_attr("router:external", "external networks are not supported")
    key = allocation.network_key(tx)
    new: dict[str, Any] = {
        "id": net_id,
        "name": as_str(body.get("name", ""), "name"),
        "admin_state_up": as_bool(body.get("admin_state_up", True), "admin_state_up"),
        "status": "ACTIVE",
        "shared": as_bool(body.get("shared", False), "shared"),
        "provider:network_type": seg_type,
        "provider:segmentation_id": seg_id,
        "provider:physical_network": None,
        "mtu": _mtu(tx, body, seg_type),
        "port_security_enabled": as_bool(
            body.get("port_security_enabled", True), "port_security_enabled"
        ),
        "router:external": False,
        "availability_zone_hints": as_str_list(
            body.get("availability_zone_hints", []), "availability_zone_hints"
        ),
        "availability_zones": [],
        **standard_attrs(body),
        "_key": key,
    }
    tx.conn.execute(
        "INSERT INTO networks (id, key, seg_type, seg_id, body) VALUES (?, ?, ?, ?, ?)",
        (net_id, key, seg_type, seg_id, dumps(new)),
    )
    new["subnets"] = []
    tx.emit(KIND, None, new)
    return new


def update(
    tx: Tx, current: dict[str, Any], changes: dict[str, Any], *, seg_id_is_hint: bool = False
) -> dict[str, Any]:
    """Apply a partial update; re-segmenting is allowed only while the network has no ports.

    With ``seg_id_is_hint`` (the CloudStack paths, which PUT whole networks back with the
    ``provider:segmentation_id`` they sent at creation) the segmentation id of an update is a
    hint too: the network keeps its segment unless its type changes.
    """
    reject_unknown(changes, UPDATE_ATTRS)
    if (
        seg_id_is_hint
        and "provider:segmentation_id" in changes
        and changes.get("provider:network_type", current["provider:network_type"])
        == current["provider:network_type"]
    ):
        changes = {**changes, "provider:segmentation_id": current["provider:segmentation_id"]}
    check_read_only(current, changes, READ_ONLY)
    if "router:external" in changes and as_bool(changes["router:external"], "router:external"):
        raise invalid_attr("router:external", "external networks are not supported")
    new = updated_common(current, changes)
    for name in ("admin_state_up", "shared", "port_security_enabled"):
        if name in changes:
            new[name] = as_bool(changes[name], name)
    if "availability_zone_hints" in changes:
        new["availability_zone_hints"] = as_str_list(
            changes["availability_zone_hints"], "availability_zone_hints"
        )
    wanted = {**{a: current[a] for a in PROVIDER_ATTRS}, **_provider_changes(changes, current)}
    if any(wanted[a] != current[a] for a in PROVIDER_ATTRS):
        if tx.exists("SELECT 1 FROM ports WHERE network_id = ?", (current["id"],)):
            raise InvalidInput(
                "Invalid input for operation: provider attributes of network "
                f"{current['id']} cannot be changed while it has ports.",
                "InvalidInput",
            )
        seg_type, seg_id = _segment(tx, wanted, seg_id_is_hint, own_id=current["id"])
        new["provider:network_type"] = seg_type
        new["provider:segmentation_id"] = seg_id
        if "mtu" not in changes:
            new["mtu"] = min(current["mtu"], network_mtu(tx.underlay_mtu, seg_type))
    if "mtu" in changes:
        new["mtu"] = _mtu(tx, {"mtu": changes["mtu"]}, new["provider:network_type"])
    new = bump(current, new)
    if new is not current:
        stored = {k: v for k, v in new.items() if k != "subnets"}
        tx.conn.execute(
            "UPDATE networks SET seg_type = ?, seg_id = ?, body = ? WHERE id = ?",
            (
                new["provider:network_type"],
                new["provider:segmentation_id"],
                dumps(stored),
                current["id"],
            ),
        )
        tx.emit(KIND, current, new)
    return new


def _provider_changes(changes: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The provider attributes an update names; a new type without an id means "allocate".
    The network's own type named again (a client echoing what it read) changes nothing."""
    if changes.get("provider:physical_network") is not None:
        raise invalid_attr("provider:physical_network", "not supported for overlay networks")
    wanted = {a: changes[a] for a in PROVIDER_ATTRS if a in changes}
    new_type = wanted.get("provider:network_type", current["provider:network_type"])
    if new_type != current["provider:network_type"] and "provider:segmentation_id" not in wanted:
        wanted["provider:segmentation_id"] = None
    return wanted


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete a port-less network and, like Neutron, its subnets (409 ``NetworkInUse`` if any
    port remains)."""
    net_id = current["id"]
    if tx.exists("SELECT 1 FROM ports WHERE network_id = ?", (net_id,)):
        raise Conflict(
            f"Unable to complete operation on network {net_id}. "
            "There are one or more ports still in use on the network.",
            "NetworkInUse",
        )
    for (text,) in tx.all("SELECT body FROM subnets WHERE network_id = ? ORDER BY seq", (net_id,)):
        tx.emit("subnet", loads(text), None)
    tx.conn.execute("DELETE FROM subnets WHERE network_id = ?", (net_id,))
    tx.conn.execute("DELETE FROM networks WHERE id = ?", (net_id,))
    tx.emit(KIND, current, None)
