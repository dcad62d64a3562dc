"""The operator commands' side of the REST API (`tenantnet status`, `hosts`, `ports`): where the
controller is, how to authenticate, and errors as one line.

The settings are found the way `tenantnet serve` finds its own (controller/config.py): flags,
then ``TENANTNET_*`` environment variables, then the TOML file of ``--config`` /
``TENANTNET_CONFIG``.  So on the controller's machine ``tenantnet status --config
/etc/tenantnet.toml`` needs nothing else: the URL follows from ``public_url`` or ``api_listen``
(https when ``api_tls_key`` is set) and the credentials from ``auth_token(_file)`` or
``basic_user`` + ``basic_password(_file)``, read from their files as the server reads them.
What only a client has: ``--url`` (``TENANTNET_URL``), the CA that signed the API's certificate
(``--ca-file``, ``TENANTNET_CA_FILE``; default: the system's) and a client certificate for an
API with ``api_tls_ca`` (``--cert-file``/``--key-file``).  HTTP is httpx's.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from controller import config

DEFAULT_TIMEOUT_S = 10.0
CLIENT_ENV = {
    "url": "TENANTNET_URL",
    "ca_file": "TENANTNET_CA_FILE",
    "cert_file": "TENANTNET_CERT_FILE",
    "key_file": "TENANTNET_KEY_FILE",
}
# Server settings a client takes from the same places (flags of its own, environment, file).
SHARED = (
    "public_url",
    "api_listen",
    "api_tls_key",
    "auth_token",
    "auth_token_file",
    "basic_user",
    "basic_password",
    "basic_password_file",
)


class CliError(Exception):
    """What went wrong, as the one line the command prints."""


@dataclass(frozen=True)
class Target:
    """A controller's API and how to reach it."""

    url: str
    token: str | None = None
    basic: tuple[str, str] | None = None
    ca_file: str | None = None
    cert: tuple[str, str] | None = None
    timeout: float = DEFAULT_TIMEOUT_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the controller's TOML file (URL and credentials)")
    parser.add_argument("--url", help="the API's base URL (default: from the configuration)")
    parser.add_argument("--auth-token-file", help="file holding the X-Auth-Token")
    parser.add_argument("--auth-token", help="the X-Auth-Token (visible in ps: prefer a file)")
    parser.add_argument("--basic-user", help="HTTP Basic user")
    parser.add_argument("--basic-password-file", help="file holding the HTTP Basic password")
    parser.add_argument("--ca-file", help="CA that signed the API's certificate (https)")
    parser.add_argument("--cert-file", help="client certificate (an API with api_tls_ca)")
    parser.add_argument("--key-file", help="the client certificate's key")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")


def _url_from(listen: str, tls: bool) -> str:
    host, port = config.parse_hostport(listen, "api_listen")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """The target from flags > environment > config file (see module doc)."""
    try:
        return _resolve(args, environ)
    except config.ConfigError as exc:
        raise CliError(str(exc)) from None


def _resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    cfg_file = getattr(args, "config", None) or environ.get("TENANTNET_CONFIG")
    layers: list[dict[str, Any]] = [config.file_settings(cfg_file) if cfg_file else {}]
    env = {n: environ[v] for n in SHARED if (v := f"TENANTNET_{n.upper()}") in environ}
    env |= {n: environ[v] for n, v in CLIENT_ENV.items() if v in environ}
    layers.append(env)
    layers.append({n: v for n, v in vars(args).items() if v is not None})

    def get(name: str) -> Any:
        """The value of the highest layer that sets it."""
        for layer in reversed(layers):
            if name in layer:
                return layer[name]
        return None

    def secret(name: str) -> str | None:
        for layer in reversed(layers):
            direct, path = layer.get(name), layer.get(f"{name}_file")
            if direct is not None and path is not None:
                raise CliError(f"{name} is given twice: directly and as {name}_file")
            if path is not None:
                return config.read_secret(name, str(path))
            if direct is not None:
                if not str(direct).strip():
                    raise CliError(f"{name} is empty")
                return str(direct)
        return None

    url = get("url") or get("public_url")
    if not url:
        url = _url_from(get("api_listen") or config.Settings.api_listen, bool(get("api_tls_key")))
    url = str(url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"url: expected http(s)://HOST:PORT, got {url!r}")
    token = secret("auth_token")
    user = get("basic_user")
    password = secret("basic_password") if user else None
    if user and password is None:
        raise CliError("basic_user needs basic_password_file (or TENANTNET_BASIC_PASSWORD)")
    cert, key = get("cert_file"), get("key_file")
    if bool(cert) != bool(key):
        raise CliError("cert_file and key_file go together")
    timeout = float(getattr(args, "timeout", None) or DEFAULT_TIMEOUT_S)
    if not 0 < timeout <= 3600:
        raise CliError(f"timeout: {timeout} is outside (0, 3600]")
    return Target(
        url=url,
        token=token,
        basic=(str(user), password) if user and password is not None else None,
        ca_file=get("ca_file"),
        cert=(str(cert), str(key)) if cert and key else None,
        timeout=timeout,
    )


def _error_message(response: httpx.Response) -> str:
    """The server's own words: a Neutron error's message, else the start of the body."""
    try:
        body = response.json()
        message = body["NeutronError"]["message"]
    except (ValueError, KeyError, TypeError):
        message = " ".join(response.text.split())[:200]
    return str(message)


class ApiClient:
    """Requests to one controller; every failure is a `CliError` with a one-line message."""

    def __init__(self, target: Target) -> None:
        self.target = target
        headers = {"Accept": "application/json"}
        if target.token:
            headers["X-Auth-Token"] = target.token
        self._http = httpx.Client(
            base_url=target.url,
            headers=headers,
            auth=httpx.BasicAuth(*target.basic) if target.basic else None,
            verify=self._tls() if target.url.startswith("https://") else True,
            timeout=target.timeout,
            follow_redirects=False,
        )

    def _tls(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.target.ca_file)
            if self.target.cert:
                ctx.load_cert_chain(*self.target.cert)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"TLS files: {exc}") from None
        return ctx

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: Any = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """(status, decoded JSON) of ``GET path``, for a status in ``ok``."""
        return self._send("GET", path, ok, params=params)

    def post(self, path: str, body: Any, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """(status, decoded JSON) of ``POST path`` with a JSON body, for a status in ``ok``."""
        return self._send("POST", path, ok, json=body)

    def _send(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> tuple[int, Any]:
        where = f"{self.target.url}{path}"
        try:
            response = self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise CliError(f"cannot connect to {self.target.url}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise CliError(f"{where}: no answer within {self.target.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise CliError(f"{where}: {_reason(exc)}") from None
        if response.status_code not in ok:
            hint = ""
            if response.status_code == 401:
                hint = " (credentials: --auth-token-file, TENANTNET_AUTH_TOKEN or --config)"
            raise CliError(
                f"{where}: {response.status_code} {response.reason_phrase}: "
                f"{_error_message(response)}{hint}"
            )
        try:
            return response.status_code, response.json()
        except ValueError:
            raise CliError(f"{where}: the answer is not JSON") from None


def _reason(exc: Exception) -> str:
    """One line for a transport error (httpx wraps the socket's or TLS's own message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
