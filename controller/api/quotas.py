"""Neutron's quota API (extensions ``quotas``, ``quota_details``, ``quota-check-limit``,
``quota-check-limit-default``): what openstacksdk's ``get_quota``/``update_quota``/
``delete_quota``/``get_quota_default`` and ``openstack quota`` call.

The rules (limits, counting, enforcement inside every create) are the store's
(`controller.store.quotas`); this module only speaks Neutron's documents.  ``/v2.0/quotas/tenant``
(python-neutronclient's "who am I") is not served: without Keystone there is no caller project.
"""

from typing import Any

from fastapi import APIRouter, Response

from controller.api import request_bodies as rq
from controller.api import response_bodies as rs
from controller.api.resources import ERRORS
from controller.api.strict_json import StrictJsonRoute
from controller.store import Store
from controller.store import quotas as store_quotas


def router(store: Store) -> APIRouter:
    """The ``/v2.0/quotas`` routes over ``store``."""
    api = APIRouter(route_class=StrictJsonRoute, tags=["quotas"], responses=ERRORS)
    update_model = rq.quota_update_envelope(tuple(store_quotas.RESOURCES))

    def shown(project_id: str, limits: dict[str, int]) -> dict[str, Any]:
        return {"quota": {**limits, "project_id": project_id}}

    @api.get(
        "/quotas",
        summary="Projects with limits of their own",
        response_model=None,
        responses={200: {"model": rs.QuotaList}},
    )
    def list_quotas() -> dict[str, Any]:
        return {"quotas": store.quota_list()}

    @api.get(
        "/quotas/{project_id}",
        summary="A project's limits (its own, else the defaults)",
        response_model=None,
        responses={200: {"model": rs.QuotaShow}},
    )
    def show_quota(project_id: str) -> dict[str, Any]:
        return shown(project_id, store.quota_limits(project_id))

    @api.put(
        "/quotas/{project_id}",
        summary="Set some of a project's limits (refused below the usage unless force)",
        response_model=None,
        responses={200: {"model": rs.QuotaShow}},
    )
    def update_quota(project_id: str, body: update_model) -> dict[str, Any]:  # type: ignore[valid-type]
        changes = body.quota.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        force = bool(changes.pop("force", False))
        changes.pop("check_limit", None)  # the default (Neutron >= 2025.1)
        return shown(project_id, store.update_quota(project_id, changes, force=force))

    @api.delete("/quotas/{project_id}", status_code=204, summary="Back to the defaults")
    def delete_quota(project_id: str) -> Response:
        store.delete_quota(project_id)
        return Response(status_code=204)

    @api.get(
        "/quotas/{project_id}/default",
        summary="The default limits",
        response_model=None,
        responses={200: {"model": rs.QuotaShow}},
    )
    def default_quota(project_id: str) -> dict[str, Any]:
        return shown(store_quotas.project_id(project_id), dict(store.quota_defaults))

    @api.get(
        "/quotas/{project_id}/details",
        summary="Used, limit and reserved per resource",
        response_model=None,
        responses={200: {"model": rs.QuotaDetailsShow}},
    )
    def quota_details(project_id: str) -> dict[str, Any]:
        return {"quota": store.quota_details(project_id)}

    return api
