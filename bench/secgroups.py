"""Issue 14's measures, the same work for both systems: security groups.

Setup (one run, fresh lab): network k belongs to project ``sgp<k>``; every port with port
security is in its project's default group (Neutron's template: egress anywhere, ingress from
the group's members, IPv4 and IPv6). tenantnet gets this through its API; OVN gets what
Neutron's OVN driver writes (`bench.sut_ovn`: a port group per group, ACLs at 1002 with
``allow-related``, ``neutron_pg_drop``; northd derives the members' address sets).

1. **Flows per host**: P bulk ports (as measure 2), then five rules on every default group
   (`RULES`: two of them with a remote group), until the switches' flow counts are stable.
2. **Rule create -> enforced on all hosts**: a target VM on every host in a group with no
   ingress rule and a TCP listener; vm1 (hv1) tries to connect to all of them every
   `PROBE_EVERY_S` (2 ms: the probe's own resolution adds half of it on average, the same to
   both systems; 10 ms added ~5 ms to a ~20 ms figure); one ingress rule (tcp/port from vm1's
   address) is created; the time until the last target accepted a connection.  Before the
   first rule, a connection must fail (else the system does not filter and the row is n/a).
   A system that reports its own phases (tenantnet: `rule_phases`, from its /metrics) gets
   them per rule in ``phases_ms``: the POST inside the server, its durable commit, the
   data-plane step (plan, compile, send) and the mean barrier round trip.
3. **Port create -> ACTIVE in a group of G members**: network 0's default group is filled up to
   G members, then new ports join it one after the other as in measure 1 (ready and first ping
   to vm1, whose host must let the new member in by remote group).
4. **Data plane** (``sc["dataplane"]``): iperf3 vm1 -> vm2 across hosts through filtered ports
   and through a pair with port security off, interleaved; then new TCP connections per second
   (`bench.tcp_probe rate`) through both pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import REPO, count_flows, flows_and_groups, log, preplug_internal
from bench.scenario import bulk, fresh_system, latency, setup_base
from bench.stats import median
from lab.hypervisors import Vm
from lab.proc import base_env, ns_cmd

PROJECT = "sgp"
PROBE_PORT = 7000  # rule r opens PROBE_PORT + r
RATE_PORT = 7999
PROBE_EVERY_S = 0.002  # first-success: a new connect attempt per target this often


def rules(system: Any, k: int, groups: dict[int, str]) -> list[dict[str, Any]]:
    """The five rules added to network ``k``'s default group (two with a remote group: its
    own and the next project's)."""
    n = len(groups)
    return [
        {"direction": "ingress", "protocol": "tcp", "ports": (22, 22), "remote_ip": "0.0.0.0/0"},
        {"direction": "ingress", "protocol": "icmp", "remote_ip": "0.0.0.0/0"},
        {"direction": "ingress", "protocol": "tcp", "ports": (8000, 8080),
         "remote_ip": "10.0.0.0/8"},
        {"direction": "ingress", "protocol": "tcp", "ports": (5201, 5201),
         "remote_group": groups[k]},
        {"direction": "ingress", "protocol": "udp", "ports": (53, 53),
         "remote_group": groups[(k + 1) % n]},
    ]


