"""The merged conjunctive flows of a host's firewall, kept contribution by contribution.

Two rules (or two remote groups' address sets) that need a flow with the same (table, match)
share one flow carrying all their ``conjunction`` actions (OVS wants one flow per match and
priority).  Compiling that merge for a whole host at once costs O(rules + members) on every
change; :class:`ClauseIndex` keeps it instead as a refcounted map

    (table, match) -> {(owner cookie, conjunction action): count}

patched one contribution at a time, so a member joining a remote group or one rule coming or
going costs its own contributions, whatever else the host holds.  Each merged flow has one
owner (its cookie): the smallest owner cookie among its contributors.  That is a function of
the contributions alone, so the whole-host compile (:func:`flows.security_groups.shared_rules`,
which fills a fresh index) and the incremental path (the sg service's per-host index) give the
same flows with the same cookies by construction, and a restart recompiles the same cookies.

When a flow's owner changes (its smallest contributor left), the old owner's diff deletes it
strictly with the old cookie and the new owner's diff re-adds it: adds are sent first and
replace the flow in place, and the strict delete then matches nothing (`flows.diff.FlowDiff`).

Single-owner flows that are no merge (a rule's ``conj_id`` flow) are kept here too
(:meth:`ClauseIndex.add_fixed`), so that an owner's whole slice comes from one place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flows import tables as t
from flows.model import Apply, Conjunction, Match, Rule, Slice

Key = tuple[int, Match]
"""A merged flow: (table, match); its priority is always ``PRIO_SG_CONJ``."""


class ClauseIndex:
    """See the module docstring.  ``touched``: the owners whose slice may have changed since it
    was last cleared (the caller re-plans exactly those)."""

    def __init__(self) -> None:
        self._contrib: dict[Key, Counter[tuple[int, Conjunction]]] = {}
        self._owner: dict[Key, int] = {}
        self._owned: dict[int, set[Key]] = {}
        self._fixed: dict[int, set[Rule]] = {}
        self.touched: set[int] = set()

    # ------------------------------------------------------------------ contributions

    def add(self, owner: int, table: int, m: Match, conj: Conjunction) -> None:
        key = (table, m)
        c = self._contrib.get(key)
        if c is None:
            c = self._contrib[key] = Counter()
        c[(owner, conj)] += 1
        self._settle(key, c)

    def remove(self, owner: int, table: int, m: Match, conj: Conjunction) -> None:
        key = (table, m)
        c = self._contrib[key]  # KeyError: removing what was never added is a bug
        n = c[(owner, conj)] - 1
        if n < 0:
            raise KeyError(f"no contribution {conj} of owner {owner:#x} to {key}")
        if n:
            c[(owner, conj)] = n
        else:
            del c[(owner, conj)]
        if not c:
            del self._contrib[key]
        self._settle(key, c)

    def add_fixed(self, owner: int, rule: Rule) -> None:
        self._fixed.setdefault(owner, set()).add(rule)
        self.touched.add(owner)

    def remove_fixed(self, owner: int, rule: Rule) -> None:
        rules = self._fixed[owner]
        rules.remove(rule)
        if not rules:
            del self._fixed[owner]
        self.touched.add(owner)

    def _settle(self, key: Key, c: Counter[tuple[int, Conjunction]]) -> None:
        """Re-derive the flow's owner after its contributions changed."""
        new = min(o for o, _ in c) if c else None
        old = self._owner.get(key)
        if old != new:
            if old is not None:
                owned = self._owned[old]
                owned.discard(key)
                if not owned:
                    del self._owned[old]
                self.touched.add(old)
            if new is None:
                del self._owner[key]
            else:
                self._owner[key] = new
                self._owned.setdefault(new, set()).add(key)
        if new is not None:
            self.touched.add(new)

    # ------------------------------------------------------------------ flows

    def _rule(self, key: Key, owner: int) -> Rule:
        table, m = key
        acts = tuple(sorted({conj for _, conj in self._contrib[key]}))
        return Rule(table, t.PRIO_SG_CONJ, m, (Apply(acts),), owner)

    def slice_of(self, owner: int) -> Slice:
        """The flows owned by ``owner`` now (empty: none)."""
        rules = {self._rule(key, owner) for key in self._owned.get(owner, ())}
        rules.update(self._fixed.get(owner, ()))
        return Slice(rules=frozenset(rules))

    def owners(self) -> set[int]:
        """Every owner that owns a flow."""
        return set(self._owned) | set(self._fixed)

    def rules(self) -> Iterable[Rule]:
        """Every flow (the whole-host compile's output)."""
        for key, owner in self._owner.items():
            yield self._rule(key, owner)
        for fixed in self._fixed.values():
            yield from fixed
