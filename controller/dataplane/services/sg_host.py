"""One host's firewall as the sg service keeps it between steps, patched one change at a time.

`HostFirewall` holds what the whole-host compile (`flows.security_groups.compile_host`) would
derive, in the shape that lets one port or one rule be patched in or out at its own cost:

* the host's filtered ports (held, plugged, admin up, port security on, one per ofport: the
  smallest port id, as `flows.compiler` picks among duplicates) and, per group, which of them
  are in it and in which scopes (`group_nets`: network keys, or L3 domains of routed networks,
  `flows.security_groups.scope_of`), and per L3 domain how many of them are in it (`dom_ports`:
  the domain's scope flows are on the host while it has one);
* the rules applied on the host (those of the known groups its filtered ports are in), and by
  remote group the applied rules naming it (`remote_rules`);
* the merged conjunctive flows as contributions (`flows.sg_clauses.ClauseIndex`): each applied
  rule's ``conj_id`` and clause-2 flows under the rule's cookie, and for each remote-group rule
  and each member port of that group in a scope where the rule applies, the member's address
  (clause-3) flows under the member's cookie (`c3`, `member_rules`: what was contributed, so it
  can be taken back without recomputing it).

Costs: a member port joining, leaving or changing addresses costs its addresses times the
applied rules naming its groups (`sync_member`), never the other members; a filtered port of
the host costs its groups' rules (`sync_local`), plus, only when it is the first or last port
of a group (or of a group in one network) there, that group's rules and their remote groups'
members, which are flows the host gains or loses; a rule costs its own flows, its remote
group's members and the first clauses of the local ports of its group.  The owners whose
slices may have changed are collected (`touched`) and only they are re-planned.

A group's record coming, going or changing (``stateful``) rebuilds the hosts that use it: rare,
and then a rebuild (`HostFirewall` from scratch, every held port synced) is the simple truth.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypeVar

from controller.dataplane.state import Mirror, PortRec, SgRuleRec
from flows import security_groups as sg
from flows import tables as t
from flows.compiler import OFPP_MAX
from flows.model import Conjunction, Match, Slice
from flows.sg_clauses import ClauseIndex

if TYPE_CHECKING:
    from controller.dataplane.planner import Inputs

Entry = tuple[int, int, int, Match, Conjunction]
"""A clause-3 contribution: (scope, owner cookie, table, match, conjunction action)."""

T = TypeVar("T")

MemberFacts = tuple[str, int, tuple[tuple[int, tuple[Entry, ...]], ...]]
"""A member's contributions to one rule, on any host: (its network id, its L3 domain, per scope
its entries)."""


def _scope(fp: sg.FilteredPort) -> int:
    """Where the port's rules apply and its addresses are relevant
    (`flows.security_groups.scope_of`)."""
    return sg.scope_of(fp.network_key, fp.domain)


Classified = dict[int, tuple[str, ...]]
"""An L3 domain's classified subnets: network key -> CIDRs
(`flows.security_groups.classified_subnets`)."""


def classify_domain(
    mirror: Mirror, network_id: str, memo: dict[int, Classified] | None = None
) -> Classified:
    """The classified subnets of the network's L3 domain ({} for a network on no router):
    O(the domain's networks and subnets), or a lookup in ``memo`` (by domain), which keeps
    what it computes."""
    domain = mirror.domain_of(network_id)
    if not domain:
        return {}
    if memo is not None and domain in memo:
        return memo[domain]
    subnets = []
    for net in mirror.routed_component(network_id)[0]:
        key = mirror.key_of(net)
        if key is not None:
            for sid in mirror.net_subnets.get(net, ()):
                subnet = mirror.subnets.get(sid)
                if subnet is not None:
                    subnets.append((key, subnet.dhcp.cidr))
    out = sg.classified_subnets(subnets)
    if memo is not None:
        memo[domain] = out
    return out


def _difference(before: list[T], after: list[T]) -> tuple[list[T], list[T]]:
    """What to take back and what to add to go from contributions ``before`` to ``after``, as
    multisets (an address that is both a fixed IP and a pair contributes twice)."""
    had, has = set(before), set(after)
    if len(had) == len(before) and len(has) == len(after):
        return [e for e in before if e not in has], [e for e in after if e not in had]
    gone, came = Counter(before), Counter(after)
    gone.subtract(after)
    came.subtract(before)
    return list(gone.elements()), list(came.elements())


def filtered_port(
    port: PortRec, mirror: Mirror, ofport: int, classified: Classified | None = None
) -> sg.FilteredPort:
    """A port as `flows.security_groups` compiles it (``ofport`` 0: a remote group's member);
    its network is known.  ``classified``: its L3 domain's classified subnets, if routed."""
    network_key = mirror.key_of(port.network_id)
    assert network_key is not None
    return sg.FilteredPort(
        port_id=port.id,
        ofport=ofport,
        mac=port.mac,
        network_key=network_key,
        fixed_ips=port.fixed_ips,
        allowed_pairs=port.pairs,
        groups=port.groups,
        domain=mirror.domain_of(port.network_id),
        subnets=(classified or {}).get(network_key, ()),
    )


class HostFirewall:
    """See the module docstring.  ``visited``: member and port records read so far (what the
    complexity tests count)."""

    def __init__(
        self,
        host_id: str,
        domains: dict[str, int] | None = None,
        classified: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.host_id = host_id
        # network id -> the L3 domain its ports were last scoped with here (routed networks
        # only), and its classified subnets then, shared by the service's firewalls: what an
        # interface or subnet change compares with
        self.domains: dict[str, int] = {} if domains is None else domains
        self.classified_nets: dict[str, tuple[str, ...]] = {} if classified is None else classified
        self.index = ClauseIndex()
        self.local: dict[str, tuple[int, sg.FilteredPort]] = {}  # port id -> (num, as compiled)
        self.chosen: dict[int, str] = {}  # ofport -> the local port on it
        self.eligible: dict[str, int] = {}  # port id -> ofport, before duplicates are resolved
        self.at_ofport: dict[int, set[str]] = {}  # ofport -> eligible port ids on it
        self.group_locals: dict[str, set[str]] = {}  # group -> local ports in it
        self.group_nets: dict[str, Counter[int]] = {}  # group -> scope -> local ports
        self.applied: dict[str, SgRuleRec] = {}  # rule id -> the rule as its flows have it
        self.group_applied: dict[str, set[str]] = {}  # group -> its applied rule ids
        self.remote_rules: dict[str, set[str]] = {}  # remote group -> applied rules naming it
        self.c3: dict[str, dict[str, list[Entry]]] = {}  # rule id -> member port -> entries
        self.member_rules: dict[str, set[str]] = {}  # member port -> rule ids it contributes to
        # (rule id, scope) -> member ports with a contribution in that scope: what a rule that
        # stops applying in one scope takes back, without a pass over all its members
        self.scoped_members: dict[tuple[str, int], set[str]] = {}
        self.touched_ports: dict[str, int] = {}  # port id -> its port owner, to re-plan
        self.net_domains: dict[int, Counter[int]] = {}  # routed key -> domain -> local ports
        self.touched_nets: set[int] = set()  # network keys whose entries to re-plan
        self.dom_ports: Counter[int] = Counter()  # L3 domain -> local filtered ports in it
        self.touched_domains: set[int] = set()  # L3 domains whose scope flows to re-plan
        # the service's memo of domains' classified subnets (`classified`), None: none
        self.scope_memo: dict[int, Classified] | None = None
        # members of networks being re-scoped in this step (`begin_rescope`): their
        # contributions are out of `scoped_members` and left alone until `end_rescope`
        self.pending: set[str] = set()
        # re-scoped network id -> the applied remote-group rules that applied in its old scope
        # (`begin_rescope`): a member that contributed nothing to one had nothing to give
        self.rescoping: dict[str, set[str]] = {}
        self.visited = 0
        # the service's step memo of members' contributions (`_member_facts`), None: none
        self.memo: dict[tuple[str, str], tuple[SgRuleRec, MemberFacts | None]] | None = None

    def uses(self, group_id: str) -> bool:
        """Whether the host's flows depend on the group (a local port in it, or an applied rule
        naming it as remote group)."""
        return group_id in self.group_locals or group_id in self.remote_rules

    # ------------------------------------------------------------------ local ports

    def _eligible(self, pid: str, inputs: Inputs) -> int | None:
        self.visited += 1
        mirror = inputs.mirror
        port = mirror.ports.get(pid)
        if port is None or inputs.bindings.holder(pid) != self.host_id:
            return None
        obs = inputs.hosts[self.host_id].obs
        ofport = obs.bindings.get(pid) if obs is not None else None
        if ofport is None or not 0 < ofport <= OFPP_MAX:
            return None
        if not port.port_security or not port.admin_up or mirror.key_of(port.network_id) is None:
            return None
        return ofport

    def _wanted(self, pid: str, mirror: Mirror) -> tuple[int, sg.FilteredPort] | None:
        ofport = self.eligible.get(pid)
        if ofport is None or min(self.at_ofport[ofport]) != pid:
            return None
        fp = filtered_port(mirror.ports[pid], mirror, ofport)
        self._scoped(mirror.ports[pid].network_id, fp.domain, mirror)
        return mirror.ports[pid].num, fp

    def _scoped(self, network_id: str, domain: int, mirror: Mirror) -> None:
        """A port of the network was scoped with ``domain``: recorded, with the network's
        classified subnets, so that an interface or subnet change that moves either re-scopes
        it, also after a restart (a firewall rebuilt from a mirror in which the network was
        already routed)."""
        if domain:
            self.domains[network_id] = domain
            key = mirror.key_of(network_id)
            subnets = self.classified(network_id, mirror).get(key, ()) if key is not None else ()
            self.classified_nets[network_id] = subnets
        else:
            self.domains.pop(network_id, None)
            self.classified_nets.pop(network_id, None)

    def sync_local(self, pid: str, inputs: Inputs) -> None:
        """The port's record, holder or ofport changed: is it (still) filtered here, and as
        what; a port sharing its old or new ofport may take or lose the ofport with it."""
        old_of = self.eligible.pop(pid, None)
        if old_of is not None:
            on = self.at_ofport[old_of]
            on.discard(pid)
            if not on:
                del self.at_ofport[old_of]
        new_of = self._eligible(pid, inputs)
        if new_of is not None:
            self.eligible[pid] = new_of
            self.at_ofport.setdefault(new_of, set()).add(pid)
        cands = {pid}
        for ofport in {old_of, new_of} - {None}:
            assert ofport is not None
            if ofport in self.chosen:
                cands.add(self.chosen[ofport])
            if ofport in self.at_ofport:
                cands.add(min(self.at_ofport[ofport]))
        want = {q: self._wanted(q, inputs.mirror) for q in sorted(cands)}
        changed = [q for q, w in want.items() if self.local.get(q) != w]
        # the ports that leave their ofport first: the one that takes it finds it free
        for q in sorted(changed, key=lambda q: want[q] is not None):
            self._set_local(q, want[q], inputs.mirror)

    def _set_local(self, pid: str, new: tuple[int, sg.FilteredPort] | None, mirror: Mirror) -> None:
        old = self.local.pop(pid, None)
        if old is not None and self.chosen.get(old[1].ofport) == pid:
            del self.chosen[old[1].ofport]
        if new is not None:
            self.local[pid] = new
            self.chosen[new[1].ofport] = pid
        for fp, step in ((old[1] if old else None, -1), (new[1] if new else None, 1)):
            if fp is not None and fp.domain:
                self._count_domain(fp.network_key, fp.domain, step)
        before = {(g, _scope(old[1])) for g in old[1].groups} if old else set()
        after = {(g, _scope(new[1])) for g in new[1].groups} if new else set()
        for gid, net in sorted(after - before):  # joins first: no group empties on the way
            self._join(gid, net, pid, mirror)
        stays = {g for g, _ in after}  # a port re-scoped (its network routed) stays in its groups
        gone = sorted(before - after)
        last = {gid: net for gid, net in gone}  # a group left in two scopes: the port goes last
        for gid, net in gone:
            self._leave(gid, net, pid, gid in stays or last[gid] != net)
        num = new[0] if new is not None else old[0] if old is not None else None
        if num is not None:
            self.touched_ports[pid] = t.sg_port_cookie(num)

    def _count_domain(self, key: int, domain: int, step: int) -> None:
        """A local filtered port of routed network ``key`` came (+1) or went (-1) with
        ``domain``: the network's entries (`flows.security_groups.network_entries`) are
        re-planned when its first port comes, its last goes or its domain moves."""
        counts = self.net_domains.setdefault(key, Counter())
        counts[domain] += step
        self.dom_ports[domain] += step
        if self.dom_ports[domain] <= 0:
            del self.dom_ports[domain]
            self.touched_domains.add(domain)
        elif step > 0 and self.dom_ports[domain] == 1:
            self.touched_domains.add(domain)
        if counts[domain] <= 0:
            del counts[domain]
            self.touched_nets.add(key)
        elif step > 0 and counts[domain] == 1:
            self.touched_nets.add(key)
        if not counts:
            del self.net_domains[key]

    def net_slice(self, key: int) -> Slice:
        """The entries of routed network ``key`` on the host: there while it has a filtered
        port here (with the domain its ports were scoped with; one within a planned step)."""
        domains = self.net_domains.get(key)
        if not domains:
            return Slice()
        return Slice(rules=sg.network_entries(key, min(domains), t.sg_net_cookie(key)))

    def classified(self, network_id: str, mirror: Mirror) -> Classified:
        """The classified subnets of the network's L3 domain (`classify_domain`), once per
        domain until an interface or a routed subnet changes when the service shares its memo
        (`SecurityGroupService.scope_memo`)."""
        return classify_domain(mirror, network_id, self.scope_memo)

    def domain_slice(self, domain: int, mirror: Mirror) -> Slice:
        """The L3 domain's scope flows on the host: there while it has a filtered port in the
        domain (`flows.security_groups.domain_rules`)."""
        if not self.dom_ports.get(domain):
            return Slice()
        iface = mirror.port_by_num(domain)  # the domain is its smallest interface's number
        if iface is None or mirror.domain_of(iface.network_id) != domain:
            return Slice()
        classified = tuple(sorted(self.classified(iface.network_id, mirror).items()))
        return Slice(rules=sg.domain_rules(domain, classified, t.sg_domain_cookie(domain)))

    def _join(self, gid: str, net: int, pid: str, mirror: Mirror) -> None:
        first = gid not in self.group_locals
        self.group_locals.setdefault(gid, set()).add(pid)
        nets = self.group_nets.setdefault(gid, Counter())
        nets[net] += 1
        if first:
            if gid in mirror.sgroups:
                for rec in mirror.rules_of(gid):
                    self._apply(rec, mirror)
        elif nets[net] == 1:  # the group's remote-group rules now apply in this network too
            for rid in sorted(self.group_applied.get(gid, ())):
                self._add_c3(rid, mirror, only_net=net)

    def _leave(self, gid: str, net: int, pid: str, stays: bool) -> None:
        ports = self.group_locals[gid]
        if not stays:
            ports.discard(pid)
        nets = self.group_nets[gid]
        nets[net] -= 1
        if not nets[net]:
            del nets[net]
        if not ports:
            del self.group_locals[gid], self.group_nets[gid]
            for rid in sorted(self.group_applied.get(gid, ())):
                self._unapply(rid)
        elif net not in nets:
            for rid in sorted(self.group_applied.get(gid, ())):
                self._drop_c3(rid, only_net=net)

    # ------------------------------------------------------------------ rules

    def sync_rule(self, rid: str, mirror: Mirror) -> None:
        """The rule was created or deleted: apply or unapply it (its group used here)."""
        old, new = self.applied.get(rid), mirror.sg_rules.get(rid)
        want = (
            new is not None
            and new.group_id in self.group_locals
            and (new.group_id in mirror.sgroups)
        )
        if old is not None and (not want or old != new):
            self._unapply(rid)
        if want and rid not in self.applied:
            assert new is not None
            self._apply(new, mirror)

    def _apply(self, rec: SgRuleRec, mirror: Mirror) -> None:
        rule = rec.rule
        entries = sg.rule_entries(rule)  # raises for a rule the API should have refused
        owner = t.sg_rule_cookie(rule.key)
        self.applied[rec.id] = rec
        self.group_applied.setdefault(rec.group_id, set()).add(rec.id)
        self.index.add_fixed(owner, sg.conj_id_rule(rule, owner))
        for entry in entries:
            self.index.add(owner, *entry)
        if rule.remote_group_id is not None:
            self.remote_rules.setdefault(rule.remote_group_id, set()).add(rec.id)
            self._add_c3(rec.id, mirror)
        self._touch_group_ports(rec.group_id)

    def _unapply(self, rid: str) -> None:
        rec = self.applied.pop(rid)
        rule = rec.rule
        owner = t.sg_rule_cookie(rule.key)
        applied = self.group_applied[rec.group_id]
        applied.discard(rid)
        if not applied:
            del self.group_applied[rec.group_id]
        self.index.remove_fixed(owner, sg.conj_id_rule(rule, owner))
        for entry in sg.rule_entries(rule):
            self.index.remove(owner, *entry)
        if rule.remote_group_id is not None:
            naming = self.remote_rules[rule.remote_group_id]
            naming.discard(rid)
            if not naming:
                del self.remote_rules[rule.remote_group_id]
            self._drop_c3(rid)
        self._touch_group_ports(rec.group_id)

    def _touch_group_ports(self, gid: str) -> None:
        """The local ports of the group: their first clauses name the group's rules."""
        for pid in self.group_locals.get(gid, ()):
            self.touched_ports[pid] = t.sg_port_cookie(self.local[pid][0])

    # ------------------------------------------------------------------ members

    def _add_c3(self, rid: str, mirror: Mirror, only_net: int | None = None) -> None:
        """Clause 3 of an applied remote-group rule for every member of its remote group (in
        network ``only_net``, if given, else in every network where the rule applies)."""
        rg = self.applied[rid].rule.remote_group_id
        if rg is None or rg not in mirror.sgroups:
            return  # a remote group that is not known has no members to match
        for mpid in sorted(mirror.group_ports.get(rg, ())):
            self._contribute(mpid, rid, mirror, only_net)

    def _contribute(self, mpid: str, rid: str, mirror: Mirror, only_net: int | None) -> None:
        if mpid in self.pending:
            return  # `end_rescope` decides for it, once the local ports have moved
        entries = self._member_entries(mpid, rid, mirror, only_net)
        if entries:
            self._record_c3(mpid, rid, entries)

    def _record_c3(self, mpid: str, rid: str, entries: list[Entry]) -> None:
        self.c3.setdefault(rid, {}).setdefault(mpid, []).extend(entries)
        self.member_rules.setdefault(mpid, set()).add(rid)
        self._index_scopes(rid, mpid, entries, add=True)
        for _scope, owner, table, m, conj in entries:
            self.index.add(owner, table, m, conj)

    def _member_entries(
        self, mpid: str, rid: str, mirror: Mirror, only_net: int | None
    ) -> list[Entry]:
        """The member's clause-3 contributions to applied rule ``rid`` on this host: in the
        scopes where a local port has the rule (``only_net``: in that one only)."""
        self.visited += 1
        rec = self.applied[rid]
        facts = self._member_facts(mpid, rec, mirror)
        if facts is None:
            return []
        network_id, domain, per_scope = facts
        # the member's scope: its network, or its L3 domain if routed (its packets then arrive
        # under any key of the domain); addresses where no local port has the rule never match
        self._scoped(network_id, domain, mirror)
        nets = self.group_nets.get(rec.group_id, ())
        return [
            entry
            for scope, entries in per_scope
            if scope in nets and only_net in (None, scope)
            for entry in entries
        ]

    def _member_facts(self, mpid: str, rec: SgRuleRec, mirror: Mirror) -> MemberFacts | None:
        """What a member contributes to a rule in each of its scopes, whatever the host: the
        same on every host of a step, so computed once per step when the service shares its
        step memo (`memo`, emptied at each step: the mirror does not change within one)."""
        memo = self.memo
        if memo is not None:
            hit = memo.get((mpid, rec.id))
            if hit is not None and hit[0] is rec:
                return hit[1]
        facts: MemberFacts | None = None
        port = mirror.ports.get(mpid)
        if (port is not None and (port.port_security or port.trusted)
                and mirror.key_of(port.network_id) is not None):  # fmt: skip
            fp = filtered_port(port, mirror, 0, self.classified(port.network_id, mirror))
            owner = t.sg_member_cookie(port.num)
            entries = sg.member_entries(rec.rule, sg.member_addresses(fp))
            scope = _scope(fp)
            tagged = tuple((scope, owner, *entry) for entry in entries)
            facts = (port.network_id, fp.domain, ((scope, tagged),) if tagged else ())
        if memo is not None:
            memo[(mpid, rec.id)] = (rec, facts)
        return facts

    def _index_scopes(self, rid: str, mpid: str, entries: list[Entry], add: bool) -> None:
        """Record (or forget) the scopes of a member's contributions to a rule
        (`scoped_members`)."""
        for scope in {e[0] for e in entries}:
            key = (rid, scope)
            if add:
                self.scoped_members.setdefault(key, set()).add(mpid)
            elif key in self.scoped_members:
                self.scoped_members[key].discard(mpid)
                if not self.scoped_members[key]:
                    del self.scoped_members[key]

    def _drop_c3(self, rid: str, only_net: int | None = None) -> None:
        """Take back clause-3 contributions of a rule (in one scope, or all): the members with
        one in that scope only (`scoped_members`), or every member of the rule."""
        per_member = self.c3.get(rid, {})
        if only_net is None:
            mpids = sorted(per_member)
            for scope in {e[0] for entries in per_member.values() for e in entries}:
                self.scoped_members.pop((rid, scope), None)
        else:
            mpids = sorted(self.scoped_members.pop((rid, only_net), set()) & per_member.keys())
        for mpid in mpids:
            self._take_back(rid, mpid, only_net)

    def _take_back(self, rid: str, mpid: str, only_net: int | None = None) -> None:
        """Take a member's contribution to a rule out of the index (its entries in scope
        ``only_net``, or all of them) and forget the contribution once nothing of it is left.
        The caller keeps `scoped_members` (it knows which scopes it empties)."""
        per_member = self.c3[rid]
        entries = per_member[mpid]
        gone = [e for e in entries if only_net is None or e[0] == only_net]
        for _s, owner, table, m, conj in gone:
            self.index.remove(owner, table, m, conj)
        if len(gone) < len(entries):
            per_member[mpid] = [e for e in entries if e[0] != only_net]
            return
        del per_member[mpid]
        if not per_member:
            del self.c3[rid]
        rules = self.member_rules[mpid]
        rules.discard(rid)
        if not rules:
            del self.member_rules[mpid]

    def sync_member(self, mpid: str, mirror: Mirror) -> None:
        """The port's record changed: its addresses in the remote-group clauses of this host,
        as it is now against what it contributed: only the difference is taken back or added,
        so an owner whose clauses stay the same is not re-planned."""
        self.pending.discard(mpid)  # recomputed whole: a member like any other from here on
        old: dict[str, list[Entry]] = {}
        for rid in self.member_rules.pop(mpid, ()):
            per_member = self.c3[rid]
            old[rid] = per_member.pop(mpid)
            self._index_scopes(rid, mpid, old[rid], add=False)
            if not per_member:
                del self.c3[rid]
        new: dict[str, list[Entry]] = {}
        port = mirror.ports.get(mpid)
        if port is not None:
            for gid in dict.fromkeys(port.groups):
                if gid in mirror.sgroups:
                    for rid in sorted(self.remote_rules.get(gid, ())):
                        entries = self._member_entries(mpid, rid, mirror, None)
                        if entries:
                            new.setdefault(rid, []).extend(entries)
        for rid in sorted(old.keys() | new.keys()):
            before, after = old.get(rid, []), new.get(rid, [])
            if before != after:
                # by contribution, whatever its scope: a member whose network joins or leaves a
                # router is re-scoped (`_scope`) but matched the same (by its network's key)
                gone, came = _difference([e[1:] for e in before], [e[1:] for e in after])
                for owner, table, m, conj in gone:
                    self.index.remove(owner, table, m, conj)
                for owner, table, m, conj in came:
                    self.index.add(owner, table, m, conj)
            if after:
                self.c3.setdefault(rid, {})[mpid] = after
                self.member_rules.setdefault(mpid, set()).add(rid)
                self._index_scopes(rid, mpid, after, add=True)

    # ------------------------------------------------------------------ re-scoped networks

    def begin_rescope(self, network_id: str, mirror: Mirror) -> None:
        """The network's L3 domain changed (a router interface came, went or renumbered the
        domain) and its classified subnets hold every one of its subnets before and after
        (the service's `SecurityGroupService._rescope`): its members' addresses are matched
        the same (by their network's key, no fallback), only the scope they count in moves.
        Before the local ports move: the members' contributions leave the (rule, scope) index
        and are left alone (`pending`) by the rules that start or stop applying in a scope on
        the way, so nothing is taken back and added again.  O(the network's ports + the
        remote-group rules applied here)."""
        old: int | None = None  # the scope the members were matched in, if they or local
        for mpid in mirror.net_ports.get(network_id, ()):  # ports of the network say which
            local = self.local.get(mpid)
            if local is not None:
                old = _scope(local[1])
            rules = self.member_rules.get(mpid)
            if rules is None:
                continue
            self.pending.add(mpid)
            for rid in rules:
                entries = self.c3[rid][mpid]
                old = entries[0][0]
                self._index_scopes(rid, mpid, entries, add=False)
        self.rescoping[network_id] = {
            rid for rids in self.remote_rules.values() for rid in rids
            if old is not None and self._applies(rid, old)
        }  # fmt: skip

    def end_rescope(self, network_id: str, mirror: Mirror) -> None:
        """After the local ports moved (`begin_rescope`): each pending member's contribution to
        a rule is re-tagged with the network's new scope where the rule applies there and taken
        back where it does not; a member of a group a rule names that had none gains its
        addresses where the rule now applies.  O(the network's ports x their groups' rules
        here), and no member's addresses are computed again unless it gains some."""
        key = mirror.key_of(network_id)
        domain = mirror.domain_of(network_id)
        self._scoped(network_id, domain, mirror)
        scope = sg.scope_of(key, domain) if key is not None else None
        applied_before = self.rescoping.pop(network_id, set())
        for mpid in sorted(mirror.net_ports.get(network_id, ())):
            if mpid in self.pending:
                self.pending.discard(mpid)
                for rid in sorted(self.member_rules.get(mpid, ())):
                    self._retag(mpid, rid, scope)
            port = mirror.ports.get(mpid)
            if port is None or scope is None:
                continue
            for gid in dict.fromkeys(port.groups):
                for rid in sorted(self.remote_rules.get(gid, set()) - applied_before):
                    if mpid not in self.c3.get(rid, {}) and self._applies(rid, scope):
                        self._contribute(mpid, rid, mirror, scope)

    def _applies(self, rid: str, scope: int) -> bool:
        """Whether applied rule ``rid`` has a local port in ``scope`` (its members count there)."""
        return scope in self.group_nets.get(self.applied[rid].group_id, ())

    def _retag(self, mpid: str, rid: str, scope: int | None) -> None:
        """A pending member's contribution to a rule, in the network's new ``scope``: re-tagged
        where the rule applies there, else taken back."""
        if scope is not None and self._applies(rid, scope):
            per_member = self.c3[rid]
            after = [(scope, *e[1:]) for e in per_member[mpid]]
            per_member[mpid] = after
            self._index_scopes(rid, mpid, after, add=True)
        else:
            self._take_back(rid, mpid)

    # ------------------------------------------------------------------ slices

    def port_slice(self, pid: str, mirror: Mirror) -> Slice:
        """The port's own flows (`flows.security_groups.port_rules`), empty if not filtered:
        its known groups with the rules applied here (by key) and their ``stateful``."""
        local = self.local.get(pid)
        if local is None:
            return Slice()
        num, fp = local
        groups = {
            gid: sg.SecurityGroup(
                gid,
                tuple(self.applied[r].rule for r in self.group_applied.get(gid, ())),
                (),
                mirror.sgroups[gid].stateful,
            )
            for gid in fp.groups
            if gid in mirror.sgroups
        }
        return Slice(rules=sg.port_rules(fp, groups, t.sg_port_cookie(num)))