def settle_flows(system: Any, timeout: float = 120) -> float:
    """Seconds until every host's flow count stayed the same over two looks 1 s apart."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        with ThreadPoolExecutor(max_workers=4) as ex:
            now = list(ex.map(count_flows, system.lab.hvs))
        if now == last:
            return round(time.monotonic() - t0, 2)
        last = now
        time.sleep(1.0)
    raise TimeoutError(f"{system.name}: flow counts still changing after {timeout} s")


def _probe_proc(vm: Vm, *args: str) -> subprocess.Popen:
    env = {**base_env(), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(ns_cmd(vm.ns, [sys.executable, "-m", "bench.tcp_probe", *args]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


class Servers:
    """``tcp_probe serve`` in each VM on the given ports (listening on return)."""

    def __init__(self, vms: list[Vm], ports: list[int]) -> None:
        self.procs = [_probe_proc(vm, "serve", vm.ip, *map(str, ports)) for vm in vms]
        for p in self.procs:
            line = p.stdout.readline() if p.stdout else ""
            if "READY" not in line:
                raise RuntimeError(f"tcp_probe serve did not start: {p.stderr.read()[-300:]}")

    def stop(self) -> None:
        for p in self.procs:
            p.communicate(input="", timeout=10)


def first_success(src: Vm, targets: list[Vm], port: int, action, timeout: float = 30
                  ) -> tuple[float | None, float]:
    """Start probing, run ``action()`` (wall time taken just before it); seconds from then
    until every target accepted a connection (None if one never did), and the action's own
    duration."""
    p = _probe_proc(src, "first-success", *(f"{t.ip}:{port}" for t in targets),
                    "--timeout", str(timeout), "--every", str(PROBE_EVERY_S))
    time.sleep(0.3)  # the interpreter is up and waiting for "go"
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    t0 = time.time()
    action()
    took = time.time() - t0
    out, err = p.communicate(timeout=timeout + 15)
    try:
        first = json.loads(out)["first"]
    except (ValueError, KeyError):
        raise RuntimeError(f"tcp_probe first-success failed: {err[-300:]}") from None
    if any(v is None for v in first.values()):
        return None, took
    return round(max(first.values()) - t0, 4), took


def rule_enforced(system: Any, src: Vm, n: int) -> dict[str, Any]:
    """``n`` times: one new ingress rule on the target group -> reachable on every host."""
    lab = system.lab
    group = system.create_group(0, "target")
    targets = []
    for h in range(1, len(lab.hvs) + 1):
        name, mac = f"tg{h}", f"0a:00:00:04:00:{h:02x}"
        targets.append(lab.add_vm(h, name, mac, f"10.100.250.{h}/16", system.iface_id(name)))
    system.create_ports_wait([(0, vm.name, vm.mac, vm.ip) for vm in targets], groups=[group])
    ports = [PROBE_PORT + r for r in range(n + 1)]
    servers = Servers(targets, ports)
    out: dict[str, Any] = {"enforced_s": [], "api_s": [], "probe_every_s": PROBE_EVERY_S}
    phases = getattr(system, "rule_phases", None)
    try:
        # precondition: without a rule nothing gets in (else the row would measure nothing)
        before, _ = first_success(src, targets[:1], ports[-1], lambda: None, timeout=1.5)
        if before is not None:
            out["error"] = "not filtered: a connection passed before any rule allowed it"
            log(f"{system.name}: {out['error']}")
            return out
        for r in range(n):
            rule = {"direction": "ingress", "protocol": "tcp", "ports": (ports[r], ports[r]),
                    "remote_ip": f"{src.ip}/32"}
            before = phases() if phases else None
            t, took = first_success(src, targets, ports[r],
                                    lambda rule=rule: system.add_rule(group, **rule))
            out["enforced_s"].append(t)
            out["api_s"].append(round(took, 4))
            if phases:
                out.setdefault("phases_ms", []).append(phase_ms(before, phases()))
            time.sleep(0.3)
    finally:
        servers.stop()
    log(f"{system.name} rule create -> enforced on {len(targets)} hosts: {out['enforced_s']}"
        f" (POST returned after {out['api_s']}; phases {out.get('phases_ms')})")
    return out


def phase_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
              ) -> dict[str, float | None]:
    """Milliseconds per phase between two `rule_phases` readings: totals, except the barrier
    (the mean round trip: the hosts' barriers run in parallel)."""
    out: dict[str, float | None] = {}
    for phase, (n1, s1) in after.items():
        n0, s0 = before[phase]
        n, secs = n1 - n0, s1 - s0
        if phase == "barrier":
            out[phase] = round(secs / n * 1000, 2) if n else None
        else:
            out[phase] = round(secs * 1000, 2)
    return out


def fill_group(system: Any, members: int, have: int) -> None:
    """Network 0's default group up to ``members``: pre-plugged internal ports over the
    hosts (10.100.240.0/20), created in one bulk."""
    lab = system.lab
    h = len(lab.hvs)
    specs = []
    for i in range(max(0, members - have)):
        name = f"gm{i}"
        specs.append((i % h + 1, name, f"0a:c0:00:00:{i >> 8:02x}:{i & 255:02x}",
                      f"10.100.{240 + i // 250}.{i % 250 + 2}"))
    per_hv: dict[int, list[tuple[str, str]]] = {}
    for hv_n, name, _mac, _ip in specs:
        per_hv.setdefault(hv_n, []).append((name, system.iface_id(name)))
    for n, ports in per_hv.items():
        preplug_internal(lab.hv(n), ports)
    if specs:
        system.create_ports_wait([(0, name, mac, ip) for _h, name, mac, ip in specs])


def _iperf_pairs(pairs: dict[str, tuple[Vm, Vm]], runs: int, seconds: float
                 ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in pairs}
    for _ in range(runs):
        for k, (a, b) in pairs.items():
            out[k].append(a.iperf(b, seconds))
    return out


def conn_rate(src: Vm, dst: Vm, seconds: float) -> dict[str, Any]:
    servers = Servers([dst], [RATE_PORT])
    try:
        p = _probe_proc(src, "rate", dst.ip, str(RATE_PORT), "--seconds", str(seconds))
        out, err = p.communicate(input="", timeout=seconds + 30)
    finally:
        servers.stop()
    try:
        res = json.loads(out)
    except ValueError:
        raise RuntimeError(f"tcp_probe rate failed: {err[-300:]}") from None
    res["per_s"] = round(res["connections"] / res["seconds"], 1) if res["seconds"] else None
    return res


def dataplane(system: Any, vms: list[Vm], runs: int, seconds: float) -> dict[str, Any]:
    """Filtered pair (vm1, vm2: default group) vs a pair with port security off (nf1, nf2)."""
    lab = system.lab
    nf = [lab.add_vm(hv, name, mac, f"{ip}/16", system.iface_id(name)) for hv, name, mac, ip in
          ((1, "nf1", "0a:00:00:05:00:01", "10.100.249.1"),
           (2, "nf2", "0a:00:00:05:00:02", "10.100.249.2"))]  # fmt: skip
    system.create_ports_wait([(0, vm.name, vm.mac, vm.ip) for vm in nf], port_security=False)
    nf[0].wait_reachable(nf[1].ip, timeout=20)
    vms[0].wait_reachable(vms[1].ip, timeout=20)
    pairs = {"filtered": (vms[0], vms[1]), "unfiltered": (nf[0], nf[1])}
    out: dict[str, Any] = {"iperf": _iperf_pairs(pairs, runs, seconds)}
    out["conn"] = {k: conn_rate(a, b, seconds) for k, (a, b) in pairs.items()}
    log(f"{system.name} SG data plane: {out}")
    return out


def run_secgroups(system: Any, sc: dict[str, Any]) -> dict[str, Any]:
    """One run on a fresh lab and control plane; torn down at the end."""
    with fresh_system(system, sc) as m:
        system.enable_security_groups()
        vms = setup_base(system, sc["N"], project_prefix=PROJECT)
        m["bulk"] = bulk(system, sc["P"], sc["N"])
        groups = {k: system.default_group(k) for k in range(sc["N"])}
        t0 = time.monotonic()
        for k in range(sc["N"]):
            for rule in rules(system, k, groups):
                system.add_rule(groups[k], **rule)
        m["rules_api_s"] = round(time.monotonic() - t0, 3)
        m["settle_s"] = settle_flows(system)
        m["flows"] = flows_and_groups(system.lab)
        log(f"{system.name}: SG flows per host {m['flows']['flows']}")
        vms[0].wait_reachable(vms[1].ip, timeout=20)
        m["rule"] = rule_enforced(system, vms[0], sc["rule_probes"])
        in_group = 2 + len([i for i in range(sc["P"]) if (i // sc["H"]) % sc["N"] == 0])
        fill_group(system, sc["group_size"], in_group)
        m["group_size"] = max(sc["group_size"], in_group)
        m["join"] = latency(system, vms, sc["join_ports"],
                            f"port-ready in a group of {m['group_size']}")
        if sc.get("dataplane"):
            m["dataplane"] = dataplane(system, vms, sc["iperf_runs"], sc["iperf_seconds"])
        log(f"{system.name} SG: rule->enforced median {median(m['rule']['enforced_s'])} s, "
            f"join ready median {median(m['join']['ready_ms'])} ms")
    return m
