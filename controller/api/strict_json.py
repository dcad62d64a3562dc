"""Request bodies are parsed as strict JSON (RFC 8259): no ``NaN``/``Infinity``, no number too
large for a double, no lone UTF-16 surrogate, no nesting deep enough to exhaust the parser.

Python's ``json`` accepts all of these, and each is poison once stored: ``NaN`` cannot be
rendered back as JSON (every later ``GET`` of the collection fails), a lone surrogate cannot be
encoded as UTF-8 (nor can a raw, UTF-8-encoded surrogate, which is refused as a body that is not
valid UTF-8).  They are refused here with a 400 that names the attribute, before any
endpoint runs.  The parse stays a single ``json.loads``; only a body that tripped a hook (or
contains a surrogate escape) is walked to find the attribute to name.

`StrictJsonRoute` is the route class every router of the API uses; it hands FastAPI a request
whose ``json()`` is this parser.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ENVELOPE_DEPTH = 1  # {"port": {...}} / {"ports": [{...}]}: the attribute is one level down


class PoisonedBody(ValueError):
    """The body is JSON to Python but not to anyone else; ``path`` locates the bad value."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _find_poison(value: Any, path: tuple[str | int, ...] = ()) -> PoisonedBody | None:
    if isinstance(value, float) and not math.isfinite(value):
        return PoisonedBody(path, "NaN and Infinity are not JSON numbers")
    if isinstance(value, str) and _LONE_SURROGATE.search(value):
        return PoisonedBody(path, "the string contains a lone UTF-16 surrogate")
    if isinstance(value, dict):
        for key, item in value.items():
            if _LONE_SURROGATE.search(key):
                return PoisonedBody((*path, key), "the key contains a lone UTF-16 surrogate")
            if (found := _find_poison(item, (*path, key))) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _find_poison(item, (*path, index))) is not None:
                return found
    return None


def loads(body: bytes) -> Any:
    """Parse ``body`` as strict JSON; raises `PoisonedBody` or ``ValueError``."""
    tripped = False

    def constant(name: str) -> float:
        nonlocal tripped
        tripped = True
        return float(name.replace("Infinity", "inf"))

    def number(text: str) -> float:
        nonlocal tripped
        value = float(text)
        tripped = tripped or not math.isfinite(value)
        return value

    # Decoded strictly before parsing: ``json.loads(bytes)`` decodes with ``surrogatepass``, so
    # a raw UTF-8-encoded surrogate (bytes ED A0 80) became a lone surrogate in a string that no
    # escape-scan could see, and failed later as a 500 when stored.  The encoding is still
    # detected as ``json.loads`` does (UTF-8, with or without BOM, or UTF-16/32).
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"the body is not valid {encoding.removesuffix('-sig').upper()} "
            f"({exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text, parse_constant=constant, parse_float=number)
    except RecursionError:
        raise PoisonedBody((), "the body is nested too deeply") from None
    if tripped or _SURROGATE_ESCAPE.search(body):
        try:
            found = _find_poison(data)
        except RecursionError:
            raise PoisonedBody((), "the body is nested too deeply") from None
        if found is not None:
            raise found
    return data


def attribute_of(path: tuple[str | int, ...]) -> str:
    """The attribute a path points into: ``("ports", 3, "binding:profile", "x")`` names
    ``binding:profile``."""
    names = [p for p in path if isinstance(p, str)]
    if len(names) > _ENVELOPE_DEPTH:
        return names[_ENVELOPE_DEPTH]
    return names[0] if names else "body"


class StrictJsonRequest(Request):
    """A request whose JSON body is parsed by `loads`; refusals are 400s naming the field."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                self._json = loads(raw)
            except PoisonedBody as exc:
                field = attribute_of(exc.path)
                raise HTTPException(
                    400, f"Invalid input for {field}. Reason: {exc.reason}."
                ) from None
            except json.JSONDecodeError:
                raise  # FastAPI's own "Malformed request body"
            except ValueError as exc:  # e.g. an integer with more digits than Python parses
                raise HTTPException(400, f"Malformed request body: {exc}") from None
        return self._json


class StrictJsonRoute(APIRoute):
    """FastAPI's route with `StrictJsonRequest` (FastAPI's documented custom-request hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler
