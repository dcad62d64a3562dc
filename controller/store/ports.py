"""Ports: a MAC (unique within its network), fixed IPs (unique within their subnet), a binding.

Every fixed IP is also a row of ``ip_allocations`` so that SQLite's UNIQUE(subnet_id, ip) stands
behind the allocator.  ``status`` belongs to the controller (the data plane sets it once the port
is wired); clients may send it, as CloudStack does, but it is ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import netaddr

from controller.store import allocation, dhcp_opts, networks, security_groups, subnets
from controller.store.attrs import (
    bump,
    check_read_only,
    reject_unknown,
    require,
    standard_attrs,
    updated_common,
)
from controller.store.errors import Conflict, InvalidInput, invalid_attr, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import (
    as_bool,
    as_document,
    as_str,
    as_str_list,
    as_uuid,
    canonical_mac,
    choice,
    host_id,
    parse_cidr,
    parse_ip,
)
from flows.vip_pairs import vip_pairs

KIND = "port"
STATUSES = ("ACTIVE", "DOWN", "BUILD", "ERROR")
# ``binding:vif_details`` key: hosts that have an interface for the port but may not bind it
# (controller/dataplane/bindings.py).  vif_details is read-only for clients and describes the
# binding, which is where Neutron drivers report such facts; ``binding:profile`` is the
# orchestrator's input and stays untouched.
REFUSED_HOSTS = "tenantnet_refused_hosts"
# ``binding:vif_details`` key: the allowed-address-pair IPs (virtual IPs) this port holds, as
# the data plane last learnt from its ARP (`claim_vip`): what routes a VIP to its holder
# (flows.routing).  At most one port of a network holds a VIP.
VIPS_HELD = "tenantnet_vips"
VNIC_TYPES = ("normal",)
TRUSTED_OWNER_PREFIX = "network:"
"""Neutron gives ports of these device owners (DHCP, routers) no default security group."""
ROUTER_INTERFACE = "network:router_interface_distributed"
"""The ``device_owner`` of a router's interface port (`controller.store.routers`)."""
ROUTER_OWNER_PREFIX = "network:router_"
"""Device owners only the router operations give: the data plane routes for a port that
claims one, so the port API may not set them (Neutron keeps them for its L3 plugin too)."""

CREATE_ATTRS = frozenset(
    {
        "id",
        "name",
        "description",
        "project_id",
        "tenant_id",
        "network_id",
        "mac_address",
        "fixed_ips",
        "device_id",
        "device_owner",
        "admin_state_up",
        "status",
        "port_security_enabled",
        "security_groups",
        "allowed_address_pairs",
        "extra_dhcp_opts",
        "tags",
        "binding:host_id",
        "binding:profile",
        "binding:vnic_type",
    }
)
READ_ONLY = (
    "id",
    "network_id",
    "created_at",
    "updated_at",
    "revision_number",
    "binding:vif_type",
    "binding:vif_details",
)
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY)


def load(tx: Tx, port_id: str) -> dict[str, Any] | None:
    """The port, or None."""
    row = tx.one("SELECT body FROM ports WHERE id = ?", (port_id,))
    return None if row is None else loads(row[0])


def load_all(
    tx: Tx,
    network_id: str | None = None,
    host_id: str | None = None,
    security_group_id: str | None = None,
) -> list[dict[str, Any]]:
    """Ports sorted by id, optionally of one network, bound to one host and/or in one
    security group (all indexed)."""
    where, params = [], []
    if security_group_id is not None:
        where.append("id IN (SELECT port_id FROM port_security_groups WHERE security_group_id = ?)")
        params.append(security_group_id)
    if network_id is not None:
        where.append("network_id = ?")
        params.append(network_id)
    if host_id is not None:
        where.append("host_id = ?")
        params.append(host_id)
    sql = "SELECT body FROM ports"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [loads(r[0]) for r in tx.all(sql + " ORDER BY id", tuple(params))]


