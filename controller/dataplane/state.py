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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.services.dhcp_records import (
    DEFAULT_SERVER_MAC,
    DhcpNetwork,
    DhcpOpt,
    DhcpPort,
    DhcpSubnet,
    server_address,
)
from controller.store import rule_values
from controller.store.ports import REFUSED_HOSTS, TRUSTED_OWNER_PREFIX, VIPS_HELD
from flows.model import Segment
from flows.security_groups import SgRule
from flows.vip_pairs import vip_pairs

DHCP_FACTS_KEPT = 16384
"""Ports whose DHCP facts `Mirror.dhcp_facts` keeps (a few hundred bytes each); past that it
starts afresh."""
ROUTER_INTERFACE_OWNERS = frozenset(
    {"network:router_interface_distributed", "network:router_interface"}
)
"""``device_owner`` of a router's interface port (its ``device_id`` is the router)."""


@dataclass(frozen=True)
class PortRec:
    """A port as the data plane needs it."""

    id: str
    num: int  # store-allocated, never reused: names the port's flows (flows.tables.port_cookie)
    network_id: str
    mac: str
    fixed_ips: tuple[str, ...] = ()
    admin_up: bool = True
    # port security as the data plane applies it: off for a port the network owns
    # (``device_owner`` ``network:*``, DHCP or router), whatever ``port_security_enabled``
    # says.  Neutron trusts those ports: its security-group RPC leaves them out and its OVS
    # agent gives them no anti-spoofing (`is_port_trusted`), so a DHCP server port is neither
    # dropped for having no group nor banned from sending DHCP replies.
    port_security: bool = True
    # allowed_address_pairs as (IP or CIDR, MAC), the MAC defaulted to the port's
    pairs: tuple[tuple[str, str], ...] = ()
    host: str | None = None  # binding:host_id: the orchestrator's request or the holder
    host_requested: bool = False  # whether ``host`` is the orchestrator's request
    refused_shown: tuple[str, ...] = ()  # hosts listed as refused in binding:vif_details
    status: str = "DOWN"  # as the store last showed it (metrics: when a port turns ready)
    revision: int = 0
    subnet_ips: tuple[tuple[str, str], ...] = ()  # (subnet id, ip): what DHCP hands out
    dhcp_opts: tuple[DhcpOpt, ...] = ()  # extra_dhcp_opts (read by the DHCP responder only)
    groups: tuple[str, ...] = ()  # security_groups (filtered only with port_security)
    device_owner: str = ""
    device_id: str = ""
    # the virtual IPs (single-IPv4 address pairs) the port was learnt to hold, each with the
    # MAC it is reached at (its pair's): routed to it (`flows.routing`, `ports.claim_vip`)
    vips: tuple[tuple[str, str], ...] = ()

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
            port_security=bool(body.get("port_security_enabled", True))
            and not str(body.get("device_owner") or "").startswith(TRUSTED_OWNER_PREFIX),
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
            subnet_ips=tuple(
                sorted(
                    (str(ip.get("subnet_id", "")), ip["ip_address"])
                    for ip in body.get("fixed_ips") or ()
                    if ip.get("ip_address")
                )
            ),
            dhcp_opts=tuple(
                DhcpOpt(str(o["opt_name"]), str(o["opt_value"]), int(o.get("ip_version", 4)))
                for o in body.get("extra_dhcp_opts") or ()
            ),
            groups=tuple(sorted(body.get("security_groups") or ())),
            device_owner=str(body.get("device_owner") or ""),
            device_id=str(body.get("device_id") or ""),
            vips=_held_vips(body, mac),
        )

    @property
    def trusted(self) -> bool:
        """Whether the network owns the port (``network:*``): it is never filtered (see
        ``port_security``), yet still a member of the groups it is in, whose remote-group rules
        match its addresses as Neutron's do."""
        return self.device_owner.startswith(TRUSTED_OWNER_PREFIX)

    @property
    def router_id(self) -> str | None:
        """The router this port is an interface of (`flows.routing`), None for any other port."""
        if self.device_owner in ROUTER_INTERFACE_OWNERS and self.device_id:
            return self.device_id
        return None

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
            self.subnet_ips,
            self.admin_up,
            self.port_security,
            self.pairs,
        ) != (other.network_id, other.mac, other.subnet_ips, other.admin_up, other.port_security,
              other.pairs)  # fmt: skip

    def filter_differs(self, other: PortRec) -> bool:
        """Whether the two versions filter differently where the port is, or contribute other
        addresses to its groups' remote-group address sets (`flows.security_groups`)."""
        return (
            self.network_id,
            self.mac,
            self.fixed_ips,
            self.admin_up,
            self.port_security,
            self.pairs,
            self.groups,
        ) != (other.network_id, other.mac, other.fixed_ips, other.admin_up, other.port_security,
              other.pairs, other.groups)  # fmt: skip

    def binding_differs(self, other: PortRec) -> bool:
        """Whether the port's holder must be decided again: another requested or recorded host,
        or it became or stopped being a router interface (`Bindings.networks_held` counts only
        the other ports)."""
        return (self.host, self.host_requested, self.router_id) != (
            other.host,
            other.host_requested,
            other.router_id,
        )


