"""Which OpenFlow connection may speak for which host: a switch is who it proves to be.

A datapath id is no secret (it is derived from the host id), so the id a connection claims in
its FEATURES reply proves nothing.  Before the OpenFlow app accepts a session for a datapath id
it asks here:

* **with TLS** (the listener requires a client certificate signed by the switch CA) the
  certificate's CN must name the host registered with that datapath id (``ovs-pki req+sign
  <host id> switch``; see controller/tls.py);
* **without TLS** (development mode, warned about at start-up) the connection must come from
  the host's management address: its ``mgmt_ip`` if registered, else the IP of its OVSDB target
  (``tcp:IP:PORT``/``ssl:IP:PORT``); a ``unix:`` target means the controller's own machine
  (loopback, or the address the controller listens on/advertises).

Refusing an unknown or unproven connection is half of it; the other half, that a second
connection never displaces a live session, is the OpenFlow app's (it knows the sessions).

The table is written by the data-plane actor when hosts come and go and read by os-ken's
threads, hence the lock; it is a copy of a few fields per host, never the store.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Any

from controller.tls import host_of_cn

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Entry:
    host_id: str
    addresses: frozenset[Address] | None  # None: the controller's own machine


def _ip(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def management_addresses(record: dict[str, Any]) -> frozenset[Address] | None:
    """Where a host's switch may connect from without TLS (None: this machine)."""
    explicit = _ip(record.get("mgmt_ip") or "")
    if explicit is not None:
        return frozenset({explicit})
    target = record.get("ovsdb") or ""
    if target.startswith(("tcp:", "ssl:")):
        ip = _ip(target[4:].rpartition(":")[0])
        if ip is not None:
            return frozenset({ip})
    return None


class Admission:
    """Answers "may this connection be host H's switch?" from an in-memory host table."""

    def __init__(self, tls: bool, local_addresses: set[str] | frozenset[str] = frozenset()):
        self.tls = tls
        self._local = frozenset(ip for a in local_addresses if (ip := _ip(a)) is not None)
        self._by_dpid: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    def set_host(self, dpid: int, record: dict[str, Any]) -> None:
        entry = _Entry(record["id"], management_addresses(record))
        with self._lock:
            self._by_dpid[dpid] = entry

    def remove_host(self, dpid: int) -> None:
        with self._lock:
            self._by_dpid.pop(dpid, None)

    def keep_only(self, dpids: set[int]) -> None:
        """Forget every host but these (the data plane's, when it starts: the table may have
        been filled from the store earlier, see TenantnetOfpApp.admit_early)."""
        with self._lock:
            self._by_dpid = {d: e for d, e in self._by_dpid.items() if d in dpids}

    def check(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
        """None if the connection may be ``dpid``'s switch, else why not (for the log)."""
        with self._lock:
            entry = self._by_dpid.get(dpid)
        if entry is None:
            return "not the datapath id of a registered host"
        if self.tls:
            if peer_cn is None:
                return (
                    f"no certificate with exactly one CN (host {entry.host_id} needs one that "
                    "names it)"
                )
            if host_of_cn(peer_cn) != entry.host_id:
                return f"certificate CN {peer_cn!r} does not name host {entry.host_id}"
            return None
        ip = _ip(peer_ip or "")
        if ip is None:
            return "no peer address"
        if entry.addresses is None:
            if ip.is_loopback or ip in self._local:
                return None
            return f"host {entry.host_id} is local (unix: OVSDB) and {ip} is not this machine"
        if ip not in entry.addresses:
            allowed = ", ".join(sorted(str(a) for a in entry.addresses))
            return f"host {entry.host_id} connects from {allowed}, not {ip}"
        return None
