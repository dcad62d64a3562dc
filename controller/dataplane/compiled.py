"""What the data plane last compiled for one network, port by port.

The per-port path (see `controller.dataplane.services.l2`) patches one port's fragments into the
switches; to know what to take out it needs the inputs that port was compiled from, and to know
whether patching is safe at all it needs who else claims the port's MACs and ofport and how many
usable ports each host has.  A whole-network compile rebuilds this; the per-port path keeps it
current.  A whole-network compile also takes each host's view from it, so every port is turned
into compiler input once, not once per host.

`FloodBuckets` keeps each host's flood buckets of the network (sorted by ofport, plugged into
the security-group tables for filtered ports) as ports are tracked and untracked, so that the
per-port path builds a host's flood groups without visiting the network's other ports: what is
left proportional to them is the group-mod itself (OpenFlow 1.3 sends every bucket of a group),
one C-level copy of the kept bucket list.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from controller.dataplane.state import PortRec
from controller.dataplane.views import port_macs, remote_port_of
from flows import security_groups as sg
from flows.compiler import usable
from flows.model import Action, LocalPort, NetworkView, Output, RemotePort, Segment

Bucket = tuple[Action, ...]


class FloodBuckets:
    """A host's local flood buckets of one network, in canonical order (by ofport, one per
    ofport), kept as usable ports come and go: what `flows.compiler.local_buckets` followed by
    `flows.security_groups.plug` gives for the same ports, at O(1) per port (plus a memmove).

    Two ports on one ofport (inconsistent input, compiled whole) share its bucket, which goes
    through the ingress filter if either is filtered, as `plug` does."""

    def __init__(self) -> None:
        self._ofports: list[int] = []  # sorted
        self._buckets: list[Bucket] = []  # the bucket of each ofport above
        self._users: dict[int, dict[str, bool]] = {}  # ofport -> {port id: filtered}
        self._tuple: tuple[Bucket, ...] | None = ()

    def add(self, ofport: int, port_id: str, filtered: bool) -> None:
        users = self._users.get(ofport)
        i = bisect_left(self._ofports, ofport)
        if users is None:
            users = self._users[ofport] = {}
            self._ofports.insert(i, ofport)
            self._buckets.insert(i, ())
        users[port_id] = filtered
        self._buckets[i] = self._bucket(ofport, users)
        self._tuple = None

    def remove(self, ofport: int, port_id: str) -> None:
        users = self._users.get(ofport)
        if users is None or users.pop(port_id, None) is None:
            return
        i = bisect_left(self._ofports, ofport)
        if users:
            self._buckets[i] = self._bucket(ofport, users)
        else:
            del self._users[ofport], self._ofports[i], self._buckets[i]
        self._tuple = None

    def buckets(self) -> tuple[Bucket, ...]:
        if self._tuple is None:
            self._tuple = tuple(self._buckets)
        return self._tuple

    @staticmethod
    def _bucket(ofport: int, users: dict[str, bool]) -> Bucket:
        return sg.ingress_bucket(ofport) if any(users.values()) else (Output(ofport),)


@dataclass
class NetCompiled:
    """Per port, what the last compile of one network used."""

    seg: Segment
    where: dict[str, str] = field(default_factory=dict)  # port id -> host it is located on
    hosts: Counter[str] = field(default_factory=Counter)  # host -> located ports
    local: dict[str, dict[str, LocalPort]] = field(default_factory=dict)  # host -> id -> port
    usable: Counter[str] = field(default_factory=Counter)  # host -> usable local ports
    remote: dict[str, RemotePort] = field(default_factory=dict)  # port id -> as peers see it
    macs: dict[str, frozenset[str]] = field(default_factory=dict)  # port id -> its MACs
    mac_users: Counter[str] = field(default_factory=Counter)  # MAC -> located ports using it
    nums: dict[str, int] = field(default_factory=dict)  # port id -> its number (owner cookie)
    ofports: Counter[tuple[str, int]] = field(default_factory=Counter)  # usable ports per ofport
    flood: dict[str, FloodBuckets] = field(default_factory=dict)  # host -> its local buckets
    service_answers: tuple[tuple[str, str], ...] = ()  # (ip, mac) the network answers ARP for

    def track(
        self,
        port: PortRec,
        host_id: str,
        local: LocalPort | None,
        host_tunnel_ip: str | None,
    ) -> None:
        """The port is located on ``host_id``; ``local`` is how that host compiles it (None
        while the host shows no ofport for it), ``host_tunnel_ip`` how its peers reach it."""
        pid = port.id
        self.where[pid] = host_id
        self.hosts[host_id] += 1
        if local is not None:
            self.local.setdefault(host_id, {})[pid] = local
            self.usable[host_id] += usable(local)
            self.ofports[(host_id, local.ofport)] += usable(local)
            if usable(local):
                flood = self.flood.setdefault(host_id, FloodBuckets())
                flood.add(local.ofport, pid, local.port_security)
        if host_tunnel_ip is not None:
            self.remote[pid] = remote_port_of(port, host_tunnel_ip)
        self.macs[pid] = port_macs(port)
        self.mac_users.update(self.macs[pid])
        self.nums[pid] = port.num

    def untrack(self, port_id: str) -> None:
        host_id = self.where.pop(port_id, None)
        if host_id is None:
            return
        self.hosts[host_id] -= 1
        local = self.local.get(host_id, {}).pop(port_id, None)
        if local is not None:
            self.usable[host_id] -= usable(local)
            self.ofports[(host_id, local.ofport)] -= usable(local)
            if usable(local):
                self.flood[host_id].remove(local.ofport, port_id)
        self.remote.pop(port_id, None)
        self.mac_users.subtract(self.macs.pop(port_id, ()))
        self.nums.pop(port_id, None)

    def flood_buckets(self, host_id: str) -> tuple[Bucket, ...]:
        """The host's local flood buckets (see `FloodBuckets`)."""
        flood = self.flood.get(host_id)
        return flood.buckets() if flood is not None else ()

    def ofport_taken(self, host_id: str, port: LocalPort, port_id: str) -> bool:
        """Whether another usable port of the network has ``port``'s ofport on ``host_id``."""
        mine = self.local.get(host_id, {}).get(port_id)
        own = mine is not None and usable(mine) and mine.ofport == port.ofport
        return self.ofports[(host_id, port.ofport)] - own > 0

    def view(self, host_id: str) -> NetworkView:
        """What ``host_id`` compiles: its own ports, everybody else's as remote ports, and the
        other hosts with ports as peers (each port's values were built once, by `track`)."""
        remote = tuple(r for pid, r in self.remote.items() if self.where[pid] != host_id)
        return NetworkView(
            key=self.seg.key,
            seg_type=self.seg.seg_type,
            seg_id=self.seg.seg_id,
            local_ports=tuple(self.local.get(host_id, {}).values()),
            remote_ports=remote,
            peer_ips=tuple(sorted({r.host_ip for r in remote})),
            service_answers=self.service_answers,
        )
