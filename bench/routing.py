"""Issue 16's measures, the same work for both systems: distributed routing between a
project's subnets.

Setup (one run, fresh lab): N networks with a gateway (network k: 10.<100+k>.0.0/16, gateway
10.<100+k>.0.1), all in the project "bench" (tenantnet: its default security group; OVN: what
Neutron writes for it unless ``--no-main-sg``, as in measures 1-7); vm1 (hv1) and vm2 (hv2) in
network 0 as in `bench.scenario.setup_base`, vm1 with its default route via network 0's
gateway, and ``rb`` on hv2 in network 1 (default route via network 1's gateway); then P bulk
ports over the hosts and networks (measure 2), and one router.  tenantnet: ``POST /routers``
and ``PUT .../add_router_interface {"subnet_id"}`` through its API; OVN: what Neutron's OVN
driver writes (`bench.sut_ovn`: a Logical_Router, per interface a Logical_Router_Port and the
switch's port of type router, one transaction, no --wait).

1. **add_router_interface -> first routed ping reply**: networks 1..N-1 are on the router,
   network 0 not; vm1 pings rb every `PING_EVERY_S` (2 ms), then network 0's interface is
   added; the time from the call to the first echo reply (``ping -D``).  vm1 resolves its
   gateway with ARP (the interface's MAC is not known before it exists; both systems answer
   from flows), with the neighbour retry made as fast as the ping (`fast_arp`) so that the
   kernel's 1 s retry timer is not what is measured.  Repeated ``if_adds`` times, the
   interface removed in between (vm1's neighbours flushed).
2. **Flows per host** once all N subnets are on the router (flow counts stable, as measure 9),
   also before the router existed (after the bulk), and per table (the JSON's
   ``flows_by_table``).
3. **First routed ping between two new VMs on different hosts**: ``new_pairs`` times, two VMs
   plugged first, in networks 2 and 3 (1 and 0 when N < 4) on hv1 and hv2; the first pings the
   second every 2 ms; both ports are created in one call (tenantnet: bulk POST + wait; OVN:
   one ``--wait=hv`` transaction); ready and first reply, from the create.
4. **Data plane** (``sc["dataplane"]``): iperf3 vm1 -> rb (routed) and vm1 -> vm2 (bridged,
   the same hosts).  Both systems' labs stay up after measures 1-3 and their runs alternate
   (`run_routing_systems`, `dataplane`): on this 2-core machine the same system's throughput
   swings ~2x from one stretch of time to the next (OVN's own runs in one quiet bench:
   218, 357, 376 Mbit/s), so one system measured a minute after the other compared two
   stretches of time, not two systems.  Each run also records what does not depend on the
   machine's load: the datapath's passes, upcalls and EMC/megaflow hits per packet and the
   switches' CPU per MB (`datapath_counters`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bench.common import (
    cpu_seconds,
    first_reply_time,
    flows_and_groups,
    flows_by_table,
    gateway_ip,
    log,
    ping_first_reply,
)
from bench.scenario import VM1, VM2, bulk, fresh_system
from bench.secgroups import phase_ms, settle_flows
from bench.stats import median
from lab.hypervisors import Vm
from lab.proc import run

PING_EVERY_S = 0.002
RB = ("rb", "0a:00:00:06:00:02", "10.101.255.2")


def fast_arp(vm: Vm, every_ms: int = 2) -> None:
    """The VM's neighbour resolution retried every ``every_ms`` and never given up (20,000
    probes): an address whose owner does not exist yet is resolved as soon as it answers,
    and ping gets no "host unreachable" error that would end it."""
    vm.exec("sysctl", "-q", "-w", f"net.ipv4.neigh.eth0.retrans_time_ms={every_ms}",
            "net.ipv4.neigh.eth0.mcast_solicit=20000", "net.ipv4.neigh.eth0.ucast_solicit=20000")


def pair_networks(n: int) -> tuple[int, int]:
    """The networks of the new-VM pairs: 2 and 3, or 1 and 0 with fewer than 4 networks."""
    return (2, 3) if n >= 4 else (1, 0)


def routed_vm(system: Any, hv: int, name: str, mac: str, ip: str, k: int) -> Vm:
    """A VM in network ``k`` with its default route via the network's gateway (not plugged
    into a port yet: the caller creates it)."""
    vm = system.lab.add_vm(hv, name, mac, f"{ip}/16", system.iface_id(name),
                           gateway=gateway_ip(k))
    fast_arp(vm)
    return vm


def setup(system: Any, n: int) -> tuple[Vm, Vm, Vm]:
    """Networks 0..N-1 with gateways; vm1, vm2 (network 0) and rb (network 1), ACTIVE."""
    for k in range(n):
        system.add_network(k, gateway=True)
    vm1 = routed_vm(system, 1, *VM1, k=0)
    vm2 = system.lab.add_vm(2, VM2[0], VM2[1], f"{VM2[2]}/16", system.iface_id(VM2[0]))
    rb = routed_vm(system, 2, *RB, k=1)
    system.create_ports_wait([(0, *VM1), (0, *VM2), (1, *RB)])
    vm1.wait_reachable(vm2.ip, timeout=20)
    return vm1, vm2, rb


def settle(system: Any) -> float:
    """Seconds until the system says it applied everything (tenantnet: its data plane idle;
    OVN: ``--wait=hv sync``) and the switches' flow counts stayed the same over 1 s."""
    t0 = time.monotonic()
    time.sleep(0.2)  # the change has reached the data plane's queue
    system.wait_idle()
    settle_flows(system)
    return round(time.monotonic() - t0, 2)