def _held_vips(body: Mapping[str, Any], mac: str) -> tuple[tuple[str, str], ...]:
    """The port's held VIPs (`VIPS_HELD`) that are still virtual IPs of it
    (`flows.vip_pairs.vip_pairs`: single-IPv4 pairs, not a fixed IP), with the pair's MAC
    (the smallest if one address has several: the one `controller.dataplane.vips` learns
    from): the store prunes a removed pair's hold itself, this keeps a record that disagrees
    from routing anything the port may not send."""
    held = (body.get("binding:vif_details") or {}).get(VIPS_HELD) or ()
    if not held:
        return ()
    pairs = vip_pairs(
        [
            (str(p["ip_address"]), str(p.get("mac_address") or mac))
            for p in body.get("allowed_address_pairs") or ()
        ],
        [ip["ip_address"] for ip in body.get("fixed_ips") or () if ip.get("ip_address")],
    )
    return tuple((ip, pairs[ip]) for ip in held if ip in pairs)


@dataclass(frozen=True)
class NetworkRec:
    """A network as its flows name it."""

    id: str
    key: int  # store-allocated: metadata, group ids, the network owner's cookie
    seg_type: str  # "vxlan" | "gre"
    seg_id: int
    mtu: int = 1450  # handed out by DHCP (option 26)

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> NetworkRec:
        return cls(
            id=body["id"],
            key=int(body["_key"]),
            seg_type=body.get("provider:network_type") or "vxlan",
            seg_id=int(body["provider:segmentation_id"]),
            mtu=int(body.get("mtu") or 1450),
        )

    @property
    def segment(self) -> Segment:
        return Segment(self.key, self.seg_type, self.seg_id)


@dataclass(frozen=True)
class SubnetRec:
    """A subnet as the DHCP responder answers from it (`controller.services.dhcp`)."""

    id: str
    network_id: str
    ip_version: int
    dhcp: DhcpSubnet

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> SubnetRec:
        return cls(
            id=body["id"],
            network_id=body["network_id"],
            ip_version=int(body.get("ip_version", 4)),
            dhcp=DhcpSubnet(
                id=body["id"],
                cidr=body["cidr"],
                gateway_ip=body.get("gateway_ip") or None,
                enable_dhcp=bool(body.get("enable_dhcp", True)),
                dns_nameservers=tuple(body.get("dns_nameservers") or ()),
                host_routes=tuple(
                    (r["destination"], r["nexthop"]) for r in body.get("host_routes") or ()
                ),
            ),
        )

    @property
    def serves_dhcp(self) -> bool:
        """Whether its ports' DHCPv4 is answered by tenantnet."""
        return self.ip_version == 4 and self.dhcp.enable_dhcp


@dataclass(frozen=True)
class SecurityGroupRec:
    """A security group as its flows need it: whether it tracks connections.  Its rules are
    mirrored from their own events (`SgRuleRec`), which carry the rules' keys."""

    id: str
    stateful: bool = True

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> SecurityGroupRec:
        return cls(id=body["id"], stateful=bool(body.get("stateful", True)))


