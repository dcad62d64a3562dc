"""`tenantnet serve` as a process: a failed start ends it at once with a one-line reason, SIGTERM
always ends it (also while the start is stuck), and the start-up log states the auth mode.

No switch is needed: os-ken listens on a free loopback port and nothing connects to it.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.tenantnet_proc import REPO, free_port

WAIT = 30  # generous bound for a shared CI machine; the assertions are about the outcome


def _serve(
    state: Path, api_port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "controller.cli", "serve",
        "--api-listen", f"127.0.0.1:{api_port}",
        "--ofp-listen", f"127.0.0.1:{free_port()}",
        "--state-dir", str(state),
        *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the API never listened")


def test_a_taken_api_port_ends_the_process_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _serve(tmp_path, taken.getsockname()[1])
        out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "cannot listen" in lines[0] and "in use" in lines[0]
    assert not (tmp_path / "tenantnet.sqlite").exists(), "nothing was started before the bind"


def test_sigterm_stops_a_running_controller_and_the_log_states_the_auth_mode(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    port = free_port()
    proc = _serve(tmp_path, port, "--auth-token-file", str(token))
    deadline = time.monotonic() + WAIT
    # The log line comes once the API answers; read until it appears.
    assert proc.stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "tenantnet up" in line:
            break
    up = lines[-1]
    assert "(auth: token)" in up, lines
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out
    assert "s3cret" not in "".join(lines) + out


def test_sigterm_ends_a_start_that_is_stuck(tmp_path: Path) -> None:
    """The database is locked by another process, so the start waits in SQLite (in C, where a
    Python signal handler never runs); SIGTERM must still end the process, long before the lock
    is released."""
    db = sqlite3.connect(tmp_path / "tenantnet.sqlite", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        port = free_port()
        proc = _serve(tmp_path, port)
        _wait_listening(port, proc)  # bound first, so the start is now at the store
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert proc.poll() is not None
        assert "stopping" in out and "exiting now" in out, out
        assert proc.returncode == 1  # forced: the start never finished
        assert db.in_transaction, "the lock was still held: the signal alone ended it"
    finally:
        db.execute("ROLLBACK")
        db.close()
