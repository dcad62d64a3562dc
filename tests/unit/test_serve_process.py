"""`tenantnet serve` as a process: a failed start ends it at once with a one-line reason, SIGTERM
always ends it (also while the start is stuck), and the start-up log states the auth mode.

No switch is needed: os-ken listens on a free loopback port and nothing connects to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lab.tenantnet_proc import REPO, free_port

WAIT = 30  # generous bound for a shared CI machine; the assertions are about the outcome


def _serve(
    state: Path,
    api_port: int,
    *extra: str,
    env: dict[str, str] | None = None,
    ofp_port: int | None = None,
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "controller.cli", "serve",
        "--api-listen", f"127.0.0.1:{api_port}",
        "--ofp-listen", f"127.0.0.1:{ofp_port or free_port()}",
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


def test_a_taken_openflow_port_ends_the_process_with_one_line(tmp_path: Path) -> None:
    """os-ken listens on a thread of its own, where a taken port used to be a logged traceback
    while the controller ran on, its API answering and no switch able to connect."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _serve(tmp_path, free_port(), ofp_port=taken.getsockname()[1])
        try:
            out, _ = proc.communicate(timeout=WAIT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    assert proc.returncode == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "OpenFlow cannot listen" in lines[0] and "in use" in lines[0]
    assert not (tmp_path / "tenantnet.sqlite").exists(), "nothing was started before the bind"


def test_sigterm_stops_a_running_controller_and_the_log_states_the_auth_mode(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)  # a secret file others can read is refused
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


def _started(state: Path, api_port: int, *extra: str) -> subprocess.Popen[str]:
    proc = _serve(state, api_port, *extra)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the API never answered")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=WAIT)
    assert proc.returncode == 0


def test_the_nan_port_is_refused_and_nothing_breaks_across_a_restart(tmp_path: Path) -> None:
    """Issue 11's poisoned port, against the real process: 400 naming the field, nothing
    saved, every later listing fine, also after a restart."""
    port = free_port()
    proc = _started(tmp_path, port)
    base = f"http://127.0.0.1:{port}/v2.0"
    try:
        net = httpx.post(f"{base}/networks", json={"network": {"name": "n"}}).json()["network"]
        r = httpx.post(
            f"{base}/ports",
            content=f'{{"port": {{"network_id": "{net["id"]}", "binding:profile": {{"x": NaN}}}}}}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400 and "binding:profile" in r.text
        assert httpx.get(f"{base}/ports").json() == {"ports": []}
    finally:
        _stop(proc)
    proc = _started(tmp_path, port)
    try:
        assert httpx.get(f"{base}/ports").json() == {"ports": []}
        assert len(httpx.get(f"{base}/networks").json()["networks"]) == 1
    finally:
        _stop(proc)


def test_slow_http_clients_do_not_take_the_real_api_down(tmp_path: Path) -> None:
    port = free_port()
    proc = _started(tmp_path, port, "--api-header-timeout-s", "1")
    socks = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v2.0/networks HTTP/1.1\r\nHost: x\r\nContent-")
            socks.append(s)
        assert httpx.get(f"http://127.0.0.1:{port}/v2.0/networks", timeout=10).status_code == 200
        for s in socks:  # each is cut by the server at its head deadline
            s.settimeout(WAIT)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
        _stop(proc)


def test_idle_http_clients_under_a_low_fd_limit_neither_kill_nor_flood(tmp_path: Path) -> None:
    """Issue 11: with 100 open files at most (soft and hard, so it cannot raise them), 300 idle
    HTTP clients - connected while the controller is still starting - used to make a late
    import fail (the process died) and asyncio logged a traceback per refused connection.  The
    API now holds at most its share of the descriptors, the process keeps running, the log
    says so in a line or two, and the API answers again once the clients are gone."""
    port = free_port()
    cmd = [
        "prlimit", "--nofile=100:100", sys.executable, "-m", "controller.cli", "serve",
        "--api-listen", f"127.0.0.1:{port}", "--ofp-listen", f"127.0.0.1:{free_port()}",
        "--state-dir", str(tmp_path), "--api-header-timeout-s", "5",
    ]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    socks: list[socket.socket] = []
    try:
        _wait_listening(port, proc)
        for _ in range(300):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                break  # the kernel's listen queue is full: the flood is at its height
            socks.append(s)
        time.sleep(2)
        assert proc.poll() is None, log_path.read_text()
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + WAIT
        status = None
        while time.monotonic() < deadline and status != 200:
            with contextlib.suppress(httpx.TransportError):
                status = httpx.get(f"http://127.0.0.1:{port}/tenantnet/status", timeout=2)
                status = status.status_code
            time.sleep(0.1)
        assert status == 200
        assert proc.poll() is None
        text = log_path.read_text()
        assert "Traceback" not in text, text
        assert text.count("cannot accept") <= 3, text
        assert "open files limit is only 100" in text
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT)