def must_load(tx: Tx, port_id: str) -> dict[str, Any]:
    """The port, or Neutron's 404 ``PortNotFound``."""
    body = load(tx, port_id)
    if body is None:
        raise not_found(KIND, port_id)
    return body


def _subnet_for_ip(tx: Tx, network: dict[str, Any], ip: netaddr.IPAddress) -> dict[str, Any]:
    """The network's subnet whose CIDR contains ``ip`` (400 if none does)."""
    for subnet in subnets.of_network_in_order(tx, network["id"]):
        if ip in netaddr.IPNetwork(subnet["cidr"]):
            return subnet
    raise InvalidInput(
        f"IP address {ip} is not a valid IP for any of the subnets on the specified network.",
        "InvalidIpForNetwork",
    )


def _network_subnet(tx: Tx, network: dict[str, Any], subnet_id: Any) -> dict[str, Any]:
    """A subnet named in ``fixed_ips``: it must exist and belong to the port's network."""
    subnet = subnets.must_load(tx, as_str(subnet_id, "fixed_ips"))
    if subnet["network_id"] != network["id"]:
        raise InvalidInput(
            f"Invalid input for operation: Failed to create port on network {network['id']}, "
            f"because fixed_ips included invalid subnet {subnet_id}.",
            "InvalidInput",
        )
    return subnet


def _allocate_fixed_ips(
    tx: Tx,
    network: dict[str, Any],
    port_id: str,
    requested: Any,
    previous: list[dict[str, str]],
) -> list[dict[str, str]]:
    """Resolve and record the port's fixed IPs.

    ``requested`` is the client's list (None = Neutron's default: one address from the first
    IPv4 subnet, if any).  ``previous`` are the addresses the port had before an update: asking
    again for a subnet it already has an address on keeps that address.
    """
    if requested is None:
        v4 = [s for s in subnets.of_network_in_order(tx, network["id"]) if s["ip_version"] == 4]
        requested = [{"subnet_id": v4[0]["id"]}] if v4 else []
    if not isinstance(requested, list):
        raise invalid_attr("fixed_ips", f"'{requested}' is not a list")
    keep = {p["subnet_id"]: p["ip_address"] for p in previous}
    result: list[dict[str, str]] = []
    for entry in requested:
        if not isinstance(entry, dict) or not entry or set(entry) - {"subnet_id", "ip_address"}:
            raise invalid_attr("fixed_ips", f"'{entry}' is not a {{subnet_id, ip_address}} entry")
        if entry.get("ip_address") is not None:
            ip = parse_ip(entry["ip_address"], "fixed_ips")
            if entry.get("subnet_id") is not None:
                subnet = _network_subnet(tx, network, entry["subnet_id"])
                if ip not in netaddr.IPNetwork(subnet["cidr"]):
                    raise InvalidInput(
                        f"IP address {ip} is not a valid IP for the specified subnet.",
                        "InvalidIpForSubnet",
                    )
            else:
                subnet = _subnet_for_ip(tx, network, ip)
            if not subnets.is_usable(ip, netaddr.IPNetwork(subnet["cidr"])):
                raise InvalidInput(
                    f"IP address {ip} is not a valid IP for the specified subnet.",
                    "InvalidIpForSubnet",
                )
            address = str(ip)
            if allocation.ip_taken(tx, subnet["id"], address):
                raise Conflict(
                    f"IP address {address} already allocated in subnet {subnet['id']}",
                    "IpAddressAlreadyAllocated",
                )
        else:
            if entry.get("subnet_id") is None:  # e.g. {"ip_address": null}: a KeyError (500)
                raise invalid_attr("fixed_ips", "IP allocation requires subnet_id or ip_address")
            subnet = _network_subnet(tx, network, entry["subnet_id"])
            kept = keep.pop(subnet["id"], None)
            if kept is not None and not allocation.ip_taken(tx, subnet["id"], kept):
                address = kept
            else:
                found = allocation.ip_address(tx, subnet)
                if found is None:
                    raise Conflict(
                        f"No more IP addresses available on network {network['id']}.",
                        "IpAddressGenerationFailure",
                    )
                address = found
        tx.conn.execute(
            "INSERT INTO ip_allocations (subnet_id, ip, port_id) VALUES (?, ?, ?)",
            (subnet["id"], address, port_id),
        )
        result.append({"subnet_id": subnet["id"], "ip_address": address})
    return result


