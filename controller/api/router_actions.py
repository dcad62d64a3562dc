"""The member actions of ``/v2.0/routers`` beyond CRUD (which `resources` serves like every
collection): Neutron's ``add_router_interface`` / ``remove_router_interface`` (bodies and
answers not wrapped in ``router``) and extraroute-atomic's ``add_extraroutes`` /
``remove_extraroutes``.  Each is one store transaction (see `controller.store.routers`)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from controller.api import request_bodies as rq
from controller.api import response_bodies as rs
from controller.api.listing import public
from controller.api.resources import ERRORS, ROUTERS, IfMatch, expected_revision
from controller.api.strict_json import StrictJsonRoute
from controller.store import Store

SUMMARIES = {
    ("router_interface", True): "Connect a subnet (a new port at its gateway IP) or a free port",
    ("router_interface", False): "Disconnect a subnet or port (its interface port is deleted)",
    ("extraroutes", True): "Add extra routes atomically (ones the router has are kept once)",
    ("extraroutes", False): "Remove extra routes atomically (ones it lacks are ignored)",
}


def router(store: Store) -> APIRouter:
    """The four ``PUT /routers/<id>/<action>`` routes."""
    api = APIRouter(route_class=StrictJsonRoute, tags=[ROUTERS.plural], responses=ERRORS)
    for add in (True, False):
        _interface_route(api, store, add)
        _routes_route(api, store, add)
    return api


def _path(name: str, add: bool) -> tuple[str, str]:
    """(URL, operation id) of an action."""
    action = f"{'add' if add else 'remove'}_{name}"
    return f"{ROUTERS.url}/{{obj_id}}/{action}", action


def _interface_route(api: APIRouter, store: Store, add: bool) -> None:
    url, action = _path("router_interface", add)

    @api.put(
        url,
        operation_id=action,
        summary=SUMMARIES["router_interface", add],
        response_model=None,
        responses={200: {"model": rs.RouterInterfaceView}},
    )
    def interface(obj_id: str, body: rq.RouterInterface, if_match: IfMatch = None) -> JSONResponse:
        answer = store.router_interface(
            obj_id,
            body.model_dump(exclude_unset=True),
            add=add,
            expected_revision=expected_revision(if_match),
        )
        return JSONResponse(answer)


def _routes_route(api: APIRouter, store: Store, add: bool) -> None:
    url, action = _path("extraroutes", add)

    @api.put(
        url,
        operation_id=action,
        summary=SUMMARIES["extraroutes", add],
        response_model=None,
        responses={200: {"model": rs.show_envelope("router", rs.RouterView)}},
    )
    def routes(obj_id: str, body: rq.ExtraRoutesRequest, if_match: IfMatch = None) -> JSONResponse:
        updated = store.router_routes(
            obj_id,
            body.router.model_dump(),
            add=add,
            expected_revision=expected_revision(if_match),
        )
        return JSONResponse({"router": public(updated)})
