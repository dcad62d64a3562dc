"""Helpers shared by both systems under test: machine info, OpenFlow counts, RSS, ping timing."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import plans
from lab.hypervisors import Hypervisor, Lab
from lab.proc import base_env, run, terminate

REPO = Path(__file__).resolve().parents[1]

# Address plan (see bench/README.md): tenantnet and OVN each get their own lab prefix.
TN_LAB = plans.BENCH_TENANTNET.lab_kwargs()
OVN_LAB = plans.BENCH_OVN.lab_kwargs()
HA_TN_LAB = plans.BENCH_HA_TENANTNET.lab_kwargs()  # the clustered scenario's (bench/ha.py)
HA_OVN_LAB = plans.BENCH_HA_OVN.lab_kwargs()

_DURATION_RE = re.compile(r"duration=([0-9.]+)s")
_TABLE_RE = re.compile(r"\btable=(\d+)")


def gateway_ip(k: int) -> str:
    """Network ``k``'s gateway (its subnet 10.<100+k>.0.0/16's first address, Neutron's
    default), the address its router interface takes in the routing scenario."""
    return f"10.{100 + k}.0.1"


class ConfirmTimeout(RuntimeError):
    """The control plane did not confirm a change in time (the bench records it and goes on)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- machine/versions


def _out(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              env=base_env(), cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _out("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "loadavg_start": loadavg(),
    }


def versions() -> dict[str, Any]:
    sha = _out("git", "rev-parse", "--short=12", "HEAD")
    dirty = _out("git", "status", "--porcelain", "--untracked-files=no", "--", "controller",
                 "flows")
    try:
        from importlib.metadata import version

        osken = version("os-ken")
    except Exception:
        osken = "?"
    ovs = _out("ovs-vsctl", "--version").splitlines()
    ovn = _out("ovn-nbctl", "--version").splitlines()
    return {
        "tenantnet": (sha + ("+dirty(controller/flows)" if dirty else "")) or "?",
        "ovs": ovs[0].split()[-1] if ovs else "?",
        "ovn": ovn[0].split()[-1] if ovn else "not installed",
        "python": platform.python_version(),
        "os_ken": osken,
        "iperf3": (_out("iperf3", "--version").splitlines() or ["?"])[0],
    }


# ---------------------------------------------------------------------------- processes


def rss_kb(pid: int | None) -> int:
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------------------- OpenFlow state


def count_flows(hv: Hypervisor) -> int:
    out = hv.ofctl("dump-flows", "br-int", timeout=60)
    return sum(1 for line in out.splitlines() if "actions=" in line)


def flows_by_table(hv: Hypervisor) -> dict[int, int]:
    """``{table id: flows}`` of br-int (what `count_flows` counts, per table)."""
    out: dict[int, int] = {}
    for line in hv.ofctl("dump-flows", "br-int", timeout=60).splitlines():
        if "actions=" in line:
            m = _TABLE_RE.search(line)
            t = int(m.group(1)) if m else 0
            out[t] = out.get(t, 0) + 1
    return out


def count_groups(hv: Hypervisor) -> int:
    out = hv.ofctl("dump-groups", "br-int", timeout=60)
    return sum(1 for line in out.splitlines() if "group_id=" in line)


def flows_and_groups(lab: Lab) -> dict[str, list[int]]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        flows = list(ex.map(count_flows, lab.hvs))
        groups = list(ex.map(count_groups, lab.hvs))
    return {"flows": flows, "groups": groups}


def flow_set(hv: Hypervisor) -> set[str]:
    """Flows without stats and cookies (to compare before/after a restart)."""
    return {re.sub(r"cookie=0x[0-9a-f]+, ", "", f) for f in hv.dump_flows()}


def fresh_flows(hv: Hypervisor, younger_than_s: float) -> int:
    """Flows (re)installed in the last ``younger_than_s`` seconds (their ``duration``)."""
    out = hv.ofctl("dump-flows", "br-int", timeout=60)
    n = 0
    for line in out.splitlines():
        m = _DURATION_RE.search(line)
        if m and float(m.group(1)) < younger_than_s:
            n += 1
    return n


# ---------------------------------------------------------------------------- ping timing


def ping_first_reply(ns: str, ip: str, interval: float = 0.005,
                     deadline: float = 20) -> subprocess.Popen:
    """``ping -D -i interval -c 1 -w deadline`` in ``ns``: exits at the first reply."""
    cmd = ["ip", "netns", "exec", ns, "ping", "-n", "-D", "-i", f"{interval:g}", "-c", "1",
           "-w", f"{deadline:g}", ip]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=base_env())


def first_reply_time(proc: subprocess.Popen, timeout: float = 30) -> float | None:
    """Wall-clock time (time.time()) of the first reply of a `ping_first_reply`, or None."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate([proc.pid], grace=1)
        out = ""
    for line in (out or "").splitlines():
        m = re.match(r"^\[(\d+\.\d+)\].*bytes from", line)
        if m:
            return float(m.group(1))
    return None


def static_neigh(ns: str, ip: str, mac: str) -> None:
    run("ip", "-n", ns, "neigh", "replace", ip, "lladdr", mac, "nud", "permanent", "dev", "eth0")


def preplug_internal(hv: Hypervisor, ports: list[tuple[str, str]], chunk: int = 250) -> None:
    """Add OVS internal ports (name, iface-id) to br-int: VM interfaces without a namespace."""
    for i in range(0, len(ports), chunk):
        args: list[str] = []
        for name, iface_id in ports[i:i + chunk]:
            args += ["--", "--may-exist", "add-port", "br-int", name, "--", "set", "Interface",
                     name, "type=internal", f"external_ids:iface-id={iface_id}"]
        hv.vsctl(*args, timeout=300)
