"""Controller settings: defaults < config file (TOML) < environment (TENANTNET_*) < flags.

Defaults are safe rather than convenient: the REST API and the OpenFlow listener bind to
127.0.0.1 until told otherwise, because neither os-ken's OpenFlow parser nor an unauthenticated
API belongs on a public network.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the controller cannot use; the message names it."""


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass
class Settings:
    api_listen: str = "127.0.0.1:9696"
    ofp_listen: str = "127.0.0.1:6653"
    # What hosts are told to connect to (OVS controller target); default: derived from ofp_listen.
    advertise: str = ""
    state_dir: str = "/var/lib/tenantnet"
    db_path: str = ""  # default: <state_dir>/tenantnet.sqlite
    underlay_mtu: int = 1500
    auth_token: str = ""
    basic_user: str = ""
    basic_password: str = ""
    max_body_bytes: int = 1_048_576
    log_level: str = "INFO"
    startup_grace_s: float = 15.0
    # Switch liveness (see southbound/ofp_server.py): an echo request once a switch was silent
    # this long, and the connection is closed once it was silent for ofp_dead_after_s.
    ofp_echo_interval_s: float = 1.0
    ofp_dead_after_s: float = 3.0
    ofp_handshake_timeout_s: float = 5.0  # HELLO..FEATURES must complete within this
    ofp_barrier_timeout_s: float = 5.0  # a batch not confirmed by then: the host is degraded
    ofp_max_connections: int = 1024  # lowered to fit the open-files limit
    ofp_max_connections_per_source: int = 16

    @property
    def database(self) -> str:
        return self.db_path or str(Path(self.state_dir) / "tenantnet.sqlite")

    @property
    def controller_target(self) -> str:
        if self.advertise:
            return self.advertise
        host, port = parse_hostport(self.ofp_listen, "ofp_listen")
        return f"tcp:{host}:{port}"

    def validate(self) -> Settings:
        parse_hostport(self.api_listen, "api_listen")
        parse_hostport(self.ofp_listen, "ofp_listen")
        if self.advertise and not self.advertise.startswith(("tcp:", "ssl:", "unix:")):
            raise ConfigError(f"advertise: expected tcp:IP:PORT, got {self.advertise!r}")
        if not 1280 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"underlay_mtu: {self.underlay_mtu} is outside 1280..65535")
        for name in (
            "ofp_echo_interval_s",
            "ofp_dead_after_s",
            "ofp_handshake_timeout_s",
            "ofp_barrier_timeout_s",
        ):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"{name}: {getattr(self, name)} is outside (0, 3600]")
        if self.ofp_dead_after_s <= self.ofp_echo_interval_s:
            raise ConfigError("ofp_dead_after_s must be longer than ofp_echo_interval_s")
        for name in ("ofp_max_connections", "ofp_max_connections_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if bool(self.basic_user) != bool(self.basic_password):
            raise ConfigError("basic_user and basic_password go together")
        return self


def _coerce(name: str, raw: object) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            return int(raw)  # type: ignore[arg-type]
        if kind == "float":
            return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {raw!r} is not a number") from exc
    return str(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with any of the settings below")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, help=f"(default: {f.default!r})")


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    cfg_file = getattr(args, "config", None) or env.get("TENANTNET_CONFIG")
    if cfg_file:
        try:
            data = tomllib.loads(Path(cfg_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {cfg_file}: {exc}") from exc
        section = data.get("tenantnet", data)
        known = {f.name for f in fields(Settings)}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"config file {cfg_file}: unknown settings {sorted(unknown)}")
        values.update(section)
    for f in fields(Settings):
        if (v := env.get("TENANTNET_" + f.name.upper())) is not None:
            values[f.name] = v
        if args is not None and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return Settings(**{k: _coerce(k, v) for k, v in values.items()}).validate()