def _address_pairs(value: Any, port_mac: str) -> list[dict[str, str]]:
    """Extra (IP or CIDR, MAC) pairs the port may send from; the MAC defaults to the port's."""
    if not isinstance(value, list):
        raise invalid_attr("allowed_address_pairs", f"'{value}' is not a list")
    pairs = []
    for pair in value:
        if (
            not isinstance(pair, dict)
            or "ip_address" not in pair
            or (set(pair) - {"ip_address", "mac_address"})
        ):
            raise invalid_attr("allowed_address_pairs", f"'{pair}' is not an address pair")
        raw_ip = pair["ip_address"]
        ip = (
            str(parse_cidr(raw_ip, "allowed_address_pairs"))
            if isinstance(raw_ip, str) and "/" in raw_ip
            else str(parse_ip(raw_ip, "allowed_address_pairs"))
        )
        mac = canonical_mac(pair.get("mac_address") or port_mac, "allowed_address_pairs")
        if {"ip_address": ip, "mac_address": mac} in pairs:  # Neutron's 400 as well
            raise InvalidInput(
                f"Request contains duplicate address pair: mac_address {mac} ip_address {ip}.",
                "DuplicateAddressPairInRequest",
            )
        pairs.append({"ip_address": ip, "mac_address": mac})
    return pairs


def _check_pairs_need_port_security(port: dict[str, Any]) -> None:
    """Address pairs widen what port security lets a port send: without it they mean nothing,
    and Neutron refuses them (409)."""
    if port["allowed_address_pairs"] and not port["port_security_enabled"]:
        raise Conflict(
            "Port Security must be enabled in order to have allowed address pairs on a port.",
            "AddressPairAndPortSecurityRequired",
        )


def _host(value: Any) -> str:
    """``binding:host_id``: a host id, or ``""`` for unbound (Neutron's spelling)."""
    if value is None or value == "":
        return ""
    return host_id(value, "binding:host_id")


def _request_host(port: dict[str, Any], value: Any) -> None:
    """The orchestrator sets ``binding:host_id``: a host name pins the port to that host (only
    it may bind the port), ``""`` lifts the pin.  ``_host_requested`` is what tells this value
    apart from one the data plane wrote back (`set_observed`), which pins nothing."""
    port["binding:host_id"] = _host(value)
    port["_host_requested"] = bool(port["binding:host_id"])


def _profile(value: Any) -> dict[str, Any]:
    return as_document(value, "binding:profile")


def _requested_groups(value: Any) -> list[str]:
    """``security_groups`` as sent: null means none (Neutron's ``convert_none_to_empty_list``)."""
    return [] if value is None else as_str_list(value, "security_groups")


def _groups_on_create(tx: Tx, body: dict[str, Any], port: dict[str, Any]) -> list[str]:
    """A new port's groups: the ones it asks for, or its project's default group when it names
    none (created on this first use), unless port security is off or the port is the
    network's own (``network:*``); asking for groups with port security off is a 400."""
    if "security_groups" not in body:
        if port["port_security_enabled"] and not port["device_owner"].startswith(
            TRUSTED_OWNER_PREFIX
        ):
            return [security_groups.ensure_default(tx, port["project_id"])]
        return []
    requested = _requested_groups(body["security_groups"])
    if requested and not port["port_security_enabled"]:
        raise _port_security_required()
    return security_groups.for_port(tx, requested)


