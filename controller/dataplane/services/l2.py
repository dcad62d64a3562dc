"""Tenant L2 networks: the owners NETWORK (a network on a host) and PORT (a port everywhere).

Inputs: ``network``, ``subnet`` (enable_dhcp decides its ports' DHCP punt rules) and ``port``
(store), ``host`` (a host deleted), ``binding`` (the holder of
a port changed), ``iface`` (the ofport of a port changed where it is held), ``host_facts`` (a
host's tunnel ports changed or its agent restarted) and ``switch`` (a host was read).

Units: ``(key,)`` recompiles network ``key`` on every host of it (and on hosts that still carry
owners of it), O(ports in the network); ``(key, port id)`` patches one port in.  Two paths:

* **Per port** (the common case: a port created, deleted, updated, plugged or unplugged on a
  host that stays in its network): the port's own owner on its host and on each peer (its
  rules, or one unicast rule per MAC) plus the network owner of its old and new host (the flood
  groups).  The cost does not depend on how many ports the network has: no other port is
  visited, the flood buckets are kept port by port (`compiled.FloodBuckets`).  The one thing
  that grows is the flood group-mod itself: OpenFlow 1.3 sends all of a group's buckets, one
  per local port of the network on that host (a C-level copy of the kept list to build).
* **Per network** (everything else: a host joining or leaving a network, MAC or ofport
  conflicts, several ports of one network in one step (bulk creates), reconnects, tunnel
  changes): `flows.compiler.compile_network_owners` on every host of it, diffed owner by owner.

Both use the same fragments (`flows.compiler`), so they cannot disagree.  `NetCompiled` caches
what the last compile of each network used; `members` which hosts carry each network.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from functools import partial
from typing import Any

from controller.dataplane.compiled import NetCompiled
from controller.dataplane.planner import EMPTY, Change, Inputs, PortDecision, Step, Unit
from controller.dataplane.state import NetworkRec, PortRec, SubnetRec
from controller.dataplane.views import port_macs
from controller.services.dhcp_records import server_address
from flows import security_groups as sg
from flows import tables as t
from flows.compiler import (
    compile_network_owners,
    local_port_rules,
    network_slice_of,
    peer_list,
    remote_port_rules,
    usable,
)
from flows.model import LocalPort, Rule, Slice


def plugged(owners: dict[int, Slice], local_ports: Iterable[LocalPort]) -> dict[int, Slice]:
    """A network's owner slices on a host with its filtered ports' traffic sent through the
    security-group tables (`flows.security_groups.plug`; the SG service compiles those)."""
    filtered = sg.filtered_ofports(local_ports)
    if not filtered:
        return owners
    return {owner: sg.plug(s, filtered) for owner, s in owners.items()}


def group(key: int) -> tuple[str, int]:
    """The index group of every owner of network ``key`` on a host."""
    return ("l2", key)


class L2Service:
    name = "l2"
    inputs = frozenset(
        {"network", "subnet", "port", "host", "binding", "iface", "host_facts", "switch"}
    )
    owner_kinds = frozenset({int(t.OwnerKind.NETWORK), int(t.OwnerKind.PORT)})

    def __init__(self) -> None:
        self.compiled: dict[int, NetCompiled] = {}
        self.members: dict[int, set[str]] = {}  # network key -> hosts compiled with flows of it

    def networks_of(self, host_id: str) -> list[int]:
        """Also read by the status endpoint from other threads: the dict is copied first."""
        return sorted(k for k, hs in list(self.members.items()) if host_id in hs)

    # ------------------------------------------------------------------ inputs -> units

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        mirror = inputs.mirror
        if change.kind == "network":
            old, new = change.old, change.new
            assert isinstance(old, NetworkRec | None) and isinstance(new, NetworkRec | None)
            if new is None and old is not None:
                return [self._net(old.key)]  # desired becomes empty everywhere
            if old is not None and new is not None and old.segment != new.segment:
                return [self._net(new.key)]
            return []
        if change.kind == "subnet":
            # Its ports' DHCP punt rules follow enable_dhcp, the network's ARP answers the
            # server address; the DHCP answers themselves are read at packet time.
            was, now = change.old, change.new
            assert isinstance(was, SubnetRec | None) and isinstance(now, SubnetRec | None)
            served = [
                server_address(s.dhcp) if s is not None and s.serves_dhcp else None
                for s in (was, now)
            ]
            subnet = now or was
            key = mirror.key_of(subnet.network_id) if subnet is not None else None
            return [self._net(key)] if served[0] != served[1] and key is not None else []
        if change.kind == "port":
            old, new = change.old, change.new
            assert isinstance(old, PortRec | None) and isinstance(new, PortRec | None)
            if old is not None and new is not None and not old.flows_differ(new):
                return []  # a status/name/binding change: the holder decides the flows
            units = []
            for rec in (old, new):
                key = mirror.key_of(rec.network_id) if rec is not None else None
                if rec is not None and key is not None:
                    units.append(self._port(key, rec.id))
            return units
        if change.kind in ("binding", "iface"):
            port = mirror.ports.get(change.id)
            key = mirror.key_of(port.network_id) if port is not None else None
            return [self._port(key, change.id)] if key is not None else []
        if change.kind == "host_facts":
            return [self._net(k) for k in self.networks_of(change.id)]
        if change.kind == "host" and change.new is None:
            keys = self.networks_of(change.id)
            for k in keys:
                self.members[k].discard(change.id)
            return [self._net(k) for k in keys]
        if change.kind == "switch":
            return [self._net(k) for k in self._touching(change.id, inputs)]
        return []

    def _touching(self, host_id: str, inputs: Inputs) -> set[int]:
        """Every network a host that was just read may carry or need flows of."""
        rt = inputs.hosts[host_id]
        keys = {g[1] for g in rt.groups if isinstance(g, tuple) and g[0] == "l2"}
        keys.update(self.networks_of(host_id))
        mirror = inputs.mirror
        for pid in {*inputs.bindings.held_by(host_id), *mirror.recorded_on(host_id)}:
            port = mirror.ports.get(pid)
            key = mirror.key_of(port.network_id) if port is not None else None
            if key is not None:
                keys.add(key)
        return keys

    def _net(self, key: int) -> Unit:
        return Unit(self.name, (key,))

    def _port(self, key: int, port_id: str) -> Unit:
        return Unit(self.name, (key, port_id))

    def host_of(self, unit: Unit) -> str | None:
        """None: a network's or a port's piece plans every host of the network."""
        return None

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        kind, num = t.owner_kind(owner), t.owner_num(owner)
        if kind == t.OwnerKind.NETWORK:
            return group(num) if num in inputs.mirror.by_key else None
        port = inputs.mirror.port_by_num(num)
        key = inputs.mirror.key_of(port.network_id) if port is not None else None
        return group(key) if key is not None else None

    def forget(self, unit: Unit) -> None:
        """A failed unit's network is compiled whole next time (its cache may be half-done)."""
        self.compiled.pop(int(unit.scope[0]), None)  # type: ignore[call-overload]

    # ------------------------------------------------------------------ units -> work

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        """One port of a network in this step: patch it in.  Several of one network (a bulk):
        one whole compile is cheaper, and patches of one network in one step must not
        interleave."""
        whole: set[int] = set()
        ports: dict[int, set[str]] = {}
        for unit in units:
            key = int(unit.scope[0])  # type: ignore[call-overload]
            if len(unit.scope) == 1:
                whole.add(key)
            else:
                ports.setdefault(key, set()).add(str(unit.scope[1]))
        for key, pids in sorted(ports.items()):
            if key in whole:
                continue
            if len(pids) == 1:
                pid = next(iter(pids))
                yield self._port(key, pid), partial(self._patch_or_compile, key, pid, inputs)
            else:
                whole.add(key)
        for key in sorted(whole):
            yield self._net(key), partial(self._compile, key, inputs)

    def _patch_or_compile(self, key: int, pid: str, inputs: Inputs, step: Step) -> None:
        if not self._patch(key, pid, inputs, step):
            self._compile(key, inputs, step)

    # ------------------------------------------------------------------ the whole network

    def _compile(self, key: int, inputs: Inputs, step: Step) -> None:
        """The whole network on every host of it (and on hosts that still carry its owners)."""
        step.count("networks_compiled")
        mirror, hosts = inputs.mirror, inputs.hosts
        net = mirror.by_key.get(key)
        located: list[tuple[PortRec, str | None]] = []
        if net is not None:
            for pid in sorted(mirror.net_ports.get(net.id, ())):
                located.append((mirror.ports[pid], inputs.bindings.holder(pid)))
        new_members = {h for _, h in located if h is not None}
        old_members = self.members.get(key, set())
        # Peers a port of a newly joined host waits for (see batch.py); degraded ones not.
        healthy = frozenset(h for h in new_members if h in hosts and not hosts[h].degraded)
        targets = new_members | old_members
        targets |= {h for h, rt in hosts.items() if rt.installed and group(key) in rt.groups}
        nc = NetCompiled(net.segment) if net is not None else None
        if nc is not None and net is not None:
            nc.service_answers = mirror.dhcp_server_answers(net.id)
        for port, host_id in located:
            joined = host_id is not None and host_id not in old_members
            peers = healthy - {host_id} if joined else frozenset()
            self._report(port, host_id, peers, inputs, step)
            if nc is not None and host_id is not None:
                self._track(nc, port, host_id, inputs)
        for host_id in sorted(targets):
            rt = hosts.get(host_id)
            if rt is None or not rt.ready:
                continue
            assert rt.installed is not None
            desired: dict[int, Slice] = {}
            if nc is not None and host_id in new_members:
                view = nc.view(host_id)
                desired = compile_network_owners(inputs.context(host_id), view)
                desired = plugged(desired, view.local_ports)
            for owner in sorted(desired.keys() | rt.groups.get(group(key), set())):
                step.want(host_id, owner, group(key), desired.get(owner, EMPTY))
        if nc is None:
            self.members.pop(key, None)
            self.compiled.pop(key, None)
            return
        self.members[key] = new_members
        self.compiled[key] = nc

    def _report(
        self,
        port: PortRec,
        host_id: str | None,
        peers: frozenset[str],
        inputs: Inputs,
        step: Step,
    ) -> None:
        """A port's status once the hosts it depends on confirmed (batch.py): ACTIVE if plugged
        and up; `peers` are the other hosts it waits for.  A router interface's status is its
        router's (`controller.store.routers.interface_status`), not decided here."""
        if port.router_id is not None:
            return
        rt = inputs.hosts.get(host_id) if host_id else None
        if rt is not None and rt.ready and rt.obs is not None and port.id in rt.obs.bindings:
            active = port.admin_up
            step.decide(PortDecision(port.id, host_id, active, peers if active else frozenset()))
        elif host_id is None:
            step.decide(PortDecision(port.id, None, False))

    @staticmethod
    def _track(nc: NetCompiled, port: PortRec, host_id: str, inputs: Inputs) -> None:
        rt = inputs.hosts.get(host_id)
        tunnel_ip = rt.rec.tunnel_ip if rt is not None else None
        nc.track(port, host_id, inputs.local_port(port, host_id), tunnel_ip)

    # ------------------------------------------------------------------ one port

    def _patch(self, key: int, pid: str, inputs: Inputs, step: Step) -> bool:
        """The per-port path (see the module docstring).  False: compile the network whole."""
        mirror, hosts = inputs.mirror, inputs.hosts
        nc = self.compiled.get(key)
        net = mirror.by_key.get(key)
        if nc is None or net is None:
            return False
        port = mirror.ports.get(pid)
        if port is not None and port.network_id != net.id:
            port = None
        new_host = inputs.bindings.holder(pid) if port else None
        old_host = nc.where.get(pid)
        # The network's hosts must stay the same: a host joining or leaving changes the peers
        # (tunnel ingress, flood buckets) of every host of the network.
        if old_host != new_host and (
            (old_host is not None and nc.hosts[old_host] == 1)
            or (new_host is not None and nc.hosts[new_host] == 0)
        ):
            return False
        if new_host is not None and new_host not in hosts:
            return False
        # No other port may claim one of its MACs (old or new): the network compile resolves
        # such duplicates, fragments alone would not.
        old_macs = nc.macs.get(pid, frozenset())
        new_macs = port_macs(port) if port is not None and new_host is not None else frozenset()
        if any(nc.mac_users[m] > 1 for m in old_macs) or any(
            nc.mac_users[m] - (m in old_macs) > 0 for m in new_macs
        ):
            return False
        old_lp = nc.local.get(old_host, {}).get(pid) if old_host else None
        new_lp = inputs.local_port(port, new_host) if port is not None and new_host else None
        for host_id, lp in ((old_host, old_lp), (new_host, new_lp)):
            if host_id is None or lp is None or not usable(lp):
                continue
            if nc.ofport_taken(host_id, lp, pid):
                return False  # two ports on one ofport: the network compile picks one
        # A host whose last usable port goes (or whose first comes) has an empty slice instead.
        for host_id in {h for h in (old_host, new_host) if h is not None}:
            after = nc.usable[host_id]
            if host_id == old_host and old_lp is not None:
                after -= usable(old_lp)
            if host_id == new_host and new_lp is not None:
                after += usable(new_lp)
            if (nc.usable[host_id] > 0) != (after > 0):
                return False

        num = nc.nums.get(pid) if pid in nc.nums else port.num if port is not None else None
        if num is None:
            return True  # gone, and never compiled: nothing to remove
        owner = t.port_cookie(num)
        nc.untrack(pid)
        if port is not None and new_host is not None:
            self._track(nc, port, new_host, inputs)
        new_rp = nc.remote.get(pid)
        step.count("ports_patched")
        tunnel_ips = {
            h: hosts[h].rec.tunnel_ip for h, n in nc.hosts.items() if n > 0 and h in hosts
        }
        for host_id in sorted(tunnel_ips):
            rt = hosts[host_id]
            if not rt.ready or nc.usable[host_id] == 0:
                continue  # not read yet (compiled whole when it is), or an empty slice
            ctx = inputs.context(host_id)
            # The port's own owner: its rules where it is, its unicast rules elsewhere.
            rules: frozenset[Rule] = frozenset()
            if host_id == new_host:
                if new_lp is not None:
                    rules = sg.plug(Slice(rules=local_port_rules(nc.seg, new_lp)),
                                    sg.filtered_ofports([new_lp])).rules  # fmt: skip
            elif new_rp is not None:
                rules = remote_port_rules(ctx, nc.seg, new_rp)
            step.want(host_id, owner, group(key), Slice(rules=rules))
            if host_id in (old_host, new_host):  # the network on the host: its flood groups
                # from the buckets `nc` keeps (plugged already): the network's other ports are
                # not visited (the network slice's rules do not depend on them)
                peers = peer_list(ctx, nc.seg, [ip for h, ip in tunnel_ips.items() if h != host_id])
                net_slice = network_slice_of(ctx, nc.seg, nc.flood_buckets(host_id), peers,
                                             nc.service_answers)  # fmt: skip
                step.want(host_id, t.network_cookie(key), group(key), net_slice)
        if port is not None:
            self._report(port, new_host, frozenset(), inputs, step)
        return True
