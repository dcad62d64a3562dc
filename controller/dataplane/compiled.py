"""What the data plane last compiled for one network, port by port.

The per-port path (see `controller.dataplane.services.l2`) patches one port's fragments into the
switches; to know what to take out it needs the inputs that port was compiled from, and to know
whether patching is safe at all it needs who else claims the port's MACs and ofport and how many
usable ports each host has.  A whole-network compile rebuilds this; the per-port path keeps it
current.  A whole-network compile also takes each host's view from it, so every port is turned
into compiler input once, not once per host.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from controller.dataplane.state import PortRec
from controller.dataplane.views import port_macs, remote_port_of
from flows.compiler import usable
from flows.model import LocalPort, NetworkView, RemotePort, Segment


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
        self.remote.pop(port_id, None)
        self.mac_users.subtract(self.macs.pop(port_id, ()))
        self.nums.pop(port_id, None)

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