def _groups_on_update(
    tx: Tx, current: dict[str, Any], changes: dict[str, Any], new: dict[str, Any]
) -> list[str]:
    """The groups after an update (Neutron's ``_portsec_ext_port_update_processing``): new
    groups need port security on (400), and port security cannot be turned off while the port
    keeps groups (409 ``PortSecurityPortHasSecurityGroup``; send ``security_groups: []`` with
    it, as ``openstack port set --no-security-group --disable-port-security`` does)."""
    if "security_groups" in changes:
        requested = _requested_groups(changes["security_groups"])
        if requested and not new["port_security_enabled"]:
            raise _port_security_required()
        return security_groups.for_port(tx, requested)
    kept: list[str] = current["security_groups"]
    if kept and not new["port_security_enabled"]:
        raise Conflict(
            "Port has security group associated. Cannot disable port security or IP address "
            "until security group is removed.",
            "PortSecurityPortHasSecurityGroup",
        )
    return kept


def _port_security_required() -> InvalidInput:
    return InvalidInput(
        "Port security must be enabled and port must have an IP address in order to use "
        "security groups.",
        "PortSecurityAndIPRequiredForSecurityGroups",
    )


def _check_mac_free(tx: Tx, network_id: str, mac: str, port_id: str | None) -> None:
    if allocation.mac_taken(tx, network_id, mac, except_port=port_id):
        raise Conflict(
            f"Unable to complete operation for network {network_id}. "
            f"The mac address {mac} is in use.",
            "MacAddressInUse",
        )


def _write_row(tx: Tx, body: dict[str, Any], insert: bool) -> None:
    host = body["binding:host_id"] or None
    if insert:
        tx.conn.execute(
            "INSERT INTO ports (id, network_id, mac, host_id, num, body) VALUES (?, ?, ?, ?, ?, ?)",
            (body["id"], body["network_id"], body["mac_address"], host, body["_num"], dumps(body)),
        )
    else:
        tx.conn.execute(
            "UPDATE ports SET mac = ?, host_id = ?, body = ? WHERE id = ?",
            (body["mac_address"], host, dumps(body), body["id"]),
        )


def router_of(tx: Tx, port_id: str) -> str | None:
    """The router whose interface the port is (its ``router_ports`` row), or None."""
    row = tx.one("SELECT router_id FROM router_ports WHERE port_id = ?", (port_id,))
    return None if row is None else str(row[0])


def _device_owner(value: Any) -> str:
    """A ``device_owner`` a client may set: not a router's (see `ROUTER_OWNER_PREFIX`)."""
    owner = as_str(value, "device_owner")
    if owner.startswith(ROUTER_OWNER_PREFIX):
        raise invalid_attr(
            "device_owner",
            f"'{owner}' is given by add_router_interface only (PUT /v2.0/routers/<id>/"
            "add_router_interface)",
        )
    return owner


