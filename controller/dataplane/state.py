"""What the data plane knows: typed, frozen records mirrored from store events.

The store hands the data plane JSON bodies (`dict[str, Any]`); they are turned into the records
below once, when their event arrives, so that everything after (bindings, the planner, the
compilers' views) works on named, typed, immutable fields, and a field the store renames fails
here and in mypy instead of deep inside a compile.  `Mirror` keeps the records current and
indexed the ways planning needs (ports of a network, port by number, network by key).

Switch observations (what OVSDB shows, what a switch holds) live with the host they belong to
(`controller.dataplane.reconciler.HostRuntime`); the holder of each port with
`controller.dataplane.bindings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.store.ports import REFUSED_HOSTS
from flows.model import Segment


@dataclass(frozen=True)
class PortRec:
    """A port as the data plane needs it."""

    id: str
    num: int  # store-allocated, never reused: names the port's flows (flows.tables.port_cookie)
    network_id: str
    mac: str
    fixed_ips: tuple[str, ...] = ()
    admin_up: bool = True
    port_security: bool = True
    # allowed_address_pairs as (IP or CIDR, MAC), the MAC defaulted to the port's
    pairs: tuple[tuple[str, str], ...] = ()
    host: str | None = None  # binding:host_id: the orchestrator's request or the holder
    host_requested: bool = False  # whether ``host`` is the orchestrator's request
    refused_shown: tuple[str, ...] = ()  # hosts listed as refused in binding:vif_details
    status: str = "DOWN"  # as the store last showed it (metrics: when a port turns ready)
    revision: int = 0

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> PortRec:
        mac = body["mac_address"]
        return cls(
            id=body["id"],
            num=int(body["_num"]),
            network_id=body["network_id"],
            mac=mac,
            fixed_ips=tuple(
                sorted(
                    ip["ip_address"] for ip in body.get("fixed_ips") or () if ip.get("ip_address")
                )
            ),
            admin_up=bool(body.get("admin_state_up", True)),
            port_security=bool(body.get("port_security_enabled", True)),
            pairs=tuple(
                sorted(
                    (pair["ip_address"], pair.get("mac_address") or mac)
                    for pair in body.get("allowed_address_pairs") or ()
                )
            ),
            host=body.get("binding:host_id") or None,
            host_requested=bool(body.get("_host_requested")),
            refused_shown=tuple((body.get("binding:vif_details") or {}).get(REFUSED_HOSTS, ())),
            status=body.get("status", "DOWN"),
            revision=int(body.get("revision_number", 0)),
        )

    @property
    def requested_host(self) -> str | None:
        """The host the orchestrator asked for, or None."""
        return self.host if self.host_requested else None

    def flows_differ(self, other: PortRec) -> bool:
        """Whether the two versions compile to different flows wherever the port is (its holder
        aside: that is decided by the bindings)."""
        return (
            self.network_id,
            self.mac,
            self.fixed_ips,
            self.admin_up,
            self.port_security,
            self.pairs,
        ) != (other.network_id, other.mac, other.fixed_ips, other.admin_up, other.port_security,
              other.pairs)  # fmt: skip

    def binding_differs(self, other: PortRec) -> bool:
        return (self.host, self.host_requested) != (other.host, other.host_requested)


@dataclass(frozen=True)
class NetworkRec:
    """A network as its flows name it."""

    id: str
    key: int  # store-allocated: metadata, group ids, the network owner's cookie
    seg_type: str  # "vxlan" | "gre"
    seg_id: int

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> NetworkRec:
        return cls(
            id=body["id"],
            key=int(body["_key"]),
            seg_type=body.get("provider:network_type") or "vxlan",
            seg_id=int(body["provider:segmentation_id"]),
        )

    @property
    def segment(self) -> Segment:
        return Segment(self.key, self.seg_type, self.seg_id)


@dataclass(frozen=True)
class HostRec:
    """A registered hypervisor.  ``config`` is its store body, which only its OVSDB agent and
    the admission table read (targets, TLS names); planning uses the typed fields."""

    id: str
    tunnel_ip: str
    config: Mapping[str, Any]

    AGENT_FIELDS = ("ovsdb", "tunnel_ip", "integration_bridge", "datapath_type")

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> HostRec:
        return cls(id=body["id"], tunnel_ip=body["tunnel_ip"], config=dict(body))

    def agent_differs(self, other: HostRec) -> bool:
        """Whether its OVSDB agent must restart (another target, bridge or tunnel address)."""
        return any(self.config.get(f) != other.config.get(f) for f in self.AGENT_FIELDS)


class Mirror:
    """The store's networks and ports as records, indexed for planning; kept current by the
    store's events (and loaded once at start).  Nothing here is O(all ports) per change."""

    def __init__(self) -> None:
        self.ports: dict[str, PortRec] = {}
        self.net_ports: dict[str, set[str]] = {}  # network id -> its port ids
        self.host_ports: dict[str, set[str]] = {}  # host -> ports recorded there (binding:host_id)
        self.num_to_port: dict[int, str] = {}  # port number -> port id
        self.networks: dict[str, NetworkRec] = {}  # by id
        self.by_key: dict[int, NetworkRec] = {}  # by network key

    def set_port(self, port_id: str, rec: PortRec | None) -> PortRec | None:
        """Store the port's new version (None: deleted); returns the previous one."""
        old = self.ports.pop(port_id, None)
        if old is not None:
            self.net_ports.get(old.network_id, set()).discard(port_id)
            if old.host is not None:
                self.host_ports.get(old.host, set()).discard(port_id)
            self.num_to_port.pop(old.num, None)
        if rec is not None:
            self.ports[port_id] = rec
            self.net_ports.setdefault(rec.network_id, set()).add(port_id)
            if rec.host is not None:
                self.host_ports.setdefault(rec.host, set()).add(port_id)
            self.num_to_port[rec.num] = port_id
        return old

    def set_network(self, network_id: str, rec: NetworkRec | None) -> None:
        """Store the network's new version (None: deleted)."""
        old = self.networks.pop(network_id, None)
        if old is not None:
            self.by_key.pop(old.key, None)
        if rec is not None:
            self.networks[network_id] = rec
            self.by_key[rec.key] = rec

    def key_of(self, network_id: str) -> int | None:
        net = self.networks.get(network_id)
        return net.key if net is not None else None

    def port_by_num(self, num: int) -> PortRec | None:
        pid = self.num_to_port.get(num)
        return self.ports.get(pid) if pid is not None else None

    def recorded_on(self, host_id: str) -> set[str]:
        """Ports whose binding:host_id names the host (requested or written back)."""
        return set(self.host_ports.get(host_id, ()))


RECORDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "network": NetworkRec.from_store,
    "port": PortRec.from_store,
    "host": HostRec.from_store,
}
"""Store kinds the data plane reads as typed records; a service that reads a new kind adds its
record type here.  Events of other kinds reach the planner with the store's bodies, and no
service reads them."""
