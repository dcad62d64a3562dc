"""tenantnet's DHCP renewal load, several times on one lab: ``python -m bench.dhcp_probe``.

The bench measures the renewal load once per run (issue 15, measure 8b) next to OVN; tuning the
controller's per-message cost needs a median over several loads and the CPU each renewal costs.
This sets up tenantnet alone (H=3, DHCP on, ``--vms`` VMs over the hosts, the packet-in meter and
the per-port guard raised as the bench does) in the first free integration-test lab slot from
the top (so it runs beside the bench and the tests), optionally takes ``--leases`` udhcpc leases
per VM (the server's share, as the bench), then runs ``bench.dhcp_load`` in every VM for
``--seconds``, ``--runs`` times.  Per run: ACKs/s, lost, the controller's CPU seconds, CPU per
renewal (us) and per thread (user, system), its packet-in counters' change.  ``--profile DIR``
records each load with py-spy (raw collapsed stacks by thread, ``--gil`` unless ``--all``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, loadavg, log
from bench.dhcp_arp import DhcpLoad, dhcp_vms, lease_latency
from bench.scenario import setup_base
from bench.stats import median
from bench.sut_tenantnet import TenantnetSystem
from lab import plans
from lab.hypervisors import LabBusy


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def thread_names(pid: int) -> dict[str, str]:
    """Native thread id -> Python thread name (``py-spy dump``; the kernel's comm of every
    Python thread is "python").  The switches' receive threads ``ofp-<address>`` count as one."""
    try:
        out = subprocess.run([_py_spy(), "dump", "-p", str(pid)], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for m in re.finditer(r'^Thread (?:0x[0-9A-Fa-f]+|(\d+)) \(\w+\): "([^"]*)"', out, re.M):
        if m.group(1):
            names[m.group(1)] = "ofp-*" if m.group(2).startswith("ofp-") else m.group(2)
    return names


def thread_cpu(pid: int, names: dict[str, str]) -> dict[str, list[float]]:
    """CPU seconds [user, system] of each thread of ``pid`` by its name in ``names``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, list[float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(task.name, "other")
        cpu = out.setdefault(name, [0.0, 0.0])
        cpu[0] += int(fields[11]) / tick
        cpu[1] += int(fields[12]) / tick
    return out


def start_system(meter_pps: int) -> TenantnetSystem:
    extra = ("--packet-in-rate-pps", str(meter_pps), "--packet-in-burst",
             str(max(100, meter_pps // 10)), "--dhcp-port-max-pps", str(meter_pps))
    for i in reversed(range(plans.SLOT_COUNT)):
        system = TenantnetSystem(3, lab_kwargs=plans.slot(i).lab_kwargs(), extra_args=extra)
        try:
            system.start()
        except LabBusy:
            continue
        return system
    raise SystemExit("no free lab slot")


def one_load(system: TenantnetSystem, vms: list[Any], seconds: float, window: int,
             profile: str | None, gil: bool, i: int) -> dict[str, Any]:
    assert system.ctl is not None and system.ctl.proc is not None
    pid = system.ctl.proc.pid
    before = system.packet_in_counters()
    spy = None
    if profile:
        spy = subprocess.Popen([_py_spy(), "record", "-p", str(pid), "-r", "500", "-f", "raw",
                                "-o", f"{profile}/dhcp{i}.txt", "--threads",
                                *(("--gil",) if gil else ())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = thread_names(pid)
    threads0 = thread_cpu(pid, names)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    load = DhcpLoad(vms, system.dhcp_server(0), window)
    time.sleep(seconds)
    res = load.stop()
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    threads = {name: [round(u - threads0.get(name, [0.0, 0.0])[0], 2),
                      round(s - threads0.get(name, [0.0, 0.0])[1], 2)]
               for name, (u, s) in thread_cpu(pid, names).items()}
    if spy is not None:
        spy.send_signal(2)
        spy.wait(20)
    after = system.packet_in_counters()
    res["cpu_s"] = round(cpu, 2)
    res["cores"] = round(cpu / wall, 2)
    res["cpu_us_per_ack"] = round(cpu / res["acks"] * 1e6, 1) if res["acks"] else None
    res["threads_user_sys_s"] = {k: v for k, v in threads.items() if sum(v) > 0}
    res["packet_in"] = {k: after[k] - before.get(k, 0) for k in after}
    res["load"] = loadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--vms", type=int, default=6)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--leases", type=int, default=0, help="udhcpc leases per VM first")
    ap.add_argument("--meter-pps", type=int, default=20_000)
    ap.add_argument("--profile", metavar="DIR", help="py-spy record each load into DIR")
    ap.add_argument("--all", action="store_true", help="profile every thread, not --gil")
    args = ap.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    system = start_system(args.meter_pps)
    try:
        setup_base(system, 1)
        system.enable_dhcp(0)
        vms = dhcp_vms(system, args.vms)
        out: dict[str, Any] = {}
        if args.leases:
            lease = lease_latency(vms, args.leases, system.lab.workdir)
            out["leases"] = {k: median(v) for k, v in lease.items()}
            log(f"leases (median ms): {out['leases']}")
        rows = []
        for i in range(args.runs):
            row = one_load(system, vms, args.seconds, args.window, args.profile,
                           not args.all, i)
            log(f"load {i}: {json.dumps(row)}")
            rows.append(row)
        out["runs"] = rows
        out["median"] = {k: statistics.median(r[k] for r in rows if r[k] is not None)
                         for k in ("acks_per_s", "cpu_us_per_ack", "cores", "lat_ms_median")}
        print(json.dumps(out, indent=1))
    finally:
        system.stop()


if __name__ == "__main__":
    main()
