"""Controller settings: defaults < config file (TOML) < environment (TENANTNET_*) < flags.

Defaults are safe rather than convenient: the REST API and the OpenFlow listener bind to
127.0.0.1 until told otherwise, because neither os-ken's OpenFlow parser nor an unauthenticated
API belongs on a public network.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import netaddr

from controller import tls
from controller.services.dhcp_guard import GuardSettings
from controller.services.dhcp_records import DEFAULT_SERVER_MAC, DhcpSettings
from controller.store.errors import InvalidInput
from controller.store.etcd_settings import EtcdSettings, parse_url
from controller.store.values import integer_text, parse_ovsdb_target


class ConfigError(ValueError):
    """A setting has a value the controller cannot use; the message names it."""


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    number = integer_text(port) if sep else None
    if not host or number is None or not 0 < number < 65536:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), number


def _listen_ip(value: str, name: str) -> netaddr.IPAddress:
    """The address of a ``HOST:PORT`` listen setting, which must be an IP address: os-ken's
    listener binds it on a thread of its own, where a name that does not resolve only logs an
    error and leaves the controller running without OpenFlow, and switches are told to connect
    to it (``controller_target``)."""
    host, _ = parse_hostport(value, name)
    try:
        return netaddr.IPAddress(host, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError):
        raise ConfigError(
            f"{name}: expected IP:PORT or [IPv6]:PORT, got {value!r} ({host!r} is not an IP"
            " address)"
        ) from None


# Timeouts and intervals below this would make the controller busy-loop (an echo request per
# wake-up) or time out every switch, batch or client on a healthy network.
MIN_TIMEOUT_S = 0.1
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class Settings:
    api_listen: str = "127.0.0.1:9696"
    ofp_listen: str = "127.0.0.1:6653"
    # What hosts are told to connect to (OVS controller target); default: derived from ofp_listen.
    advertise: str = ""
    state_dir: str = "/var/lib/tenantnet"
    # default: <state_dir>/tenantnet.sqlite (with etcd: <state_dir>/etcd-replica.sqlite)
    db_path: str = ""
    # The store: "sqlite" (one node, the file above) or "etcd://HOST:PORT,HOST:PORT,..." (several
    # instances on one etcd cluster; db_path is then this instance's replica, see docs/ha.md).
    # etcd_tls_*: the cluster's CA, and a client certificate + key (etcd's client-cert-auth:
    # the certificate's CN is the etcd user); https when any is set.
    store: str = "sqlite"
    etcd_prefix: str = "/tenantnet/"
    etcd_timeout_s: float = 2.0
    # each etcd member is tried first with this shorter timeout (a member stuck on a killed
    # leader is left after it, not after etcd_timeout_s), then with etcd_timeout_s
    etcd_attempt_timeout_s: float = 0.5
    # a call no member answers ends once no further attempt would end within this (the short
    # attempts and one with etcd_timeout_s are always made): a write without quorum answers 503
    # after about 5 s with the defaults (9.5 s without the bound)
    etcd_call_timeout_s: float = 6.0
    etcd_tls_ca: str = ""
    etcd_tls_cert: str = ""
    etcd_tls_key: str = ""
    # etcd role-based auth (``etcdctl user add`` + ``auth enable``): a user, and a file holding
    # its password (never on the command line; the file must not be readable by every user).
    etcd_user: str = ""
    etcd_password_file: str = ""
    # A snapshot of the state every etcd_snapshot_every log entries; the log keeps the
    # etcd_log_margin entries before it (docs/ha.md).
    etcd_snapshot_every: int = 1000
    etcd_log_margin: int = 200
    # Controller membership on the etcd cluster (an etcd lease of etcd_member_ttl_s seconds per
    # instance; a killed instance leaves the members list when it expires).  2 s keeps failover
    # within ~3 s (TTL + up to TTL/3 + etcd's expiry check); a longer TTL rides out longer
    # stalls of an instance (one stalled past the TTL loses its hosts) but fails over slower.
    # Not below 2: etcd's minimum lease TTL is ~1.5 s with its default election settings.
    # etcd_member_id names this instance (default: host name and API address).
    etcd_member_id: str = ""
    etcd_member_ttl_s: int = 2
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
    # The controller's OVSDB session to each host retries at most this long apart (python-ovs's
    # own default grows to 8 s: a host whose ovsdb-server restarted would be re-read late).
    ovsdb_max_backoff_s: float = 1.0
    # Written into every Controller row tenantnet manages (ours and, with several instances, the
    # others'): how long a switch waits at most between attempts to reach a controller (vswitchd:
    # whole seconds, at least 1, 8 by default) and after how long idle it probes the connection.
    switch_max_backoff_s: int = 1
    switch_inactivity_probe_s: int = 5
    ofp_max_connections: int = 1024  # lowered to fit the open-files limit
    ofp_max_connections_per_source: int = 16
    # TLS (see controller/tls.py).  OpenFlow: the listener's key and certificate and the CA that
    # signed the switches' certificates (mutual TLS; a switch must present a certificate whose CN
    # names its host).  OVSDB: the client key/certificate for ``ssl:`` hosts and the CA of their
    # ovsdb-servers; each defaults to the OpenFlow one.  The switch's own files (its SSL record,
    # paths on the hypervisor, ``{host}`` = host id) default to ovs-pki's documented places.
    # API: HTTPS when key and certificate are set; with a CA, clients must present a certificate.
    ofp_tls_key: str = ""
    ofp_tls_cert: str = ""
    ofp_tls_ca: str = ""
    ovsdb_tls_key: str = ""
    ovsdb_tls_cert: str = ""
    ovsdb_tls_ca: str = ""
    switch_ssl_key: str = "/etc/openvswitch/sc-privkey.pem"
    switch_ssl_cert: str = "/etc/openvswitch/sc-cert.pem"
    switch_ssl_ca: str = "/var/lib/openvswitch/pki/controllerca/cacert.pem"
    api_tls_key: str = ""
    api_tls_cert: str = ""
    api_tls_ca: str = ""
    # Secrets need not be on the command line (where `ps` shows them): a file holding the
    # secret, or the TENANTNET_AUTH_TOKEN / TENANTNET_BASIC_PASSWORD environment variables.
    auth_token_file: str = ""
    basic_password_file: str = ""
    # The API's own links (GET /, GET /v2.0/) start here; empty: relative links.
    public_url: str = ""
    # API connection hygiene: a client that holds a connection without completing a request
    # (head and body) is dropped after api_header_timeout_s; an idle keep-alive connection after
    # api_keepalive_s; beyond api_max_connections open connections requests get 503.
    api_max_connections: int = 1000
    api_header_timeout_s: float = 10.0
    api_keepalive_s: float = 5.0
    # POST /tenantnet/wait: at most this many waits at once (429 beyond), ids per wait (400).
    wait_max_concurrent: int = 64
    wait_max_ports: int = 20000
    # Who may read GET /metrics and /readyz: "api" (the API's authentication), "localhost"
    # (loopback clients without credentials, e.g. a Prometheus on this machine) or "open".
    metrics_auth: str = "api"
    # Default per-project quotas (Neutron's names and defaults; -1: unlimited).  A project's own
    # limits are set through the API (PUT /v2.0/quotas/<project>).  Settings for resources
    # tenantnet does not serve yet are accepted and take effect once it does.
    quota_network: int = 100
    quota_subnet: int = 100
    quota_port: int = 500
    quota_security_group: int = 10
    quota_security_group_rule: int = 100
    quota_router: int = 10
    # Native DHCPv4 (controller/services/dhcp.py): lease time, the DNS servers for subnets
    # without dns_nameservers (comma-separated IPv4; empty: no DNS option), the domain name
    # (option 15; empty: none) and the server MAC every network's DHCP answers come from.
    dhcp_lease_time_s: int = 43200
    dhcp_dns_servers: str = ""
    dhcp_domain_name: str = ""
    dhcp_server_mac: str = DEFAULT_SERVER_MAC
    # Per-host packet-in budget (OpenFlow's controller meter): packets per second and burst.
    packet_in_rate_pps: int = 200
    packet_in_burst: int = 100
    # Drift audit (controller/dataplane/audit.py): each host's switch is read back and repaired
    # every this many seconds, hosts spread over the interval; 0: never (GET .../drift still works).
    drift_audit_interval_s: float = 300.0
    # Per-port DHCP flood guard (controller/services/dhcp_guard.py): a port sending more DHCP
    # packets per second gets its DHCP dropped on its switch for dhcp_ban_s, doubling per
    # repeated offence up to dhcp_ban_max_s.
    dhcp_port_max_pps: int = 20
    dhcp_ban_s: int = 10
    dhcp_ban_max_s: int = 320

    @property
    def quota_defaults(self) -> dict[str, int]:
        """``{resource: default limit}`` from the ``quota_*`` settings."""
        return {
            f.name.removeprefix("quota_"): getattr(self, f.name)
            for f in fields(self)
            if f.name.startswith("quota_")
        }

    @property
    def dhcp(self) -> DhcpSettings:
        """The DHCP responder's settings (validated by `validate`)."""
        return DhcpSettings(
            server_mac=str(netaddr.EUI(self.dhcp_server_mac, dialect=netaddr.mac_unix_expanded)),
            lease_time=self.dhcp_lease_time_s,
            dns_servers=tuple(d.strip() for d in self.dhcp_dns_servers.split(",") if d.strip()),
            domain_name=self.dhcp_domain_name,
        )

    @property
    def dhcp_guard(self) -> GuardSettings:
        """The per-port DHCP flood guard's settings (validated by `validate`)."""
        return GuardSettings(self.dhcp_port_max_pps, self.dhcp_ban_s, self.dhcp_ban_max_s)

    @property
    def database(self) -> str:
        default = "tenantnet.sqlite" if self.store == "sqlite" else "etcd-replica.sqlite"
        return self.db_path or str(Path(self.state_dir) / default)

    @property
    def etcd(self) -> EtcdSettings | None:
        """The etcd cluster of an ``etcd://`` store (validated by `validate`), else None."""
        if self.store == "sqlite":
            return None
        return EtcdSettings(
            parse_url(self.store),
            prefix=self.etcd_prefix,
            timeout_s=self.etcd_timeout_s,
            attempt_timeout_s=self.etcd_attempt_timeout_s,
            call_timeout_s=self.etcd_call_timeout_s,
            ca_cert=self.etcd_tls_ca,
            cert=self.etcd_tls_cert,
            key=self.etcd_tls_key,
            user=self.etcd_user,
            password=self._etcd_password,
            snapshot_every=self.etcd_snapshot_every,
            log_margin=self.etcd_log_margin,
        )

    @functools.cached_property
    def _etcd_password(self) -> str:
        """The etcd user's password, from ``etcd_password_file`` ("" without a user): read
        (and checked, `read_secret`) once, by `validate` at start; `etcd` reuses it."""
        path = self.etcd_password_file
        return read_secret("etcd_password", path) if path else ""

    @property
    def ofp_tls(self) -> bool:
        return bool(self.ofp_tls_key)

    @property
    def api_tls(self) -> bool:
        return bool(self.api_tls_key)

    @property
    def ovsdb_tls_files(self) -> tuple[str, str, str]:
        """(key, certificate, CA) for ``ssl:`` OVSDB targets; empty strings without TLS."""
        return (
            self.ovsdb_tls_key or self.ofp_tls_key,
            self.ovsdb_tls_cert or self.ofp_tls_cert,
            self.ovsdb_tls_ca or self.ofp_tls_ca,
        )

    @property
    def controller_target(self) -> str:
        if self.advertise:
            return self.advertise
        host, port = parse_hostport(self.ofp_listen, "ofp_listen")
        if ":" in host:  # OVS reads an IPv6 target only in brackets: tcp:[2001:db8::1]:6653
            host = f"[{host}]"
        return f"{'ssl' if self.ofp_tls else 'tcp'}:{host}:{port}"

    def validate(self) -> Settings:
        parse_hostport(self.api_listen, "api_listen")
        # what logging knows (WARN and FATAL too); anything else used to mean INFO, silently
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ConfigError(
                f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        ofp_ip = _listen_ip(self.ofp_listen, "ofp_listen")
        if self.advertise:
            try:
                parse_ovsdb_target(self.advertise, "advertise")
            except InvalidInput:
                raise ConfigError(
                    "advertise: expected tcp:IP:PORT, ssl:IP:PORT ([IPv6] in brackets) or "
                    f"unix:/PATH, got {self.advertise!r}"
                ) from None
        elif ofp_ip.value == 0:  # 0.0.0.0 or ::
            raise ConfigError(
                f"ofp_listen: {self.ofp_listen} listens on every address, so it cannot be the "
                "address switches connect to: give advertise (e.g. tcp:192.0.2.10:6653)"
            )
        if not 1280 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"underlay_mtu: {self.underlay_mtu} is outside 1280..65535")
        for name in (
            "ofp_echo_interval_s",
            "ofp_dead_after_s",
            "ofp_handshake_timeout_s",
            "ofp_barrier_timeout_s",
        ):
            if not MIN_TIMEOUT_S <= getattr(self, name) <= 3600:
                raise ConfigError(
                    f"{name}: {getattr(self, name)} is outside [{MIN_TIMEOUT_S}, 3600] seconds"
                )
        if not 1 <= self.ovsdb_max_backoff_s <= 3600:
            raise ConfigError(
                f"ovsdb_max_backoff_s: {self.ovsdb_max_backoff_s} is outside [1, 3600]"
                " (python-ovs waits at least 1 s between attempts)"
            )
        if not 1 <= self.switch_max_backoff_s <= 60:
            raise ConfigError(
                f"switch_max_backoff_s: {self.switch_max_backoff_s} is outside [1, 60]"
                " (vswitchd waits at least 1 s between attempts)"
            )
        if not 1 <= self.switch_inactivity_probe_s <= 600:
            raise ConfigError(
                f"switch_inactivity_probe_s: {self.switch_inactivity_probe_s} is outside [1, 600]"
            )
        if self.ofp_dead_after_s <= self.ofp_echo_interval_s:
            raise ConfigError("ofp_dead_after_s must be longer than ofp_echo_interval_s")
        for name in ("ofp_max_connections", "ofp_max_connections_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if bool(self.basic_user) != bool(self.basic_password):
            raise ConfigError("basic_user and basic_password go together")
        if _same_endpoint(self.api_listen, self.ofp_listen):
            raise ConfigError(f"api_listen and ofp_listen are both {self.api_listen}")
        if self.public_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.public_url):
            raise ConfigError(
                f"public_url: expected http(s)://HOST[:PORT][/PATH], got {self.public_url!r}"
            )
        for name in (
            "api_max_connections",
            "wait_max_concurrent",
            "wait_max_ports",
            "max_body_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("api_header_timeout_s", "api_keepalive_s", "startup_grace_s"):
            if not MIN_TIMEOUT_S <= getattr(self, name) <= 3600:
                raise ConfigError(
                    f"{name}: must be in [{MIN_TIMEOUT_S}, 3600] seconds, got {getattr(self, name)}"
                )
        for resource, limit in self.quota_defaults.items():
            if not -1 <= limit <= 2**31 - 1:
                raise ConfigError(
                    f"quota_{resource}: must be -1 (unlimited) or 0..2147483647, got {limit}"
                )
        if self.metrics_auth not in METRICS_AUTH:
            raise ConfigError(
                f"metrics_auth: expected one of {', '.join(METRICS_AUTH)},"
                f" got {self.metrics_auth!r}"
            )
        if not (self.drift_audit_interval_s == 0 or 1 <= self.drift_audit_interval_s <= 86400):
            raise ConfigError(
                "drift_audit_interval_s: must be 0 (off) or 1..86400 seconds, got "
                f"{self.drift_audit_interval_s}"
            )
        self._validate_dhcp()
        self._validate_tls()
        self._validate_store()
        return self

    def _validate_store(self) -> None:
        etcd_only = ("etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key")
        if self.store == "sqlite":
            if any(getattr(self, n) for n in etcd_only):
                raise ConfigError("etcd_tls_* are set but store is sqlite (give store=etcd://...)")
            if self.etcd_user or self.etcd_password_file:
                raise ConfigError(
                    "etcd_user/etcd_password_file are set but store is sqlite "
                    "(give store=etcd://...)"
                )
            return
        if bool(self.etcd_user.strip()) != bool(self.etcd_password_file):
            raise ConfigError("etcd_user and etcd_password_file go together")
        if self.etcd_user and not (self.etcd_tls_ca or self.etcd_tls_cert):
            # A refusal, not a warning: on the hostile management network the password (at
            # each authenticate) and the token (on every call) would travel in clear text.
            raise ConfigError(
                f"etcd_user {self.etcd_user!r} needs etcd TLS: give etcd_tls_ca (the CA of the "
                "etcd members' certificates, and https:// client URLs on the members); without "
                "it the password and the token would cross the network in clear text "
                "(docs/ha.md, 'Operating it')"
            )
        self._etcd_password  # noqa: B018 (read now: readable, private, not empty)
        try:
            parse_url(self.store)
        except ValueError as exc:
            raise ConfigError(f"store: 'sqlite' or etcd://HOST:PORT,...: {exc}") from None
        if not self.etcd_prefix.strip("/"):
            raise ConfigError("etcd_prefix: must name a key prefix, e.g. /tenantnet/")
        if not 0.1 <= self.etcd_timeout_s <= 60:
            raise ConfigError(f"etcd_timeout_s: {self.etcd_timeout_s} is outside [0.1, 60]")
        if not 0.05 <= self.etcd_attempt_timeout_s <= 60:  # >= etcd_timeout_s: one pass only
            raise ConfigError(
                f"etcd_attempt_timeout_s: {self.etcd_attempt_timeout_s} is outside [0.05, 60]"
            )
        if not 0.1 <= self.etcd_call_timeout_s <= 600:
            raise ConfigError(
                f"etcd_call_timeout_s: {self.etcd_call_timeout_s} is outside [0.1, 600]"
            )
        if not 10 <= self.etcd_snapshot_every <= 10**7:
            raise ConfigError(
                f"etcd_snapshot_every: {self.etcd_snapshot_every} is outside [10, 10000000]"
            )
        if not 1 <= self.etcd_log_margin <= 10**7:
            raise ConfigError(f"etcd_log_margin: {self.etcd_log_margin} is outside [1, 10000000]")
        if not 2 <= self.etcd_member_ttl_s <= 60:
            raise ConfigError(f"etcd_member_ttl_s: {self.etcd_member_ttl_s} is outside [2, 60]")
        if "/" in self.etcd_member_id:
            raise ConfigError(f"etcd_member_id: {self.etcd_member_id!r} must not contain '/'")
        if bool(self.etcd_tls_cert) != bool(self.etcd_tls_key):
            raise ConfigError("etcd_tls_cert and etcd_tls_key go together")
        for name in etcd_only:
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                why = "does not exist" if not os.path.exists(path) else "is not readable"
                raise ConfigError(f"{name}: {path} {why}")
        if self.etcd_tls_key:
            check_private_key("etcd_tls_key", self.etcd_tls_key)
        # loaded now, as for the other channels: a CA that is no certificate or a key that is
        # not the certificate's used to read as "etcd cluster unavailable", a network fault
        try:
            if self.etcd_tls_cert:
                tls.check_files("etcd", self.etcd_tls_key, self.etcd_tls_cert, self.etcd_tls_ca)
            elif self.etcd_tls_ca:
                tls.check_ca("etcd", self.etcd_tls_ca)
        except tls.TlsFileError as exc:
            raise ConfigError(str(exc)) from exc

    def _validate_dhcp(self) -> None:
        if not 60 <= self.dhcp_lease_time_s <= 2**31 - 1:
            raise ConfigError(f"dhcp_lease_time_s: {self.dhcp_lease_time_s} is outside 60..2**31-1")
        for server in filter(None, (d.strip() for d in self.dhcp_dns_servers.split(","))):
            try:
                ip = netaddr.IPAddress(server, version=4, flags=netaddr.INET_PTON)
            except (netaddr.AddrFormatError, ValueError):
                raise ConfigError(f"dhcp_dns_servers: {server!r} is not an IPv4 address") from None
            if ip.value in (0, 0xFFFFFFFF) or ip.is_multicast():
                raise ConfigError(f"dhcp_dns_servers: {server} cannot be a DNS server's address")
        name = self.dhcp_domain_name
        if name and not re.fullmatch(
            r"(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?", name
        ):
            raise ConfigError(f"dhcp_domain_name: {name!r} is not a domain name")
        try:
            mac = netaddr.EUI(self.dhcp_server_mac)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ConfigError(f"dhcp_server_mac: {self.dhcp_server_mac!r} is not a MAC") from None
        if mac.version != 48:  # an EUI-64 parses, and then fits no Ethernet header
            raise ConfigError(f"dhcp_server_mac: {self.dhcp_server_mac!r} is not a 48-bit MAC")
        if mac.words[0] & 1:
            raise ConfigError(f"dhcp_server_mac: {self.dhcp_server_mac} is a multicast MAC")
        if mac.value == 0:
            raise ConfigError(f"dhcp_server_mac: {self.dhcp_server_mac} is the all-zero MAC")
        for name in ("packet_in_rate_pps", "packet_in_burst", "dhcp_port_max_pps"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise ConfigError(f"{name}: must be in 1..1000000, got {getattr(self, name)}")
        # an OpenFlow hard timeout is 16 bits of seconds
        if not 1 <= self.dhcp_ban_s <= self.dhcp_ban_max_s <= 65535:
            raise ConfigError(
                f"dhcp_ban_s, dhcp_ban_max_s: need 1 <= dhcp_ban_s <= dhcp_ban_max_s <= 65535, "
                f"got {self.dhcp_ban_s} and {self.dhcp_ban_max_s}"
            )

    @property
    def auth_mode(self) -> str:
        """How the API authenticates, for the start-up log: none, token, basic or token+basic."""
        modes = [m for m, on in (("token", self.auth_token), ("basic", self.basic_user)) if on]
        return "+".join(modes) or "none"

    def _validate_tls(self) -> None:
        """Key, certificate and CA of a channel go together and must be readable now: a typo
        found at the first switch connection would look like a network fault."""
        ofp = ("ofp_tls_key", "ofp_tls_cert", "ofp_tls_ca")
        if any(getattr(self, n) for n in ofp) and not all(getattr(self, n) for n in ofp):
            raise ConfigError("ofp_tls_key, ofp_tls_cert and ofp_tls_ca go together")
        ovsdb = ("ovsdb_tls_key", "ovsdb_tls_cert", "ovsdb_tls_ca")
        if any(getattr(self, n) for n in ovsdb) and not self.ofp_tls:
            raise ConfigError("ovsdb_tls_* need ofp_tls_* (TLS is for both southbound channels)")
        if bool(self.api_tls_key) != bool(self.api_tls_cert):
            raise ConfigError("api_tls_key and api_tls_cert go together")
        if self.api_tls_ca and not self.api_tls:
            raise ConfigError("api_tls_ca needs api_tls_key and api_tls_cert")
        for name in (*ofp, *ovsdb, "api_tls_key", "api_tls_cert", "api_tls_ca"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                why = "does not exist" if not os.path.exists(path) else "is not readable"
                raise ConfigError(f"{name}: {path} {why}")
        for name in ("ofp_tls_key", "ovsdb_tls_key", "api_tls_key"):
            if getattr(self, name):
                check_private_key(name, getattr(self, name))
        try:
            if self.ofp_tls:
                tls.check_files("ofp", self.ofp_tls_key, self.ofp_tls_cert, self.ofp_tls_ca)
                tls.check_files("ovsdb", *self.ovsdb_tls_files)
            if self.api_tls:
                tls.check_files("api", self.api_tls_key, self.api_tls_cert, self.api_tls_ca)
        except tls.TlsFileError as exc:
            raise ConfigError(str(exc)) from exc
        if self.ofp_tls and self.advertise and not self.advertise.startswith("ssl:"):
            raise ConfigError(
                f"advertise: with ofp_tls_* it must be ssl:IP:PORT, got {self.advertise!r}"
            )
        if not self.ofp_tls and self.advertise.startswith("ssl:"):
            # every switch would be told to use TLS towards a plain-TCP listener: none would
            # ever connect, and nothing said why
            raise ConfigError(
                f"advertise: {self.advertise!r} is ssl:, but the OpenFlow listener is plain "
                "TCP; set ofp_tls_key, ofp_tls_cert and ofp_tls_ca, or advertise tcp:IP:PORT"
            )


METRICS_AUTH = ("api", "localhost", "open")
SECRETS = {"auth_token": "auth_token_file", "basic_password": "basic_password_file"}


def _same_endpoint(a: str, b: str) -> bool:
    host_a, port_a = parse_hostport(a, "api_listen")
    host_b, port_b = parse_hostport(b, "ofp_listen")
    wildcard = {"0.0.0.0", "::", ""}
    return port_a == port_b and (host_a == host_b or bool({host_a, host_b} & wildcard))


def _coerce(name: str, raw: object, source: str, typed: bool = False) -> object:
    """A setting's value in its type.  Text (flags, environment) is converted; a ``typed``
    value (TOML) must already have the right type (``underlay_mtu = "9000"`` is a mistake)."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    shown = "(the value, not shown)" if name in SECRETS else repr(raw)  # never a secret
    if isinstance(raw, str) and "\x00" in raw:  # no path, address or name holds one
        raise ConfigError(f"{name} ({source}): contains a NUL character")
    if isinstance(raw, str) and (kind == "str" or not typed):
        if kind == "int":
            number = integer_text(raw)
            if number is None:
                raise ConfigError(f"{name} ({source}): {shown} is not an integer")
            return number
        if kind == "float":
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name} ({source}): {shown} is not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{name} ({source}): {shown} is not a finite number")
            return value
        return raw
    if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind == "float" and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            raise ConfigError(f"{name} ({source}): {shown} is not a finite number")
        return float(raw)
    raise ConfigError(f"{name} ({source}): {shown} is not a {kind}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with any of the settings below")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, help=f"(default: {f.default!r})")


def file_settings(cfg_file: str) -> dict[str, object]:
    """The settings of a TOML file: a ``[tenantnet]`` table, or top-level keys, never both
    (keys beside the table would be silently ignored, e.g. a top-level ``auth_token``)."""
    try:
        data = tomllib.loads(Path(cfg_file).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {cfg_file}: {exc}") from exc
    section: dict[str, object] = data
    if "tenantnet" in data:
        if not isinstance(data["tenantnet"], dict):
            raise ConfigError(f"config file {cfg_file}: 'tenantnet' must be a table")
        beside = sorted(set(data) - {"tenantnet"})
        if beside:
            raise ConfigError(
                f"config file {cfg_file}: keys {beside} outside the [tenantnet] table would be "
                "ignored; put every setting inside it"
            )
        section = data["tenantnet"]
    unknown = sorted(set(section) - {f.name for f in fields(Settings)})
    if unknown:
        raise ConfigError(f"config file {cfg_file}: unknown settings {unknown}")
    return section


MAX_SECRET_BYTES = 64 * 1024


def read_secret(name: str, path: str) -> str:
    """A secret from a file (``{name}_file``): its content without the final newline.

    A secret anyone on the host can read protects nothing, so the file must be private.
    Accepted: a regular file that others cannot read, that neither its group nor others can
    write (0600, 0400, 0640, 0440), owned by this user or root; a reader running as root
    accepts any owner (``sudo tenantnet status`` reading the token file of the service user,
    which a chown to root would take away from the service).  Group-readable is allowed, unlike
    ssh's rule for keys, so that a service group can read a file root owns (``root:tenantnet``
    0640).  Refused: world-readable, group- or world-writable, another user's, not a regular
    file, empty, over MAX_SECRET_BYTES or not UTF-8.  The file is opened once and checked
    (fstat) and read through that descriptor: a check of the path and a separate open could
    see two different files.  Symbolic links are followed (Kubernetes mounts secrets as links
    into a directory of its own); O_NOCTTY: a terminal device named here is opened before it
    is found not to be a regular file, and must not become the controlling terminal."""
    setting = f"{name}_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        _check_private(setting, path, info)
        data = file.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{setting}: {path} is over {MAX_SECRET_BYTES // 1024} KiB")
    return _secret_text(name, path, data)


def _check_private(setting: str, path: str, info: os.stat_result) -> None:
    """The rule every secret file and TLS private key meets (see `read_secret`): owned by this
    user or root (any owner when run as root), and neither readable by others nor writable by
    group or others."""
    euid = os.geteuid()
    if euid != 0 and info.st_uid not in (euid, 0):
        # no chown hint: the file is likely another service's (tenantnet's, when an
        # operator runs the CLI), and taking it away from that user would break it
        raise ConfigError(
            f"{setting}: {path} belongs to another user (uid {info.st_uid}), not to this "
            f"one (uid {euid}) or root; run as its owner or as root, or give this user a "
            "private copy of its own"
        )
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise ConfigError(
            f"{setting}: {path} is readable or writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); make it private: chmod 600 {path}"
        )


def check_private_key(setting: str, path: str) -> None:
    """A TLS private key (``*_tls_key``) is as secret as a token and meets the same rule.  The
    libraries that use it (OpenSSL through Python's ssl, python-ovs, etcd3gw's requests) open
    it themselves, by path, so it is checked by path here, at start: a key others can read
    stops the start rather than serve TLS whose identity anyone on the host can take."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    _check_private(setting, path, info)


def _secret_text(name: str, path: str, data: bytes) -> str:
    """A secret file's bytes as text, without the final newline.  The error of bytes that are
    not UTF-8 names only the file: Python's own message quotes the offending byte, which is a
    byte of the secret."""
    try:
        secret = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}_file: {path} is not UTF-8 text") from None
    if not secret.strip():
        raise ConfigError(f"{name}_file: {path} is empty")
    return secret


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults < file < environment < flags.  Strict: unknown keys, empty or doubly given
    secrets and contradictory settings are errors, because each of them used to mean a
    controller that starts with less protection than its operator asked for."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    cfg_file = getattr(args, "config", None) or env.get("TENANTNET_CONFIG")
    if cfg_file:
        section = file_settings(cfg_file)
        _warn_if_secrets_readable(cfg_file, [n for n in SECRETS if n in section])
        for name, raw in section.items():
            values[name] = _coerce(name, raw, f"config file {cfg_file}", typed=True)
            sources[name] = "config file"
    for f in fields(Settings):
        if (v := env.get("TENANTNET_" + f.name.upper())) is not None:
            values[f.name] = _coerce(f.name, v, "TENANTNET_" + f.name.upper())
            sources[f.name] = "environment"
        if args is not None and getattr(args, f.name, None) is not None:
            flag = "--" + f.name.replace("_", "-")
            values[f.name] = _coerce(f.name, getattr(args, f.name), flag)
            sources[f.name] = "flag"
    for secret, file_setting in SECRETS.items():
        if secret in values and not str(values[secret]).strip():
            raise ConfigError(
                f"{secret} ({sources[secret]}) is empty; leave it unset to run without it"
            )
        if file_setting in values:
            if secret in values:
                raise ConfigError(
                    f"{secret} is given twice: as {file_setting} and ({sources[secret]}) directly"
                )
            values[secret] = read_secret(secret, str(values.pop(file_setting)))
    if "basic_user" in values and not str(values["basic_user"]).strip():
        raise ConfigError(f"basic_user ({sources['basic_user']}) is empty")
    # _coerce gave each value its field's type, which one dict type cannot say per key.
    typed: dict[str, Any] = values
    return Settings(**typed).validate()


def _warn_if_secrets_readable(cfg_file: str, secrets: list[str]) -> None:
    """A config file that holds a secret itself (not a ``*_file`` setting) is held to the
    rule of secret files (`_check_private`), as a warning: refusing it would stop controllers
    that start today.  Before, a world-readable one was taken in silence."""
    if not secrets:
        return
    try:
        _check_private("config file", cfg_file, os.stat(cfg_file))
    except (ConfigError, OSError) as exc:
        logging.getLogger(__name__).warning(
            "%s holds %s but is not private (%s); move the secret to %s, or chmod 600 it",
            cfg_file, ", ".join(secrets), exc, ", ".join(SECRETS[n] for n in secrets),
        )  # fmt: skip


def secrets_on_command_line(args: argparse.Namespace) -> list[str]:
    """The secret flags that were used (every local user can read them in ``ps``)."""
    return ["--" + n.replace("_", "-") for n in SECRETS if getattr(args, n, None) is not None]
