"""Routers: Neutron's distributed (east-west only) routers, their interfaces and extra routes.

A router joins subnets of one project.  Each interface is a normal port of the subnet's network
(listed, with an allocated MAC) whose one fixed IP is the router's address there: the subnet's
``gateway_ip`` when added by ``subnet_id``, the port's own address when added by ``port_id``.
The port says whose it is (``device_owner`` `ports.ROUTER_INTERFACE`, ``device_id`` the
router); the ``router_ports`` rows are the authority, and their unique ``subnet_id`` keeps a
subnet on one router at most.  Neutron allows a second router on a subnet through a port at
another address (``add_router_interface`` with ``port_id``); tenantnet does not: its routers
answer ARP and route for a subnet's gateway on every host, and two routers on one subnet would
need the data plane to tell which router a packet to each gateway MAC belongs to, which it does
not.  Adding the subnet itself to a second router fails as in Neutron (its gateway address is
taken: 409 ``IpAddressAlreadyAllocated``); adding a port of it is refused with Neutron's error
for an attachment a backend refuses (409 ``RouterInterfaceAttachmentConflict``).

An interface port's ``status`` is the router's to give, not a switch's: a distributed router
has no host an interface is bound to, so nothing confirms it but the router's own state.  It
is ACTIVE while the router is admin up and DOWN while it is down (what Neutron with OVN shows),
written in the transaction that adds the interface or changes the router's admin state (a
change with the writer the data plane uses for the statuses it learns, `ports.set_observed`);
the data plane never writes an interface's status (`Store.set_ports_observed`).

There is no north-south yet: ``external_gateway_info`` must stay null, ``distributed`` is
always true and ``ha`` always false; anything else is a 400 that says so rather than an
attribute silently ignored.

Every operation runs in the caller's store transaction: the port, its address, the router's
new revision and their events are written together or not at all.  The data plane learns a
router from ``router`` events (the API body; ``routes`` as ``{destination, nexthop}``) and its
interfaces from ``port`` events.
"""

from __future__ import annotations

import uuid
from typing import Any

import netaddr

from controller.store import ports, subnets
from controller.store.attrs import (
    bump,
    check_read_only,
    reject_unknown,
    standard_attrs,
    updated_common,
    utc_now,
)
from controller.store.errors import Conflict, InvalidInput, NotFound, invalid_attr, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import as_bool, as_str, as_uuid, parse_cidr, parse_ip

KIND = "router"
MAX_ROUTES = 30  # Neutron's max_routes default
NO_NORTH_SOUTH = (
    "tenantnet routes east-west only: north-south routing (an external gateway) is not "
    "supported, so external_gateway_info must be null"
)

CREATE_ATTRS = frozenset(
    {
        "id",
        "name",
        "description",
        "project_id",
        "tenant_id",
        "admin_state_up",
        "distributed",
        "ha",
        "external_gateway_info",
        "tags",
    }
)
READ_ONLY = ("id", "status", "created_at", "updated_at", "revision_number")
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY) | {"routes"}
INTERFACE_ATTRS = frozenset({"subnet_id", "port_id"})


# -- reads ---------------------------------------------------------------------------------


def load(tx: Tx, router_id: str) -> dict[str, Any] | None:
    """The router, or None."""
    row = tx.one("SELECT body FROM routers WHERE id = ?", (router_id,))
    return None if row is None else loads(row[0])


def load_all(tx: Tx) -> list[dict[str, Any]]:
    """Every router, sorted by id."""
    return [loads(r[0]) for r in tx.all("SELECT body FROM routers ORDER BY id")]


def must_load(tx: Tx, router_id: str) -> dict[str, Any]:
    """The router, or Neutron's 404 ``RouterNotFound``."""
    body = load(tx, router_id)
    if body is None:
        raise not_found(KIND, router_id)
    return body


def interface_status(router: dict[str, Any]) -> str:
    """The ``status`` of the router's interface ports (see the module docstring)."""
    return "ACTIVE" if router["admin_state_up"] else "DOWN"


def count(tx: Tx, project_id: str) -> int:
    """How many routers a project has (its quota's usage)."""
    row = tx.one("SELECT COUNT(*) FROM routers WHERE project_id = ?", (project_id,))
    return int(row[0]) if row else 0


