"""Every error leaves the API as a Neutron error body, whatever raised it.

Neutron clients (openstackclient, openstacksdk, CloudStack) parse ``{"NeutronError": {"type",
"message", "detail"}}`` to show the reason and to switch on the type, so store refusals, request
validation, unknown routes, and even our own bugs all answer in that form.  A bug is logged with
its traceback here, on the server; the client only learns that it was an internal error.
"""

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from controller.store import (
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)

LOG = logging.getLogger(__name__)

STATUS_OF: dict[type[StoreError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 400,
    PreconditionFailed: 412,
    StoreUnavailable: 503,
}

HTTP_TYPES = {
    400: "HTTPBadRequest",
    401: "HTTPUnauthorized",
    403: "HTTPForbidden",
    404: "HTTPNotFound",
    405: "HTTPMethodNotAllowed",
    406: "HTTPNotAcceptable",
    409: "HTTPConflict",
    412: "HTTPPreconditionFailed",
    413: "RequestEntityTooLarge",
    415: "HTTPUnsupportedMediaType",
    500: "HTTPInternalServerError",
    503: "ServiceUnavailable",
}


def neutron_error(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A Neutron-style error response."""
    return JSONResponse(
        {"NeutronError": {"type": type_, "message": message, "detail": ""}},
        status_code=status,
        headers=headers,
    )


def neutron_error_bytes(type_: str, message: str) -> bytes:
    """The error body for middleware that answers before FastAPI runs."""
    return json.dumps({"NeutronError": {"type": type_, "message": message, "detail": ""}}).encode()


def _attribute_of(loc: tuple[Any, ...]) -> str:
    """The resource attribute an error location points at: ``("body", "port", "fixed_ips", 0,
    "ip_address")`` names ``fixed_ips``, the attribute the client wrote."""
    parts = [p for p in loc if isinstance(p, str)]
    if parts and parts[0] in ("body", "query", "path", "header"):
        source, parts = parts[0], parts[1:]
        if source == "body" and len(parts) > 1:
            parts = parts[1:]  # drop the envelope ("network", "networks")
    return parts[0] if parts else "body"


def _reason(error: dict[str, Any]) -> str:
    """Pydantic's message without its "Value error, " prefix, and without a final period."""
    ctx_error = (error.get("ctx") or {}).get("error")
    message = str(ctx_error) if ctx_error is not None else str(error.get("msg", "invalid"))
    return message.rstrip(".")


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Neutron's wording for the first problem of a request that failed validation."""
    extra = [e for e in errors if e.get("type") == "extra_forbidden" and e.get("loc")]
    if extra:
        unknown = ", ".join(dict.fromkeys(str(e["loc"][-1]) for e in extra))
        # A key inside an attribute's entries (an address pair, a DHCP option) names that
        # attribute too, so the client knows where to look.
        inside = _attribute_of(tuple(extra[0]["loc"]))
        where = f" in {inside}" if inside != str(extra[0]["loc"][-1]) else ""
        return f"Unrecognized attribute(s) '{unknown}'{where}"
    first = errors[0]
    kind = first.get("type", "")
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        return "Malformed request body"
    if kind == "missing" and loc == ("body",):
        return "Resource body required"
    if loc and loc[0] == "body" and len(loc) <= 2 and kind.endswith("_type"):
        if isinstance(first.get("input"), (bytes, str)) and len(loc) == 1:
            return "Malformed request body: send JSON with Content-Type: application/json"
        return "Malformed request body: the resource must be a JSON object"
    attribute = _attribute_of(loc)
    if kind == "missing":
        return f"Failed to parse request. Required attribute '{attribute}' not specified"
    value = first.get("input")
    shown = f" (value: {json.dumps(value)})" if isinstance(value, (str, int, float, bool)) else ""
    return f"Invalid input for {attribute}. Reason: {_reason(first)}{shown}."


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """A refusal by the store.

    Conflicts carry their type in the message too ("MacAddressInUse: ..."): openstackclient and
    CloudStack print only the message, and an operator needs to tell a MAC clash from an IP
    clash or a segment clash without reading the JSON.
    """
    assert isinstance(exc, StoreError)
    status = next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), 500)
    message = f"{exc.type}: {exc.message}" if isinstance(exc, Conflict) else exc.message
    headers = {"Retry-After": "1"} if status == 503 else None
    return neutron_error(status, exc.type, message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return neutron_error(400, "HTTPBadRequest", validation_message(list(exc.errors())))


METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (RFC 9110's ``Allow``).

    Starlette answers 405 from the first route whose path matched, so its ``Allow`` named only
    that route's methods (``GET`` on ``/tags`` although ``PUT`` and ``POST`` work there too);
    here each method is tried against every route."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    if "GET" in allowed:
        allowed.append("HEAD")  # HeadAsGetMiddleware
    return ", ".join(sorted(allowed))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404 and exc.detail == "Not Found":
        message = f"The resource could not be found: {request.url.path}"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
        headers["Allow"] = allowed_methods(request)
    else:
        message = str(exc.detail)
    return neutron_error(status, HTTP_TYPES.get(status, "HTTPError"), message, headers=headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    LOG.error("internal error serving %s %s", request.method, request.url.path, exc_info=exc)
    return neutron_error(
        500,
        "HTTPInternalServerError",
        "Request Failed: internal server error while processing your request.",
    )


def install(app: FastAPI) -> None:
    """Route every kind of failure to a Neutron error body."""
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
