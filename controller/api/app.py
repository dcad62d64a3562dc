"""`create_app`: assemble the Neutron v2.0 API, the CloudStack paths and the middleware."""

import logging

from fastapi import FastAPI

from controller.api import (
    compat,
    errors,
    health,
    ip_availability,
    quotas,
    router_actions,
    ui,
    versions,
)
from controller.api.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    HeadAsGetMiddleware,
    JsonCharsetMiddleware,
    RequestMetricsMiddleware,
    RouteLabelMiddleware,
)
from controller.api.resources import (
    HOSTS,
    NETWORKS,
    PORTS,
    ROUTERS,
    SECURITY_GROUP_RULES,
    SECURITY_GROUPS,
    SUBNETS,
    collection_router,
)
from controller.api.settings import ApiSettings
from controller.api.strict_json import StrictJsonRoute
from controller.metrics import Metrics
from controller.store import Store

LOG = logging.getLogger(__name__)


def create_app(
    store: Store,
    settings: ApiSettings,
    metrics: Metrics | None = None,
    status: health.Status | None = None,
) -> FastAPI:
    """A self-contained app over ``store``: nothing global, so tests can build several.
    ``metrics``: the controller's (default: the store's); ``status``: the data plane's status
    document, for ``/readyz``.

    Middleware order (outermost first): request metrics (so every answer counts), the JSON
    charset (so even a 401 carries it), authentication, then the body-size limit, so an
    unauthenticated client cannot make the server buffer a megabyte, then HEAD-as-GET, and
    next to the router the one that names the matched route for the metrics.
    """
    metrics = metrics or store.metrics
    if settings.underlay_mtu != store.underlay_mtu:
        LOG.warning(
            "API underlay_mtu %d differs from the store's %d; network MTUs follow the store",
            settings.underlay_mtu,
            store.underlay_mtu,
        )
    app = FastAPI(
        title="tenantnet",
        version="2.0",
        description="Neutron v2.0-compatible API of the tenantnet SDN controller.",
    )
    app.router.route_class = StrictJsonRoute  # also for routes added later (/tenantnet/wait)
    errors.install(app)
    app.include_router(versions.router(settings.public_url))
    for res in (NETWORKS, SUBNETS, PORTS, HOSTS, SECURITY_GROUPS, SECURITY_GROUP_RULES, ROUTERS):
        app.include_router(collection_router(store, res), prefix="/v2.0")
    app.include_router(router_actions.router(store), prefix="/v2.0")
    app.include_router(quotas.router(store), prefix="/v2.0")
    app.include_router(ip_availability.router(store), prefix="/v2.0")
    app.include_router(compat.neutron_router(store))
    app.include_router(compat.nodes_router(store, settings.ovsdb_scheme))
    app.include_router(health.router(metrics, store, status))
    app.include_router(ui.router())
    app.add_middleware(RouteLabelMiddleware)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, settings=settings)
    app.add_middleware(JsonCharsetMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
