"""Where the store's etcd cluster is and how to talk to it: the ``--store etcd://...`` setting.

Kept apart from `etcd_log` so that reading the configuration does not import the etcd client
(a single-node controller on SQLite never loads it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import netaddr

SCHEME = "etcd://"


@dataclass(frozen=True)
class EtcdSettings:
    """Where the cluster is and how to talk to it (``--store etcd://h1:p1,h2:p2,...``)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = "/tenantnet/"
    timeout_s: float = 2.0
    # Each member is tried first with this shorter timeout, then with ``timeout_s`` (see
    # `etcd_log`): a call reaching a member stuck on a dead leader moves on after this, not
    # after ``timeout_s``.  Not below etcd's ordinary commit time on a loaded cluster, or calls
    # are sent twice for nothing (harmless, but more load).
    attempt_timeout_s: float = 0.5
    # A call that no member answers ends (`EtcdUnavailable`: a write answers 503) once its short
    # attempts and one attempt with ``timeout_s`` are done and no further one would end within
    # this: without it, a cluster without quorum whose members still accept connections held
    # a write for timeout_s + n x attempt_timeout_s + n x timeout_s (9.5 s for 3 members and
    # the defaults; 5 s with this one).  The first long attempt is always made (a slow but
    # working cluster still answers).  With ``user``, an attempt that must first authenticate
    # can take two of its timeouts, so such a call may end up to one attempt later than this.
    call_timeout_s: float = 6.0
    # A watch stream silent for this long is opened again (on the same member; on the next one
    # if that one does not even confirm the new watch): a frozen member is left within twice
    # this (`etcd_watch`).  Idle reconnects cost one request each.
    watch_idle_s: float = 10.0
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    # etcd role-based auth (`etcd_auth`): a user and its password (read from
    # etcd_password_file; never in a repr, a log line or an error message)
    user: str = ""
    password: str = field(default="", repr=False)
    # An entry (one transaction's statements and events, compressed) must fit etcd's request
    # limit (--max-request-bytes, 1.5 MiB by default) with the rest of its transaction.
    max_entry_bytes: int = 1_400_000
    # A snapshot of the state every ``snapshot_every`` entries; the log then keeps only the
    # ``log_margin`` entries before it (at least 1: the head entry stays, so a lagging replica
    # always sees the gap), so it stays bounded.  A replica further behind loads the snapshot.
    snapshot_every: int = 1000
    log_margin: int = 200

    @property
    def protocol(self) -> str:
        return "https" if self.ca_cert or self.cert else "http"


def parse_url(url: str) -> tuple[tuple[str, int], ...]:
    """``etcd://h1:2379,h2:2379`` -> ((h1, 2379), (h2, 2379)); ValueError names what is wrong."""
    if not url.startswith(SCHEME):
        raise ValueError(f"expected {SCHEME}HOST:PORT[,HOST:PORT...], got {url!r}")
    endpoints: list[tuple[str, int]] = []
    for part in url[len(SCHEME) :].split(","):
        host, sep, port = part.strip().rpartition(":")
        number = int(port) if port.isascii() and port.isdigit() else 0
        if not sep or not _valid_host(host) or not 0 < number < 65536:
            raise ValueError(f"etcd endpoint {part!r}: expected HOST:PORT")
        endpoint = (host.strip("[]"), number)
        if endpoint in endpoints:
            raise ValueError(f"etcd endpoint {part!r} is given twice")
        endpoints.append(endpoint)
    return tuple(endpoints)


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
)


def _valid_host(host: str) -> bool:
    """An IPv4 address, an IPv6 address (brackets optional: the port is after the last
    colon), or a DNS name; not a URL (``etcd://http://h:2379``) or a name with spaces, which
    used to fail only at the first call, as if the cluster were down."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        return netaddr.valid_ipv6(bare)
    if bare != host:  # brackets around something that is not IPv6, or only one of them
        return False
    if bare.replace(".", "").isdigit():  # all digits: an IPv4 address or nothing
        return netaddr.valid_ipv4(bare, flags=netaddr.INET_PTON)
    return _HOST_NAME.fullmatch(bare) is not None
