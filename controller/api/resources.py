"""The Neutron collection routes (list, create incl. bulk, show, update, delete, tags), built once
per resource from a small description.

All four collections behave identically apart from their models, so one factory serves them,
and the CloudStack compatibility paths mount the very same routes under another prefix.
Endpoints are plain ``def``: the store blocks on SQLite, and FastAPI runs sync endpoints in its
thread pool, so a slow commit never stalls the event loop.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from controller.api import request_bodies as rq
from controller.api import response_bodies as rs
from controller.api.listing import (
    exact_filters,
    filtered,
    matcher,
    next_link,
    ordering,
    page,
    project,
    public,
    requested_fields,
)
from controller.api.strict_json import StrictJsonRoute
from controller.store import InvalidInput, Store
from controller.store.errors import Conflict, NotFound, PreconditionFailed, not_found
from controller.store.scan import INDEXED
from controller.store.values import integer_text

FieldsQuery = Annotated[list[str] | None, Query(description="Attributes to return")]
TAG_RETRIES = 20  # concurrent tag changes of one object before a tag add gives up (409)
IfMatch = Annotated[str | None, Header(description="revision_number=N: 412 unless current")]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": rs.NeutronErrorBody, "description": "Neutron error"}
    for code in (400, 401, 404, 409, 412, 413)
}


@dataclass(frozen=True)
class Resource:
    """One Neutron collection: names, request models and the response view.

    ``plural`` is the JSON key of a list (``security_groups``); ``path`` the URL segment when
    it differs (``security-groups``).  ``update=None``: no PUT (Neutron's security group
    rules); ``taggable=False``: no ``/tags`` sub-resource."""

    kind: str
    plural: str
    create: type[rq.Body]
    update: type[rq.Body] | None
    view: type[rs.View]
    path: str = ""
    taggable: bool = True

    @property
    def attributes(self) -> frozenset[str]:
        """What a list may filter and sort on."""
        return rs.attribute_names(self.view) - NOT_FILTERABLE

    @property
    def url(self) -> str:
        return f"/{self.path or self.plural}"


NOT_FILTERABLE = frozenset({"extra_dhcp_opts"})
"""Attributes Neutron shows but refuses as filters (no ``is_filter`` in their definition)."""


NETWORKS = Resource("network", "networks", rq.NetworkCreate, rq.NetworkUpdate, rs.NetworkView)
SUBNETS = Resource("subnet", "subnets", rq.SubnetCreate, rq.SubnetUpdate, rs.SubnetView)
PORTS = Resource("port", "ports", rq.PortCreate, rq.PortUpdate, rs.PortView)
HOSTS = Resource("host", "hosts", rq.HostCreate, rq.HostUpdate, rs.HostView, taggable=False)
SECURITY_GROUPS = Resource(
    "security_group",
    "security_groups",
    rq.SecurityGroupCreate,
    rq.SecurityGroupUpdate,
    rs.SecurityGroupView,
    path="security-groups",
)
SECURITY_GROUP_RULES = Resource(
    "security_group_rule",
    "security_group_rules",
    rq.SecurityGroupRuleCreate,
    None,
    rs.SecurityGroupRuleView,
    path="security-group-rules",
    taggable=False,
)
ROUTERS = Resource("router", "routers", rq.RouterCreate, rq.RouterUpdate, rs.RouterView)
COMPAT_PORTS = Resource("port", "ports", rq.CompatPortCreate, rq.CompatPortUpdate, rs.PortView)


def expected_revision(if_match: str | None) -> int | None:
    """``If-Match: revision_number=N`` (other If-Match forms, e.g. ETags, are not ours)."""
    if if_match is None:
        return None
    for part in if_match.split(","):
        name, sep, value = part.strip().partition("=")
        if sep and name == "revision_number":
            revision = integer_text(value)
            if revision is None or revision < 0:
                raise InvalidInput(
                    f"Invalid If-Match header: revision_number {value!r} is not an integer",
                    "HTTPBadRequest",
                )
            return revision
    return None


def to_store(item: rq.Body) -> dict[str, Any]:
    """The attributes the client actually sent, by their JSON names.

    Plain strings in ``fixed_ips`` (CloudStack) become ``{"ip_address": ...}``.
    """
    body = item.model_dump(by_alias=True, exclude_unset=True)
    if isinstance(body.get("fixed_ips"), list):
        body["fixed_ips"] = [
            {"ip_address": ip} if isinstance(ip, str) else ip for ip in body["fixed_ips"]
        ]
    return body


def collection_router(
    store: Store,
    res: Resource,
    *,
    seg_id_is_hint: bool = False,
    replay_ignoring: frozenset[str] | None = None,
    op_prefix: str = "",
) -> APIRouter:
    """The routes of one collection; ``seg_id_is_hint`` and ``replay_ignoring`` (see
    `Store.create`) are for the CloudStack paths, ``op_prefix`` keeps their OpenAPI operation
    ids apart from the Neutron paths'."""
    router = APIRouter(route_class=StrictJsonRoute, tags=[res.plural], responses=ERRORS)
    singular, plural = res.kind, res.plural
    create_model = rq.create_envelope(singular, plural, res.create)
    show_model = rs.show_envelope(singular, res.view)
    list_model = rs.list_envelope(plural, res.view)

    def load(obj_id: str) -> dict[str, Any]:
        obj = store.get(res.kind, obj_id)
        if obj is None:
            raise not_found(res.kind, obj_id)
        return obj

    @router.get(
        res.url,
        summary=f"List {plural}",
        response_model=None,
        responses={200: {"model": list_model}},
    )
    def list_objects(
        request: Request,
        fields: FieldsQuery = None,
        limit: Annotated[int | None, Query(ge=0, description="Page size (0: all)")] = None,
        marker: Annotated[str | None, Query(description="Id of the last object seen")] = None,
        sort_key: Annotated[str | None, Query(description="Attribute to sort on")] = None,
        sort_dir: Annotated[str | None, Query(pattern="^(asc|desc)$")] = None,
    ) -> JSONResponse:
        """Filter on any attribute (repeat a key for OR); page with limit/marker."""
        params = request.query_params
        sort_key, descending, limit = ordering(params, res.attributes)
        if sort_key == "id":  # the default: the store cuts the page
            marker_id = params.get("marker") or None
            if marker_id is not None and store.get(res.kind, marker_id) is None:
                raise not_found(singular, marker_id)
            shown, more = store.page(
                res.kind,
                matcher(params, res.attributes, rs.scalar_types(res.view)),
                limit=limit,
                after=marker_id,
                descending=descending,
                exact=exact_filters(params, INDEXED[res.kind]),
            )
        else:
            matching = filtered(
                store.list_all(res.kind), params, res.attributes, rs.scalar_types(res.view)
            )
            shown, more = page(
                matching, params, res.attributes, lambda i: store.get(res.kind, i), singular
            )
        names = requested_fields(params)
        result: dict[str, Any] = {plural: [project(o, names) for o in shown]}
        if more:
            result[f"{plural}_links"] = [next_link(request.url, shown[-1], params.get("limit"))]
        return JSONResponse(result)

    verbs = ("show", "update", "delete") if res.update is not None else ("show", "delete")
    ops = {verb: f"{op_prefix}{verb}_{singular}" for verb in verbs}
    # OpenAPI links: what a client (or a stateful fuzzer) can do with the object it created.
    links = {
        f"{verb.capitalize()}{singular.capitalize()}": {
            "operationId": op,
            "parameters": {"obj_id": f"$response.body#/{singular}/id"},
        }
        for verb, op in ops.items()
    }
    if singular == "network":  # a network is where subnets and ports go
        for child in ("subnet", "port"):
            links[f"Create{child.capitalize()}"] = {
                "operationId": f"{op_prefix}create_{child}",
                "requestBody": {child: {"network_id": "$response.body#/network/id"}},
            }

    @router.post(
        res.url,
        status_code=201,
        operation_id=f"{op_prefix}create_{singular}",
        summary=f"Create one {singular} or, with '{plural}', several at once (atomically)",
        response_model=None,
        responses={201: {"model": show_model, "links": links}},
    )
    def create_objects(body: create_model) -> JSONResponse:  # type: ignore[valid-type]
        one = getattr(body, singular)
        many = getattr(body, plural)
        if (one is None) == (many is None):
            raise InvalidInput(
                f"Unable to find '{singular}' or '{plural}' in request body", "HTTPBadRequest"
            )
        items = [one] if one is not None else list(many)
        created = store.create(
            res.kind,
            [to_store(i) for i in items],
            seg_id_is_hint=seg_id_is_hint,
            replay_ignoring=replay_ignoring,
        )
        if one is not None:
            return JSONResponse({singular: public(created[0])}, status_code=201)
        return JSONResponse({plural: [public(o) for o in created]}, status_code=201)

    @router.get(
        f"{res.url}/{{obj_id}}",
        operation_id=ops["show"],
        summary=f"Show one {singular}",
        response_model=None,
        responses={200: {"model": show_model}},
    )
    def show_object(
        request: Request,
        obj_id: str,
        fields: FieldsQuery = None,
    ) -> JSONResponse:
        names = requested_fields(request.query_params)
        return JSONResponse({singular: project(load(obj_id), names)})

    if res.update is not None:
        add_update_route(router, store, res, show_model, ops["update"], seg_id_is_hint)

    @router.delete(
        f"{res.url}/{{obj_id}}",
        operation_id=ops["delete"],
        status_code=204,
        summary=f"Delete one {singular}",
    )
    def delete_object(obj_id: str, if_match: IfMatch = None) -> Response:
        store.delete(res.kind, obj_id, expected_revision=expected_revision(if_match))
        return Response(status_code=204)

    if res.taggable:
        add_tag_routes(router, store, res)
    return router


