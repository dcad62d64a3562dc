"""``GET /tenantnet/hosts/{host_id}/drift``: how a host's switch differs from what tenantnet
wants there right now, without changing anything.

The answer comes from the data plane's drift audit (controller/dataplane/audit.py): the switch
is read back (every flow and group), compared owner by owner with a fresh compile, and the
difference returned in an operator's terms (the port or network each owner is, each flow as
ovs-ofctl would roughly print it); flows with foreign cookies are listed apart.  The endpoint
is a plain ``def``: it waits (bounded: the switch read's timeout, a few attempts) in FastAPI's
thread pool, never on the event loop.  Authentication is the rest of ``/tenantnet``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from controller.api.errors import neutron_error

ERROR_TYPES = {
    404: "HostNotFound",
    409: "HostNotConnected",
    429: "TooManyRequests",
    503: "DriftInconclusive",
    504: "SwitchDidNotAnswer",
}


def add_drift_route(app: FastAPI, dataplane: Callable[[], Any]) -> None:
    """``dataplane``: the controller's data plane once it runs (None before)."""

    def get_drift(host_id: str) -> Any:
        dp = dataplane()
        if dp is None:
            return neutron_error(503, "DataPlaneNotStarted", "the data plane is not running yet")
        answer = dp.audit.request(host_id)
        if answer.status == 200:
            return JSONResponse(answer.document)
        headers = {"Retry-After": "1"} if answer.status in (429, 503) else None
        return neutron_error(
            answer.status, ERROR_TYPES.get(answer.status, "DriftError"), answer.message, headers
        )

    app.add_api_route(
        "/tenantnet/hosts/{host_id}/drift", get_drift, methods=["GET"], tags=["tenantnet"],
        summary="How a host's switch differs from the desired state (nothing is changed)",
        responses={
            404: {"description": "No such host"},
            409: {"description": "The host's switch is not connected and read back"},
            503: {"description": "The host's flows kept changing during the read; retry"},
            504: {"description": "Its switch did not answer the read in time"},
        },
    )  # fmt: skip
