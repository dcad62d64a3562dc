"""What one port change costs the planner, alone: CPU of one port add, update and delete on 3
hosts with N ports (issue 13: "a port change costs O(1) flow-mods and CPU whatever the number of
ports").  No switches, no store, no actor: the planner's state built in memory, as the unit
tests build it, then the same three changes timed `--repeat` times each (median in ms).

Layouts: ``one``: all N ports in one network; ``ten``: N ports spread over 10 networks (the change
is in the first); ``routed``: ``one`` with a router joining the network to another (the routing
service patches the port's neighbour rule on each router host). Every port is in its project's
default group (Neutron's template), so the security-group service runs too. Printed per size: the
whole step (`Planner.changed` + `Planner.plan`; not the harness's own bookkeeping), each service's
share of `plan`, and the flow-mods of the plan.

    PYTHONPATH=$PWD .venv/bin/python -m bench.planner_port_cost --sizes 50 200 1000 3000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import Change, Inputs, Plan, Planner, Unit
from controller.dataplane.reconciler import _record
from controller.dataplane.services import services
from controller.dataplane.state import (
    HostRec,
    Mirror,
    NetworkRec,
    PortRec,
    RouterRec,
    SecurityGroupRec,
    SgRuleRec,
    SubnetRec,
)
from controller.services.dhcp_records import DhcpSubnet
from controller.southbound.ovsdb_host import HostObservation
from flows.model import Slice

TUNNELS = {"vxlan": 64001, "gre": 64002}
RIF = "network:router_interface_distributed"
HOSTS = ("hv1", "hv2", "hv3")
DEFAULT_RULES = (
    {"direction": "ingress", "ethertype": "IPv4", "remote_group_id": "default"},
    {"direction": "ingress", "ethertype": "IPv6", "remote_group_id": "default"},
    {"direction": "egress", "ethertype": "IPv4"},
    {"direction": "egress", "ethertype": "IPv6"},
)


def default_group(mirror: Mirror) -> list[Change]:
    """Neutron's default group ``default`` and its rules, mirrored; the changes to plan."""
    rec = SecurityGroupRec("default")
    mirror.set_record("security_group", "default", rec)
    changes = [Change("security_group", "default", None, rec)]
    for key, body in enumerate(DEFAULT_RULES, 1):
        rule = SgRuleRec.from_store({"id": f"r{key}", "security_group_id": "default",
                                     "_key": key, **body})  # fmt: skip
        mirror.set_record("security_group_rule", rule.id, rule)
        changes.append(Change("security_group_rule", rule.id, None, rule))
    return changes


@dataclass
class Host:
    """`planner.HostFacts` as plain data."""

    rec: HostRec
    obs: HostObservation | None
    installed: dict[int, Slice] | None = field(default_factory=dict)
    groups: dict[Hashable, set[int]] = field(default_factory=dict)
    degraded: str = ""

    @property
    def ready(self) -> bool:
        return self.obs is not None and self.installed is not None


class World:
    """The planner's whole input: 3 hosts, ``networks`` networks, one default group."""

    def __init__(self, networks: int) -> None:
        self.mirror = Mirror()
        self.bindings = Bindings()
        self.hosts = {
            h: Host(HostRec(h, f"10.9.0.{n}", {}), HostObservation({}, dict(TUNNELS)))
            for n, h in enumerate(HOSTS, 1)
        }
        self.planner = Planner(services())
        self.inputs = Inputs(self.mirror, self.bindings, self.hosts,
                             lambda o: self.planner.group_of(o, self.inputs))  # fmt: skip
        self.dirty: set[Unit] = set()
        self.networks = [f"net{k}" for k in range(networks)]
        for k, net_id in enumerate(self.networks, 1):
            self.mirror.set_network(net_id, NetworkRec(net_id, k, "vxlan", 1000 + k))
        for h in self.hosts:
            self.change(Change("switch", h))
        for change in default_group(self.mirror):
            self.change(change)

    def change(self, change: Change) -> None:
        self.dirty |= self.planner.changed(change, self.inputs)

    def step(self) -> Plan:
        plan = self.planner.plan(self.dirty, self.inputs)
        self.dirty = set()
        assert not plan.failed, plan.failed
        for host_id, owner, group, after in plan.writes:
            _record(self.hosts[host_id], owner, group, after)  # type: ignore[arg-type]
        return plan

    def port(self, num: int, net_id: str, ip: str) -> PortRec:
        mac = "02:00:" + ":".join(f"{b:02x}" for b in num.to_bytes(4, "big"))
        return PortRec(
            f"p{num}",
            num,
            net_id,
            mac,
            fixed_ips=(ip,),
            groups=("default",),
            subnet_ips=(("", ip),),
        )

    def add(self, port: PortRec, host: str, ofport: int) -> list[Change]:
        self.mirror.set_port(port.id, port)
        obs = self.hosts[host].obs
        assert obs is not None
        obs.bindings[port.id] = ofport
        self.bindings.set_claims(host, obs.bindings)
        self.bindings.resolve(port, (), self.hosts)
        return [Change("port", port.id, None, port), Change("binding", port.id, None, host)]

    def update(self, new: PortRec) -> list[Change]:
        old = self.mirror.set_port(new.id, new)
        return [Change("port", new.id, old, new)]

    def delete(self, port_id: str, host: str) -> list[Change]:
        old = self.mirror.set_port(port_id, None)
        obs = self.hosts[host].obs
        assert obs is not None
        obs.bindings.pop(port_id, None)
        self.bindings.set_claims(host, obs.bindings)
        self.bindings.forget(port_id)
        return [Change("port", port_id, old, None)]


