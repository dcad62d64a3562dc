"""Small subprocess helpers shared by the lab harness and its cleanup.

Every command goes through :func:`run`, which logs at debug level, enforces a timeout and raises
:class:`CommandError` (with the command line and its stderr) when the command fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger("lab")

# Debian puts the OVS daemons, ip and tcpdump in sbin; a venv's PATH may not have it.
_SBIN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(RuntimeError):
    """A command exited non-zero (or timed out)."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = "timed out" if returncode is None else f"exited {returncode}"
        detail = (stderr or stdout or "").strip()
        if len(detail) > 2000:
            detail = detail[:2000] + "..."
        msg = f"command {what}: {shlex.join(self.cmd)}"
        super().__init__(msg + (f"\n{detail}" if detail else ""))


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "")
    env["PATH"] = f"{path}:{_SBIN}" if path else _SBIN
    if extra:
        env.update(extra)
    return env


def ns_cmd(ns: str | None, cmd: Sequence[str]) -> list[str]:
    """Prefix ``cmd`` with ``ip netns exec NS`` when ``ns`` is given."""
    return ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)


def run(
    *cmd: str,
    ns: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run a command (inside network namespace ``ns`` if given) and capture its output as text."""
    argv = ns_cmd(ns, [str(c) for c in cmd])
    log.debug("run: %s", shlex.join(argv))
    try:
        cp = subprocess.run(
            argv,
            env=base_env(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise CommandError(argv, None, out, err) from None
    except FileNotFoundError as e:
        raise CommandError(argv, 127, "", str(e)) from None
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stdout, cp.stderr)
    return cp


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def terminate(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM the pids, wait up to ``grace`` s, SIGKILL survivors. Returns pids that were alive."""
    pids = [p for p in set(pids) if p > 1 and p != os.getpid()]
    alive = []
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
            alive.append(p)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive_now = [p for p in alive if pid_alive(p)]
        if not alive_now:
            break
        time.sleep(0.05)
    for p in alive:
        if pid_alive(p):
            log.debug("SIGKILL %d (%s)", p, cmdline(p))
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(pid_alive(p) for p in alive):
        time.sleep(0.05)
    return alive


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None
