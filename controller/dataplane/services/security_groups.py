"""Security groups on each port's own host (owner kind SECURITY_GROUP, `flows.security_groups`).

Inputs: ``port`` (groups, addresses, port security; router interfaces, which join networks
into an L3 domain whose members' addresses are matched once for all of them:
`Mirror.domain_of`), ``binding`` and ``iface`` (where a
port is and on which ofport), ``switch`` (a host was read), ``host`` (one deleted),
``security_group`` (stateful, deleted) and ``security_group_rule`` (store).

Each host's firewall is kept between steps (`sg_host.HostFirewall`) and patched per change, so
that one port or one rule costs its own flows, whatever the number of members of its groups
(issue 14: "a member added or removed changes O(1) flows per affected host"; issue 13: "a port
change still costs O(1) flow-mods and CPU").  Units, all per host:

* ``(host, "port", port id)``: the port's record, holder or ofport changed; planned on its
  holder (its own filter), on the hosts where it was filtered, and on the hosts whose applied
  rules name one of its old or new groups as ``remote_group_id`` (its address clauses there);
* ``(host, "local", port id)`` and ``(host, "net", network id)``: a router interface added or
  removed re-scopes the networks whose L3 domain it changed (usually just its own network):
  each port's own filter on its holder, and on each host whose applied rules name one of the
  network's groups its members' address clauses, moved to the new scope as they are (they
  match the network's key either way; `SecurityGroupService._rescope`), or, for a member with
  allowed address pairs or a network with subnets its domain cannot classify, as a "port"
  unit of the member (its addresses computed again);
* ``(host, "rule", rule id)``: a rule created or deleted, on the hosts using its group;
* ``(host,)``: rebuild the host's firewall from scratch: its switch was (re)read, a group's
  record changed there, or an earlier step failed (the kept firewall is then dropped).

Only the owners a patch touched are diffed (a port's own flows, a routed network's entries, a
rule's, a member's address clauses on the host: `flows.tables.OwnerKind.SECURITY_GROUP`); a
rebuild diffs every owner of the host, so it also removes what no current object owns.  Finding
the hosts is O(hosts).

The core's own flows of a filtered port (port security, delivery, flood buckets) are plugged
into these tables by the l2 service (`flows.security_groups.plug`), from the port's record
alone, so both always agree on which ports are filtered: the bound, usable ports with port
security on.

Zones are the ports' ofports (`flows.security_groups.zone_of`): nothing is allocated, and a
restart compiles the same flows.  Zone flushes (`Step.flush_zone`) are derived from what the
switch holds (`HostRuntime.installed`: read on every (re)connect, take-over and re-read, then
what was sent), never from a memory of events that another instance, a restart or a lost
message would not share:

* **before** the step's diff, the zone of a filtered port whose own flows the switch does not
  hold on that zone yet (a new port, one moved to another ofport, port security turned on, a
  port plugged while no instance owned or read the host): whatever an earlier occupant of the
  ofport left in the zone is gone before the port's flows meet it.  A port whose flows are
  installed on its zone is never flushed: a restart or a take-over that finds the switch as
  it should be is hitless;
* **after** the step's diff, the zone the switch held a port's flows on when those flows go
  (deleted, unplugged, moved, port security turned off; also a port deleted while the
  controller was down), unless another filtered port's flows are live on that zone: its
  connections' entries are gone with it.  A zone that changes hands in the step (flushed
  first for its new port) is flushed after too: until the diff, the old port's flows still
  commit its connections' packets (a retransmitted mid-stream TCP segment is a new
  connection to OVS's conntrack).

A flush that is lost (a raising send, a switch gone) is not kept to be replayed: the next port
to filter in that zone gets it flushed first anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from functools import partial
from typing import Any

from controller.dataplane.planner import EMPTY, Change, Inputs, Step, Unit
from controller.dataplane.services.sg_host import (
    Classified,
    HostFirewall,
    MemberFacts,
    classify_domain,
)
from controller.dataplane.state import Mirror, PortRec, SgRuleRec, SubnetRec
from flows import security_groups as sg
from flows import tables as t
from flows.model import Slice

GROUP = "sg"
STATIC = t.sg_host_cookie(t.SG_STATIC_NUM)
SHARED = t.sg_host_cookie(t.SG_SHARED_NUM)  # the layout before per-rule/member owners (gone)
PORT, RULE, DOMAIN = "port", "rule", "domain"
LOCAL, NET = "local", "net"  # a port's own filter only; a re-scoped network's members


class SecurityGroupService:
    name = "sg"
    inputs = frozenset(
        {"port", "binding", "iface", "switch", "host", "security_group", "security_group_rule"}
        | {"subnet"}  # a routed network's subnets classify its domain's addresses
    )
    owner_kinds = frozenset({int(t.OwnerKind.SECURITY_GROUP)})

    def __init__(self) -> None:
        self.firewalls: dict[str, HostFirewall] = {}  # host -> its firewall as last planned
        # network id -> its L3 domain as last planned (routed networks only): an interface
        # change re-scopes only the networks whose domain it changed.  Kept both here (an
        # interface change) and by the firewalls as they scope ports (`HostFirewall._scoped`),
        # so that a network already routed when the controller started is known too
        self.domains: dict[str, int] = {}
        # members' contributions computed in this step, shared by its hosts' firewalls
        # (`HostFirewall._member_facts`): a fresh one per step, the mirror is fixed within one
        self.memo: dict[tuple[str, str], tuple[SgRuleRec, MemberFacts | None]] = {}
        # routed network id -> its classified subnets (`sg_host.classify_domain`) as last
        # planned: a change that moves them re-scopes the network's members
        self.classified: dict[str, tuple[str, ...]] = {}
        # L3 domain -> its classified subnets, shared by the firewalls and kept until a router
        # interface or a routed network's subnet changes (nothing else moves them): a port
        # change in a routed network does not classify its domain again
        self.scope_memo: dict[int, Classified] = {}

    # ------------------------------------------------------------------ inputs -> units

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        kind = change.kind
        units: set[tuple[Hashable, ...]] = set()
        if kind == "port":
            old, new = change.old, change.new
            assert isinstance(old, PortRec | None) and isinstance(new, PortRec | None)
            routed = self._routed_members(old, new, inputs)
            if old is not None and new is not None and not old.filter_differs(new):
                return self._units(routed, inputs)
            pid = change.id
            groups = {g for rec in (old, new) if rec is not None for g in rec.groups}
            hosts = {h for h, fw in self.firewalls.items()
                     if pid in fw.eligible or pid in fw.member_rules
                     or any(g in fw.remote_rules for g in groups)}  # fmt: skip
            holder = inputs.bindings.holder(pid)
            if holder is not None:
                hosts.add(holder)
            units = {(h, PORT, pid) for h in hosts} | routed
        elif kind == "binding":
            units = {(h, PORT, change.id) for h in (change.old, change.new) if isinstance(h, str)}
        elif kind == "iface":
            units = {(str(change.new), PORT, change.id)}
        elif kind == "switch":
            units = {(change.id,)}
        elif kind == "host":
            if change.new is None:
                self._drop(change.id)
            return []
        elif kind == "security_group":
            if change.old is not None and change.new is not None and change.old == change.new:
                return []
            units = {(h,) for h, fw in self.firewalls.items() if fw.uses(change.id)}
        elif kind == "subnet":
            rec = change.new or change.old
            assert isinstance(rec, SubnetRec)
            if inputs.mirror.domain_of(rec.network_id):
                self.scope_memo.clear()
                nets = inputs.mirror.routed_component(rec.network_id)[0]
                # a subnet that comes or goes holds no port's address (a port gets one later;
                # a subnet with one cannot be deleted, 409 SubnetInUse), so whether it is
                # classified changes no member's flows
                empty = rec.id if change.old is None or change.new is None else None
                units = self._rescope(nets, inputs, empty_subnet=empty)
        elif kind == "security_group_rule":
            rec = change.new or change.old
            assert isinstance(rec, SgRuleRec)
            units = {(h, RULE, change.id) for h, fw in self.firewalls.items()
                     if rec.group_id in fw.group_locals or change.id in fw.applied}  # fmt: skip
        return self._units(units, inputs)

    def _units(self, units: set[tuple[Hashable, ...]], inputs: Inputs) -> list[Unit]:
        return [Unit(self.name, s) for s in sorted(units, key=str) if s[0] in inputs.hosts]

    def _routed_members(
        self, old: PortRec | None, new: PortRec | None, inputs: Inputs
    ) -> set[tuple[Hashable, ...]]:
        """A router interface came, went or moved: the networks whose L3 domain changed
        (`Mirror.domain_of`: the interface's own, or a whole side when the interface joins or
        splits two routers' networks) re-scope their ports' entries, on their holders, and
        their members' address clauses, on the hosts whose applied rules name one of their
        groups.  O(the routers' interfaces + the re-scoped networks' ports): the other networks
        of the router keep their domain and cost nothing."""
        ifaces = [(r.router_id, r.network_id) for r in (old, new)
                  if r is not None and r.router_id is not None]  # fmt: skip
        if not ifaces or (old is not None and new is not None and
                          (old.router_id, old.network_id) == (new.router_id, new.network_id)):
            return set()
        self.scope_memo.clear()
        mirror = inputs.mirror
        # the component(s) now: their union holds every network whose domain may have changed
        nets: set[str] = set()
        for router_id, net in ifaces:
            others = (mirror.ports.get(pid) for pid in mirror.router_ifaces.get(router_id, ()))
            seeds = [net, *(p.network_id for p in others if p is not None)]
            for seed in seeds:
                if seed not in nets:
                    nets |= mirror.routed_component(seed)[0]
        return self._rescope(nets, inputs)

    def _rescope(
        self, nets: set[str], inputs: Inputs, empty_subnet: str | None = None
    ) -> set[tuple[Hashable, ...]]:
        """The networks ``nets`` (whole L3 domains, or networks that left one) may have changed
        domain or classified subnets (`sg_host.classify_domain`): re-plan the scope flows of
        their old and new domains on the hosts that have them, and re-scope the member ports
        of the networks whose domain or classified subnets moved (a network joining a router
        without overlapping another's subnets: just its own).  O(the domains' networks and
        subnets + the re-scoped networks' ports).

        Re-scoped on its ports' holders (their own filters, ``LOCAL``) and, for its members'
        addresses, with one ``NET`` unit per host (`HostFirewall.begin_rescope`: re-tagged,
        not computed again) when its classified subnets hold all of its subnets, but
        ``empty_subnet`` (one no port has an address in), before and after (no address of a
        fixed IP is matched under the domain, `flows.security_groups.MemberAddress.fallback`);
        a member with allowed address pairs, or every member otherwise, is synced whole
        (``PORT``)."""
        mirror = inputs.mirror
        units: set[tuple[Hashable, ...]] = set()
        touched: set[int] = set()
        for net in sorted(nets):
            domain = mirror.domain_of(net)
            key = mirror.key_of(net)
            classified = (classify_domain(mirror, net, self.scope_memo).get(key, ())
                          if key is not None else ())  # fmt: skip
            old = self.domains.get(net, 0)
            touched |= {d for d in (old, domain) if d}
            old_classified = self.classified.get(net, ())
            if old == domain and old_classified == classified:
                continue
            fast = _holds_all(mirror, net, old, old_classified, empty_subnet) and _holds_all(
                mirror, net, domain, classified, empty_subnet
            )
            if domain:
                self.domains[net] = domain
                self.classified[net] = classified
            else:
                self.domains.pop(net, None)
                self.classified.pop(net, None)
            for mpid in mirror.net_ports.get(net, ()):
                port = mirror.ports.get(mpid)
                groups = set(port.groups) if port is not None else set()
                whole = not fast or (port is not None and bool(port.pairs))
                for h, fw in self.firewalls.items():
                    if mpid in fw.member_rules or any(g in fw.remote_rules for g in groups):
                        units.add((h, PORT, mpid) if whole else (h, NET, net))
                    if mpid in fw.eligible:
                        units.add((h, PORT if whole else LOCAL, mpid))
                holder = inputs.bindings.holder(mpid)
                if holder is not None:
                    units.add((holder, PORT if whole else LOCAL, mpid))
        for domain in touched:
            units |= {(h, DOMAIN, domain) for h, fw in self.firewalls.items()
                      if fw.dom_ports.get(domain)}  # fmt: skip
        return units

    def _drop(self, host_id: str) -> None:
        self.firewalls.pop(host_id, None)

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        part, num = t.sg_owner_part(owner)
        mirror = inputs.mirror
        if part == "host":
            # not SHARED: no longer compiled, so unclaimed, and removed by the base service in
            # the step of the switch read that rebuilds the firewall: one diff, adds first
            return GROUP if num == t.SG_STATIC_NUM else None
        if part in ("port", "member"):
            return GROUP if mirror.port_by_num(num) is not None else None
        if part == "network":
            return GROUP if num in mirror.by_key else None
        if part == "domain":
            return GROUP if mirror.port_by_num(num) is not None else None
        return GROUP if num in mirror.rule_keys else None

    def forget(self, unit: Unit) -> None:
        """A step failed half-way through a host's firewall, or the host is not read (its
        switch gone, another instance owns it): drop the firewall (the retried unit is the
        host's rebuild, which finds the zones to flush in what the switch then holds)."""
        self.firewalls.pop(str(unit.scope[0]), None)

    # ------------------------------------------------------------------ units -> work

    def host_of(self, unit: Unit) -> str | None:
        """Each piece is one host's firewall (`work`)."""
        return str(unit.scope[0])

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        self.memo = {}
        by_host: dict[str, list[tuple[Hashable, ...]]] = {}
        for unit in units:
            by_host.setdefault(str(unit.scope[0]), []).append(unit.scope[1:])
        for host_id in sorted(by_host):
            items = by_host[host_id]
            rebuild = () in items or host_id not in self.firewalls
            # one piece per host; if it fails the host is rebuilt (see `forget`)
            yield (
                Unit(self.name, (host_id,)),
                partial(self._plan, host_id, None if rebuild else items, inputs),
            )

    def _plan(
        self, host_id: str, items: list[tuple[Hashable, ...]] | None, inputs: Inputs, step: Step
    ) -> None:
        rt = inputs.hosts.get(host_id)
        if rt is None:
            self._drop(host_id)
            return
        if not rt.ready:
            # planned again whole when its switch has been read ("switch"); until then no
            # patch can be checked against what it holds
            self.forget(Unit(self.name, (host_id,)))
            return
        mirror = inputs.mirror
        if items is None:
            fw = self._rebuild(host_id, inputs, step)
        else:
            fw = self.firewalls[host_id]
            fw.memo, fw.scope_memo = self.memo, self.scope_memo
            had_ports = bool(fw.local)
            fw.touched_domains.update(int(str(i[1])) for i in items if i[0] == DOMAIN)
            rescoped = sorted(str(i[1]) for i in items if i[0] == NET)
            for net in rescoped:
                fw.begin_rescope(net, mirror)
            for rid in sorted(str(i[1]) for i in items if i[0] == RULE):
                fw.sync_rule(rid, mirror)
            members = sorted(str(i[1]) for i in items if i[0] == PORT)
            for pid in sorted({*members, *(str(i[1]) for i in items if i[0] == LOCAL)}):
                fw.sync_local(pid, inputs)
            for net in rescoped:
                fw.end_rescope(net, mirror)
            for pid in members:
                fw.sync_member(pid, mirror)
            for pid in sorted(fw.pending):  # none: `end_rescope` took them all
                fw.sync_member(pid, mirror)
            if bool(fw.local) != had_ports:
                step.want(host_id, STATIC, GROUP, self._static(fw))
            for owner in sorted(fw.index.touched):
                step.want(host_id, owner, GROUP, fw.index.slice_of(owner))
            for pid, owner in sorted(fw.touched_ports.items()):
                step.want(host_id, owner, GROUP, fw.port_slice(pid, mirror))
            for key in sorted(fw.touched_nets):
                step.want(host_id, t.sg_net_cookie(key), GROUP, fw.net_slice(key))
            for domain in sorted(fw.touched_domains):
                step.want(host_id, t.sg_domain_cookie(domain), GROUP,
                          fw.domain_slice(domain, mirror))  # fmt: skip
            _flush_zones(step, fw, {o: _zone(fw, p) for p, o in fw.touched_ports.items()}, rt)
        fw.index.touched.clear()
        fw.touched_ports.clear()
        fw.touched_nets.clear()
        fw.touched_domains.clear()
        self.firewalls[host_id] = fw

    def _rebuild(self, host_id: str, inputs: Inputs, step: Step) -> HostFirewall:
        """The host's firewall from scratch: every owner it holds is diffed (what no current
        object owns is removed), and the zones flushed that what the switch holds calls for
        (`_flush_zones`)."""
        rt = inputs.hosts[host_id]
        assert rt.obs is not None and rt.installed is not None
        self.firewalls.pop(host_id, None)
        fw = HostFirewall(host_id, self.domains, self.classified)
        fw.memo, fw.scope_memo = self.memo, self.scope_memo
        # by (ofport, port id): the port each ofport keeps comes first, nothing is undone
        for pid, _ofport in sorted(rt.obs.bindings.items(), key=lambda b: (b[1], b[0])):
            fw.sync_local(pid, inputs)
        desired = {owner: fw.index.slice_of(owner) for owner in fw.index.owners()}
        for pid, (num, _fp) in fw.local.items():
            desired[t.sg_port_cookie(num)] = fw.port_slice(pid, inputs.mirror)
        for key in fw.net_domains:
            desired[t.sg_net_cookie(key)] = fw.net_slice(key)
        for domain in fw.dom_ports:
            desired[t.sg_domain_cookie(domain)] = fw.domain_slice(domain, inputs.mirror)
        if fw.local:
            desired[STATIC] = self._static(fw)
        # every port owner the switch holds (also one no object claims any more: a port
        # deleted while the controller was down, which the base service removes) and every
        # filtered port now, with the zone its flows will be on
        ports: dict[int, int | None] = {o: None for o in rt.installed if _is_port_owner(o)}
        for num, fp in fw.local.values():
            ports[t.sg_port_cookie(num)] = sg.zone_of(fp.ofport)
        _flush_zones(step, fw, ports, rt)
        for owner in sorted(desired.keys() | rt.groups.get(GROUP, set())):
            step.want(host_id, owner, GROUP, desired.get(owner, EMPTY))
        return fw

    @staticmethod
    def _static(fw: HostFirewall) -> Slice:
        """The host's skeleton: there as long as it has a filtered port."""
        return Slice(rules=sg.static_rules(STATIC)) if fw.local else EMPTY


def _holds_all(
    mirror: Mirror,
    network_id: str,
    domain: int,
    classified: tuple[str, ...],
    empty_subnet: str | None = None,
) -> bool:
    """Whether a network on no router (``domain`` 0), or one whose ``classified`` subnets hold
    every subnet it has (but ``empty_subnet``, where no port has an address), matches none of
    its fixed IPs under the domain."""
    if not domain:
        return True
    have = set(classified)
    return all(
        sg.classified_form(sub.dhcp.cidr) in have
        for sid in mirror.net_subnets.get(network_id, ())
        if sid != empty_subnet and (sub := mirror.subnets.get(sid)) is not None
    )


def _is_port_owner(owner: int) -> bool:
    return t.owner_kind(owner) == t.OwnerKind.SECURITY_GROUP and t.sg_owner_part(owner)[0] == PORT


def _zone(fw: HostFirewall, pid: str) -> int | None:
    """The zone the port's own flows filter in after this step (None: it has none)."""
    local = fw.local.get(pid)
    return sg.zone_of(local[1].ofport) if local is not None else None


def _held_zones(s: Slice | None) -> set[int]:
    """The zones a port's own flows on the switch filter in (`flows.security_groups.port_rules`:
    each of them matches the port's zone register); normally one."""
    if s is None:
        return set()
    return {z for r in s.rules for k, z in r.match if k == sg.REG and isinstance(z, int)}


def _flush_zones(
    step: Step, fw: HostFirewall, ports: dict[int, int | None], rt: Any
) -> None:
    """The zone flushes of these port owners (owner -> the zone its flows will be on, None:
    none), from what the host's switch holds before this step (see the module docstring):
    a zone the switch holds none of the port's flows on is flushed before the diff, a zone it
    held them on after it unless a filtered port's flows are live on it now.

    A zone that changes hands in this step (the switch held another port's flows on it, a
    new occupant's go in) is flushed both before and after: the old occupant's flows filter
    in it until the diff removes them, and a packet of its connections in that window is
    committed again (OVS's conntrack takes a mid-stream TCP segment, a retransmission, as a
    new connection).  The flush after the diff is written right behind the bundle and its
    barrier: the new port's flows have been in for microseconds, too short for a connection
    of its own that the flush could cut."""
    host_id = fw.host_id
    installed = rt.installed or {}
    first: set[int] = set()
    left: set[int] = set()
    for _owner, zone in sorted(ports.items()):
        held = _held_zones(installed.get(_owner))
        if zone is not None and zone not in held:
            first.add(zone)
        left |= held - {zone}
    for zone in sorted(first):
        step.flush_zone(host_id, zone, first=True)
    for gone in sorted(left):
        if gone not in fw.chosen or gone in first:
            step.flush_zone(host_id, gone)