def interfaces(tx: Tx, router_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The router's interfaces as (port id, subnet) in the order they were added."""
    rows = tx.all(
        "SELECT rp.port_id, s.body FROM router_ports rp JOIN subnets s ON s.id = rp.subnet_id"
        " WHERE rp.router_id = ? ORDER BY rp.rowid",
        (router_id,),
    )
    return [(str(port_id), loads(text)) for port_id, text in rows]


# -- attributes ------------------------------------------------------------------------------


def _gateway_info(value: Any) -> None:
    """``external_gateway_info``: null (or ``{}``, what ``openstack router unset
    --external-gateway`` sends) only."""
    if value is not None and value != {}:
        raise invalid_attr("external_gateway_info", NO_NORTH_SOUTH)


def _fixed(body: dict[str, Any], name: str, value: bool, why: str) -> bool:
    if name in body and as_bool(body[name], name) is not value:
        raise invalid_attr(name, why)
    return value


def _distributed(body: dict[str, Any]) -> bool:
    return _fixed(body, "distributed", True, "tenantnet's routers are always distributed")


def _ha(body: dict[str, Any]) -> bool:
    return _fixed(body, "ha", False, "tenantnet's distributed routers have no HA mode")


def _route_entries(value: Any) -> list[dict[str, str]]:
    """A ``routes`` list as canonical ``{destination, nexthop}`` pairs (destination a CIDR
    without host bits, nexthop an address of the same IP version), no repeats."""
    if not isinstance(value, list):
        raise invalid_attr("routes", f"'{str(value)[:80]}' is not a list")
    routes: list[dict[str, str]] = []
    for route in value:
        if not isinstance(route, dict) or set(route) != {"destination", "nexthop"}:
            raise invalid_attr("routes", f"'{str(route)[:80]}' is not a {{destination, nexthop}}")
        dest = parse_cidr(route["destination"], "routes")
        hop = parse_ip(route["nexthop"], "routes", dest.version)
        entry = {"destination": str(dest), "nexthop": str(hop)}
        if entry in routes:
            raise invalid_attr("routes", f"duplicate route {entry}")
        routes.append(entry)
    return routes


def _check_nexthops(tx: Tx, router_id: str, routes: list[dict[str, str]]) -> None:
    """Each nexthop is an address of a subnet the router is connected to, and not one of the
    router's own (Neutron's ``InvalidRoutes``)."""
    connected = interfaces(tx, router_id)
    own = {ip["ip_address"] for pid, _ in connected for ip in _port(tx, pid)["fixed_ips"]}
    for route in routes:
        hop = netaddr.IPAddress(route["nexthop"])
        if not any(hop in netaddr.IPNetwork(s["cidr"]) for _, s in connected):
            raise _invalid_route(route, "the nexthop is not connected with router")
        if route["nexthop"] in own:
            raise _invalid_route(route, "the nexthop is used by router")


def _invalid_route(route: dict[str, str], why: str) -> InvalidInput:
    return InvalidInput(
        f"Invalid format for routes: {route}, {why}. Invalid input for routes.", "InvalidRoutes"
    )


def _port(tx: Tx, port_id: str) -> dict[str, Any]:
    return ports.must_load(tx, port_id)


# -- routers ---------------------------------------------------------------------------------


def create(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """Insert one router (no interfaces, no routes yet) and queue its event."""
    if "routes" in body:
        raise invalid_attr("routes", "not allowed in POST: set routes with an update")
    reject_unknown(body, CREATE_ATTRS)
    _gateway_info(body.get("external_gateway_info"))
    router_id = as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4())
    if tx.exists("SELECT 1 FROM routers WHERE id = ?", (router_id,)):
        raise Conflict(f"Router {router_id} already exists.", "RouterExists")
    new: dict[str, Any] = {
        "id": router_id,
        "name": as_str(body.get("name", ""), "name"),
        "admin_state_up": as_bool(body.get("admin_state_up", True), "admin_state_up"),
        "status": "ACTIVE",
        "distributed": _distributed(body),
        "ha": _ha(body),
        "external_gateway_info": None,
        "routes": [],
        **standard_attrs(body),
    }
    tx.conn.execute(
        "INSERT INTO routers (id, project_id, body) VALUES (?, ?, ?)",
        (router_id, new["project_id"], dumps(new)),
    )
    tx.emit(KIND, None, new)
    return new


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Rename, re-describe, re-tag, set ``admin_state_up`` or replace ``routes``."""
    reject_unknown(changes, UPDATE_ATTRS)
    check_read_only(current, changes, READ_ONLY)
    if "external_gateway_info" in changes:
        _gateway_info(changes["external_gateway_info"])
    _distributed(changes)
    _ha(changes)
    new = updated_common(current, changes)
    if "admin_state_up" in changes:
        new["admin_state_up"] = as_bool(changes["admin_state_up"], "admin_state_up")
    if "routes" in changes:
        new["routes"] = _routes_for(tx, current, _route_entries(changes["routes"]))
    if interface_status(new) != interface_status(current):
        for port_id, _ in interfaces(tx, current["id"]):
            ports.set_observed(tx, _port(tx, port_id), {"status": interface_status(new)})
    return _save(tx, current, new)


def _routes_for(
    tx: Tx, current: dict[str, Any], routes: list[dict[str, str]]
) -> list[dict[str, str]]:
    """The router's new complete route list, validated against its interfaces."""
    if len(routes) > MAX_ROUTES:
        raise InvalidInput(
            f"Unable to complete operation for {current['id']}. The number of routes exceeds "
            f"the maximum {MAX_ROUTES}.",
            "RoutesExhausted",
        )
    _check_nexthops(tx, current["id"], routes)
    return routes


def _save(tx: Tx, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    new = bump(current, new)
    if new is not current:
        tx.conn.execute("UPDATE routers SET body = ? WHERE id = ?", (dumps(new), current["id"]))
        tx.emit(KIND, current, new)
    return new


def _touch(tx: Tx, current: dict[str, Any]) -> dict[str, Any]:
    """An interface was added or removed: a new revision and an event for the router (as
    Neutron's revision plugin bumps a router whose ports change)."""
    new = {
        **current,
        "revision_number": current["revision_number"] + 1,
        "updated_at": utc_now(),
    }
    tx.conn.execute("UPDATE routers SET body = ? WHERE id = ?", (dumps(new), current["id"]))
    tx.emit(KIND, current, new)
    return new


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete a router without interfaces (409 ``RouterInUse`` otherwise, as Neutron)."""
    if tx.exists("SELECT 1 FROM router_ports WHERE router_id = ?", (current["id"],)):
        raise Conflict(f"Router {current['id']} still has ports", "RouterInUse")
    tx.conn.execute("DELETE FROM routers WHERE id = ?", (current["id"],))
    tx.emit(KIND, current, None)


# -- extra routes (extraroute-atomic) ----------------------------------------------------------


def add_routes(tx: Tx, current: dict[str, Any], body: Any) -> dict[str, Any]:
    """``add_extraroutes``: the given routes joined to the router's (ones it has are kept
    once), validated as a whole."""
    wanted = _route_entries(_routes_of(body))
    routes = list(current["routes"]) + [r for r in wanted if r not in current["routes"]]
    return _save(tx, current, {**current, "routes": _routes_for(tx, current, routes)})


def remove_routes(tx: Tx, current: dict[str, Any], body: Any) -> dict[str, Any]:
    """``remove_extraroutes``: the given routes taken away (ones it lacks are ignored)."""
    unwanted = _route_entries(_routes_of(body))
    routes = [r for r in current["routes"] if r not in unwanted]
    return _save(tx, current, {**current, "routes": routes})


def _routes_of(body: Any) -> Any:
    """The ``routes`` of an ``add/remove_extraroutes`` body's ``router``."""
    if not isinstance(body, dict) or set(body) != {"routes"}:
        raise InvalidInput(
            'Invalid input for routes. Reason: the body must be {"router": {"routes": [...]}}.',
            "HTTPBadRequest",
        )
    return body["routes"]


# -- interfaces ------------------------------------------------------------------------------


def _info(body: Any) -> tuple[str | None, str | None]:
    """(subnet_id, port_id) of an add/remove_router_interface body."""
    if not isinstance(body, dict):
        raise InvalidInput("Either subnet_id or port_id must be specified", "BadRequest")
    reject_unknown(body, INTERFACE_ATTRS)
    subnet_id = body.get("subnet_id")
    port_id = body.get("port_id")
    if subnet_id is None and port_id is None:
        raise InvalidInput("Either subnet_id or port_id must be specified", "BadRequest")
    return (
        None if subnet_id is None else as_str(subnet_id, "subnet_id"),
        None if port_id is None else as_str(port_id, "port_id"),
    )


def _same_project(router: dict[str, Any], obj: dict[str, Any], kind: str) -> None:
    """A router joins only its own project's subnets: it would otherwise carry another
    tenant's packets."""
    if obj["project_id"] != router["project_id"]:
        raise InvalidInput(
            f"Invalid input for project_id. Reason: {kind} {obj['id']} belongs to project "
            f"'{obj['project_id']}', router {router['id']} to project '{router['project_id']}'.",
            "BadRequest",
        )


def _check_subnet_free(
    tx: Tx, router: dict[str, Any], subnet: dict[str, Any], port_id: str | None = None
) -> None:
    """The subnet is on no router yet, and overlaps none of this router's subnets.

    ``port_id``: the interface is added by port (else by subnet, whose new port at the
    gateway address is then refused by the allocator as in Neutron)."""
    row = tx.one("SELECT router_id, port_id FROM router_ports WHERE subnet_id = ?", (subnet["id"],))
    if row is not None and row[0] == router["id"]:
        raise InvalidInput(
            f"Bad router request: Router already has a port on subnet {subnet['id']}.",
            "BadRequest",
        )
    if row is not None and port_id is not None:
        raise Conflict(
            "Error cannot perform router interface attachment due to port_id: port "
            f"{port_id} is on subnet {subnet['id']}, which is already connected to router "
            f"{row[0]} (port {row[1]}); tenantnet connects a subnet to one router at most "
            "while attempting the operation.",
            "RouterInterfaceAttachmentConflict",
        )
    cidr = netaddr.IPNetwork(subnet["cidr"])
    for _, other in interfaces(tx, router["id"]):
        if (
            other["network_id"] == subnet["network_id"]
            and cidr.version == 4 == netaddr.IPNetwork(other["cidr"]).version
        ):
            # The data plane routes one IPv4 subnet per network on a router (its interface
            # is per network: `flows.routing`); a second was accepted and never routed.
            raise InvalidInput(
                f"Bad router request: router {router['id']} already has an interface on "
                f"network {subnet['network_id']} (subnet {other['id']}); tenantnet routes one "
                "IPv4 subnet of a network per router (subnet_id).",
                "BadRequest",
            )
        if cidr in netaddr.IPNetwork(other["cidr"]) or netaddr.IPNetwork(other["cidr"]) in cidr:
            raise InvalidInput(
                f"Bad router request: Cidr {subnet['cidr']} of subnet {subnet['id']} overlaps "
                f"with cidr {other['cidr']} of subnet {other['id']}.",
                "BadRequest",
            )


def _answer(router: dict[str, Any], port: dict[str, Any], subnet_id: str) -> dict[str, Any]:
    """Neutron's add/remove_router_interface response body."""
    return {
        "id": router["id"],
        "tenant_id": router["project_id"],
        "project_id": router["project_id"],
        "port_id": port["id"],
        "network_id": port["network_id"],
        "subnet_id": subnet_id,
        "subnet_ids": [subnet_id],
    }


def add_interface(tx: Tx, router: dict[str, Any], body: Any) -> dict[str, Any]:
    """``add_router_interface`` by ``subnet_id`` (a new port at the subnet's gateway IP) or by
    ``port_id`` (an unused port with exactly one fixed IP becomes the interface)."""
    subnet_id, port_id = _info(body)
    if subnet_id is not None and port_id is not None:
        raise InvalidInput("Cannot specify both subnet-id and port-id", "BadRequest")
    if subnet_id is not None:
        port, subnet = _port_for_subnet(tx, router, subnet_id)
    else:
        assert port_id is not None
        port, subnet = _port_given(tx, router, port_id)
    tx.conn.execute(
        "INSERT INTO router_ports (port_id, router_id, subnet_id) VALUES (?, ?, ?)",
        (port["id"], router["id"], subnet["id"]),
    )
    _touch(tx, router)
    return _answer(router, port, subnet["id"])


def _port_for_subnet(
    tx: Tx, router: dict[str, Any], subnet_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    subnet = subnets.must_load(tx, subnet_id)
    _same_project(router, subnet, "subnet")
    if subnet["gateway_ip"] is None:
        raise InvalidInput(
            f"Bad router request: Subnet {subnet['id']} for router interface must have a "
            "gateway IP (subnet_id).",
            "BadRequest",
        )
    _check_subnet_free(tx, router, subnet)
    port = ports.create(
        tx,
        {
            "network_id": subnet["network_id"],
            "project_id": router["project_id"],
            "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": subnet["gateway_ip"]}],
            "device_id": router["id"],
            "device_owner": ports.ROUTER_INTERFACE,
            "admin_state_up": True,
        },
        router_interface=True,
        status=interface_status(router),
    )
    return port, subnet