def _ip(num: int) -> str:
    return f"10.{num >> 16 & 255}.{num >> 8 & 255}.{num & 255}"


def route(w: World) -> None:
    """Router r1 with an interface on the first network (10.0.0.0/8, where `_ip` puts every
    port) and one on a network of its own (192.168.0.0/24)."""
    w.mirror.set_network("rnet", NetworkRec("rnet", 999, "vxlan", 1999))
    router = RouterRec("r1")
    w.mirror.set_record("router", "r1", router)
    w.change(Change("router", "r1", None, router))
    plan = ((w.networks[0], "10.0.0.0/8", "10.255.255.254"), ("rnet", "192.168.0.0/24",
            "192.168.0.1"))  # fmt: skip
    for n, (net_id, cidr, gw) in enumerate(plan):
        sub = SubnetRec(f"s{n}", net_id, 4, DhcpSubnet(f"s{n}", cidr, None))
        w.mirror.set_subnet(sub.id, sub)
        w.change(Change("subnet", sub.id, None, sub))
        port = PortRec(f"if{n}", 900_000_000 + n, net_id, f"02:ff:00:00:00:{n:02x}",
                       fixed_ips=(gw,), subnet_ips=((sub.id, gw),), device_owner=RIF,
                       device_id="r1")  # fmt: skip
        w.mirror.set_port(port.id, port)
        w.change(Change("port", port.id, None, port))


def build(ports: int, networks: int, routed: bool = False) -> World:
    w = World(networks)
    if routed:
        route(w)
    for num in range(1, ports + 1):
        host = HOSTS[num % 3]
        net_id = w.networks[num % networks]
        for change in w.add(w.port(num, net_id, _ip(num)), host, 10 + num):
            w.change(change)
    w.step()
    return w


class ServiceClock:
    """Per-service seconds of `Planner.plan`, by wrapping each service's pieces of work."""

    def __init__(self, planner: Planner) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        for service in planner.services.values():
            service.work = self._timed(service.name, service.work)  # type: ignore[method-assign]

    def _timed(self, name: str, work: Callable[..., Iterator[tuple[Unit, Any]]]) -> Any:
        @wraps(work)
        def timed_work(units: Any, inputs: Inputs) -> Iterator[tuple[Unit, Any]]:
            for unit, fn in work(units, inputs):

                def timed_fn(step: Any, fn: Any = fn) -> None:
                    t0 = time.perf_counter()
                    try:
                        fn(step)
                    finally:
                        self.spent[name] += time.perf_counter() - t0

                yield unit, timed_fn

        return timed_work


def measure(ports: int, networks: int, repeat: int,
            routed: bool = False) -> dict[str, dict[str, float]]:  # fmt: skip
    w = build(ports, networks, routed)
    clock = ServiceClock(w.planner)
    net0 = w.networks[0]
    samples: dict[str, dict[str, list[float]]] = {
        c: defaultdict(list) for c in ("add", "update", "delete")
    }

    def timed(what: str, changes: list[Change]) -> None:
        """Time what the planner does with the changes (not the harness making them)."""
        clock.spent.clear()
        t0 = time.perf_counter()
        for change in changes:
            w.change(change)
        plan = w.planner.plan(w.dirty, w.inputs)
        elapsed = time.perf_counter() - t0
        w.dirty = set()
        assert not plan.failed, plan.failed
        for host_id, owner, group, after in plan.writes:
            _record(w.hosts[host_id], owner, group, after)  # type: ignore[arg-type]
        samples[what]["step"].append(elapsed * 1e3)
        for name, s in clock.spent.items():
            samples[what][name].append(s * 1e3)
        samples[what]["flow-mods"].append(sum(len(d) for ds in plan.diffs.values() for d in ds))

    for i in range(repeat):
        num = 1_000_000 + i
        port = w.port(num, net0, _ip(num))
        timed("add", w.add(port, "hv1", 50_000 + i))
        timed("update", w.update(w.port(num, net0, _ip(num + 1))))  # readdressed
        timed("delete", w.delete(port.id, "hv1"))
    return {c: {k: statistics.median(v) for k, v in s.items()} for c, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 3000])
    parser.add_argument("--layouts", nargs="+", default=["one", "ten", "routed"],
                        choices=["one", "ten", "routed"])  # fmt: skip
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    for layout in args.layouts:
        for size in args.sizes:
            result = measure(size, 10 if layout == "ten" else 1, args.repeat, layout == "routed")
            for change, m in result.items():
                shares = " ".join(f"{k}={v:.2f}" for k, v in sorted(m.items())
                                  if k not in ("step", "flow-mods"))  # fmt: skip
                print(f"{layout:>3} {size:>5} {change:<6} step={m['step']:.2f} ms  "
                      f"[{shares}]  flow-mods={m['flow-mods']:.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
