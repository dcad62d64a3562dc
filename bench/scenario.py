"""The work both systems get, written once against the small interface of `bench.sut_*`.

Addressing (network k = tenantnet network / OVN logical switch ``bls<k>``, 10.<100+k>.0.0/16):

* vm1 on hv1 = 10.100.255.1, vm2 on hv2 = 10.100.255.2 (network 0; real namespaces);
* latency VMs ``lat<i>`` = 10.100.254.<i> on hv2..hvH, round robin (network 0; namespaces);
* bulk port ``bp<i>`` on hv ``i % H + 1``, network ``(i // H) % N``, j-th of its network =
  10.<100+k>.<j // 250>.<j % 250 + 2>: OVS internal ports (no namespace), pre-plugged.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import (
    ConfirmTimeout,
    first_reply_time,
    flow_set,
    flows_and_groups,
    fresh_flows,
    log,
    ping_first_reply,
    preplug_internal,
    static_neigh,
)
from lab.hypervisors import Vm
from lab.proc import base_env, ns_cmd

VM1 = ("vm1", "0a:00:00:00:00:01", "10.100.255.1")
VM2 = ("vm2", "0a:00:00:00:00:02", "10.100.255.2")


def bulk_port(i: int, h: int, n: int) -> tuple[int, int, str, str, str]:
    """(host number, network index, name, mac, ip) of bulk port ``i``."""
    k = (i // h) % n
    j = (i // (h * n)) * h + i % h
    mac = f"0a:b0:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    return i % h + 1, k, f"bp{i}", mac, f"10.{100 + k}.{j // 250}.{j % 250 + 2}"


def setup_base(system: Any, n_networks: int, project_prefix: str | None = None) -> list[Vm]:
    """Networks 0..N-1, vm1 (hv1) and vm2 (hv2) in network 0, reachable from each other.
    With ``project_prefix``, network k belongs to project ``<prefix><k>`` (else "bench")."""
    for k in range(max(1, n_networks)):
        if project_prefix:
            system.add_network(k, project=f"{project_prefix}{k}")
        else:
            system.add_network(k)
    vms = []
    for hv_n, (name, mac, ip) in ((1, VM1), (2, VM2)):
        vm = system.lab.add_vm(hv_n, name, mac, f"{ip}/16", system.iface_id(name))
        system.create_ports_wait([(0, name, mac, ip)])
        vms.append(vm)
    vms[0].wait_reachable(vms[1].ip, timeout=20)
    return vms


def latency(system: Any, vms: list[Vm], n: int, tag: str) -> dict[str, list[float]]:
    """``n`` new ports, one after the other, each with its VM already plugged and pinging vm1
    (on hv1) every 5 ms: time to flows confirmed (a) and to the first ping reply (b)."""
    out = latency_record()
    for vm in plug_latency_vms(system, vms, n):
        one_port_latency(system, vms[0], vm, out)
    log(f"{system.name} {tag}: {n} ports, ready ms {out['ready_ms']}, ping ms {out['ping_ms']}")
    return out


def latency_record() -> dict[str, list[float]]:
    """What `one_port_latency` appends to, per port."""
    return {"ready_ms": [], "ping_ms": [], "flow_mods": [], "cpu_ms": [], "api_ms": []}


def plug_latency_vms(system: Any, vms: list[Vm], n: int) -> list[Vm]:
    """``n`` VMs plugged on hv2..hvH in turn (hv1 if alone), each with static neighbours to
    and from vm1 (``vms[0]``), for ports not created yet; after half a second to settle."""
    lab, vm1 = system.lab, vms[0]
    h = len(lab.hvs)
    lat = []
    for i in range(1, n + 1):
        hv_n = 2 + (i - 1) % (h - 1) if h > 1 else 1
        name, mac, ip = f"lat{i}", f"0a:00:00:01:{i >> 8:02x}:{i & 255:02x}", f"10.100.254.{i}"
        vm = lab.add_vm(hv_n, name, mac, f"{ip}/16", system.iface_id(name))
        # static neighbours both ways: measure the controller, not ARP retry timers
        static_neigh(vm.ns, vm1.ip, vm1.mac)
        static_neigh(vm1.ns, ip, mac)
        lat.append(vm)
    time.sleep(0.5)
    return lat


def one_port_latency(system: Any, vm1: Vm, vm: Vm, out: dict[str, list[float]]) -> None:
    """Create the port of plugged ``vm`` while it pings ``vm1`` every 5 ms: create -> ready,
    -> first ping reply, the POST alone (tenantnet), flow-mods and control-plane CPU, appended
    to ``out`` (`latency_record`)."""
    ping = ping_first_reply(vm.ns, vm1.ip)
    time.sleep(0.1)
    fm0 = system.flow_mods_total()
    cpu0 = system.control_plane_cpu()
    t0 = time.time()
    dt = system.create_ports_wait([(0, vm.name, vm.mac, vm.ip)])
    # CPU in clock ticks (10 ms), so one port's figure is coarse; their mean over the
    # ports is what the table shows.
    out["cpu_ms"].append(round((system.control_plane_cpu() - cpu0) * 1000, 1))
    fm1 = system.flow_mods_total()
    tr = first_reply_time(ping)
    out["ready_ms"].append(round(dt * 1000, 2))
    api_s = getattr(system, "last_api_s", None)  # tenantnet: until the POST was answered
    if api_s is not None:
        out["api_ms"].append(round(api_s * 1000, 2))
    out["ping_ms"].append(round((tr - t0) * 1000, 2) if tr else None)
    if fm0 is not None and fm1 is not None:
        out["flow_mods"].append(fm1 - fm0)
    time.sleep(0.2)


def bulk(system: Any, p: int, n_networks: int) -> dict[str, Any]:
    """P pre-plugged ports over the hosts and N networks, created at once; time until ready."""
    lab = system.lab
    h = len(lab.hvs)
    specs = [bulk_port(i, h, n_networks) for i in range(p)]
    per_hv: dict[int, list[tuple[str, str]]] = {}
    for hv_n, _k, name, _mac, _ip in specs:
        per_hv.setdefault(hv_n, []).append((name, system.iface_id(name)))
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as ex:
        for f in [ex.submit(preplug_internal, lab.hv(n), ports) for n, ports in per_hv.items()]:
            f.result()
    log(f"{system.name}: {p} internal ports pre-plugged in {time.monotonic() - t0:.1f} s")
    time.sleep(2)  # let each system see the interfaces (they have no port yet)
    cpu0 = system.control_plane_cpu()
    try:
        secs = system.create_ports_wait([(k, name, mac, ip) for _h, k, name, mac, ip in specs],
                                        timeout=max(120, p * 0.06))
    except ConfirmTimeout as exc:
        log(f"{system.name}: bulk {p} ports NOT confirmed: {exc}")
        return {"seconds": None, "ports_per_s": None, "error": str(exc),
                "control_plane_cpu_s": round(system.control_plane_cpu() - cpu0, 2)}
    cpu = system.control_plane_cpu() - cpu0
    log(f"{system.name}: bulk {p} ports over {h} hosts / {n_networks} networks in {secs:.2f} s "
        f"({p / secs:.0f} ports/s, control plane CPU {cpu:.1f} s)")
    api_s = getattr(system, "last_api_s", None)
    return {"seconds": round(secs, 3), "ports_per_s": round(p / secs, 1),
            "control_plane_cpu_s": round(cpu, 2),
            "api_s": round(api_s, 3) if api_s is not None else None}


class _Ping:
    """``ping -D -i interval`` in the background; losses counted from icmp_seq gaps so that the
    echo still in flight when it is stopped does not count as lost."""

    def __init__(self, ns: str, ip: str, interval: float = 0.01) -> None:
        self.proc = subprocess.Popen(
            ns_cmd(ns, ["ping", "-n", "-D", "-i", f"{interval:g}", "-W", "1", ip]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, env=base_env())

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        sent = int(m.group(1)) if m else 0
        replies = [(float(a), int(b)) for a, b in
                   re.findall(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", out, re.M)]
        seqs = {s for _, s in replies}
        last = max(seqs) if seqs else 0
        lost = len(set(range(1, last + 1)) - seqs) + max(0, sent - last - 1)
        gap = max((b[0] - a[0] for a, b in itertools.pairwise(replies)),
                  default=0.0)
        return {"sent": sent, "received": len(seqs), "lost": lost,
                "max_gap_ms": round(gap * 1000, 1)}


def restart(system: Any, vms: list[Vm], down_s: float = 1.0) -> dict[str, Any]:
    """kill -9 the controller (tenantnet: the controller; OVN: ovn-controller of hv2) while vm1
    pings vm2 every 10 ms, restart it after ``down_s``, wait until reconciled."""
    hv2 = system.lab.hv(2)
    ping = _Ping(vms[0].ns, vms[1].ip)
    time.sleep(1.5)
    before = flow_set(hv2)
    t_kill = time.monotonic()
    system.kill_controller(2)
    time.sleep(down_s)
    res = system.start_controller(2, before)
    time.sleep(1.0)
    fresh = fresh_flows(hv2, time.monotonic() - t_kill)
    after = flow_set(hv2)
    p = ping.stop()
    out = {**p, **res, "fresh_flows": fresh, "flows_before": len(before),
           "flows_after": len(after), "flows_changed": len(before ^ after),
           "flows_gone_sample": sorted(before - after)[:5],
           "flows_new_sample": sorted(after - before)[:5]}
    log(f"{system.name} restart: {out}")
    return out


@contextlib.contextmanager
def fresh_system(system: Any, sc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One run of a scenario: start ``system`` on a fresh lab, yield the run's metrics dict
    (``elapsed_s`` is added at the end), log the control plane's tail on failure, tear down."""
    t0 = time.monotonic()
    try:
        system.start()  # inside: a start that fails half-way still frees its lab
        m: dict[str, Any] = {"hosts": sc["H"]}
        yield m
        m["elapsed_s"] = round(time.monotonic() - t0, 1)
    except BaseException:
        log(f"{system.name} {sc['name']} failed; control plane log tail:\n{system.log_tail()}")
        raise
    finally:
        system.stop()


