"""Remove everything an emulated-hypervisor lab with a given prefix may have left behind.

    python -m lab.cleanup [--prefix tn] [--prefix tn1 ...] [--all] [--force] [--check]

Removes, for each prefix P: processes running inside the namespaces ``P-*`` (our OVS daemons,
tcpdump, ping, iperf3), daemons whose pidfiles are under the work dir ``/tmp/tenantnet-lab-P``,
the root-namespace links ``P-*`` (mgmt bridge and veths), the namespaces ``P-*`` and the work dir.
Only names starting with ``P-`` are touched, so prefix ``tn`` never touches ``tnb-*``.

A running Lab holds ``/tmp/tenantnet-lab-P.lock``; its prefix is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Collection

from .plans import DEFAULT, PREFIX_RE
from .proc import CommandError, cmdline, pid_alive, read_pidfile, run, terminate

log = logging.getLogger("lab")

LOCK_DIR = "/tmp"


def default_workdir(prefix: str) -> str:
    return os.path.join("/tmp", f"tenantnet-lab-{prefix}")


def lock_path(prefix: str) -> str:
    return os.path.join(LOCK_DIR, f"tenantnet-lab-{prefix}.lock")


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix or ""):
        raise ValueError(f"lab prefix must match {PREFIX_RE.pattern} (got {prefix!r})")
    return prefix


class LabLock:
    """An flock on /tmp/tenantnet-lab-<prefix>.lock (or ``path``) held while a lab is up.

    The kernel drops it when the holder dies, so a crashed run never blocks the next one.
    """

    def __init__(self, prefix: str, path: str | None = None):
        self.path = path or lock_path(prefix)
        self.fd: int | None = None

    def acquire(self, timeout: float = 0) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return "?"

    def release(self) -> None:
        # the file stays: unlinking it would let two processes lock two different inodes
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _netns_list() -> list[str]:
    try:
        out = run("ip", "netns", "list", timeout=10).stdout
    except CommandError:
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_links() -> list[str]:
    out = run("ip", "-o", "link", "show", timeout=10).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@")[0])
    return names


def ns_pids(ns: str) -> list[int]:
    try:
        out = run("ip", "netns", "pids", ns, timeout=10, check=False).stdout
    except CommandError:
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def _workdir_pids(workdir: str) -> list[int]:
    """Live processes recorded in pidfiles under workdir whose command line mentions workdir."""
    pids = []
    for pf in glob.glob(os.path.join(workdir, "**", "*.pid"), recursive=True):
        pid = read_pidfile(pf)
        if pid and pid_alive(pid) and workdir in cmdline(pid):
            pids.append(pid)
    return pids


# programs the lab starts; only these are killed because their command line mentions the work dir
_OUR_PROGRAMS = {"ovsdb-server", "ovs-vswitchd", "tcpdump", "ping", "iperf3", "timeout"}


def procs_mentioning(marker: str, programs: Collection[str] | None = _OUR_PROGRAMS) -> list[int]:
    """Live processes (but this one) whose command line contains ``marker``, e.g. a work dir;
    only those running one of ``programs`` unless it is None."""
    pids = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        if programs is not None:
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() not in programs:
                        continue
            except OSError:
                continue
        if marker in cmdline(int(d)) and pid_alive(int(d)):
            pids.append(int(d))
    return pids


def ours(name: str, prefix: str) -> bool:
    return name.startswith(prefix + "-")


def leftovers(prefix: str, workdir: str | None = None) -> dict[str, list]:
    """What exists for this prefix: namespaces, root links, processes, work dir."""
    workdir = workdir or default_workdir(prefix)
    namespaces = [n for n in _netns_list() if ours(n, prefix)]
    procs = set(procs_mentioning(workdir + "/"))
    for ns in namespaces:
        procs.update(ns_pids(ns))
    return {
        "namespaces": namespaces,
        "links": [link for link in root_links() if ours(link, prefix)],
        "processes": sorted(procs),
        "workdir": [workdir] if os.path.exists(workdir) else [],
    }


def cleanup(prefix: str, workdir: str | None = None) -> dict[str, int]:
    """Remove everything of ``prefix``. Idempotent; never raises for things already gone."""
    check_prefix(prefix)
    workdir = workdir or default_workdir(prefix)
    stats = {"processes": 0, "links": 0, "namespaces": 0}
    namespaces = [n for n in _netns_list() if ours(n, prefix)]
    pids = set(_workdir_pids(workdir)) if os.path.isdir(workdir) else set()
    pids.update(procs_mentioning(workdir + "/"))
    for ns in namespaces:
        pids.update(ns_pids(ns))
    if pids:
        log.debug("cleanup %s: stopping pids %s", prefix, sorted(pids))
        stats["processes"] = len(terminate(pids))
    for link in [link for link in root_links() if ours(link, prefix)]:
        # deleting one end of a veth deletes its peer in the namespace too
        if run("ip", "link", "del", link, check=False, timeout=10).returncode == 0:
            stats["links"] += 1
    for ns in namespaces:
        # anything started in the meantime (should be nothing)
        left = ns_pids(ns)
        if left:
            terminate(left)
        if run("ip", "netns", "del", ns, check=False, timeout=10).returncode == 0:
            stats["namespaces"] += 1
    if os.path.isdir(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    if any(stats.values()):
        log.info("cleanup %s: %s", prefix, stats)
    return stats


def _known_prefixes() -> list[str]:
    found = set()
    for path in glob.glob("/tmp/tenantnet-lab-*"):
        m = re.match(r"^tenantnet-lab-([a-z][a-z0-9]{0,7})(\.lock)?$", os.path.basename(path))
        if m:
            found.add(m.group(1))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.cleanup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", action="append", help="lab prefix (repeatable; default tn)")
    ap.add_argument("--all", action="store_true",
                    help="every prefix that has a /tmp/tenantnet-lab-* work dir or lock file")
    ap.add_argument("--force", action="store_true", help="also clean prefixes a live lab holds")
    ap.add_argument("--check", action="store_true", help="only list leftovers; exit 1 if any")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    if os.geteuid() != 0:
        print("cleanup: must run as root", file=sys.stderr)
        return 2
    prefixes = list(args.prefix or [])
    if args.all:
        prefixes += _known_prefixes()
    prefixes = sorted(set(prefixes or [DEFAULT.prefix]))
    rc = 0
    for p in prefixes:
        check_prefix(p)
        if args.check:
            left = {k: v for k, v in leftovers(p).items() if v}
            print(f"{p}: {left or 'clean'}")
            rc |= 1 if left else 0
            continue
        lock = LabLock(p)
        if not lock.acquire(0) and not args.force:
            print(f"{p}: skipped, a running lab holds {lock.path} (pid {lock.holder()}); "
                  "use --force to clean anyway", file=sys.stderr)
            rc = 1
            continue
        try:
            stats = cleanup(p)
        finally:
            lock.release()
        print(f"{p}: removed {stats}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