def _port_given(
    tx: Tx, router: dict[str, Any], port_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    port = ports.must_load(tx, port_id)
    _same_project(router, port, "port")
    if port["device_id"] or port["device_owner"]:
        raise Conflict(
            f"Unable to complete operation on port {port['id']} for network "
            f"{port['network_id']}. Port already has an attached device "
            f"{port['device_id'] or port['device_owner']}.",
            "PortInUse",
        )
    if not port["fixed_ips"]:
        raise InvalidInput(
            f"Bad router request: Router port {port['id']} must have at least one fixed IP "
            "(port_id).",
            "BadRequest",
        )
    if len(port["fixed_ips"]) > 1:
        raise InvalidInput(
            f"Bad router request: Router port {port['id']} has {len(port['fixed_ips'])} fixed "
            "IPs; a router interface has exactly one (port_id).",
            "BadRequest",
        )
    subnet = subnets.must_load(tx, port["fixed_ips"][0]["subnet_id"])
    # the port's project is the router's, but the subnet's may not be (a port can be created
    # with any project on a network): checked as when the subnet is given by id
    _same_project(router, subnet, "subnet")
    _check_subnet_free(tx, router, subnet, port["id"])
    owned = {
        **port,
        "device_id": router["id"],
        "device_owner": ports.ROUTER_INTERFACE,
        "status": interface_status(router),
    }
    return ports.save(tx, port, owned), subnet


def remove_interface(tx: Tx, router: dict[str, Any], body: Any) -> dict[str, Any]:
    """``remove_router_interface`` by ``subnet_id`` or ``port_id`` (both: they must agree):
    the interface port is deleted, unless an extra route still goes through its subnet
    (409 ``RouterInterfaceInUseByRoute``)."""
    subnet_id, port_id = _info(body)
    if port_id is not None:
        row = tx.one(
            "SELECT port_id, subnet_id FROM router_ports WHERE port_id = ? AND router_id = ?",
            (port_id, router["id"]),
        )
        if row is None:
            raise NotFound(
                f"Router {router['id']} does not have an interface with id {port_id}",
                "RouterInterfaceNotFound",
            )
        if subnet_id is not None and subnet_id != row[1]:
            raise InvalidInput(
                f"Subnet {subnet_id} does not match the subnet {row[1]} of port {port_id} "
                "(subnet_id).",
                "SubnetMismatchForPort",
            )
    else:
        row = tx.one(
            "SELECT port_id, subnet_id FROM router_ports WHERE subnet_id = ? AND router_id = ?",
            (subnet_id, router["id"]),
        )
        if row is None:
            raise NotFound(
                f"Router {router['id']} has no interface on subnet {subnet_id}",
                "RouterInterfaceNotFoundForSubnet",
            )
    port = ports.must_load(tx, str(row[0]))
    subnet = subnets.must_load(tx, str(row[1]))
    cidr = netaddr.IPNetwork(subnet["cidr"])
    if any(netaddr.IPAddress(r["nexthop"]) in cidr for r in router["routes"]):
        raise Conflict(
            f"Router interface for subnet {subnet['id']} on router {router['id']} cannot be "
            "deleted, as it is required by one or more routes.",
            "RouterInterfaceInUseByRoute",
        )
    tx.conn.execute("DELETE FROM router_ports WHERE port_id = ?", (port["id"],))
    ports.delete(tx, port)
    _touch(tx, router)
    return _answer(router, port, subnet["id"])