def interface_to_ping(system: Any, router: str, src: Vm, dst: Vm, n: int) -> dict[str, Any]:
    """``n`` times: network 0's interface added while ``src`` pings ``dst`` (network 1).

    Each add starts from a settled system (`settle`: the previous remove is in the switches)
    in which ``src`` does not reach ``dst``; a reply before the call would measure nothing
    (None, and the run's ``error`` says so).  The add's flow-mods and phases are read once the
    system settled again, and the control plane's CPU from the call until then."""
    out: dict[str, Any] = {"ping_ms": [], "api_ms": [], "ping_every_s": PING_EVERY_S}
    dst.wait_reachable(gateway_ip(1), timeout=20)  # dst's own gateway is resolved
    phases = getattr(system, "interface_phases", None)
    for i in range(n):
        if i:
            system.remove_interface(router, 0)
        settle(system)
        run("ip", "-n", src.ns, "neigh", "flush", "dev", "eth0")
        if src.ping(dst.ip, count=1, timeout=0.5).received:
            out["error"] = "routed before the interface existed"
            out["ping_ms"].append(None)
            continue
        run("ip", "-n", src.ns, "neigh", "flush", "dev", "eth0")
        ping = ping_first_reply(src.ns, dst.ip, interval=PING_EVERY_S)
        time.sleep(0.3)
        before = phases() if phases else None
        fm0 = system.flow_mods_total()
        cpu0 = system.control_plane_cpu()
        t0 = time.time()
        system.add_interface(router, 0)
        out["api_ms"].append(round((time.time() - t0) * 1000, 2))
        tr = first_reply_time(ping)
        if tr is not None and tr < t0:
            out["error"] = "a reply came before the interface was added"
            tr = None
        out["ping_ms"].append(round((tr - t0) * 1000, 2) if tr else None)
        settle(system)
        # CPU in clock ticks until settled (the idle polls add ~3 ms per 0.2 s of wait)
        out.setdefault("cpu_ms", []).append(round((system.control_plane_cpu() - cpu0) * 1000))
        if phases:
            out.setdefault("phases_ms", []).append(phase_ms(before, phases()))
        if fm0 is not None:
            out.setdefault("flow_mods", []).append(system.flow_mods_total() - fm0)
    log(f"{system.name} add_router_interface -> first routed ping: {out['ping_ms']} ms "
        f"(call returned after {out['api_ms']} ms; CPU {out['cpu_ms']} ms; flow-mods "
        f"{out.get('flow_mods')}; "
        f"phases {out.get('phases_ms')})")
    return out


def new_pairs(system: Any, n_pairs: int, n_networks: int) -> dict[str, list[float | None]]:
    """``n_pairs`` times two new VMs on hv1 / hv2 in two routed networks: ports created in
    one call while the first pings the second; ready and first reply from the create."""
    ka, kb = pair_networks(n_networks)
    out: dict[str, list[float | None]] = {"ready_ms": [], "ping_ms": []}
    for i in range(1, n_pairs + 1):
        a = routed_vm(system, 1, f"ra{i}", f"0a:00:00:07:00:{i:02x}",
                      f"10.{100 + ka}.253.{i}", k=ka)
        b = routed_vm(system, 2, f"rc{i}", f"0a:00:00:07:01:{i:02x}",
                      f"10.{100 + kb}.253.{100 + i}", k=kb)
        time.sleep(0.3)
        ping = ping_first_reply(a.ns, b.ip, interval=PING_EVERY_S)
        time.sleep(0.3)
        t0 = time.time()
        dt = system.create_ports_wait([(ka, a.name, a.mac, a.ip), (kb, b.name, b.mac, b.ip)])
        tr = first_reply_time(ping)
        out["ready_ms"].append(round(dt * 1000, 2))
        out["ping_ms"].append(round((tr - t0) * 1000, 2) if tr else None)
        time.sleep(0.2)
    log(f"{system.name} new VM pair across the router: ready {out['ready_ms']} ms, "
        f"first ping {out['ping_ms']} ms")
    return out


