"""Drift: how a switch's flows and groups differ from what tenantnet wants there, owner by owner.

Pure (no threads, no I/O): a switch dump and the data plane's state in, a `HostDrift` out.  The
desired state is not the actor's record of what it sent (`HostRuntime.installed`), which would
only say whether the switch kept what it was told: it is compiled afresh by a new `Planner`
with fresh services (no cache), exactly as if the host had just reconnected with this dump.
That is the reconnect's own definition of "what this host should hold", so a drift found here
is exactly what a reconnect (or the audit's repair, which takes the same path) would change,
and a host that a restart would leave alone shows none.

Only tenantnet's cookies are compared; flows with other cookies are listed apart as *foreign*
and never count as drift.  Groups carry no cookie: every group on the bridge is attributed to a
network by its id (`flows.tables.owner_of_group`), as the reconnect does.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.dataplane.planner import (
    EMPTY,
    Change,
    HostFacts,
    Inputs,
    Planner,
    Service,
    Unit,
    index_owners,
)
from controller.dataplane.state import HostRec, Mirror
from controller.southbound.ovsdb_host import HostObservation
from flows import tables as t
from flows.diff import split_by_cookie
from flows.model import GroupEntry, Rule, Slice
from flows.readable import group_text, rule_text

CHANGES = ("missing", "extra", "modified")


@dataclass(frozen=True)
class OwnerDrift:
    """One owner's difference on one switch.  ``modified``: same (table, priority, match) or
    group id, other instructions or buckets, as ``(installed, desired)``."""

    missing_rules: tuple[Rule, ...] = ()
    extra_rules: tuple[Rule, ...] = ()
    modified_rules: tuple[tuple[Rule, Rule], ...] = ()
    missing_groups: tuple[GroupEntry, ...] = ()
    extra_groups: tuple[GroupEntry, ...] = ()
    modified_groups: tuple[tuple[GroupEntry, GroupEntry], ...] = ()

    @property
    def empty(self) -> bool:
        return not any(self.counts().values())

    def counts(self) -> dict[str, int]:
        """Flows and groups together, by change (`CHANGES`)."""
        return {
            "missing": len(self.missing_rules) + len(self.missing_groups),
            "extra": len(self.extra_rules) + len(self.extra_groups),
            "modified": len(self.modified_rules) + len(self.modified_groups),
        }


@dataclass(frozen=True)
class HostDrift:
    """A host's drift: the owners that differ, the foreign flows, and the units that could not
    be compiled (their owners are not compared: what they should hold is not known)."""

    host: str
    owners: Mapping[int, OwnerDrift] = field(default_factory=dict)
    foreign: tuple[Rule, ...] = ()
    unplanned: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.owners

    def by_kind(self) -> dict[str, dict[str, int]]:
        """``{owner kind: {change: count}}`` over the owners that differ (log line, metrics)."""
        out: dict[str, dict[str, int]] = {}
        for owner, d in self.owners.items():
            totals = out.setdefault(kind_name(owner), dict.fromkeys(CHANGES, 0))
            for change, n in d.counts().items():
                totals[change] += n
        return out

    def summary(self) -> str:
        """``port: 1 missing, 1 modified; network: 2 extra`` (kinds with a change only)."""
        parts = []
        for kind, counts in sorted(self.by_kind().items()):
            changes = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
            parts.append(f"{kind}: {changes}")
        return "; ".join(parts) or "none"


def kind_name(owner: int) -> str:
    """``base``, ``network``, ``port``, or ``kind N`` for a kind this release does not know."""
    kind = t.owner_kind(owner)
    if kind in t.OwnerKind._value2member_map_:
        return t.OwnerKind(kind).name.lower()
    return f"kind {kind}"


def compare_owner(desired: Slice, installed: Slice) -> OwnerDrift:
    """What ``installed`` lacks, has too much of, and has otherwise, compared with ``desired``."""
    want = {r.key: r for r in desired.rules}
    have = {r.key: r for r in installed.rules}
    gwant = {g.group_id: g for g in desired.groups}
    ghave = {g.group_id: g for g in installed.groups}
    return OwnerDrift(
        missing_rules=tuple(sorted((want[k] for k in want.keys() - have.keys()), key=_order)),
        extra_rules=tuple(sorted((have[k] for k in have.keys() - want.keys()), key=_order)),
        modified_rules=tuple(
            sorted(
                ((have[k], want[k]) for k in want.keys() & have.keys() if have[k] != want[k]),
                key=lambda pair: _order(pair[1]),
            )
        ),
        missing_groups=tuple(gwant[g] for g in sorted(gwant.keys() - ghave.keys())),
        extra_groups=tuple(ghave[g] for g in sorted(ghave.keys() - gwant.keys())),
        modified_groups=tuple(
            (ghave[g], gwant[g])
            for g in sorted(gwant.keys() & ghave.keys())
            if ghave[g].buckets != gwant[g].buckets
        ),
    )


def _order(rule: Rule) -> tuple[Any, ...]:
    return (rule.table, -rule.priority, repr(rule.match), rule.cookie)


@dataclass
class _HostView:
    """A host as the audit's planner sees it (`planner.HostFacts`): the audited host with the
    dump as what its switch holds; every other host read-only and not ready, so that the
    planner compiles the networks they share but wants nothing on them."""

    rec: HostRec
    obs: HostObservation | None
    degraded: str
    installed: dict[int, Slice] | None
    groups: dict[Hashable, set[int]]
    is_ready: bool

    @property
    def ready(self) -> bool:
        return self.is_ready


def compare_host(
    host_id: str,
    dump: Slice,
    mirror: Mirror,
    bindings: Any,
    hosts: Mapping[str, HostFacts],
    services: Iterable[Service],
) -> HostDrift:
    """The drift of ``host_id`` whose switch reported ``dump`` (every flow, any cookie, and
    every group).  ``services``: fresh instances (`controller.dataplane.services.services`)."""
    ours = split_by_cookie(dump)
    planner = Planner(services)
    views: dict[str, HostFacts] = {
        h: _HostView(rt.rec, rt.obs, rt.degraded, rt.installed, rt.groups, False)
        for h, rt in hosts.items()
    }
    group_of: Callable[[int], Hashable | None] = lambda o: planner.group_of(o, inputs)  # noqa: E731
    inputs = Inputs(mirror, bindings, views, group_of)
    me = hosts[host_id]
    views[host_id] = _HostView(
        me.rec, me.obs, me.degraded, dict(ours), index_owners(ours, group_of), True
    )
    plan = planner.plan(planner.changed(Change("switch", host_id), inputs), inputs)
    owners: dict[int, OwnerDrift] = {}
    for h, owner, _group, desired in plan.writes:
        if h != host_id:
            continue
        found = compare_owner(desired, ours.get(owner, EMPTY))
        if not found.empty:
            owners[owner] = found
    return HostDrift(
        host=host_id,
        owners=dict(sorted(owners.items())),
        foreign=foreign_rules(dump),
        unplanned=tuple(sorted(_describe(u) for u, _ in plan.failed)),
    )


def foreign_rules(dump: Slice) -> tuple[Rule, ...]:
    """The flows of a dump whose cookie lacks tenantnet's marker, in table order."""
    return tuple(sorted((r for r in dump.rules if not t.is_ours(r.cookie)), key=_order))


