"""Who holds each port: the binding rules, kept apart from I/O so that they are easy to check.

A host *claims* a port while its OVSDB shows an interface on the integration bridge with
``external_ids:iface-id=<port id>`` and an ofport (the convention of Nova, CloudStack's KVM agent
and OVN).  Any host on the management network can write such an interface, so a claim alone
must never move a port (issue 10: one ``ovs-vsctl add-port`` on another host used to steal a
VM's traffic).  The *holder* is the one host that gets the port's flows; every other claim is
refused: no flows on that host (its traffic stops at table 0), logged, counted, and shown on
the port (`controller.store.ports.REFUSED_HOSTS` in ``binding:vif_details``).

1. **Requested host.**  When the orchestrator set ``binding:host_id`` (Nova does; OVN's
   ``requested-chassis``), only that host may hold the port.  Updating it is how a live
   migration moves the port: the new host holds it at once if it has the interface.
2. **First claim holds** (``binding:host_id`` not set by the orchestrator: CloudStack never
   sets it).  The holder keeps the port while it claims it; when its interface goes, the
   earliest remaining claim takes over (claims are ordered by when the controller saw them).
3. **Durable holder.**  The holder is written back to the store as ``binding:host_id`` (the
   port row also records whether that value was the orchestrator's request, so a write-back
   never becomes a request).  After a restart a recorded holder keeps the port while its host
   still claims it, and also while that host's OVSDB has not been read yet (so that flows
   towards a host that is merely slow to reconnect are not withdrawn): which host the
   controller hears from first cannot change who holds a port.
4. **Router interfaces are held by no host.**  A router's interface port is distributed: every
   host with a port of the router's networks routes for it, and no hypervisor ever plugs it.
   A claim on one is always refused: holding it would make the claiming host a member of the
   interface's network (its peers would accept that network's key from it and tunnel the
   gateway's MAC to it), whichever tenant the network belongs to.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Container, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.dataplane.state import PortRec


class Bindings:
    """Claims per port and the resulting holder; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._claims: dict[str, dict[str, int]] = {}  # port id -> host id -> claim order
        self._by_host: dict[str, set[str]] = {}  # host id -> port ids it claims
        self._holders: dict[str, str] = {}
        # host id -> the ports it holds (an ordered set): `held_by` without a scan of every
        # port, which a host's loss, read or deletion did (O(all ports) per host event)
        self._held: dict[str, dict[str, None]] = {}
        self._order = itertools.count()
        # Counted by network, kept with each holder (`_hold`), so that routing finds a host's
        # networks and a network's hosts without a scan of ports: only non-interface ports.
        self._held_net: dict[str, tuple[str, str]] = {}  # port id -> (holder, network id)
        self._host_nets: dict[str, Counter[str]] = {}  # host -> network id -> ports held
        self._net_hosts: dict[str, Counter[str]] = {}  # network id -> host -> ports held

    def holder(self, port_id: str) -> str | None:
        return self._holders.get(port_id)

    def networks_held(self, host_id: str) -> Collection[str]:
        """The networks in which the host holds a port (not a router interface)."""
        return self._host_nets.get(host_id, {}).keys()

    def hosts_holding(self, network_id: str) -> Collection[str]:
        """The hosts holding a port (not a router interface) of the network."""
        return self._net_hosts.get(network_id, {}).keys()

    def held_by(self, host_id: str) -> list[str]:
        return list(self._held.get(host_id, ()))

    def _set_holder(self, port_id: str, holder: str | None) -> None:
        """The one place ``_holders`` changes, so that ``_held`` follows it."""
        old = self._holders.pop(port_id, None) if holder is None else self._holders.get(port_id)
        if old == holder:
            return
        if old is not None:
            ports = self._held[old]
            del ports[port_id]
            if not ports:
                del self._held[old]
        if holder is not None:
            self._holders[port_id] = holder
            self._held.setdefault(holder, {})[port_id] = None

    def claims(self, port_id: str) -> dict[str, int]:
        return dict(self._claims.get(port_id, {}))

    def set_claims(self, host_id: str, port_ids: Iterable[str]) -> set[str]:
        """The ports one host claims now (from an OVSDB observation); returns the ports whose
        claims changed.  A claim that stays keeps its place in the order."""
        new = set(port_ids)
        old = self._by_host.get(host_id, set())
        for pid in old - new:
            self._unclaim(pid, host_id)
        for pid in sorted(new - old):
            self._claims.setdefault(pid, {})[host_id] = next(self._order)
        if new:
            self._by_host[host_id] = new
        else:
            self._by_host.pop(host_id, None)
        return old ^ new

    def drop_host(self, host_id: str) -> set[str]:
        """A host is gone (deleted): its claims and holdings go; returns the ports affected."""
        affected = self._by_host.pop(host_id, set())
        for pid in affected:
            self._unclaim(pid, host_id)
        held = set(self.held_by(host_id))
        for pid in held:
            self._set_holder(pid, None)
            self._hold(pid, None, None)
        return affected | held

    def forget(self, port_id: str) -> None:
        """The port was deleted: no holder (claims stay: the interfaces are still there)."""
        self._set_holder(port_id, None)
        self._hold(port_id, None, None)

    def resolve(self, port: PortRec, unsynced: Container[str], known: Container[str]) -> str | None:
        """Apply the rules to one port, remember and return its holder (None: not bound).

        ``port.host`` (``binding:host_id``) is the request or the recorded holder;
        ``unsynced`` are hosts whose OVSDB was not read since start; ``known`` the registered
        hosts."""
        pid = port.id
        claims = self._claims.get(pid, {})
        requested = port.requested_host
        current = self._holders.get(pid)
        if requested is not None:
            candidates = [requested]
        else:
            candidates = [h for h in (current, port.host) if h is not None]
        holder = None
        if port.router_id is not None:
            candidates = []  # rule 4: never held, every claim refused
        for host in candidates:
            if host in known and (host in claims or host in unsynced):
                holder = host
                break
        else:
            if requested is None and port.router_id is None:
                live = [h for h in claims if h in known]
                holder = min(live, key=lambda h: (claims[h], h)) if live else None
        self._set_holder(pid, holder)
        self._hold(pid, holder, port.network_id if port.router_id is None else None)
        return holder

    def _hold(self, port_id: str, holder: str | None, network_id: str | None) -> None:
        """Keep the counted indexes by network in step with the port's holder."""
        old = self._held_net.pop(port_id, None)
        if old is not None:
            _uncount(self._host_nets, old[0], old[1])
            _uncount(self._net_hosts, old[1], old[0])
        if holder is not None and network_id is not None:
            self._held_net[port_id] = (holder, network_id)
            self._host_nets.setdefault(holder, Counter())[network_id] += 1
            self._net_hosts.setdefault(network_id, Counter())[holder] += 1

    def refused(self, port_id: str, unsynced: Container[str]) -> list[str]:
        """Hosts that claim the port but do not hold it: the conflicts to report.  Nothing is
        reported while the holder is a host not yet read since start (it may have unplugged
        meanwhile, and then a claimer takes over as soon as it is read)."""
        holder = self._holders.get(port_id)
        if holder is not None and holder in unsynced:
            return []
        return sorted(h for h in self._claims.get(port_id, {}) if h != holder)

    def _unclaim(self, port_id: str, host_id: str) -> None:
        claims = self._claims.get(port_id)
        if claims is not None:
            claims.pop(host_id, None)
            if not claims:
                del self._claims[port_id]


def _uncount(index: dict[str, Counter[str]], key: str, item: str) -> None:
    counts = index.get(key)
    if counts is None:
        return
    counts[item] -= 1
    if counts[item] <= 0:
        del counts[item]
    if not counts:
        del index[key]
