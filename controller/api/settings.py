"""API configuration, passed explicitly to `create_app` (no globals, so tests can build many
apps side by side)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiSettings:
    """How the API authenticates and what it accepts.

    With neither ``auth_token`` nor ``basic_user`` set the API is open (a lab, or a controller
    reachable only from the orchestrator's host).  ``underlay_mtu`` should match the `Store`'s:
    it is advertised in the resources document so operators can check it.  ``public_url`` is
    the base of the links in the discovery documents (Neutron's ``public_endpoint``); when it is
    empty the links are relative, so a client's ``Host`` header is never echoed back.
    ``metrics_auth``: see middleware.AuthMiddleware.
    """

    auth_token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None
    max_body_bytes: int = 1_048_576
    underlay_mtu: int = 1500
    # How hosts registered by CloudStack's connection manager (an IP and a port) are reached:
    # "ssl" when the controller speaks OVSDB over TLS.
    ovsdb_scheme: str = "tcp"
    public_url: str = ""
    # Who may read /metrics and /readyz: "api" (the API's authentication), "localhost" (open to
    # loopback clients, the API's authentication for the others) or "open".
    metrics_auth: str = "api"
