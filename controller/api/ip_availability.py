"""``GET /v2.0/network-ip-availabilities[/{network_id}]`` (extension
``network-ip-availability``): total and used addresses per network and per subnet.

Filters as in Neutron: ``network_id``, ``network_name``, ``project_id``/``tenant_id`` (repeat a
key for OR) and ``ip_version``, which keeps only the subnets of that version (and the networks
that have one); ``fields`` projects.  Any other key is a 400 (filter-validation); paging and
sorting are not offered on this collection (it is sorted by network id).
"""

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import QueryParams

from controller.api import response_bodies as rs
from controller.api.listing import PAGING_KEYS, matcher, project, requested_fields
from controller.api.resources import ERRORS, FieldsQuery
from controller.api.strict_json import StrictJsonRoute
from controller.store import InvalidInput, Store
from controller.store.errors import invalid_attr, not_found

FILTERS = frozenset({"network_id", "network_name", "project_id", "tenant_id"})


def _ip_version(params: QueryParams) -> set[int] | None:
    """The ``ip_version`` filter (4 and/or 6), or None."""
    values = params.getlist("ip_version")
    if not values:
        return None
    if any(v not in ("4", "6") for v in values):
        raise invalid_attr("ip_version", f"'{','.join(values)}' is not 4 or 6")
    return {int(v) for v in values}


def _of_version(net: dict[str, Any], versions: set[int]) -> dict[str, Any] | None:
    subnets = [s for s in net["subnet_ip_availability"] if s["ip_version"] in versions]
    if not subnets:
        return None
    return {
        **net,
        "subnet_ip_availability": subnets,
        "total_ips": sum(s["total_ips"] for s in subnets),
        "used_ips": sum(s["used_ips"] for s in subnets),
    }


def router(store: Store) -> APIRouter:
    """The two routes over ``store``."""
    api = APIRouter(route_class=StrictJsonRoute, tags=["network-ip-availabilities"])

    @api.get(
        "/network-ip-availabilities",
        summary="IP availability of every network",
        response_model=None,
        responses={**ERRORS, 200: {"model": rs.IpAvailabilityList}},
    )
    def list_availability(request: Request, fields: FieldsQuery = None) -> dict[str, Any]:
        params = request.query_params
        refused = sorted(set(params) & (PAGING_KEYS - {"fields"}))
        if refused:
            raise InvalidInput(
                f"{', '.join(refused)}: paging and sorting are not supported on "
                "network-ip-availabilities",
                "HTTPBadRequest",
            )
        versions = _ip_version(params)
        rest = QueryParams([(k, v) for k, v in params.multi_items() if k != "ip_version"])
        matches = matcher(rest, FILTERS)
        shown = []
        for net in store.ip_availability():
            picked = net if versions is None else _of_version(net, versions)
            if picked is not None and matches(picked):
                shown.append(project(picked, requested_fields(params)))
        return {"network_ip_availabilities": shown}

    @api.get(
        "/network-ip-availabilities/{network_id}",
        summary="IP availability of one network",
        response_model=None,
        responses={**ERRORS, 200: {"model": rs.IpAvailabilityShow}},
    )
    def show_availability(
        request: Request, network_id: str, fields: FieldsQuery = None
    ) -> dict[str, Any]:
        found = store.ip_availability(network_id)
        if not found:
            raise not_found("network", network_id)
        names = requested_fields(request.query_params)
        return {"network_ip_availability": project(found[0], names)}

    return api