def _check_not_interface(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> None:
    """A router interface keeps its owner and address while it is one (remove it from the
    router first): the router's address on the subnet is what its VMs route through."""
    router_id = router_of(tx, current["id"])
    if router_id is None:
        return
    for name in ("device_id", "device_owner", "fixed_ips"):
        if name in changes and changes[name] != current[name]:
            raise Conflict(
                f"Port {current['id']} is an interface of router {router_id}: its {name} "
                "cannot change (remove_router_interface first).",
                "RouterInterfaceInUse",
            )


def create(
    tx: Tx, body: dict[str, Any], *, router_interface: bool = False, status: str = "DOWN"
) -> dict[str, Any]:
    """Insert one port (allocating its MAC and IPs) and queue its event; ``router_interface``
    is the router module's own call, the only one that may give a router's device owner (and
    its ``status``, which is the router's: `routers.interface_status`)."""
    reject_unknown(body, CREATE_ATTRS)
    network = networks.must_load(tx, as_str(require(body, "network_id"), "network_id"))
    port_id = as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4())
    if tx.exists("SELECT 1 FROM ports WHERE id = ?", (port_id,)):
        raise Conflict(f"Port {port_id} already exists.", "PortExists")
    if body.get("mac_address") is not None:
        mac = canonical_mac(body["mac_address"])
        _check_mac_free(tx, network["id"], mac, None)
    else:
        mac = allocation.mac_address(tx, network["id"])
    new: dict[str, Any] = {
        "id": port_id,
        "name": as_str(body.get("name", ""), "name"),
        "network_id": network["id"],
        "mac_address": mac,
        "admin_state_up": as_bool(body.get("admin_state_up", True), "admin_state_up"),
        "status": status,
        "device_id": as_str(body.get("device_id", ""), "device_id"),
        "device_owner": (
            as_str(body["device_owner"], "device_owner")
            if router_interface
            else _device_owner(body.get("device_owner", ""))
        ),
        "fixed_ips": [],
        "port_security_enabled": as_bool(
            body.get("port_security_enabled", network["port_security_enabled"]),
            "port_security_enabled",
        ),
        "security_groups": [],
        "allowed_address_pairs": _address_pairs(body.get("allowed_address_pairs", []), mac),
        "extra_dhcp_opts": dhcp_opts.for_create(body.get("extra_dhcp_opts")),
        "binding:profile": _profile(body.get("binding:profile", {})),
        "binding:vif_type": "ovs",
        "binding:vif_details": {},
        "binding:vnic_type": choice(
            body.get("binding:vnic_type", "normal"), "binding:vnic_type", VNIC_TYPES
        ),
        **standard_attrs(body),
        # Names the port's flows on every switch (flows.tables.port_cookie); never reused.
        "_num": allocation.port_number(tx),
    }
    _request_host(new, body.get("binding:host_id"))
    _check_pairs_need_port_security(new)
    # The port row goes in first: ip_allocations rows reference it.
    _write_row(tx, new, insert=True)
    new["fixed_ips"] = _allocate_fixed_ips(tx, network, port_id, body.get("fixed_ips"), [])
    new["security_groups"] = _groups_on_create(tx, body, new)
    security_groups.bind_port(tx, port_id, new["security_groups"])
    _write_row(tx, new, insert=False)
    tx.emit(KIND, None, new)
    return new


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply a partial update; a new ``fixed_ips`` list replaces the old allocations."""
    reject_unknown(changes, UPDATE_ATTRS)
    check_read_only(current, changes, READ_ONLY)
    _check_not_interface(tx, current, changes)
    new = updated_common(current, changes)
    for name in ("admin_state_up", "port_security_enabled"):
        if name in changes:
            new[name] = as_bool(changes[name], name)
    if "device_id" in changes:
        new["device_id"] = as_str(changes["device_id"], "device_id")
    if "device_owner" in changes and changes["device_owner"] != current["device_owner"]:
        new["device_owner"] = _device_owner(changes["device_owner"])
    if "security_groups" in changes or "port_security_enabled" in changes:
        new["security_groups"] = _groups_on_update(tx, current, changes, new)
        if new["security_groups"] != current["security_groups"]:
            security_groups.bind_port(tx, current["id"], new["security_groups"])
    if "binding:host_id" in changes:
        _request_host(new, changes["binding:host_id"])
    if "binding:profile" in changes:
        new["binding:profile"] = _profile(changes["binding:profile"])
    if "binding:vnic_type" in changes:
        new["binding:vnic_type"] = choice(
            changes["binding:vnic_type"], "binding:vnic_type", VNIC_TYPES
        )
    if changes.get("mac_address") is not None:
        new["mac_address"] = canonical_mac(changes["mac_address"])
        if new["mac_address"] != current["mac_address"] and current["binding:host_id"]:
            # The VM's interface already has the old MAC (Neutron's PortBound): changing it
            # here would make port security drop everything the VM sends.
            raise Conflict(
                f"Unable to complete operation on port {current['id']}, port is already "
                f"bound, port type: {current['binding:vif_type']}, "
                f"old_mac {current['mac_address']}, new_mac {new['mac_address']}.",
                "PortBound",
            )
        _check_mac_free(tx, current["network_id"], new["mac_address"], current["id"])
    if "allowed_address_pairs" in changes:
        new["allowed_address_pairs"] = _address_pairs(
            changes["allowed_address_pairs"], new["mac_address"]
        )
    if "allowed_address_pairs" in changes or "port_security_enabled" in changes:
        _check_pairs_need_port_security(new)
    if "extra_dhcp_opts" in changes:
        new["extra_dhcp_opts"] = dhcp_opts.merged(
            current.get("extra_dhcp_opts", []), changes["extra_dhcp_opts"]
        )
    if "fixed_ips" in changes:
        if changes["fixed_ips"] is None:
            # On create null means "one address by default"; on update it removed every
            # address (it was read as []), which no client means by it.  Neutron: a 400.
            raise invalid_attr("fixed_ips", "null is not a list (send [] to remove every address)")
        network = networks.must_load(tx, current["network_id"])
        tx.conn.execute("DELETE FROM ip_allocations WHERE port_id = ?", (current["id"],))
        new["fixed_ips"] = _allocate_fixed_ips(
            tx, network, current["id"], changes["fixed_ips"], current["fixed_ips"]
        )
    if "allowed_address_pairs" in changes or "fixed_ips" in changes:
        _keep_claimable_vips(new)
    return save(tx, current, new)


def save(tx: Tx, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Store ``new`` (bumping its revision) and queue the event, unless nothing changed."""
    new = bump(current, new)
    if new is not current:
        _write_row(tx, new, insert=False)
        tx.emit(KIND, current, new)
    return new


