"""Desired vs. installed state: the minimal set of OpenFlow messages that turns one into the other.

The compiler produces desired :class:`Slice` values; the southbound dumps a switch's flows and
groups into the same value types.  Reconciliation is then set arithmetic on hashable values
(Faucet computes flow deltas the same way), which makes it idempotent: diffing again after the
messages were applied yields an empty :class:`FlowDiff`, and a controller restart re-learns the
installed state from the switch instead of trusting its memory.

Work is done per owner (:mod:`flows.tables`): :func:`split_by_cookie` cuts one switch dump into
per-owner installed slices, so a change of port P is diffed against P's flows only, and a change
in network N against the slices of N's owners.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from flows import tables as t
from flows.model import GroupEntry, Rule, Slice


@dataclass(frozen=True)
class FlowDiff:
    """What to send to one switch, in the order it should be sent.

    Send in this order: ``add_groups``, ``mod_groups``, ``add_rules``, ``del_rules``,
    ``del_groups`` (see :meth:`messages_in_order`).  Groups exist before the rules that point at
    them and outlive the rules that pointed at them (a switch rejects a flow naming a missing group
    and deletes the flows of a deleted group).

    * ``add_rules``: new rules *and* rules whose key is installed with other instructions or
      another cookie.  Sent as OFPFC_ADD, which replaces a flow with the same (table, priority,
      match) in place, without a window where the packet falls to a lower-priority rule.  Ordered
      last table first, so a path through the pipeline is complete before its entry rule appears.
    * ``del_rules``: installed rules whose key is not desired at all.  Ordered first table first,
      so a path loses its entry before its inner rules.  Each carries the installed cookie; the
      southbound should delete strictly *with that cookie and a full cookie mask*, so a flow that
      another owner's diff has just re-added under its own cookie is not removed.
    * ``mod_groups``: desired groups whose id is installed with other buckets (OFPGC_MODIFY).
    * ``del_groups``: ids of installed groups that are not desired.
    """

    add_groups: tuple[GroupEntry, ...] = ()
    mod_groups: tuple[GroupEntry, ...] = ()
    del_groups: tuple[int, ...] = ()
    add_rules: tuple[Rule, ...] = ()
    del_rules: tuple[Rule, ...] = ()
    # Whether some add replaces an installed flow (same key, other instructions or cookie).
    # Unknown means yes; `diff` computes it.
    replaces_rules: bool = field(default=True, compare=False)

    def __len__(self) -> int:
        """Number of OpenFlow messages (flow-mods + group-mods) this diff implies."""
        return (
            len(self.add_groups)
            + len(self.mod_groups)
            + len(self.del_groups)
            + len(self.add_rules)
            + len(self.del_rules)
        )

    def messages_in_order(self) -> tuple[tuple[str, GroupEntry | Rule | int], ...]:
        """``(kind, item)`` pairs in the order they are safe to send; kind is the field name.

        The southbound turns each pair into one flow-mod or group-mod, so the ordering argument
        above lives here once instead of in every caller.
        """
        out: list[tuple[str, GroupEntry | Rule | int]] = []
        out += [("add_groups", g) for g in self.add_groups]
        out += [("mod_groups", g) for g in self.mod_groups]
        out += [("add_rules", r) for r in self.add_rules]
        out += [("del_rules", r) for r in self.del_rules]
        out += [("del_groups", gid) for gid in self.del_groups]
        return tuple(out)

    @property
    def additive(self) -> bool:
        """Only new flows and new/extended groups: nothing installed is deleted or replaced.

        Such a diff needs no atomic bundle: adds are sent last table first (a path's entry
        appears after the rest of it) and each group change is atomic by itself, so a packet
        sees either the old forwarding or a complete new path.  Deletions and replacements are
        what can leave a path half-changed, and they always go in a bundle.
        """
        return not self.del_rules and not self.del_groups and not self.replaces_rules

    @property
    def empty(self) -> bool:
        """True when the switch already matches the desired state (nothing to send)."""
        return len(self) == 0


def _add_order(rule: Rule) -> tuple[Any, ...]:
    """Last table first, then highest priority first (see :class:`FlowDiff`).

    The rest of the key only makes the order deterministic: the match's repr is a total order
    even where masked and exact values of one field meet (tuples vs ints, which Python refuses
    to compare), and it is several times cheaper than a typed key; a slice never holds two rules
    with one (table, priority, match) and cookie, so instructions need not be compared.
    """
    return (-rule.table, -rule.priority, repr(rule.match), rule.cookie)


def _del_order(rule: Rule) -> tuple[Any, ...]:
    """First table first, then highest priority first (see :class:`FlowDiff`)."""
    return (rule.table, -rule.priority, repr(rule.match), rule.cookie)


def diff(desired: Slice, installed: Slice) -> FlowDiff:
    """Messages that make a switch holding ``installed`` hold ``desired``.

    Both slices should cover the same scope (one owner's slice against that owner's part of a
    dump, or everything against everything); rules outside ``desired``'s scope would be deleted.
    A rule counts as installed only if it is *equal* (instructions and cookie included), so a
    changed rule is re-added; a key installed twice (only possible in a hand-built slice) is not
    deleted as long as it is desired.
    """
    if not installed.rules:  # a new owner (the common case of a change): every rule is added
        add_rules, del_rules, replaces = _ordered(desired.rules, _add_order), [], False
    elif not desired.rules:  # an owner that goes: every rule is deleted
        add_rules, del_rules, replaces = [], _ordered(installed.rules, _del_order), False
    else:
        desired_keys = {rule.key for rule in desired.rules}
        added = desired.rules - installed.rules
        add_rules = _ordered(added, _add_order)
        del_rules = _ordered([r for r in installed.rules if r.key not in desired_keys], _del_order)
        replaces = bool(added) and bool(
            {r.key for r in added} & {r.key for r in installed.rules if r not in desired.rules}
        )

    if desired.groups or installed.groups:
        add_groups, mod_groups, del_groups = _group_changes(desired.groups, installed.groups)
    else:  # most owners have no group: nothing to index
        add_groups, mod_groups, del_groups = [], [], []
    return FlowDiff(
        add_groups=tuple(add_groups),
        mod_groups=tuple(mod_groups),
        del_groups=tuple(del_groups),
        add_rules=tuple(add_rules),
        del_rules=tuple(del_rules),
        replaces_rules=replaces,
    )


def _ordered(rules: Collection[Rule], key: Callable[[Rule], tuple[Any, ...]]) -> list[Rule]:
    """``rules`` in ``key``'s order; one rule needs no key (an owner's change is often one)."""
    return list(rules) if len(rules) < 2 else sorted(rules, key=key)


def _group_changes(
    desired: frozenset[GroupEntry], installed: frozenset[GroupEntry]
) -> tuple[list[GroupEntry], list[GroupEntry], list[int]]:
    """Groups to add, groups to modify (same id, other buckets) and ids to delete."""
    want = {g.group_id: g for g in desired}
    have = {g.group_id: g for g in installed}
    add = [want[gid] for gid in sorted(want.keys() - have.keys())]
    common = sorted(want.keys() & have.keys())
    mod = [want[gid] for gid in common if want[gid].buckets != have[gid].buckets]
    return add, mod, sorted(have.keys() - want.keys())


class Owners(dict[int, Slice]):
    """A switch's slices by owner cookie, with their totals kept up to date as owners are set
    and removed: how many flows and groups are ours, and the security groups' share.

    Why: the data plane's status (``/status``, and ``/metrics`` on every scrape) reported them
    by walking every owner of every host, O(ports) per read under the interpreter lock that the
    data plane's actor needs; now a read is one tuple per host.  Every way a dict can change is
    counted (set, delete, pop, popitem, setdefault, update, clear, ``|=``), and a copy or a
    pickle is rebuilt from the slices (`__reduce__`), so the totals cannot drift from the
    content whoever changes it.  ``totals`` is replaced in one assignment per change: a thread
    reading it meanwhile sees the totals before or after, never a mix."""

    def __init__(self, owners: Any = ()) -> None:
        super().__init__()
        self.totals: tuple[int, int, int] = (0, 0, 0)  # flows, groups, security-group flows
        self.update(owners)

    @property
    def flows(self) -> int:
        return self.totals[0]

    @property
    def groups(self) -> int:
        return self.totals[1]

    @property
    def sg_flows(self) -> int:
        return self.totals[2]

    @staticmethod
    def _weight(owner: int, piece: Slice | None) -> tuple[int, int, int]:
        if piece is None:
            return (0, 0, 0)
        sg = len(piece.rules) if t.owner_kind(owner) == t.OwnerKind.SECURITY_GROUP else 0
        return (len(piece.rules), len(piece.groups), sg)

    def _adjust(self, owner: int, old: Slice | None, new: Slice | None) -> None:
        (f0, g0, s0), (f1, g1, s1) = self._weight(owner, old), self._weight(owner, new)
        flows, groups, sg = self.totals
        self.totals = (flows - f0 + f1, groups - g0 + g1, sg - s0 + s1)

    def __setitem__(self, owner: int, piece: Slice) -> None:
        old = super().get(owner)
        super().__setitem__(owner, piece)
        self._adjust(owner, old, piece)

    def __delitem__(self, owner: int) -> None:
        old = self[owner]
        super().__delitem__(owner)
        self._adjust(owner, old, None)

    def pop(self, owner: int, *default: Any) -> Any:
        if owner not in self:
            if default:
                return default[0]
            raise KeyError(owner)
        piece = super().pop(owner)
        self._adjust(owner, piece, None)
        return piece

    def popitem(self) -> tuple[int, Slice]:
        owner, piece = super().popitem()
        self._adjust(owner, piece, None)
        return owner, piece

    def setdefault(self, owner: int, piece: Slice = Slice()) -> Slice:  # noqa: B008
        if owner not in self:
            self[owner] = piece
        return self[owner]

    def update(self, *others: Any, **more: Slice) -> None:
        for other in others:
            items = other.items() if hasattr(other, "items") else other
            for owner, piece in items:
                self[owner] = piece
        for owner, piece in more.items():
            self[int(owner)] = piece

    def __ior__(self, other: Any) -> Owners:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        self.totals = (0, 0, 0)

    def copy(self) -> Owners:
        return Owners(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied, deep-copied and pickled as its slices, its totals counted again (the
        default would restore the totals and then add every slice once more)."""
        return (type(self), (dict(self),))


def split_by_cookie(installed: Slice) -> Owners:
    """Cut a switch dump into per-owner slices: ``{owner cookie: Slice}``.

    Rules whose cookie lacks tenantnet's marker are dropped: they belong to someone else (an
    operator's debug flow, another controller) and must never be diffed away.  So are our
    transient rules (`flows.tables.TRANSIENT_KINDS`: a flooding port's DHCP drop), which the
    switch removes itself when their hard timeout ends.  Groups carry no
    cookie, so they are attributed by id (`flows.tables.owner_of_group`).  Owners come out in
    ascending cookie order, for stable logs.
    """
    rules: dict[int, set[Rule]] = {}
    groups: dict[int, set[GroupEntry]] = {}
    for rule in installed.rules:
        if t.is_ours(rule.cookie) and not t.is_transient(rule.cookie):
            rules.setdefault(rule.cookie, set()).add(rule)
    for group in installed.groups:
        groups.setdefault(t.owner_of_group(group.group_id), set()).add(group)
    return Owners(
        (
            owner,
            Slice(rules=frozenset(rules.get(owner, ())), groups=frozenset(groups.get(owner, ()))),
        )
        for owner in sorted(rules.keys() | groups.keys())
    )
