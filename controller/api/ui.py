"""``GET /tenantnet/ui``: the live topology page - one static page and its script and style,
shipped in the package (controller/api/ui/), no build step, nothing fetched from elsewhere.

The page holds no data: its script reads the public API (hosts, networks, ports and
``/tenantnet/status``) with the operator's credentials, so the page itself is open like
``GET /`` (a browser cannot send a token when it navigates; with HTTP Basic it asks for the
credentials at the first API call).  Its Content-Security-Policy allows scripts, styles and
requests to this origin only, so neither an injected name nor a changed file can make it load
or send anything elsewhere.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PATHS = frozenset({"/tenantnet/ui", *(f"/tenantnet/ui/{name}" for name in ASSETS)})
"""What AuthMiddleware leaves open (static files only)."""

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def router() -> APIRouter:
    files = {
        name: resources.files(__package__).joinpath("ui", name).read_bytes() for name in ASSETS
    }
    r = APIRouter(tags=["operations"])

    def serve(name: str) -> Response:
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)

    @r.get("/tenantnet/ui", summary="Live topology page", response_class=Response)
    def page() -> Response:
        return serve("index.html")

    @r.get("/tenantnet/ui/app.js", include_in_schema=False, response_class=Response)
    def script() -> Response:
        return serve("app.js")

    @r.get("/tenantnet/ui/style.css", include_in_schema=False, response_class=Response)
    def style() -> Response:
        return serve("style.css")

    return r
