"""Apache CloudStack's OpenDaylight plugin, served as it expects.

The plugin speaks the old ODL northbound: Neutron bodies under ``/controller/nb/v2/neutron``
(HTTP Basic auth, client-chosen ``id`` and ``status``, ``fixed_ips`` as plain strings) and a
connection-manager call that says "hypervisor H has OVSDB at IP:PORT".  It sends
``provider:network_type=gre, provider:segmentation_id=100`` for *every* network, so on these paths
the segmentation id is only a hint: honouring it literally would either merge all CloudStack
networks into one segment or fail every network after the first; on a network PUT it is a hint
as well.  The plugin re-sends a port create when an earlier call looked lost: an identical
re-POST answers 201 with the existing object instead of failing the VM start with a 409.
"""

from typing import Any

from fastapi import APIRouter, Path, Query

from controller.api.listing import public
from controller.api.resources import (
    COMPAT_PORTS,
    NETWORKS,
    SUBNETS,
    collection_router,
)
from controller.api.strict_json import StrictJsonRoute
from controller.store import Store
from controller.store.errors import not_found

NEUTRON_PREFIX = "/controller/nb/v2/neutron"
NODES_PREFIX = "/controller/nb/v2/connectionmanager"
NODE_TYPE = "OVS"
HINTS = frozenset({"status", "device_id", "provider:segmentation_id"})
"""What the plugin sends that is no fact about the object: ``status`` (always "ACTIVE"), a
``device_id`` it draws at random for every port create (``UUID.randomUUID()``, so a re-sent
create differs only there) and ``provider:segmentation_id`` (always 100).  An identical re-POST
(ignoring these) answers 201 with the existing object; see `controller.store.replay`."""


def neutron_router(store: Store) -> APIRouter:
    """Networks, subnets and ports with CloudStack's dialect."""
    api = APIRouter(route_class=StrictJsonRoute, prefix=NEUTRON_PREFIX)
    for res in (NETWORKS, SUBNETS, COMPAT_PORTS):
        sub = collection_router(
            store, res, seg_id_is_hint=True, replay_ignoring=HINTS, op_prefix="cloudstack_"
        )
        for route in sub.routes:
            route.tags = ["cloudstack"]  # type: ignore[attr-defined]
        api.include_router(sub)
    return api


def _node(host: dict[str, Any]) -> dict[str, Any]:
    return {"node": {"id": host["id"], "type": NODE_TYPE}, "host": public(host)}


def nodes_router(store: Store, ovsdb_scheme: str = "tcp") -> APIRouter:
    """The connection manager: register hypervisors by their OVSDB address (``ssl:`` targets
    when the controller speaks OVSDB over TLS)."""
    api = APIRouter(route_class=StrictJsonRoute, prefix=NODES_PREFIX, tags=["cloudstack"])

    def register(host_id: str, ip: str, port: int, datapath_type: str) -> dict[str, Any]:
        host, _ = store.upsert_host(
            {
                "id": host_id,
                "tunnel_ip": ip,
                "ovsdb": f"{ovsdb_scheme}:{ip}:{port}",
                "datapath_type": datapath_type,
            }
        )
        return _node(host)

    @api.put(
        "/node/{node_type}/{host_id}/address/{ip}/port/{port}",
        summary="Register or update a hypervisor (OVSDB at ip:port, tunnels from ip)",
    )
    def put_node(
        node_type: str,
        host_id: str,
        ip: str,
        port: int = Path(ge=1, le=65535),
        datapath_type: str = Query("system", pattern="^(system|netdev)$"),
    ) -> dict[str, Any]:
        del node_type  # always OVS for tenantnet
        return register(host_id, ip, port, datapath_type)

    @api.put(
        "/node/{host_id}/address/{ip}/port/{port}",
        summary="Register or update a hypervisor (older form without the node type)",
    )
    def put_node_v1(
        host_id: str,
        ip: str,
        port: int = Path(ge=1, le=65535),
        datapath_type: str = Query("system", pattern="^(system|netdev)$"),
    ) -> dict[str, Any]:
        return register(host_id, ip, port, datapath_type)

    @api.get("/nodes", summary="Registered hypervisors")
    def list_nodes() -> dict[str, Any]:
        return {"nodes": [_node(h) for h in store.list_hosts()]}

    @api.delete("/node/{node_type}/{host_id}", status_code=204, summary="Forget a hypervisor")
    def delete_node(node_type: str, host_id: str) -> None:
        del node_type
        if store.get_host(host_id) is None:
            raise not_found("host", host_id)
        store.delete("host", host_id)

    return api