_PMD_FIELDS = {"packets received": "packets", "packet recirculations": "recirculations",
               "emc hits": "emc_hits", "smc hits": "smc_hits", "megaflow hits": "megaflow_hits",
               "miss with success upcall": "upcalls", "miss with failed upcall": "failed_upcalls"}


def pmd_counts(text: str) -> dict[str, int]:
    """The counters of ``ovs-appctl dpif-netdev/pmd-stats-show``, summed over its threads."""
    out = dict.fromkeys(_PMD_FIELDS.values(), 0)
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in _PMD_FIELDS:
            out[_PMD_FIELDS[key]] += int(value.split()[0])
    return out


def per_packet(counts: dict[str, int], cpu_s: float, mbytes: float) -> dict[str, float | None]:
    """What a run cost the sender's and receiver's switches, per packet and per MB received:
    datapath passes (1 + recirculations), lookups that missed the EMC, upcalls; CPU ms/MB."""
    n = counts["packets"]
    if not n:
        return {"packets": 0}
    return {"packets": n,
            "passes_per_packet": round((n + counts["recirculations"]) / n, 3),
            "emc_miss_per_packet": round(
                (n + counts["recirculations"] - counts["emc_hits"]) / n, 4),
            "upcalls_per_packet": round(
                (counts["upcalls"] + counts["failed_upcalls"]) / n, 5),
            "switch_cpu_ms_per_mb": round(cpu_s * 1000 / mbytes, 2) if mbytes else None}


class _DatapathProbe:
    """Counters of the two switches a run crosses (hv1, hv2), cleared before and read after."""

    def __init__(self, lab: Any) -> None:
        self.hvs = lab.hvs[:2]

    def _cpu(self) -> float:
        return sum(cpu_seconds(hv._pid("ovs-vswitchd")) for hv in self.hvs)

    def start(self) -> None:
        for hv in self.hvs:
            hv.appctl("dpif-netdev/pmd-stats-clear")
        self.cpu0 = self._cpu()

    def stop(self, mbit_s: float, seconds: float) -> dict[str, float | None]:
        cpu = self._cpu() - self.cpu0
        total = dict.fromkeys(_PMD_FIELDS.values(), 0)
        for hv in self.hvs:
            for k, v in pmd_counts(hv.appctl("dpif-netdev/pmd-stats-show")).items():
                total[k] += v
        return per_packet(total, cpu, mbit_s * seconds / 8)


def run_order(systems: list[str], runs: int) -> list[tuple[str, str]]:
    """(system, "routed"|"bridged") in the order they run: each kind alternates the systems,
    and the system that goes first alternates run by run (ABBA), so that neither a stretch of
    load on the machine nor going first favours one system."""
    order = []
    for r in range(runs):
        names = systems if r % 2 == 0 else systems[::-1]
        for kind in ("routed", "bridged"):
            order += [(name, kind) for name in names]
    return order


def dataplane(vms: dict[str, tuple[Vm, Vm, Vm]], runs: int, seconds: float,
              probe: Any = _DatapathProbe) -> dict[str, dict[str, list[Any]]]:
    """iperf3 vm1 -> rb (routed) and vm1 -> vm2 (bridged) of every system whose lab is up
    (``vms``: system name -> its vm1, vm2, rb), in `run_order`; per run its `_DatapathProbe`
    counters under "datapath"."""
    for vm1, _vm2, rb in vms.values():
        rb.wait_reachable(vm1.ip, timeout=20)
    out: dict[str, dict[str, list[Any]]] = {
        name: {"routed": [], "bridged": [], "datapath": []} for name in vms}
    for name, kind in run_order(list(vms), runs):
        vm1, vm2, rb = vms[name]
        p = probe(vm1.lab)
        p.start()
        mbit = vm1.iperf(rb if kind == "routed" else vm2, seconds)
        out[name][kind].append(mbit)
        out[name]["datapath"].append({"kind": kind, **p.stop(mbit, seconds)})
    return out


def _tables(system: Any) -> list[dict[int, int]]:
    return [flows_by_table(hv) for hv in system.lab.hvs]


