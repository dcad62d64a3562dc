"""The base pipeline of each host (owner kind BASE), and the removal of owners nobody claims.

Inputs: ``switch`` (a host's switch and OVSDB were read) and ``host_facts`` (its tunnel ports
changed, or its OVSDB agent restarted).  One unit per host.  When it plans a host, every owner
installed there that no current object claims and no service has indexed (a port or network
deleted while the controller was down, the cookies of the layout before owners) is removed.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator
from functools import partial
from typing import Any

from controller.dataplane.planner import EMPTY, Change, Inputs, Step, Unit
from flows import tables as t
from flows.compiler import compile_base

GROUP = "base"


class BaseService:
    name = "base"
    inputs = frozenset({"switch", "host_facts"})
    owner_kinds = frozenset({int(t.OwnerKind.BASE)})

    def changed(self, change: Change, inputs: Inputs) -> Iterable[Unit]:
        return [Unit(self.name, (change.id,))]

    def work(self, units: Collection[Unit], inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
        for unit in sorted(units, key=lambda u: u.scope):
            yield unit, partial(self._plan, str(unit.scope[0]), inputs)

    def _plan(self, host_id: str, inputs: Inputs, step: Step) -> None:
        rt = inputs.hosts.get(host_id)
        if rt is None or not rt.ready:
            return  # planned when it is
        assert rt.installed is not None
        step.want(host_id, t.BASE_COOKIE, GROUP, compile_base(inputs.context(host_id)))
        indexed = set().union(*rt.groups.values())
        for owner in sorted(rt.installed):
            if owner not in indexed and inputs.group_of(owner) is None:
                step.want(host_id, owner, None, EMPTY)

    def host_of(self, unit: Unit) -> str | None:
        return str(unit.scope[0])  # a host's base pipeline

    def group_of(self, owner: int, inputs: Inputs) -> Hashable | None:
        return GROUP if owner == t.BASE_COOKIE else None

    def forget(self, unit: Unit) -> None:
        pass
