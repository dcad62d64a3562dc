"""The planner: dirty units and the data plane's state in, per-host flow diffs out.

Pure in the sense that matters for testing (Faucet's ``Valve`` returning messages): no threads,
no I/O, never the store.  It reads the state it is given (`Inputs`: the mirror of the store, who
holds each port, what each host's OVSDB shows and what its switch holds), never writes it, and
returns a `Plan`: for each host the `FlowDiff`s to send and the owner slices they lead to, the
port statuses that follow once the hosts confirm, and the units that failed.  The actor
(`controller.dataplane.reconciler`) records the slices, sends, waits for barriers and writes
back.  The planner's only memory is each service's cache of what it last compiled.

**Services.**  Flows are produced by *services* (`controller.dataplane.services`): each is a
compiler module plus a declaration of the inputs it reads (`Service.inputs`: store kinds such
as ``port`` or ``network``, and observations such as ``binding`` or ``switch``).  Every input
reaches the planner as a `Change`; `Planner.changed` hands it to the services that read its
kind, which name the *units* (their owners, or a group of them) that must be planned again.
A change of a kind nobody reads is ignored.  Adding a service is adding a module and listing it
in `controller.dataplane.services.SERVICES`: the actor does not change.

**Pipelining.**  A service says which pieces of its work plan one host only
(`Service.host_of`).  `Planner.plan` runs the other pieces first, then one host's pieces (of
every service) after the other, hosts that ports wait for first, and hands each host over
(``release``) as soon as nothing left can plan for it: the actor sends that host its bundle
while the next hosts are planned, so the first switch works on its bundle instead of waiting
for the whole step's plan.  Each host still gets all of the step's diffs for it in one bundle.
Reordering is safe because services own disjoint owners and no owner is planned twice in a
step; a piece declared for one host that plans another (`Step.want`, `Step.flush_zone`) or
decides a port's status (`Step.decide`) raises, so it fails like any unit instead of slipping
into a bundle already sent or a batch already settling.  ``release`` must not raise: the actor
handles a host it could not send on its own (the later hosts are still planned and released).

**Failures.**  A unit whose planning raises contributes nothing (its staged diffs and slices are
dropped, the service forgets what it cached about it) and is returned in `Plan.failed`; the
actor marks it dirty again and retries it with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.dataplane.bindings import Bindings
from controller.dataplane.state import HostRec, Mirror, PortRec
from controller.dataplane.views import host_context, local_port_of
from controller.southbound.ovsdb_host import HostObservation
from flows.diff import FlowDiff, diff
from flows.model import HostContext, LocalPort, Slice
from flows.tables import owner_kind

EMPTY = Slice()


@dataclass(frozen=True)
class Unit:
    """What a service plans at once: its name and a scope it defines (a host, a network...)."""

    service: str
    scope: tuple[Hashable, ...]


@dataclass(frozen=True)
class Change:
    """One input: ``kind`` (a store kind or an observation), the object's id, and its old and
    new value (typed records for the kinds `controller.dataplane.state` knows)."""

    kind: str
    id: str
    old: Any = None
    new: Any = None


class HostFacts(Protocol):
    """What the planner reads about a host (`reconciler.HostRuntime` has it)."""

    rec: HostRec
    obs: HostObservation | None
    degraded: str
    installed: dict[int, Slice] | None
    groups: dict[Hashable, set[int]]

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True)
class Inputs:
    """The state a plan is made from (read-only by convention: services never write it)."""

    mirror: Mirror
    bindings: Bindings
    hosts: Mapping[str, HostFacts]
    # the index group of an installed owner, None if unclaimed (`Planner.group_of`)
    group_of: Callable[[int], Hashable | None]

    def context(self, host_id: str) -> HostContext:
        rt = self.hosts[host_id]
        assert rt.obs is not None
        return host_context(rt.rec.tunnel_ip, rt.obs.tunnel_ofports)

    def local_port(self, port: PortRec, host_id: str) -> LocalPort | None:
        """The port as its host compiles it; None while the host shows no ofport for it."""
        rt = self.hosts.get(host_id)
        ofport = rt.obs.bindings.get(port.id) if rt is not None and rt.obs else None
        if ofport is None:
            return None
        return local_port_of(port, ofport, self.mirror.dhcp_served(port))


@dataclass(frozen=True)
class PortDecision:
    """A port's status once the hosts it depends on confirm (see `controller.dataplane.batch`):
    ACTIVE on ``host`` waiting for ``peers`` too, or DOWN (``host`` None: bound nowhere)."""

    port_id: str
    host: str | None
    active: bool
    peers: frozenset[str] = frozenset()


@dataclass
class Plan:
    """A planning step's result; nothing of it has happened yet."""

    diffs: dict[str, list[FlowDiff]] = field(default_factory=dict)
    # (host, owner cookie, index group, slice after): what each switch holds once it applied
    writes: list[tuple[str, int, Hashable, Slice]] = field(default_factory=list)
    decisions: list[PortDecision] = field(default_factory=list)
    failed: list[tuple[Unit, BaseException]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # host -> conntrack zones to flush once its diff is applied (a filtered port left it)
    ct_flushes: dict[str, list[int]] = field(default_factory=dict)
    # host -> conntrack zones to flush before its diff: a filtered port's flows are installed
    # on a zone its switch held none of them on (`Step.flush_zone`)
    ct_flushes_first: dict[str, list[int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return (
            not self.diffs
            and not self.decisions
            and not self.failed
            and not self.ct_flushes
            and not self.ct_flushes_first
        )


class Step:
    """Where one unit stages its output; merged into the plan only if the unit succeeds."""

    def __init__(self, inputs: Inputs, host: str | None = None) -> None:
        self.inputs = inputs
        self.host = host  # the only host this piece may plan (`Service.host_of`), None: any
        self.diffs: dict[str, list[FlowDiff]] = {}
        self.writes: list[tuple[str, int, Hashable, Slice]] = []
        self.decisions: list[PortDecision] = []
        self.counts: dict[str, int] = {}
        self.ct_flushes: dict[str, list[int]] = {}
        self.ct_flushes_first: dict[str, list[int]] = {}

    def want(self, host_id: str, owner: int, group: Hashable, desired: Slice) -> None:
        """Owner ``owner`` should hold ``desired`` on the host (EMPTY: nothing).  ``group``
        indexes the owner on the host (`HostFacts.groups`) so that its service finds it again,
        also once it is no longer desired (a network's owners: the network and its ports)."""
        self._check_host(host_id)
        rt = self.inputs.hosts[host_id]
        assert rt.installed is not None
        installed = rt.installed.get(owner, EMPTY)
        if desired == installed:
            return
        self.writes.append((host_id, owner, group, desired))
        self.diffs.setdefault(host_id, []).append(diff(desired, installed))

    def flush_zone(self, host_id: str, zone: int, first: bool = False) -> None:
        """Clear conntrack zone ``zone`` on the host (NXT_CT_FLUSH_ZONE) after this step's diff:
        the connections of a filtered port that left it; with ``first``, before the diff: the
        zone's old connections, before the flows of a port that now filters in it meet them."""
        self._check_host(host_id)
        (self.ct_flushes_first if first else self.ct_flushes).setdefault(host_id, []).append(zone)

    def decide(self, decision: PortDecision) -> None:
        """A port's status once the hosts confirm.  Only a piece that may plan several hosts
        decides: the actor puts decisions into the step's batch before its first send (a
        barrier may settle them), and a one-host piece runs after other hosts were sent."""
        if self.host is not None:
            raise ValueError(f"a piece of work for host {self.host} decided {decision.port_id}")
        self.decisions.append(decision)

    def _check_host(self, host_id: str) -> None:
        """A piece declared for one host (`Service.host_of`) touches that host only: another
        host's bundle may have left already (see "Pipelining" in the module docstring)."""
        if self.host is not None and host_id != self.host:
            raise ValueError(f"a piece of work for host {self.host} planned host {host_id}")

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


class Service(Protocol):
    """A compiler module and what it reads; see the module docstring."""

    name: str
    inputs: frozenset[str]
    owner_kinds: frozenset[int]  # the flows.tables.OwnerKind values its cookies have

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        """The units this input makes dirty."""
        ...

    def work(
        self, units: Collection[Unit], inputs: Inputs
    ) -> Iterator[tuple[Unit, Any]]:
        """The dirty units as pieces of work: ``(unit, fn)``, ``fn(step)`` plans one piece."""
        ...

    def host_of(self, unit: Unit) -> str | None:
        """The only host the piece of work ``unit`` (as `work` yields it) plans, None if it may
        plan several (see "Pipelining" in the module docstring)."""
        ...

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        """The index group of one of its installed owners (see `Step.want`), None if no
        current object claims it: it is then removed whole."""
        ...

    def forget(self, unit: Unit) -> None:
        """Planning ``unit`` failed: drop whatever it cached about it."""
        ...


class Planner:
    """Runs the services over the dirty units; see the module docstring."""

    def __init__(self, services: Iterable[Service]) -> None:
        self.services = {s.name: s for s in services}
        self._by_kind: dict[int, Service] = {}
        for service in self.services.values():
            for kind in service.owner_kinds:
                self._by_kind[kind] = service

    def changed(self, change: Change, inputs: Inputs) -> set[Unit]:
        """The units an input makes dirty, over every service that reads its kind."""
        out: set[Unit] = set()
        for service in self.services.values():
            if change.kind in service.inputs:
                out.update(service.changed(change, inputs))
        return out

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        """The index group of an installed owner; None: no current object claims it (a port
        or network deleted while the controller was down, a kind this release does not know,
        the layout before owners), and it is removed whole."""
        service = self._by_kind.get(owner_kind(owner))
        return service.group_of(owner, inputs) if service is not None else None

    def plan(
        self,
        dirty: Collection[Unit],
        inputs: Inputs,
        release: Callable[[str, Plan], None] | None = None,
    ) -> Plan:
        """Plan the dirty units; ``release(host, plan)`` is called once for each host the plan
        has diffs or conntrack flushes for, as soon as no piece left can add to them (see
        "Pipelining" in the module docstring): ``plan`` then holds all of that host's."""
        plan = Plan()
        pieces: list[tuple[Service, Unit, Any, str | None]] = []
        for name, service in self.services.items():
            units = [u for u in dirty if u.service == name]
            if units:
                pieces += [(service, unit, fn, service.host_of(unit))
                           for unit, fn in service.work(units, inputs)]  # fmt: skip
        per_host: dict[str, list[tuple[Service, Unit, Any, str | None]]] = {}
        for piece in pieces:
            if piece[3] is None:
                self._run(piece, inputs, plan)
            else:
                per_host.setdefault(piece[3], []).append(piece)
        waited = awaited(plan.decisions)
        done = plan.diffs.keys() | plan.ct_flushes.keys() | plan.ct_flushes_first.keys()
        order = sorted(done | per_host.keys(), key=lambda h: (h not in waited, h in per_host, h))
        for host_id in order:
            for piece in per_host.get(host_id, ()):
                self._run(piece, inputs, plan)
            if release is not None and (
                host_id in plan.diffs
                or host_id in plan.ct_flushes
                or host_id in plan.ct_flushes_first
            ):
                release(host_id, plan)
        return plan

    @staticmethod
    def _run(piece: tuple[Service, Unit, Any, str | None], inputs: Inputs, plan: Plan) -> None:
        """One piece of work, merged into ``plan`` if it succeeds."""
        service, unit, fn, host = piece
        step = Step(inputs, host)
        try:
            fn(step)
        except Exception as exc:  # the unit is retried by the actor (see module doc)
            service.forget(unit)
            plan.failed.append((unit, exc))
            return
        for host_id, diffs in step.diffs.items():
            plan.diffs.setdefault(host_id, []).extend(diffs)
        plan.writes.extend(step.writes)
        plan.decisions.extend(step.decisions)
        for host_id, zones in step.ct_flushes.items():
            plan.ct_flushes.setdefault(host_id, []).extend(zones)
        for host_id, zones in step.ct_flushes_first.items():
            plan.ct_flushes_first.setdefault(host_id, []).extend(zones)
        for what, n in step.counts.items():
            plan.counts[what] = plan.counts.get(what, 0) + n


def awaited(decisions: Iterable[PortDecision]) -> set[str]:
    """The hosts that ports going ACTIVE wait for: planned and sent first (their barriers come
    back first: a switch on a busy hypervisor answers in milliseconds, and the other hosts'
    sends would come before)."""
    return {h for d in decisions if d.host is not None and d.active for h in (d.host, *d.peers)}


def index_owners(
    installed: Mapping[int, Slice], group_of: Callable[[int], Hashable | None]
) -> dict[Hashable, set[int]]:
    """A switch's owners by index group; owners no object claims are left out."""
    groups: dict[Hashable, set[int]] = {}
    for owner in installed:
        group = group_of(owner)
        if group is not None:
            groups.setdefault(group, set()).add(owner)
    return groups