def statuses(tx: Tx, port_ids: Iterable[str]) -> dict[str, str]:
    """``{id: status}`` of the given ports that exist, read inside SQLite (no JSON decoding in
    Python), in chunks that stay below SQLite's variable limit."""
    ids = list(port_ids)
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = tx.all(
            f"SELECT id, json_extract(body, '$.status') FROM ports WHERE id IN ({marks})",
            tuple(chunk),
        )
        out.update(dict(rows))
    return out


def differing_statuses(tx: Tx, wanted: dict[str, str]) -> dict[str, str]:
    """The entries of ``wanted`` that differ from what is stored (unknown ids dropped).

    The data plane reports every port of a network it recompiled, most of them unchanged;
    comparing inside SQLite means only real changes are loaded and written."""
    return {pid: wanted[pid] for pid, st in statuses(tx, wanted).items() if st != wanted[pid]}


def set_observed(
    tx: Tx,
    current: dict[str, Any],
    changes: dict[str, Any],
) -> dict[str, Any]:
    """What the data plane learnt about a port, at once (keys ``binding:host_id``, ``status``,
    ``refused_hosts``): one revision, one event, one row write for a port whose holder and
    status the data plane learnt in the same step (every port of a bulk create).

    The holder is written only while the orchestrator has not requested a host: a request is
    the orchestrator's and is never overwritten, also not by a write-back decided before the
    request arrived.  ``refused_hosts`` is ``{host: refused?}`` for the hosts the writer
    speaks for: each instance of several reads only the hosts it owns, so it sets or clears
    only their entries and keeps the others' (the writes are serialised, so this read-modify-
    write sees every earlier one).  The sorted list of refused hosts is shown in
    ``binding:vif_details`` under `REFUSED_HOSTS` (absent when empty)."""
    new = dict(current)
    if "binding:host_id" in changes and not current.get("_host_requested"):
        new["binding:host_id"] = _host(changes["binding:host_id"])
    if "status" in changes:
        new["status"] = choice(changes["status"], "status", STATUSES)
    if "refused_hosts" in changes:
        details = {k: v for k, v in current["binding:vif_details"].items() if k != REFUSED_HOSTS}
        shown = set(current["binding:vif_details"].get(REFUSED_HOSTS, ()))
        for host_id, refused in _per_host(changes["refused_hosts"]).items():
            if refused:
                shown.add(host_id)
            else:
                shown.discard(host_id)
        if shown:
            details[REFUSED_HOSTS] = as_str_list(sorted(shown), "refused_hosts")
        new["binding:vif_details"] = details
    return save(tx, current, new)