@dataclass(frozen=True)
class SgRuleRec:
    """A security-group rule, typed (`flows.security_groups.SgRule` with the group it is in)."""

    id: str
    group_id: str
    rule: SgRule

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> SgRuleRec:
        def port(name: str) -> int | None:
            value = body.get(name)
            return None if value is None else int(value)

        return cls(
            id=body["id"],
            group_id=body["security_group_id"],
            rule=SgRule(
                key=int(body["_key"]),
                direction=body["direction"],
                ethertype=body.get("ethertype") or "IPv4",
                protocol=rule_values.protocol_number(body.get("protocol")),
                port_range_min=port("port_range_min"),
                port_range_max=port("port_range_max"),
                remote_ip_prefix=body.get("remote_ip_prefix") or None,
                remote_group_id=body.get("remote_group_id") or None,
            ),
        )


@dataclass(frozen=True)
class RouterRec:
    """A router as its flows need it (`flows.routing`); its interfaces are ports
    (`PortRec.router_id`), indexed by `Mirror.router_ifaces`."""

    id: str
    project_id: str = ""
    admin_up: bool = True
    routes: tuple[tuple[str, str], ...] = ()  # (destination CIDR, nexthop)

    @classmethod
    def from_store(cls, body: Mapping[str, Any]) -> RouterRec:
        return cls(
            id=body["id"],
            project_id=str(body.get("project_id") or body.get("tenant_id") or ""),
            admin_up=bool(body.get("admin_state_up", True)),
            routes=tuple(
                sorted((str(r["destination"]), str(r["nexthop"])) for r in body.get("routes") or ())
            ),
        )


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
        self.subnets: dict[str, SubnetRec] = {}  # by id
        self.net_subnets: dict[str, frozenset[str]] = {}  # network id -> its subnet ids
        # The operator's --dhcp-server-mac: what the ARP responder answers for each DHCP
        # server address with (set once before the data plane starts).
        self.dhcp_server_mac = DEFAULT_SERVER_MAC
        self.sgroups: dict[str, SecurityGroupRec] = {}  # by id
        self.sg_rules: dict[str, SgRuleRec] = {}  # by rule id
        self.group_rules: dict[str, set[str]] = {}  # group id -> its rule ids
        self.group_ports: dict[str, set[str]] = {}  # group id -> ids of ports in it (members)
        self.rule_keys: dict[int, str] = {}  # rule key -> rule id (its flows' owner, `sg`)
        self.routers: dict[str, RouterRec] = {}  # by id
        self.router_ifaces: dict[str, set[str]] = {}  # router id -> its interface port ids
        self.net_ifaces: dict[str, set[str]] = {}  # network id -> router interface port ids
        # network id -> its L3 domain (`domain_of`), dropped whenever a router interface port
        # changes (nothing else moves a domain): an interface add scopes each member it
        # re-scopes on every host that matches it, each asking for its network's domain
        self._domains: dict[str, int] = {}
        # port id -> the records `dhcp_facts` last answered it from, and that answer
        self._dhcp_facts: dict[str, tuple[Any, ...]] = {}

    def set_port(self, port_id: str, rec: PortRec | None) -> PortRec | None:
        """Store the port's new version (None: deleted); returns the previous one."""
        old = self.ports.pop(port_id, None)
        if (old is not None and old.router_id is not None) or (
            rec is not None and rec.router_id is not None
        ):
            self._domains = {}
        if old is not None:
            _discard(self.net_ports, old.network_id, port_id)
            for gid in old.groups:
                _discard(self.group_ports, gid, port_id)
            if old.host is not None:
                _discard(self.host_ports, old.host, port_id)
            self.num_to_port.pop(old.num, None)
            if old.router_id is not None:
                _discard(self.router_ifaces, old.router_id, port_id)
                _discard(self.net_ifaces, old.network_id, port_id)
        if rec is not None:
            self.ports[port_id] = rec
            self.net_ports.setdefault(rec.network_id, set()).add(port_id)
            for gid in rec.groups:
                self.group_ports.setdefault(gid, set()).add(port_id)
            if rec.host is not None:
                self.host_ports.setdefault(rec.host, set()).add(port_id)
            self.num_to_port[rec.num] = port_id
            if rec.router_id is not None:
                self.router_ifaces.setdefault(rec.router_id, set()).add(port_id)
                self.net_ifaces.setdefault(rec.network_id, set()).add(port_id)
        return old

    def set_network(self, network_id: str, rec: NetworkRec | None) -> None:
        """Store the network's new version (None: deleted)."""
        old = self.networks.pop(network_id, None)
        if old is not None:
            self.by_key.pop(old.key, None)
        if rec is not None:
            self.networks[network_id] = rec
            self.by_key[rec.key] = rec

    def set_subnet(self, subnet_id: str, rec: SubnetRec | None) -> None:
        """Store the subnet's new version (None: deleted)."""
        # The index's sets are replaced, never changed in place: the packet-in thread reads them
        # (and `dhcp_facts` takes a set that is the same object for unchanged subnets).
        old = self.subnets.pop(subnet_id, None)
        if old is not None:
            rest = self.net_subnets.get(old.network_id, frozenset()) - {subnet_id}
            if rest:
                self.net_subnets[old.network_id] = rest
            else:  # the network's last: no empty entry left behind for good (see `_discard`)
                self.net_subnets.pop(old.network_id, None)
        if rec is not None:
            self.subnets[subnet_id] = rec
            self.net_subnets[rec.network_id] = self.net_subnets.get(rec.network_id, frozenset()) | {
                subnet_id
            }

    def set_record(self, kind: str, obj_id: str, rec: Any) -> None:
        """Mirror a record of a kind planning reads beyond networks, ports and hosts (those
        have their own paths in the actor): subnets, security groups and their rules.  Other kinds
        are not mirrored."""
        if kind == "subnet":
            self.set_subnet(obj_id, rec)
        elif kind == "security_group":
            if rec is None:
                self.sgroups.pop(obj_id, None)
            else:
                self.sgroups[obj_id] = rec
        elif kind == "router":
            if rec is None:
                self.routers.pop(obj_id, None)
            else:
                self.routers[obj_id] = rec
        elif kind == "security_group_rule":
            old = self.sg_rules.pop(obj_id, None)
            if old is not None:
                _discard(self.group_rules, old.group_id, obj_id)
                self.rule_keys.pop(old.rule.key, None)
            if rec is not None:
                self.sg_rules[obj_id] = rec
                self.group_rules.setdefault(rec.group_id, set()).add(obj_id)
                self.rule_keys[rec.rule.key] = obj_id

    def rules_of(self, group_id: str) -> list[SgRuleRec]:
        """A group's rules, by key (creation order)."""
        rules = (self.sg_rules[r] for r in self.group_rules.get(group_id, ()))
        return sorted(rules, key=lambda r: r.rule.key)

    def dhcp_served(self, port: PortRec) -> bool:
        """Whether the port has an IPv4 address in a subnet whose DHCP tenantnet answers."""
        for subnet_id, _ip in port.subnet_ips:
            subnet = self.subnets.get(subnet_id)
            if subnet is not None and subnet.serves_dhcp:
                return True
        return False

    def dhcp_server_answers(self, network_id: str) -> tuple[tuple[str, str], ...]:
        """(server address, server MAC) of each subnet of the network whose DHCP tenantnet
        answers: the addresses the network's ARP answers cover (`flows.compiler.network_slice`)."""
        subnets = (self.subnets.get(s) for s in self.net_subnets.get(network_id, ()))
        served = {server_address(s.dhcp) for s in subnets if s is not None and s.serves_dhcp}
        return tuple((ip, self.dhcp_server_mac) for ip in sorted(served))

    def dhcp_facts(self, port: PortRec) -> tuple[DhcpPort, DhcpNetwork] | None:
        """What the DHCP responder answers this port from, or None if its network is gone.
        Called from the packet-in thread: it reads records (immutable) by key only.  The
        answer is remembered per port with the records it came from, and given again while
        they are the same objects (a renewing VM asks with unchanged records every time)."""
        net = self.networks.get(port.network_id)
        if net is None:
            return None
        ids = self.net_subnets.get(net.id, ())
        last = self._dhcp_facts.get(port.id)
        # The same records: the same facts, the same objects (so the responder finds its plan
        # for them without hashing new ones).  Every change replaces a record, and a change
        # of any of the network's subnets also its set of ids (`set_subnet`).
        if last is not None and last[0] is port and last[1] is net and last[2] is ids:
            facts: tuple[DhcpPort, DhcpNetwork] = last[3]
            return facts
        subnets = (self.subnets.get(s) for s in sorted(ids))
        facts = (
            DhcpPort(port.mac, port.subnet_ips, port.admin_up, port.dhcp_opts),
            DhcpNetwork(net.mtu, tuple(s.dhcp for s in subnets if s is not None)),
        )
        if len(self._dhcp_facts) >= DHCP_FACTS_KEPT:
            self._dhcp_facts.clear()
        self._dhcp_facts[port.id] = (port, net, ids, facts)
        return facts

    def routers_of(self, network_id: str) -> set[str]:
        """The routers with an interface in the network."""
        ifaces = (self.ports.get(pid) for pid in self.net_ifaces.get(network_id, ()))
        return {p.router_id for p in ifaces if p is not None and p.router_id is not None}

    def routed_networks(self, network_id: str) -> set[str]:
        """The other networks with an interface on a router that has one in this network: where
        packets from this network's ports arrive routed (under those networks' keys).  Routers
        are per project, so these are the project's own networks.  O(the routers' interfaces)."""
        nets = {
            p.network_id
            for r in self.routers_of(network_id)
            for p in (self.ports.get(pid) for pid in self.router_ifaces.get(r, ()))
            if p is not None
        }
        nets.discard(network_id)
        return nets

    def routed_component(self, network_id: str) -> tuple[set[str], set[str]]:
        """(networks, routers) joined to this network by routers, itself included (no
        router: just itself).  O(the component's interfaces)."""
        nets, todo = {network_id}, [network_id]
        routers: set[str] = set()
        while todo:
            for r in self.routers_of(todo.pop()) - routers:
                routers.add(r)
                for p in (self.ports.get(pid) for pid in self.router_ifaces.get(r, ())):
                    if p is not None and p.network_id not in nets:
                        nets.add(p.network_id)
                        todo.append(p.network_id)
        return nets, routers

    def domain_of(self, network_id: str) -> int:
        """The network's L3 domain (`flows.security_groups.FilteredPort.domain`): 0 if it is on
        no router, else the smallest number of a router interface among the networks routers
        join to it.  Port numbers are never reused and a new interface gets a larger one, so
        the domain stays when a network joins (only the joining network is re-scoped); two
        routers' domains differ unless a network joins them.  O(the component's interfaces)
        the first time after an interface changed, then a lookup (kept for every network of
        the component at once)."""
        known = self._domains.get(network_id)
        if known is not None:
            return known
        if not self.net_ifaces.get(network_id):
            return 0
        nets, routers = self.routed_component(network_id)
        nums = (p.num for r in routers
                for p in (self.ports.get(pid) for pid in self.router_ifaces.get(r, ()))
                if p is not None)  # fmt: skip
        domain = min(nums, default=0)
        for net in nets:  # one component, one domain
            self._domains[net] = domain
        return domain

    def key_of(self, network_id: str) -> int | None:
        net = self.networks.get(network_id)
        return net.key if net is not None else None

    def port_by_num(self, num: int) -> PortRec | None:
        pid = self.num_to_port.get(num)
        return self.ports.get(pid) if pid is not None else None

    def gone_nums(self, nums: Iterable[int]) -> set[int]:
        """Those of ``nums`` whose port is gone (`port_by_num` None), in one pass."""
        num_to_port, ports = self.num_to_port, self.ports
        return {n for n in nums if num_to_port.get(n) not in ports}

    def recorded_on(self, host_id: str) -> set[str]:
        """Ports whose binding:host_id names the host (requested or written back)."""
        return set(self.host_ports.get(host_id, ()))


def _discard(index: dict[str, set[str]], key: str, item: str) -> None:
    """Take ``item`` out of ``index[key]``, and the key with its last item.

    Why: these indexes are keyed by ids of networks, groups, hosts and routers, which are
    never reused; an empty set kept for each one deleted grew the mirror by one entry per
    index and deleted object for the life of the process (readers use ``.get(key, ())``)."""
    items = index.get(key)
    if items is not None:
        items.discard(item)
        if not items:
            del index[key]


RECORDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "network": NetworkRec.from_store,
    "port": PortRec.from_store,
    "host": HostRec.from_store,
    "subnet": SubnetRec.from_store,
    "security_group": SecurityGroupRec.from_store,
    "security_group_rule": SgRuleRec.from_store,
    "router": RouterRec.from_store,
}
"""Store kinds the data plane reads as typed records; a service that reads a new kind adds its
record type here (and `Mirror.set_record` an index, if planning looks it up).  Events of
other kinds reach the planner with the store's bodies, and no
service reads them."""

MIRRORED = ("subnet", "security_group", "security_group_rule", "router")
"""Kinds beyond networks, ports and hosts that `Mirror.set_record` keeps (loaded at start)."""
