"""What one port costs the L2 service's per-port path, counted, not timed: the same work whether
its network has 10 ports or 500 (issue 13: "a port change still costs O(1) flow-mods and CPU
whatever the number of ports").

The counts are the work that grew with a network when the per-port path rebuilt its host's
flood groups from every local port: local ports sorted into buckets
(`flows.compiler._usable_local_ports`), ports scanned for the filtered ones
(`flows.security_groups.filtered_ofports`), rules and buckets passed through the hooks
(`flows.security_groups.plug`), and the l2 owners' flows handed to the diff (a group counts one,
not its buckets).  What still grows, by design, is the flood group-mod's bucket list (OpenFlow
1.3 sends all of a group's buckets): checked apart, as one bucket per local port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from controller.dataplane import planner
from controller.dataplane.planner import Change, Step
from controller.dataplane.state import PortRec
from flows import compiler
from flows import security_groups as sg
from flows import tables as t
from tests.unit.test_planner import World
from tests.unit.test_sg_cost import _join, _leave, _world


def _readdress(w: World) -> None:
    """p8 (on hv3) gets another address, which its rules and its peers' ARP answers carry."""
    old = w.mirror.ports["p8"]
    new = PortRec(old.id, old.num, old.network_id, old.mac, fixed_ips=("10.99.0.8",),
                  subnet_ips=(("s", "10.99.0.8"),), groups=old.groups)  # fmt: skip
    w.mirror.set_port(old.id, new)
    w.change(Change("port", old.id, old, new))


def _costs(ports: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[str]]:
    """The counts of each change below, one after the other, in a network of ``ports``."""
    w = _world(ports)
    counts: Counter[str] = Counter()
    buckets: dict[str, int] = {}

    def visiting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(items: Any, *args: Any) -> Any:
            items = list(items)
            counts[name] += len(items)
            return fn(items, *args)

        return wrapper

    plug = sg.plug

    def plug_counted(s: Any, filtered: Any) -> Any:
        counts["rules and buckets plugged"] += len(s.rules) + sum(len(g.buckets) for g in s.groups)
        return plug(s, filtered)

    monkeypatch.setattr(compiler, "_usable_local_ports",
                        visiting("local ports sorted", compiler._usable_local_ports))  # fmt: skip
    monkeypatch.setattr(sg, "filtered_ofports",
                        visiting("ports scanned for filtering", sg.filtered_ofports))  # fmt: skip
    monkeypatch.setattr(sg, "plug", plug_counted)
    want = Step.want

    def want_counted(self: Step, host_id: str, owner: int, group: Any, desired: Any) -> None:
        if isinstance(group, tuple) and group[0] == "l2":
            counts["l2 flows planned"] += len(desired.rules) + len(desired.groups)
            for g in desired.groups:
                if g.group_id == t.flood_local_group_id(w.net.key):
                    buckets[host_id] = len(g.buckets)
        want(self, host_id, owner, group, desired)

    monkeypatch.setattr(planner.Step, "want", want_counted)
    out = {}
    for change in (_join, _leave, _readdress):
        counts.clear()
        buckets.clear()
        change(w)
        plan = w.step()
        assert not plan.failed
        counts.update(plan.counts)  # ports_patched, never networks_compiled
        counts["flow-mods"] = sum(len(d) for diffs in plan.diffs.values() for d in diffs)
        counts["hosts"] = len(plan.diffs)
        out[change.__name__] = Counter(counts)
        # the group-mod itself: one bucket per usable local port of the network on the host
        local = {h: sum(1 for p in w.hosts[h].obs.bindings if p in w.mirror.ports)  # type: ignore[union-attr]
                 for h in buckets}  # fmt: skip
        assert buckets == local, (change.__name__, buckets, local)
    monkeypatch.undo()
    return out


def test_one_port_costs_the_same_in_a_network_of_10_or_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port created on hv1, one deleted on hv2, one readdressed on hv3: patched, never the
    network compiled whole, and nothing counted grows with the network."""
    small, large = _costs(10, monkeypatch), _costs(500, monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        assert counts["ports_patched"] == 1 and not counts["networks_compiled"], (change, counts)
        # real work: its own rules, its unicast rule on both peers, its host's flood groups
        assert counts["hosts"] == 3 and counts["l2 flows planned"] > 0, (change, counts)
