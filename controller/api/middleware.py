"""ASGI middleware that must act around FastAPI: authentication, body size, HEAD, charset.

All are plain ASGI (not ``BaseHTTPMiddleware``) so they can answer without touching the body:
an unauthenticated or oversized request is refused before a byte of it is parsed, and a body
sent without ``Content-Length`` (chunked) is counted as it arrives and cut off at the limit.
"""

import base64
import binascii
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from controller.api import ui
from controller.api.errors import neutron_error_bytes
from controller.api.settings import ApiSettings
from controller.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"


async def send_error(
    send: Send, status: int, type_: str, message: str, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer with a Neutron error body directly at the ASGI level."""
    body = neutron_error_bytes(type_, message)
    headers = [
        (b"content-type", JSON_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


OPEN_PATHS = frozenset({"/", "/healthz", *ui.PATHS})
"""Open whatever the settings: version discovery (clients call it before they authenticate),
the liveness probe (it says nothing but that the process answers) and the topology page's
static files (no data: its script calls the API with the operator's credentials)."""
PROBE_PATHS = frozenset({"/metrics", "/readyz"})
"""Open, open to loopback clients or authenticated like the API: ``metrics_auth``."""


class AuthMiddleware:
    """``X-Auth-Token`` and/or HTTP Basic, as configured; `OPEN_PATHS` are always open, and
    `PROBE_PATHS` as ``metrics_auth`` says (a Prometheus or kubelet on this machine often
    cannot send credentials; ``localhost`` trusts the peer address, so put no proxy on this
    machine in front of an API that uses it)."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.probes = settings.metrics_auth
        self.token = settings.auth_token
        self.basic = (
            (settings.basic_user, settings.basic_password or "")
            if settings.basic_user is not None
            else None
        )

    def _allowed(self, scope: Scope) -> bool:
        if self.token is None and self.basic is None:
            return True
        if scope.get("method") in ("GET", "HEAD") and self._open_path(scope):
            return True
        token = _header(scope, b"x-auth-token")
        if (
            self.token is not None
            and token is not None
            and hmac.compare_digest(token, self.token.encode())
        ):
            return True
        authorization = _header(scope, b"authorization")
        if self.basic is not None and authorization is not None:
            return self._basic_ok(authorization)
        return False

    def _open_path(self, scope: Scope) -> bool:
        path = scope.get("path")
        if path in OPEN_PATHS:
            return True
        if path not in PROBE_PATHS or self.probes == "api":
            return False
        return self.probes == "open" or _loopback(scope.get("client"))

    def _basic_ok(self, authorization: bytes) -> bool:
        assert self.basic is not None
        scheme, _, encoded = authorization.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        expected_user, expected_password = self.basic
        # Both comparisons always run, so timing does not reveal which part was wrong.
        user_ok = hmac.compare_digest(user, expected_user.encode())
        password_ok = hmac.compare_digest(password, expected_password.encode())
        return bool(sep) and user_ok and password_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Basic realm="tenantnet"')] if self.basic else []
        await send_error(send, 401, "HTTPUnauthorized", "Authentication required", challenge)


def _loopback(client: Any) -> bool:
    """Whether the peer of a connection is this machine."""
    try:
        return bool(client) and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413 before any parsing.

    The body is read here (at most the limit plus one chunk) and replayed to the app, so the
    limit holds whether or not the client sent ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            413,
            "RequestEntityTooLarge",
            f"Request body is larger than the limit of {self.limit} bytes.",
            [(b"connection", b"close")],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, "HTTPBadRequest", "Invalid Content-Length", [])
                return
            # the length of the digits first: int() of more than 4300 digits raises (a 500)
            if len(declared.strip().lstrip(b"0")) > 18 or int(declared) > self.limit:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HeadAsGetMiddleware:
    """``HEAD`` is ``GET`` without the body (RFC 9110, 9.3.2); FastAPI routes only the methods
    a route names, so without this every ``HEAD`` (load balancers' health checks) is a 405.

    The app sees a ``GET``; the server still knows the request was ``HEAD`` (its own scope is
    not changed) and keeps the ``GET``'s headers, ``Content-Length`` included, without a body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class JsonCharsetMiddleware:
    """Every JSON answer says ``charset=utf-8``.

    JSON is UTF-8 by definition (RFC 8259), but CloudStack's HTTP client decodes a body whose
    content type has no charset as ISO-8859-1, which garbles every non-ASCII name.  One place
    that rewrites the header covers FastAPI's own answers (``/openapi.json``, validation errors)
    as well as ours.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_charset(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if any(
                    k.lower() == b"content-type" and v == b"application/json" for k, v in headers
                ):
                    headers = [
                        (k, JSON_CONTENT_TYPE if k.lower() == b"content-type" else v)
                        for k, v in headers
                    ]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_charset)


ROUTE_KEY = "tenantnet.route"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RequestMetricsMiddleware:
    """Counts every request by method, route template and status, and times it (outermost, so
    a 401, a 413 and a 500 count too).

    The route is the template the router matched (``/v2.0/ports/{obj_id}``), reported by
    `RouteLabelMiddleware` next to the router; an unrouted request (refused before routing, or
    an unknown path) is ``none``.  Raw paths are never labels: every port id would become a
    time series.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        seen: dict[str, str] = {}
        scope[ROUTE_KEY] = seen  # the same dict in every copy of the scope further in

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            route = seen.get("route", "none")
            self.metrics.api_requests.labels(method, route, str(status)).inc()
            self.metrics.api_latency.labels(method, route).observe(time.perf_counter() - t0)


class RouteLabelMiddleware:
    """Innermost: tells `RequestMetricsMiddleware` which route template the router matched
    (Starlette notes it in the scope it routes; outer middleware may hold a copy of it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            seen = scope.get(ROUTE_KEY)
            if seen is not None:
                template = route_template(scope)
                if template is not None:
                    seen["route"] = template


def route_template(scope: Scope) -> str | None:
    """The full template of the route that served ``scope``: ``/v2.0/ports/{obj_id}``.

    Routers included with a prefix keep their routes' own paths (``/ports/{obj_id}``; FastAPI
    0.165 no longer copies them with the prefix), and the same route serves both the Neutron
    and the CloudStack prefix.  The prefix is the part of the request path before the part the
    route's pattern matches; the prefixes here are literal (no parameters), so no request
    value can get into it.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    pattern = getattr(route, "path_regex", None)
    path = scope.get("path", "")
    if not isinstance(template, str) or pattern is None or not isinstance(path, str):
        return None
    start = 0
    while start != -1:
        if pattern.match(path[start:]):
            return path[:start] + template
        start = path.find("/", start + 1)
    return template
