"""What one port costs the security-group planner, counted, not timed: the same work whether
its group has 10 members or 500 (issue 14: "a member added or removed changes O(1) flows per
affected host"; issue 13: "a port change still costs O(1) flow-mods and CPU whatever the number
of ports").

The counts are the work that grows with a group when a planner recompiles a host's firewall
whole: member records turned into addresses (`flows.security_groups.member_addresses`), filtered
ports compiled (`port_rules`), and flows handed to the diff (`Step.want`'s slices).  The
previous planner (one whole-host compile per change) fails every one of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bench.planner_port_cost import default_group
from controller.dataplane import planner
from controller.dataplane.planner import Change, Step
from controller.dataplane.state import PortRec
from flows import security_groups as sg
from tests.unit.test_planner import World


def _mac(num: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in num.to_bytes(4, "big"))


def _add_port(w: World, num: int, host: str, ofport: int) -> None:
    """A port of the default group with one address, plugged and held on ``host``."""
    ip = f"10.{num >> 16 & 255}.{num >> 8 & 255}.{num & 255}"
    _plug(w, PortRec(f"p{num}", num, "net", _mac(num), fixed_ips=(ip,), groups=("default",)),
          host, ofport)  # fmt: skip


def _plug(w: World, port: PortRec, host: str, ofport: int) -> None:
    """A new port, plugged on ``host`` at ``ofport`` and held there."""
    w.mirror.set_port(port.id, port)
    obs = w.hosts[host].obs
    assert obs is not None
    obs.bindings[port.id] = ofport
    w.bindings.set_claims(host, obs.bindings)
    w.bindings.resolve(port, (), w.hosts)
    w.change(Change("port", port.id, None, port))
    w.change(Change("binding", port.id, None, host))


def _world(members: int) -> World:
    """Three hosts; the default group with ``members`` ports spread over them."""
    w = World()
    for h in w.hosts:
        w.change(Change("switch", h))
    for change in default_group(w.mirror):
        w.change(change)
    hosts = sorted(w.hosts)
    for num in range(1, members + 1):
        _add_port(w, num, hosts[num % 3], 1 + num // 3)
    assert not w.step().failed
    return w


def _costs(members: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[str]]:
    """The counts of each change below, one after the other, in a group of ``members``."""
    w = _world(members)
    counts: Counter[str] = Counter()

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(sg, "member_addresses", counted("member records", sg.member_addresses))
    monkeypatch.setattr(sg, "port_rules", counted("ports compiled", sg.port_rules))
    want = Step.want

    def want_counted(self: Step, host_id: str, owner: int, group: Any, desired: Any) -> None:
        if group == "sg":
            counts["sg flows planned"] += len(desired.rules)
        want(self, host_id, owner, group, desired)

    monkeypatch.setattr(planner.Step, "want", want_counted)
    out = {}
    for change in (_join, _leave, _readdress):
        counts.clear()
        change(w)
        plan = w.step()
        assert not plan.failed
        counts["flow-mods"] = sum(len(d) for diffs in plan.diffs.values() for d in diffs)
        counts["hosts"] = len(plan.diffs)
        out[change.__name__] = Counter(counts)
    monkeypatch.undo()
    return out


def _join(w: World) -> None:
    _add_port(w, 100_000, "hv1", 9_000)


def _leave(w: World) -> None:
    port = w.mirror.ports["p7"]  # on hv2
    w.mirror.set_port(port.id, None)
    w.bindings.forget(port.id)
    w.change(Change("port", port.id, port, None))


def _readdress(w: World) -> None:
    old = w.mirror.ports["p8"]
    new = PortRec(old.id, old.num, old.network_id, old.mac, fixed_ips=("10.99.0.8",),
                  groups=old.groups)  # fmt: skip
    w.mirror.set_port(old.id, new)
    w.change(Change("port", old.id, old, new))


def test_one_member_costs_the_same_in_a_group_of_10_or_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port joining the group (created on hv1), one leaving it (deleted on hv2), one
    changing its address (on hv3)."""
    small, large = _costs(10, monkeypatch), _costs(500, monkeypatch)
    assert small == large, (small, large)
    for change, counts in small.items():
        # real work: every host's firewall names the group, so each gets the member's
        # address clause (added, removed or replaced); its own host also its filter
        assert counts["hosts"] == 3 and counts["flow-mods"] >= 3, (change, counts)
