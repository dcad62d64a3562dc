"""Controller restart -> reconciled, several times on one lab: ``python -m bench.restart_probe``.

The bench measures a restart once per run; tuning the restart path needs a median over many.
This sets up the quick bench's main scenario for tenantnet (H=3, 4 networks, vm1/vm2 pinging,
60 pre-plugged ports), then kills the controller (SIGKILL) under a 10 ms ping and starts it
again ``--runs`` times.  Per restart: ``reconciled_after_s`` (from the data plane's start, as in
the bench), the wall time from exec to reconciled, the controller's CPU seconds until
reconciled (all of it with Python's start-up, since its API answered, and since the data plane
started: what the reconnect itself costs, the figure least skewed by other load on the
machine), flow-mods sent and pings lost.  It waits on the controller's log, not by polling it.
``--profile DIR`` records each restart with py-spy (collapsed stacks per thread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, loadavg, log
from bench.scenario import _Ping, bulk, setup_base
from bench.sut_tenantnet import (
    TenantnetSystem,
    log_says_reconciled,
    log_size,
    wait_reconciled_quietly,
)
from lab import plans


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def one_restart(system: TenantnetSystem, vms: list[Any], profile: str | None, i: int) -> dict:
    ctl = system.ctl
    assert ctl is not None and ctl.proc is not None
    ping = _Ping(vms[0].ns, vms[1].ip)
    time.sleep(1.0)
    system.kill_controller(2)
    time.sleep(1.0)
    t0 = time.monotonic()
    offset = log_size(ctl)
    ctl.start()
    t_api = time.monotonic() - t0
    pid = ctl.proc.pid
    cpu_api = cpu_seconds(pid)
    spy = None
    if profile:
        spy = subprocess.Popen([_py_spy(), "record", "-p", str(pid), "-r", "250", "-f",
                                "raw", "-o", f"{profile}/restart{i}.txt", "--threads",
                                "--gil"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not log_says_reconciled(ctl, offset) and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid)  # before the status request, which costs the controller CPU too
    st = wait_reconciled_quietly(ctl, offset, 60)
    cpu_window = cpu - st["startup_cpu_s"]
    time.sleep(1.5)
    if spy is not None:
        spy.send_signal(2)
        spy.wait(10)
    st = ctl.api.status()
    p = ping.stop()
    return {"reconciled_after_s": st["reconciled_after_s"], "wall_s": round(wall, 3),
            "api_up_s": round(t_api, 3), "cpu_s": round(cpu, 2),
            "cpu_after_api_s": round(cpu - cpu_api, 2),
            "cpu_dataplane_s": round(cpu_window, 2),
            "mods": int(st["flow_mods"]) + int(st["group_mods"]), "lost": p["lost"],
            "load": loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ports", type=int, default=60)
    ap.add_argument("--nice", type=int, default=0,
                    help="run the restarted controller at this nice value (e.g. -10: as if the "
                         "machine's other load were not there; root only)")
    ap.add_argument("--log", action="store_true", help="print the controller's log of each restart")
    ap.add_argument("--profile", metavar="DIR", help="py-spy record each restart into DIR")
    ap.add_argument("--slot", type=int, metavar="N",
                    help="use integration-test lab slot N (lab/plans.py) instead of the bench's "
                         "own addresses, e.g. while a bench runs")
    args = ap.parse_args()
    if args.profile and not Path(_py_spy()).exists():
        raise SystemExit("py-spy not found (pip install py-spy)")
    plan = plans.BENCH_TENANTNET if args.slot is None else plans.slot(args.slot)
    system = TenantnetSystem(3, lab_kwargs=plan.lab_kwargs())
    system.start()
    try:
        vms = setup_base(system, 4)
        if args.ports:
            bulk(system, args.ports, 4)
        vms[0].wait_reachable(vms[1].ip, timeout=20)
        if args.nice and system.ctl is not None:
            wrapper = Path(system.ctl.state_dir) / "nice-python"
            wrapper.write_text(f"#!/bin/sh\nexec nice -n {args.nice} {sys.executable} \"$@\"\n")
            wrapper.chmod(0o755)
            system.ctl.python = str(wrapper)
        rows = []
        for i in range(args.runs):
            row = one_restart(system, vms, args.profile, i)
            log(f"restart {i}: {json.dumps(row)}")
            if args.log and system.ctl is not None:
                print(system.ctl.log_tail(40), file=sys.stderr)
                for hv in system.lab.hvs:  # the switches' side: rconn's connecting/connected
                    lines = hv.log_tail(lines=200).splitlines()
                    print(f"{hv.name}:", *[ln for ln in lines if "br-int<->" in ln][-6:],
                          sep="\n  ", file=sys.stderr)
            rows.append(row)
        summary = {k: statistics.median(r[k] for r in rows)
                   for k in ("reconciled_after_s", "wall_s", "cpu_s", "cpu_after_api_s",
                             "cpu_dataplane_s")}
        summary |= {"max_reconciled_after_s": max(r["reconciled_after_s"] for r in rows),
                    "mods": sum(r["mods"] for r in rows), "lost": sum(r["lost"] for r in rows)}
        print(json.dumps({"runs": rows, "median": summary}, indent=1))
    finally:
        system.stop()


if __name__ == "__main__":
    main()
