"""``POST /tenantnet/trace``: follow a packet from a tenant port and explain its fate in the
orchestrator's terms (`controller.tracer`).

The body is validated strictly (unknown fields refused, addresses parsed, ranges checked), so a
bad request is a 400 naming the field; an unknown source port is a 404; a port that is bound
nowhere, or a flow table the evaluator cannot evaluate exactly, a 409; a data plane that does
not answer in time, or switches that cannot be read, a 503; an installed trace while
MAX_INSTALLED_TRACES others read switches, a 429.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from controller.api.errors import neutron_error, validation_message
from controller.api.strict_json import StrictJsonRoute
from controller.tracer import Request as TraceQuery
from controller.tracer import TraceInputError, Tracer
from flows.trace import TraceError, parse_ct_state

_MAC = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class TraceRequest(BaseModel):
    """Body of POST /tenantnet/trace."""

    model_config = ConfigDict(extra="forbid")
    source_port_id: str = Field(min_length=1, max_length=255, description="The sending port.")
    destination_ip: IPvAnyAddress | None = Field(
        default=None, description="Destination address; its MAC is looked up in the network."
    )
    destination_mac: str | None = Field(
        default=None, pattern=_MAC, description="Destination MAC (e.g. a broadcast)."
    )
    protocol: Literal["tcp", "udp", "icmp", "sctp", "arp"] | int = Field(
        default="icmp", description="tcp, udp, icmp, sctp, arp (a request) or an IP protocol "
        "number 0..255.")  # fmt: skip
    source_l4_port: int = Field(default=40000, ge=0, le=65535)
    destination_l4_port: int = Field(default=0, ge=0, le=65535)
    icmp_type: int = Field(default=8, ge=0, le=255)
    icmp_code: int = Field(default=0, ge=0, le=255)
    source_ip: IPvAnyAddress | None = Field(
        default=None, description="Send from this address instead of the port's (spoofing)."
    )
    source_mac: str | None = Field(default=None, pattern=_MAC)
    ct_state: str | list[str] | None = Field(
        default=None,
        description="Conntrack state each conntrack pass sees (new, est, "
        "est,rpl, rel, inv): one for every pass, or one per pass in order; default new.",
    )
    installed: bool = Field(
        default=False, description="Trace the flows read from the switches now instead of the "
        "desired ones; a different answer is drift.")  # fmt: skip

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not 0 <= value <= 255:
            raise ValueError("an IP protocol number is 0..255")
        return value

    @field_validator("ct_state")
    @classmethod
    def _ct_state(cls, value: str | list[str] | None) -> str | list[str] | None:
        states = [value] if isinstance(value, str) else value or []
        if len(states) > 64:
            raise ValueError("at most 64 conntrack states")
        for state in states:
            parse_ct_state(state)  # ValueError names the unknown word
        return value

    @model_validator(mode="after")
    def _destination(self) -> TraceRequest:
        if self.destination_ip is None and self.destination_mac is None:
            raise ValueError("destination_ip or destination_mac is required")
        return self

    def request(self) -> TraceQuery:
        states = [self.ct_state] if isinstance(self.ct_state, str) else self.ct_state or []
        return TraceQuery(
            source_port_id=self.source_port_id,
            destination_ip=None if self.destination_ip is None else str(self.destination_ip),
            destination_mac=None if self.destination_mac is None else self.destination_mac.lower(),
            protocol=self.protocol,
            source_l4_port=self.source_l4_port,
            destination_l4_port=self.destination_l4_port,
            icmp_type=self.icmp_type,
            icmp_code=self.icmp_code,
            source_ip=None if self.source_ip is None else str(self.source_ip),
            source_mac=None if self.source_mac is None else self.source_mac.lower(),
            ct_state=tuple(states),
            installed=self.installed,
        )


_TYPES = {400: "HTTPBadRequest", 404: "PortNotFound", 409: "HTTPConflict",
          429: "TooManyRequests", 503: "ServiceUnavailable"}  # fmt: skip


class BareBodyRoute(StrictJsonRoute):
    """The API's validation messages (`validation_message`) assume a resource envelope
    (``{"port": {...}}``): an error one level into the body is the envelope's, "the resource
    must be a JSON object", and a field is named from the second level.  The trace body has no
    envelope, so ``{"source_port_id": 5}`` got that message and a bad ``ct_state`` was named
    ``str`` (pydantic's union branch).  Here the errors get an envelope before being worded,
    so each names the field at fault."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bare_body_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = [_enveloped(e) for e in exc.errors()]
                return neutron_error(400, "HTTPBadRequest", validation_message(errors))

        return bare_body_handler


def _enveloped(error: dict[str, Any]) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    if len(loc) > 1 and loc[0] == "body":
        return {**error, "loc": ("body", "trace", *loc[1:])}
    return error


def add_trace_route(app: FastAPI, tracer: Tracer) -> None:
    """POST /tenantnet/trace: ``{"trace": {"verdict", "paths": [...], "hosts": [...]}}``."""

    def trace(body: TraceRequest) -> Any:
        try:
            return {"trace": tracer.trace(body.request())}
        except TraceInputError as exc:
            message = f"{exc.field}: {exc}" if exc.status == 400 else str(exc)
            headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
            return neutron_error(
                exc.status, _TYPES.get(exc.status, "HTTPBadRequest"), message, headers
            )
        except TraceError as exc:
            return neutron_error(409, "HTTPConflict", f"cannot trace this packet exactly: {exc}")

    app.router.add_api_route(
        "/tenantnet/trace", trace, methods=["POST"], tags=["tenantnet"],
        route_class_override=BareBodyRoute,
        summary="Follow a packet from a port and explain its fate (desired or installed flows)",
        responses={404: {"description": "Unknown source port"},
                   409: {"description": "Port not bound, or flows that cannot be traced"},
                   429: {"description": "Too many installed traces in progress; retry"},
                   503: {"description": "Data plane or switches did not answer"}},
    )  # fmt: skip