def run_scenario(system: Any, sc: dict[str, Any]) -> dict[str, Any]:
    """One run of one scenario on a fresh lab + control plane; torn down at the end."""
    with fresh_system(system, sc) as m:
        vms = setup_base(system, sc["N"])
        if sc.get("lat_before"):
            m["lat_before"] = latency(system, vms, sc["lat_before"], f"{sc['name']} latency")
        if sc.get("P"):
            m["bulk"] = bulk(system, sc["P"], sc["N"])
            m["flows"] = flows_and_groups(system.lab)
            m["rss_kb"] = system.control_plane_rss()
            vms[0].wait_reachable(vms[1].ip, timeout=20)
        if sc.get("lat_after"):
            m["lat_after"] = latency(system, vms, sc["lat_after"],
                                     f"{sc['name']} latency after P={sc['P']}")
        if sc.get("restart"):
            m["restart"] = restart(system, vms)
    return m


def dataplane(tn: Any, ovn: Any, runs: int, seconds: float) -> dict[str, list[float]]:
    """iperf3 TCP vm1(hv1) -> vm2(hv2) through tenantnet, OVN and the hand-written baseline
    (in the OVN lab with its ovn-controllers stopped), interleaved run by run."""
    out: dict[str, list[float]] = {"tenantnet": [], "ovn": [], "baseline": []}
    tn.start()
    try:
        ovn.start()
        tvms = setup_base(tn, 1)
        ovms = setup_base(ovn, 1)
        for r in range(runs):
            out["tenantnet"].append(tvms[0].iperf(tvms[1], seconds))
            out["ovn"].append(ovms[0].iperf(ovms[1], seconds))
            ovn.baseline_on(ovms)
            try:
                ovms[0].wait_reachable(ovms[1].ip, timeout=10)
                out["baseline"].append(ovms[0].iperf(ovms[1], seconds))
            finally:
                ovn.baseline_off(ovms)
            ovms[0].wait_reachable(ovms[1].ip, timeout=20)
            log(f"data plane run {r + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in out.items()))
        return out
    finally:
        ovn.stop()
        tn.stop()