@contextlib.contextmanager
def routing_session(system: Any, sc: dict[str, Any]
                    ) -> Iterator[tuple[dict[str, Any], tuple[Vm, Vm, Vm]]]:
    """Measures 1-3 of one system on a fresh lab and control plane; yields its metrics and
    (vm1, vm2, rb) with everything still up (for the data plane), torn down on exit."""
    n = sc["N"]
    with fresh_system(system, sc) as m:
        vm1, vm2, rb = setup(system, n)
        m["bulk"] = bulk(system, sc["P"], n)
        settle(system)
        m["flows_before"] = flows_and_groups(system.lab)
        router = system.create_router()
        m["router"] = router
        for k in range(1, n):
            system.add_interface(router, k)
        m["if_add"] = interface_to_ping(system, router, vm1, rb, sc["if_adds"])
        m["settle_s"] = settle(system)
        m["flows"] = flows_and_groups(system.lab)
        m["flows_by_table"] = _tables(system)
        log(f"{system.name}: flows per host {m['flows_before']['flows']} before the router, "
            f"{m['flows']['flows']} with {n} subnets on it; by table {m['flows_by_table']}")
        m["pairs"] = new_pairs(system, sc["new_pairs"], n)
        log(f"{system.name} routing: interface -> ping median "
            f"{median(m['if_add']['ping_ms'])} ms, pair first ping median "
            f"{median(m['pairs']['ping_ms'])} ms")
        yield m, (vm1, vm2, rb)


def alternated_adds(sessions: dict[str, tuple[Any, str, Vm, Vm]], rounds: int,
                    measure: Any = None) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds of measure 1 (network 0's interface removed, then added while ``src``
    pings ``dst``: `interface_to_ping`) with every system's lab up (``sessions``: name ->
    system, its router, src, dst), one add per system per round and the system that goes first
    alternating round by round (ABBA).  Measured one session after the other, the two systems'
    adds were ~30 s apart, and this machine's pace moved both by up to 2x between such
    stretches (OVN's run medians 55 to 134 ms in one afternoon): alternated, each pair of adds
    meets the same minute."""
    measure = measure or interface_to_ping
    names = list(sessions)
    out: dict[str, dict[str, Any]] = {name: {"ping_ms": [], "api_ms": []} for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            system, router, src, dst = sessions[name]
            system.remove_interface(router, 0)
            res = measure(system, router, src, dst, 1)
            if res.get("error"):
                out[name]["error"] = res["error"]
            out[name]["ping_ms"] += res["ping_ms"]
            out[name]["api_ms"] += res["api_ms"]
    for name, res in out.items():
        log(f"{name} add_router_interface -> first routed ping, alternated: {res['ping_ms']} ms")
    return out


def run_routing_systems(systems: dict[str, Any], sc: dict[str, Any]
                        ) -> dict[str, dict[str, Any] | BaseException]:
    """One run of every system (name -> system): measures 1-3 one system after the other,
    each lab kept up, then the data plane of all of them interleaved (`dataplane`); every lab
    torn down at the end.  A system that fails gets its exception instead of its metrics; the
    others go on without it."""
    out: dict[str, dict[str, Any] | BaseException] = {}
    with contextlib.ExitStack() as stack:
        vms: dict[str, tuple[Vm, Vm, Vm]] = {}
        for name, system in systems.items():
            try:
                out[name], vms[name] = stack.enter_context(routing_session(system, sc))
            except Exception as exc:
                out[name] = exc
        if sc.get("if_adds_alternated") and len(vms) > 1:
            up = {name: (systems[name], out[name]["router"], vm1, rb)  # type: ignore[index]
                  for name, (vm1, _vm2, rb) in vms.items()}  # fmt: skip
            try:
                alt = alternated_adds(up, sc["if_adds_alternated"])
            except Exception as exc:
                alt = {name: {"ping_ms": [], "error": repr(exc)} for name in vms}
            for name, res in alt.items():
                m = out[name]
                assert isinstance(m, dict)
                m["if_add_alternated"] = res
        if sc.get("dataplane") and vms:
            try:
                dp = dataplane(vms, sc["iperf_runs"], sc["iperf_seconds"])
            except Exception as exc:
                for name in vms:
                    out[name] = exc
            else:
                for name, res in dp.items():
                    m = out[name]
                    assert isinstance(m, dict)
                    m["dataplane"] = res
                    log(f"{name} routed data plane: routed {res['routed']}, bridged "
                        f"{res['bridged']} Mbit/s; datapath {res['datapath']}")
    return out

