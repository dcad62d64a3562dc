"""The Mininet topologies of ``mininet_topos/`` end to end, as a user runs them.

Each test runs a topology script with Debian's ``/usr/bin/python3`` (where Mininet lives) in a
subprocess and checks, from the outside:

* the exit code and the printed ping matrix: one row and one column per VM, every cell
  ``expected/observed`` with observed reachability == "same tenant" (tenants read from the row
  labels, independently of the script's own verdict), ``MATRIX PASS`` and ``RESULT: PASS``;
* that nothing is left behind: no process naming a ``/tmp/tenantnet-mn70-*`` work dir (OVS
  daemons, the controller), none of the node shells/daemons the script reported, no root
  namespace link ``mnt70_*``, no 10.251.70.254 address, no work dir, and the lock is free.

Runs back to back (single host, multi-hypervisor twice with different shapes) so a second
consecutive run is covered, plus SIGINT during bring-up and SIGTERM at the CLI prompt.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab import plans

REPO = Path(__file__).resolve().parents[2]
TOPOS = REPO / "mininet_topos"
DEBIAN_PY = "/usr/bin/python3"
OVS_BINARIES = ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "mnexec")
WORK_MARKER = b"/tmp/tenantnet-mn70-"
LINK_PREFIX = f"{plans.MININET.prefix}_"
LOCK_PATH = "/tmp/tenantnet-mn70.lock"
MGMT_GW = plans.MININET.mgmt_gw
RUN_TIMEOUT = 180


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths, OVS daemons)"
    if not os.path.exists(DEBIAN_PY):
        return f"{DEBIAN_PY} not found (Debian's python with the mininet package)"
    try:
        cp = subprocess.run([DEBIAN_PY, "-c", "import mininet"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {DEBIAN_PY}: {exc}"
    if cp.returncode != 0:
        return f"`{DEBIAN_PY} -c 'import mininet'` fails (apt-get install mininet)"
    missing = [b for b in OVS_BINARIES if shutil.which(b) is None]
    if missing:
        return f"missing binaries: {', '.join(missing)} (openvswitch-switch, mininet)"
    if not (REPO / ".venv" / "bin" / "python").exists():
        return "the repository's .venv is missing (make bootstrap)"
    return None


_REASON = _skip_reason()
pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


# ------------------------------------------------------------------------------- helpers
def _our_processes() -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            cmd = f.read()
            if WORK_MARKER in cmd:
                found.append(entry + ": " + cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [ln.split(":", 2)[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln]
    return [n for n in names if n.startswith(LINK_PREFIX)]


def _lock_free() -> bool:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def assert_no_leftovers(out: str) -> None:
    m = re.search(r"^cleanup: ok, tracked pids gone: ([\d ]+)$", out, re.M)
    assert m, f"no cleanup report in the output:\n{out[-3000:]}"
    reported = [int(p) for p in m.group(1).split()]
    assert reported, "the script reported no node/daemon pids"
    deadline = time.monotonic() + 5
    while True:
        problems = {
            "tracked pids alive": [p for p in reported if _alive(p)],
            "processes naming a work dir": _our_processes(),
            "root links": _root_links(),
            "work dirs": glob.glob("/tmp/tenantnet-mn70-*"),
            "mgmt address": [MGMT_GW] if MGMT_GW in subprocess.run(
                ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout else [],
        }
        problems = {k: v for k, v in problems.items() if v}
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not problems, f"left behind: {problems}"
    assert _lock_free(), f"{LOCK_PATH} still held"


def parse_matrix(out: str) -> dict[tuple[str, str], tuple[bool, bool]]:
    """{(src, dst): (expected, observed)} from the printed table; checks its shape."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("from \\ to"))
    names = lines[start].split()[3:]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.strip() or ln.startswith("MATRIX"):
            break
        rows.append(ln)
    assert len(rows) == len(names), f"{len(rows)} rows for {len(names)} columns"
    tenant_of: dict[str, str] = {}
    cells: dict[tuple[str, str], str] = {}
    for ln in rows:
        m = re.match(r"^(\S+) \((\S+)\)\s+(.*)$", ln)
        assert m, f"unexpected matrix row: {ln!r}"
        src, tenant, rest = m.groups()
        tenant_of[src] = tenant
        values = rest.split()
        assert len(values) == len(names), f"row {src}: {values}"
        for dst, v in zip(names, values, strict=True):
            cells[(src, dst)] = v
    assert list(tenant_of) == names
    result = {}
    for (src, dst), v in cells.items():
        if src == dst:
            assert v == "--"
            continue
        m = re.fullmatch(r"([YN])/([YN])(!!)?", v)
        assert m, f"{src}->{dst}: bad cell {v!r}"
        same = tenant_of[src] == tenant_of[dst]
        assert (m.group(1) == "Y") == same, f"{src}->{dst}: expectation {v} but tenants differ"
        result[(src, dst)] = (same, m.group(2) == "Y")
    return result


