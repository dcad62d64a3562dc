"""ASGI middleware that must act around FastAPI: authentication, body size, HEAD, charset.

All are plain ASGI (not ``BaseHTTPMiddleware``) so they can answer without touching the body:
an unauthenticated or oversized request is refused before a byte of it is parsed, and a body
sent without ``Content-Length`` (chunked) is counted as it arrives and cut off at the limit.
"""

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from controller.api.errors import neutron_error_bytes
from controller.api.settings import ApiSettings

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


class AuthMiddleware:
    """``X-Auth-Token`` and/or HTTP Basic, as configured; only ``GET /`` (version discovery)
    is open, because clients call it before they authenticate."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.token = settings.auth_token
        self.basic = (
            (settings.basic_user, settings.basic_password or "")
            if settings.basic_user is not None
            else None
        )

    def _allowed(self, scope: Scope) -> bool:
        if self.token is None and self.basic is None:
            return True
        if scope.get("method") in ("GET", "HEAD") and scope.get("path") == "/":
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
            if int(declared) > self.limit:
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