def claimable_vips(port: dict[str, Any]) -> set[str]:
    """The addresses the port may be learnt to hold: its single-IPv4 allowed address pairs
    (a /32 too) that are not one of its own fixed IPs (those are routed anyway), by
    `flows.vip_pairs.vip_pairs`, the rule the data plane learns and routes by."""
    fixed = [ip["ip_address"] for ip in port.get("fixed_ips") or () if ip.get("ip_address")]
    pairs = port.get("allowed_address_pairs") or ()
    return set(vip_pairs(((p["ip_address"], p.get("mac_address") or "") for p in pairs), fixed))


def vips_held(port: dict[str, Any]) -> list[str]:
    return list((port.get("binding:vif_details") or {}).get(VIPS_HELD, ()))


def _with_vips(port: dict[str, Any], held: Iterable[str]) -> dict[str, Any]:
    """``port`` (a copy) showing ``held`` under `VIPS_HELD` (absent when empty)."""
    details = {k: v for k, v in port["binding:vif_details"].items() if k != VIPS_HELD}
    ordered = sorted(set(held), key=lambda ip: int(netaddr.IPAddress(ip)))
    if ordered:
        details[VIPS_HELD] = ordered
    return {**port, "binding:vif_details": details}


def _keep_claimable_vips(port: dict[str, Any]) -> None:
    """A pair removed (or its address become a fixed IP) takes the port's hold on it along:
    the route to the VIP goes with it, and a later claim has to be learnt again."""
    held = vips_held(port)
    if held:
        kept = set(held) & claimable_vips(port)
        if kept != set(held):
            port["binding:vif_details"] = _with_vips(port, kept)["binding:vif_details"]


def claim_vip(tx: Tx, port_id: str, network_id: str, vip: str) -> bool:
    """The data plane saw port ``port_id`` announce ``vip`` (a gratuitous ARP from it for that
    address): it holds the VIP now, and any other port of its network that held it does not.
    Refused (False, nothing written) if the port is gone, in another network, or no longer
    has ``vip`` as a single-IP address pair; nothing written if it holds it already.  The
    release scans the network's ports (indexed by network): a claim is written only when the
    holder changes, a rare event."""
    current = load(tx, port_id)
    if current is None or current["network_id"] != network_id:
        return False
    if vip not in claimable_vips(current):
        return False
    if vip in vips_held(current):
        return True
    others = tx.all(
        "SELECT p.id FROM ports p, json_each(p.body, ?) j "
        "WHERE p.network_id = ? AND j.value = ? AND p.id != ?",
        (f'$."binding:vif_details".{VIPS_HELD}', network_id, vip, port_id),
    )
    for (other_id,) in others:
        other = load(tx, str(other_id))
        if other is not None:
            save(tx, other, _with_vips(other, set(vips_held(other)) - {vip}))
    save(tx, current, _with_vips(current, {*vips_held(current), vip}))
    return True


def _per_host(value: Any) -> dict[str, bool]:
    """``{host id: refused?}`` as the data plane writes it (checked: it reaches the log)."""
    if not isinstance(value, dict) or not all(
        isinstance(h, str) and isinstance(v, bool) for h, v in value.items()
    ):
        raise invalid_attr("refused_hosts", "not a mapping of host ids to booleans")
    return value


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete the port, free its addresses and leave its security groups; a router's
    interface is removed with remove_router_interface instead (409 ``ServicePortInUse``,
    Neutron's ``prevent_l3_port_deletion``)."""
    if router_of(tx, current["id"]) is not None:
        raise Conflict(
            f"Port {current['id']} cannot be deleted directly via the port API: has device "
            f"owner {current['device_owner']}.",
            "ServicePortInUse",
        )
    tx.conn.execute("DELETE FROM ip_allocations WHERE port_id = ?", (current["id"],))
    security_groups.bind_port(tx, current["id"], [])
    tx.conn.execute("DELETE FROM ports WHERE id = ?", (current["id"],))
    tx.emit(KIND, current, None)