def add_update_route(
    router: APIRouter,
    store: Store,
    res: Resource,
    show_model: type[rs.View],
    operation_id: str,
    seg_id_is_hint: bool,
) -> None:
    """``PUT /<collection>/<id>``: a partial update (``If-Match`` honoured)."""
    assert res.update is not None
    singular = res.kind
    update_model = rq.update_envelope(singular, res.update)

    @router.put(
        f"{res.url}/{{obj_id}}",
        operation_id=operation_id,
        summary=f"Update one {singular} (partial)",
        response_model=None,
        responses={200: {"model": show_model}},
    )
    def update_object(
        obj_id: str,
        body: update_model,  # type: ignore[valid-type]
        if_match: IfMatch = None,
    ) -> JSONResponse:
        changes = to_store(getattr(body, singular))
        updated = store.update(
            res.kind,
            obj_id,
            changes,
            expected_revision=expected_revision(if_match),
            seg_id_is_hint=seg_id_is_hint,
        )
        return JSONResponse({singular: public(updated)})


def add_tag_routes(router: APIRouter, store: Store, res: Resource) -> None:
    """Neutron's tag sub-resource (what ``openstack ... --tag`` and the SDK's tag calls use)."""
    base = f"{res.url}/{{obj_id}}/tags"

    def tags_of(obj_id: str) -> list[str]:
        obj = store.get(res.kind, obj_id)
        if obj is None:
            raise not_found(res.kind, obj_id)
        return list(obj["tags"])

    def set_tags(obj_id: str, tags: list[str]) -> list[str]:
        return list(store.update(res.kind, obj_id, {"tags": tags})["tags"])

    def add_tags(obj_id: str, tags: list[str]) -> None:
        """Add to the current tags without losing a concurrent change: the write is made
        only on the revision that was read (``If-Match``), and retried on another."""
        for _ in range(TAG_RETRIES):
            obj = store.get(res.kind, obj_id)
            if obj is None:
                raise not_found(res.kind, obj_id)
            wanted = list(dict.fromkeys([*obj["tags"], *tags]))
            if wanted == obj["tags"]:
                return
            try:
                store.update(
                    res.kind,
                    obj_id,
                    {"tags": wanted},
                    expected_revision=obj["revision_number"],
                )
                return
            except PreconditionFailed:
                continue
        raise Conflict(f"Tags of {res.kind} {obj_id} kept changing; try again.", "TagsConflict")

    @router.get(base, summary="List tags", responses={200: {"model": rs.TagsView}})
    def get_tags(obj_id: str) -> dict[str, list[str]]:
        return {"tags": tags_of(obj_id)}

    @router.put(base, summary="Replace all tags", responses={200: {"model": rs.TagsView}})
    def replace_tags(obj_id: str, body: rq.TagsBody) -> dict[str, list[str]]:
        return {"tags": set_tags(obj_id, list(dict.fromkeys(body.tags)))}

    @router.post(
        base,
        status_code=201,
        summary="Add tags (extension tag-creation)",
        responses={201: {"model": rs.TagsView}},
    )
    def create_tags(obj_id: str, body: rq.TagsBody) -> dict[str, list[str]]:
        tags = list(dict.fromkeys(body.tags))
        add_tags(obj_id, tags)
        return {"tags": tags}  # Neutron answers with the tags of the request

    @router.delete(base, status_code=204, summary="Remove all tags")
    def clear_tags(obj_id: str) -> Response:
        set_tags(obj_id, [])
        return Response(status_code=204)

    @router.get(base + "/{tag}", status_code=204, summary="Check one tag")
    def has_tag(obj_id: str, tag: str) -> Response:
        if tag not in tags_of(obj_id):
            raise NotFound(f"Tag {tag} could not be found.", "TagNotFound")
        return Response(status_code=204)

    @router.put(base + "/{tag}", status_code=201, summary="Add one tag")
    def add_tag(obj_id: str, tag: str) -> Response:
        add_tags(obj_id, [tag])
        return Response(status_code=201)

    @router.delete(base + "/{tag}", status_code=204, summary="Remove one tag")
    def remove_tag(obj_id: str, tag: str) -> Response:
        tags = tags_of(obj_id)
        if tag not in tags:
            raise NotFound(f"Tag {tag} could not be found.", "TagNotFound")
        set_tags(obj_id, [t for t in tags if t != tag])
        return Response(status_code=204)
