"""What the OVSDB agent's unit tests share: a private ovsdb-server, or none at all.

`running_ovsdb` starts a real ovsdb-server on a unix socket in the test's directory (no
vswitchd: only what is written to the database can be checked; `PrivateOvsdb.stop` and `serve`
restart it; `without_vswitchd` skips ovsdbapp's waits for a vswitchd; `reporting_agent` is an
agent on it that records what it reports); `agents_without_server` lets `OvsdbHost` build its
IDL from the local schema file with a connection that never connects, so an agent's set-up and
teardown run in a few ms with no server at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ovsdbapp.schema.open_vswitch import impl_idl

from controller.southbound import ovsdb_host
from controller.southbound.ovsdb_host import OvsdbHost

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class PrivateOvsdb:
    """ovs-vsctl against one private ovsdb-server (``--no-wait``: no vswitchd applies it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = path / "db.sock"
        self.target = f"unix:{self.sock}"
        self._proc: subprocess.Popen[bytes] | None = None

    def serve(self) -> None:
        """Start ovsdb-server on the database (again after `stop`: the same file, a new
        process, as a host's server restarted); returns once it listens."""
        self.sock.unlink(missing_ok=True)  # an old server's is no sign that this one is up
        self._proc = subprocess.Popen(
            ["ovsdb-server", str(self.path / "conf.db"), f"--remote=punix:{self.sock}",
             f"--unixctl={self.path / 'ctl'}", "--no-chdir", f"--pidfile={self.path / 'pid'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            if self.sock.exists():
                break
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (its clients see the connection closed); `serve` starts it again."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None

    def vsctl(self, *args: str) -> str:
        out = subprocess.run(
            ["ovs-vsctl", f"--db={self.target}", "--no-wait", "--timeout=5", *args],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.strip()

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def ports(self, bridge: str = "br-int") -> list[str]:
        return sorted(self.vsctl("list-ports", bridge).split())

    def controllers(self, bridge: str = "br-int") -> list[str]:
        return sorted(self.vsctl("get-controller", bridge).split())

    def bridge_row(self, bridge: str = "br-int") -> str:
        return self.vsctl("list", "Bridge", bridge)

    def targets(self) -> list[str]:
        """Every Controller row's target, whichever bridge holds it."""
        out = self.vsctl("--columns=target", "--bare", "list", "Controller")
        return sorted(line for line in out.splitlines() if line)


@contextmanager
def running_ovsdb(tmp_path: Path, *bridges: str) -> Iterator[PrivateOvsdb]:
    """A fresh database served until the block ends; skips the test without OVS installed."""
    if not (shutil.which("ovsdb-server") and Path(SCHEMA).exists()):
        pytest.skip("ovsdb-server or the vswitch schema missing (openvswitch-switch)")
    subprocess.run(["ovsdb-tool", "create", str(tmp_path / "conf.db"), SCHEMA], check=True)
    db = PrivateOvsdb(tmp_path)
    try:
        db.serve()
        db.vsctl("init")
        for bridge in bridges:
            db.vsctl("add-br", bridge)
        yield db
    finally:
        db.stop()


def without_vswitchd(monkeypatch: pytest.MonkeyPatch) -> None:
    """No vswitchd runs against a private server: nothing would ever apply ``next_cfg`` or give
    the tunnel ports an ofport, so ovsdbapp's waits for those are skipped."""
    monkeypatch.setattr(impl_idl.OvsVsctlTransaction, "vswitchd_has_completed", lambda *a: True)
    monkeypatch.setattr(
        impl_idl.OvsVsctlTransaction, "post_commit_failed_interfaces", lambda *a: []
    )


def reporting_agent(db: PrivateOvsdb, states: list[bool]) -> OvsdbHost:
    """An agent (not started) for host hv1 on ``db`` that appends to ``states`` each session up
    (True) or down (False) it reports."""
    return OvsdbHost(
        {"id": "hv1", "ovsdb": db.target, "tunnel_ip": "192.0.2.1"},
        "tcp:127.0.0.1:6653",
        lambda *_: None,
        lambda _host, up: states.append(up),
        timeout=5.0,
    )


def wait_until(done: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``done`` every 2 ms; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


class IdleConnection:
    """Stands in for ovsdbapp's Connection: `_connect` returns without a server; `stop`
    closes the IDL as the real one's thread does when it ends."""

    is_running = False

    def __init__(self, idl: Any, timeout: float) -> None:
        self.idl = idl
        self.lock = threading.RLock()

    def start(self) -> None:
        pass

    def stop(self, timeout: float | None = None) -> bool:
        self.idl.close()
        return True


def agents_without_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`OvsdbHost._connect` reads the schema from the local file and gets an `IdleConnection`."""
    if not os.path.exists(SCHEMA):
        pytest.skip(f"{SCHEMA} missing (openvswitch-common not installed)")
    with open(SCHEMA) as f:
        schema = json.load(f)
    monkeypatch.setattr(ovsdb_host.switch_poke, "fetch_schema", lambda *_, **__: schema)
    monkeypatch.setattr(ovsdb_host.connection, "Connection", IdleConnection)