def _describe(unit: Unit) -> str:
    return f"{unit.service} {'/'.join(map(str, unit.scope))}"


def owner_document(owner: int, found: OwnerDrift, mirror: Mirror) -> dict[str, Any]:
    """One owner's drift in an operator's terms: which port or network it is, and each flow and
    group as ovs-ofctl would roughly spell it (`flows.readable`)."""
    kind, num = kind_name(owner), t.owner_num(owner)
    doc: dict[str, Any] = {"owner": t.describe_owner(owner), "kind": kind, "cookie": f"{owner:#x}"}
    if kind == "port":
        port = mirror.port_by_num(num)
        if port is not None:
            doc["port_id"] = port.id
            doc["network_id"] = port.network_id
    elif kind == "network":
        net = mirror.by_key.get(num)
        if net is not None:
            doc["network_id"] = net.id
    doc |= {
        "missing_flows": [rule_text(r) for r in found.missing_rules],
        "extra_flows": [rule_text(r) for r in found.extra_rules],
        "modified_flows": [
            {"installed": rule_text(a), "desired": rule_text(b)} for a, b in found.modified_rules
        ],
        "missing_groups": [group_text(g) for g in found.missing_groups],
        "extra_groups": [group_text(g) for g in found.extra_groups],
        "modified_groups": [
            {"installed": group_text(a), "desired": group_text(b)} for a, b in found.modified_groups
        ],
    }
    return doc


def drift_document(found: HostDrift, mirror: Mirror) -> dict[str, Any]:
    """What ``GET /tenantnet/hosts/{id}/drift`` answers (built on the actor's thread: it reads
    the mirror)."""
    totals = dict.fromkeys(CHANGES, 0)
    for d in found.owners.values():
        for change, n in d.counts().items():
            totals[change] += n
    return {
        "host": found.host,
        "in_sync": found.in_sync,
        "counts": {**totals, "foreign": len(found.foreign)},
        "by_kind": found.by_kind(),
        "owners": [owner_document(o, d, mirror) for o, d in found.owners.items()],
        "foreign_flows": [rule_text(r) for r in found.foreign],
        "not_compared": list(found.unplanned),
    }
