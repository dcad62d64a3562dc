"""Run the real controller as a child process and talk to it over its REST API.

Tests, the demo and the Mininet topologies all drive tenantnet the way an orchestrator would:
through HTTP only.  The process can be stopped with SIGTERM or SIGKILL and started again on the
same state directory, which is what the restart scenarios need.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port free now; another process may take it before the caller binds it (every lab
    on this machine picks ports this way), so a caller must check whom it then talks to:
    `TenantnetProcess.start` does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""urllib without proxies: the lab's servers are on loopback, and ``http_proxy`` in a CI
environment would otherwise send the requests to the proxy (its error page is not JSON)."""


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on TCP ``port`` (this network
    namespace), from /proc: the answer on a port chosen with `free_port` may come from
    whatever else took it meanwhile (an etcd member answers ``GET /`` with a text 404,
    another tenantnet with its JSON)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}") in inodes:
                    return True
    return False


class ApiError(RuntimeError):
    """An answer with an error status, or one whose body is not JSON (then ``body`` is its
    text): a test sees what answered instead of a decoding error."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body


class Api:
    """Minimal Neutron-style client on urllib (usable from Debian's python3 for Mininet too)."""

    def __init__(
        self,
        base: str,
        token: str | None = None,
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
        basic: tuple[str, str] | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ssl_context = ssl_context  # for https:// bases (verifies the server's certificate)
        self.basic = basic  # (user, password): HTTP Basic, as CloudStack sends it

    def request(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("X-Auth-Token", self.token)
        if self.basic:
            cred = base64.b64encode(":".join(self.basic).encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        opener = DIRECT
        if self.ssl_context is not None:
            https = urllib.request.HTTPSHandler(context=self.ssl_context)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https)
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(status, raw[:200].decode(errors="replace"), method, path) from None
        if (expect is not None and status != expect) or (expect is None and status >= 400):
            raise ApiError(status, payload, method, path)
        return payload

    # resources ------------------------------------------------------------------------------
    def create(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.request("POST", f"/v2.0/{kind}s", {kind: fields})[kind]

    def show(self, kind: str, obj_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v2.0/{kind}s/{obj_id}")[kind]

    def update(self, kind: str, obj_id: str, **fields: Any) -> dict[str, Any]:
        return self.request("PUT", f"/v2.0/{kind}s/{obj_id}", {kind: fields})[kind]

    def delete(self, kind: str, obj_id: str) -> None:
        self.request("DELETE", f"/v2.0/{kind}s/{obj_id}", expect=204)

    def list(self, kind: str, query: str = "") -> list[dict[str, Any]]:
        q = f"?{query}" if query else ""
        return self.request("GET", f"/v2.0/{kind}s{q}")[f"{kind}s"]

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/tenantnet/status")

    # waits ----------------------------------------------------------------------------------
    def wait_port_status(self, port_id: str, status: str = "ACTIVE", timeout: float = 20) -> float:
        """Seconds until the port reached `status`; raises TimeoutError."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.show("port", port_id)["status"] == status:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise TimeoutError(f"port {port_id} not {status} after {timeout} s")

    def wait_ports_active(self, port_ids: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        pending = set(port_ids)
        while pending and time.monotonic() < deadline:
            active = {p["id"] for p in self.list("port", "status=ACTIVE")}
            pending -= active
            if pending:
                time.sleep(0.05)
        if pending:
            raise TimeoutError(f"ports not ACTIVE after {timeout} s: {sorted(pending)}")

    def wait_hosts_connected(self, host_ids: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hosts = {h["id"]: h for h in self.list("host")}
            if all(hosts.get(h, {}).get("status") == "connected" for h in host_ids):
                return
            time.sleep(0.05)
        raise TimeoutError(f"hosts not connected after {timeout} s: {host_ids}")

    def wait_reconciled(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("reconciled_after_s") is not None:
                return st
            time.sleep(0.05)
        raise TimeoutError("controller did not report all hosts reconciled")


class ApiProbe:
    """API writes to one instance in a background thread (create + delete of a network every
    ``interval`` s) while something else happens, e.g. another instance is killed: how many
    pairs went through and the errors of those that did not."""

    def __init__(self, api: Api, interval: float = 0.05) -> None:
        self.api, self.interval = api, interval
        self.calls = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-probe", daemon=True)

    def start(self) -> ApiProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                net = self.api.create("network", name=f"probe-{self.calls}")
                self.api.delete("network", net["id"])
                self.calls += 1
            except Exception as exc:  # counted: the caller asserts on it
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)


class PortTaken(RuntimeError):
    """The API port was taken before the process could listen on it."""


class StopTimeout(RuntimeError):
    """The process did not exit within the time it was given after a signal (it was then
    killed, so the next start is clean)."""


class TenantnetProcess:
    """`tenantnet serve` in a child process with its own state directory and log file.

    ``startup_grace_s`` is passed as ``--startup-grace-s`` at every start; change the attribute
    before a ``start()`` to restart with another grace period."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        ofp_listen: str,
        api_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        python: str = sys.executable,
        startup_grace_s: float = 5,
        pki: Any = None,
    ) -> None:
        """``pki`` (a ``lab.pki.Pki``): TLS on OpenFlow and OVSDB, HTTPS API (the
        client then talks to https://localhost:<port> and verifies the certificate)."""
        self.state_dir = Path(state_dir)
        self.ofp_listen = ofp_listen
        self.api_port = api_port or free_port()
        self._port_chosen = api_port is None  # ours to change if something else takes it
        self.pki = pki
        self.extra_args = (*pki.controller_args(), *extra_args) if pki is not None else extra_args
        self.python = python
        self.startup_grace_s = startup_grace_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state_dir / "tenantnet.log"
        if pki is not None:
            self.api = Api(f"https://localhost:{self.api_port}", ssl_context=pki.client_context())
        else:
            self.api = Api(f"http://127.0.0.1:{self.api_port}")

    def start(self, timeout: float = 20) -> TenantnetProcess:
        """Start and wait until the API answers from this process.  A port chosen here that
        something else took before the process bound it (`free_port`) is replaced by another
        one (up to 3 times); the ``api`` client follows."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if not self._port_chosen or attempt == 2:
                    raise
                self.api_port = free_port()
                self.api.base = f"{self.api.base.rsplit(':', 1)[0]}:{self.api_port}"
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> TenantnetProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.python, "-m", "controller.cli", "serve",
            "--api-listen", f"127.0.0.1:{self.api_port}",
            "--ofp-listen", self.ofp_listen,
            "--state-dir", str(self.state_dir),
            "--startup-grace-s", f"{self.startup_grace_s:g}",
            *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log_start = log.tell()
        # Own session: a terminal's Ctrl-C goes to the demo/test, which then stops the
        # controller in order, instead of killing it underneath a half-done teardown.
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                taken = b"REST API cannot listen on" in self._log_since(log_start)
                error = PortTaken if taken else RuntimeError
                raise error(f"tenantnet exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ApiError):
                self.api.request("GET", "/")
                if listens_on(self.proc.pid, self.api_port):  # not whatever took the port
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"tenantnet API did not come up:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10, strict: bool = False) -> None:
        """Send ``sig`` and wait up to ``timeout`` s; a process still running then is killed
        (SIGKILL), and with ``strict`` that is an error (:class:`StopTimeout`): a test of a
        graceful stop must notice a hang instead of having it papered over by the kill."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            if strict:
                name = signal.Signals(sig).name
                raise StopTimeout(
                    f"tenantnet did not exit within {timeout:g} s of {name}:\n{self.log_tail()}"
                ) from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def _log_since(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> TenantnetProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
