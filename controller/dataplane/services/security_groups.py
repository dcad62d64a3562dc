"""Security groups on each port's own host (owner kind SECURITY_GROUP, `flows.security_groups`).

Inputs: ``port`` (groups, addresses, port security), ``binding`` and ``iface`` (where a port is
and on which ofport), ``switch`` (a host was read), ``host`` (one deleted), ``security_group``
(stateful, deleted) and ``security_group_rule`` (store).

One unit per host, ``(host id,)``: the security-group flows of a host are compiled for the host
at once (`flows.security_groups.compile_host`), because flows with the same match from two rules
or two groups' address sets are one flow with several conjunction actions; the result is split
by owner (the host's skeleton, its shared clauses, each filtered port's own flows) and each owner
is diffed on its own, so a change sends only the flows it changes:

* a rule added or removed: the hosts with a port in its group (its conjunction flows there);
* a port joining or leaving a group, or changing its addresses: its own host (its clause-1
  flows) and only the hosts that matched that group as a ``remote_group_id`` at their last
  compile (one address flow per address there);
* anything else about a group: the hosts using it.

Which hosts use which group is what this service remembers of its last compile of each host
(`uses`, `remote_uses`): finding them is O(hosts), never O(ports).  The core's own flows of a
filtered port (port security, delivery, flood buckets) are plugged into these tables by the l2
service (`flows.security_groups.plug`), from the port's record alone, so both always agree on
which ports are filtered: the bound, usable ports with port security on.

Zones are the ports' ofports (`flows.security_groups.zone_of`): nothing is allocated, and a
restart compiles the same flows.  When a filtered port leaves its host (deleted, unplugged,
moved, port security turned off) its zone is flushed there (`Step.flush_zone`): its
connections' entries are gone with it.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from functools import partial
from typing import Any

from controller.dataplane.planner import EMPTY, Change, Inputs, Step, Unit
from controller.dataplane.state import Mirror, PortRec, SgRuleRec
from flows import security_groups as sg
from flows import tables as t
from flows.compiler import OFPP_MAX
from flows.diff import split_by_cookie

GROUP = "sg"
STATIC = t.sg_host_cookie(t.SG_STATIC_NUM)
SHARED = t.sg_host_cookie(t.SG_SHARED_NUM)


def filtered_port(port: PortRec, network_key: int, ofport: int) -> sg.FilteredPort:
    """A port as `flows.security_groups` compiles it (``ofport`` 0: a remote group's member)."""
    return sg.FilteredPort(
        port_id=port.id,
        ofport=ofport,
        mac=port.mac,
        network_key=network_key,
        fixed_ips=port.fixed_ips,
        allowed_pairs=port.pairs,
        groups=port.groups,
    )


def host_ports(host_id: str, inputs: Inputs) -> list[tuple[PortRec, sg.FilteredPort]]:
    """The host's filtered ports: held there, plugged (an ofport), admin up, port security on,
    in a known network; one per ofport (the smallest (ofport, port id), as `flows.compiler`
    picks among duplicates)."""
    rt = inputs.hosts[host_id]
    assert rt.obs is not None
    mirror = inputs.mirror
    found: list[tuple[int, str, PortRec, int]] = []
    for pid, ofport in rt.obs.bindings.items():
        port = mirror.ports.get(pid)
        if port is None or inputs.bindings.holder(pid) != host_id:
            continue
        key = mirror.key_of(port.network_id)
        if key is None or not port.port_security or not port.admin_up:
            continue
        if not 0 < ofport <= OFPP_MAX:
            continue
        found.append((ofport, pid, port, key))
    out: list[tuple[PortRec, sg.FilteredPort]] = []
    seen: set[int] = set()
    for ofport, _pid, port, key in sorted(found, key=lambda f: (f[0], f[1])):
        if ofport not in seen:
            seen.add(ofport)
            out.append((port, filtered_port(port, key, ofport)))
    return out


def host_groups(
    ports: Iterable[sg.FilteredPort], mirror: Mirror
) -> tuple[dict[str, sg.SecurityGroup], set[str]]:
    """The groups the compiler needs for these ports: theirs (with rules) and the groups their
    rules name as ``remote_group_id`` (with the addresses of their members in the networks of
    these ports; other networks' addresses would never match).  Also returns the remote ones."""
    ports = list(ports)
    nets = {p.network_key for p in ports}
    local = {g for p in ports for g in p.groups if g in mirror.sgroups}
    rules = {g: tuple(r.rule for r in mirror.rules_of(g)) for g in local}
    remote = {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id}
    out: dict[str, sg.SecurityGroup] = {}
    for gid in sorted(local | remote):
        members: list[sg.MemberAddress] = []
        if gid in remote:
            for pid in sorted(mirror.group_ports.get(gid, ())):
                port = mirror.ports[pid]
                key = mirror.key_of(port.network_id)
                if key is not None and key in nets and port.port_security:
                    members.extend(sg.member_addresses(filtered_port(port, key, 0)))
        rec = mirror.sgroups.get(gid)
        out[gid] = sg.SecurityGroup(
            id=gid,
            rules=rules.get(gid, ()),
            members=tuple(members),
            stateful=rec.stateful if rec is not None else True,
        )
    return out, remote


def compile_host_owners(host_id: str, inputs: Inputs) -> dict[int, Any]:
    """Every security-group owner's slice on a ready host (`flows.security_groups`)."""
    owners, _, _ = _compile(host_id, inputs)
    return owners


def _compile(
    host_id: str, inputs: Inputs
) -> tuple[dict[int, Any], list[tuple[PortRec, sg.FilteredPort]], set[str]]:
    ports = host_ports(host_id, inputs)
    groups, remote = host_groups((fp for _, fp in ports), inputs.mirror)
    cookies = sg.SgCookies(
        static=STATIC,
        shared=SHARED,
        ports={fp.port_id: t.sg_port_cookie(rec.num) for rec, fp in ports},
    )
    compiled = sg.compile_host((fp for _, fp in ports), groups, cookies)
    return split_by_cookie(compiled), ports, remote


class SecurityGroupService:
    name = "sg"
    inputs = frozenset(
        {"port", "binding", "iface", "switch", "host", "security_group", "security_group_rule"}
    )
    owner_kinds = frozenset({int(t.OwnerKind.SECURITY_GROUP)})

    def __init__(self) -> None:
        self.uses: dict[str, frozenset[str]] = {}  # host -> groups of its filtered ports
        self.remote_uses: dict[str, frozenset[str]] = {}  # host -> groups it matched as remote
        self.zones: dict[str, dict[str, int]] = {}  # host -> filtered port id -> its zone

    # ------------------------------------------------------------------ inputs -> units

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        kind = change.kind
        hosts: set[str] = set()
        if kind == "port":
            old, new = change.old, change.new
            assert isinstance(old, PortRec | None) and isinstance(new, PortRec | None)
            if old is not None and new is not None and not old.filter_differs(new):
                return []
            holder = inputs.bindings.holder(change.id)
            if holder is not None:
                hosts.add(holder)
            # a deleted port has no holder any more: where it was filtered at the last compile
            hosts |= {h for h, zones in self.zones.items() if change.id in zones}
            groups = {g for rec in (old, new) if rec is not None for g in rec.groups}
            hosts |= {h for h, used in self.remote_uses.items() if used & groups}
        elif kind == "binding":
            hosts |= {h for h in (change.old, change.new) if isinstance(h, str)}
        elif kind in ("iface", "switch"):
            hosts.add(str(change.new if kind == "iface" else change.id))
        elif kind == "host":
            if change.new is None:
                self._drop(change.id)
            return []
        elif kind == "security_group":
            gid = change.id
            hosts |= {h for h, used in self.uses.items() if gid in used}
            hosts |= {h for h, used in self.remote_uses.items() if gid in used}
        elif kind == "security_group_rule":
            rec = change.new or change.old
            assert isinstance(rec, SgRuleRec)
            hosts |= {h for h, used in self.uses.items() if rec.group_id in used}
        return [Unit(self.name, (h,)) for h in sorted(hosts) if h in inputs.hosts]

    def _drop(self, host_id: str) -> None:
        self.uses.pop(host_id, None)
        self.remote_uses.pop(host_id, None)
        self.zones.pop(host_id, None)

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        num = t.owner_num(owner)
        if num in (t.SG_STATIC_NUM, t.SG_SHARED_NUM):
            return GROUP
        if num & t.SG_PORT_BIT and inputs.mirror.port_by_num(num & ~t.SG_PORT_BIT) is not None:
            return GROUP
        return None

    def forget(self, unit: Unit) -> None:
        """Nothing cached is half-done: a failed host is simply compiled again."""

    # ------------------------------------------------------------------ units -> work

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        for unit in sorted(units, key=lambda u: str(u.scope[0])):
            yield unit, partial(self._plan, str(unit.scope[0]), inputs)

    def _plan(self, host_id: str, inputs: Inputs, step: Step) -> None:
        rt = inputs.hosts.get(host_id)
        if rt is None:
            self._drop(host_id)
            return
        if not rt.ready:
            return  # compiled when its switch has been read ("switch")
        assert rt.installed is not None
        desired, ports, remote = _compile(host_id, inputs)
        for owner in sorted(desired.keys() | rt.groups.get(GROUP, set())):
            step.want(host_id, owner, GROUP, desired.get(owner, EMPTY))
        zones = {fp.port_id: sg.zone_of(fp.ofport) for _, fp in ports}
        for pid, zone in sorted(self.zones.get(host_id, {}).items()):
            if zones.get(pid) != zone:
                step.flush_zone(host_id, zone)
        self.zones[host_id] = zones
        self.uses[host_id] = frozenset(g for _, fp in ports for g in fp.groups)
        self.remote_uses[host_id] = frozenset(remote)