def module(script: str) -> str:
    """How a user runs a topology: ``python3 -m mininet_topos.<name>`` from the repository root."""
    return f"{TOPOS.name}.{script.removesuffix('.py')}"


def run_topo(script: str, *args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    cp = subprocess.run([DEBIAN_PY, "-m", module(script), *args], cwd=REPO, capture_output=True,
                        text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    out = cp.stdout + cp.stderr
    print(out)
    assert cp.returncode == 0, f"{script} {' '.join(args)} exited {cp.returncode}:\n{out[-4000:]}"
    return out, took


def check_test_run(out: str, n_vms: int, n_tenants: int) -> None:
    matrix = parse_matrix(out)
    vms = {src for src, _ in matrix}
    assert len(vms) == n_vms
    assert len(matrix) == n_vms * (n_vms - 1)
    wrong = {pair: v for pair, v in matrix.items() if v[0] != v[1]}
    assert not wrong, f"expected/observed differ: {wrong}"
    reachable = {pair for pair, (_, obs) in matrix.items() if obs}
    same_tenant = {pair for pair, (exp, _) in matrix.items() if exp}
    assert reachable == same_tenant and reachable
    tenants = set(re.findall(r"^\S+ \((tenant\d+)\)", out, re.M))
    assert len(tenants) == n_tenants
    assert f"MATRIX PASS: {len(matrix)}/{len(matrix)} pairs" in out
    assert re.search(r"^RESULT: PASS$", out, re.M)
    assert_no_leftovers(out)


# ------------------------------------------------------------------------------- tests
def test_single_host() -> None:
    out, took = run_topo("single_host.py", "--test")
    check_test_run(out, n_vms=4, n_tenants=2)
    print(f"took {took:.1f} s")


def test_multi_hypervisor_defaults() -> None:
    out, took = run_topo("multi_hypervisor.py", "--test")
    check_test_run(out, n_vms=6, n_tenants=2)  # 3 hosts x 2 tenants x 1 VM
    assert "vxlan" in out and "gre" in out
    print(f"took {took:.1f} s")


def test_multi_hypervisor_second_run_other_shape() -> None:
    """A second consecutive run, 2 hosts x 3 tenants x 2 VMs (two VMs per tenant per host)."""
    out, took = run_topo("multi_hypervisor.py", "--test", "--hosts", "2", "--tenants", "3",
                         "--vms", "2")
    check_test_run(out, n_vms=12, n_tenants=3)
    print(f"took {took:.1f} s")


def _start(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([DEBIAN_PY, "-m", module(script)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the child's output until ``pattern`` shows up (os.read: no Python buffering)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = ""
    deadline = time.monotonic() + timeout
    while pattern not in buf:
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"{pattern!r} not seen (exit {proc.poll()}):\n{buf[-3000:]}")
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(fd, 65536)
            buf += chunk.decode(errors="replace")
            continue
        time.sleep(0.05)
    return buf


def _finish(proc: subprocess.Popen[str], before: str, timeout: float = 60) -> tuple[int, str]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        pytest.fail(f"did not exit after the signal:\n{before + rest}")
    return proc.returncode, before + rest


def test_sigterm_at_the_cli_tears_down() -> None:
    proc = _start("single_host.py")
    try:
        out = _read_until(proc, "mininet>", timeout=60)
        assert "MATRIX PASS" in out  # the matrix shown before the CLI opens
        proc.send_signal(signal.SIGTERM)
        code, out = _finish(proc, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "terminated (signal 15)" in out
    assert_no_leftovers(out)


def test_ctrl_c_during_bring_up_tears_down() -> None:
    proc = _start("multi_hypervisor.py")
    try:
        out = _read_until(proc, "registering hypervisors", timeout=60)
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground process group
        code, out = _finish(proc, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130, out[-3000:]
    assert "interrupted" in out
    assert_no_leftovers(out)
