"""`switch_poke.poke`: the fast reconnect's target rewrite before the IDL, against a real
ovsdb-server (a private one on a unix socket in the test's directory, no vswitchd: only what
the poke writes is checked here; that the switch then reconnects at once without losing a flow
is tests/integration/test_fast_reconnect.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.southbound import switch_poke
from controller.southbound.ovsdb_host import alternate_target

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
OURS = "tcp:192.0.2.254:6653"
OTHER = "tcp:[192.0.2.254]:6653"
SPELLINGS = {OURS: OTHER, OTHER: OURS}


class Db:
    def __init__(self, path: Path) -> None:
        self.sock = path / "db.sock"
        self.target = f"unix:{self.sock}"

    def vsctl(self, *args: str) -> str:
        out = subprocess.run(
            ["ovs-vsctl", f"--db={self.target}", "--no-wait", "--timeout=5", *args],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.strip()

    def targets(self) -> list[str]:
        out = self.vsctl("--columns=target", "--bare", "list", "Controller")
        return sorted(line for line in out.splitlines() if line)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    if not (shutil.which("ovsdb-server") and Path(SCHEMA).exists()):
        pytest.skip("ovsdb-server or the vswitch schema missing (openvswitch-switch)")
    subprocess.run(["ovsdb-tool", "create", str(tmp_path / "conf.db"), SCHEMA], check=True)
    d = Db(tmp_path)
    proc = subprocess.Popen(
        ["ovsdb-server", str(tmp_path / "conf.db"), f"--remote=punix:{d.sock}",
         f"--unixctl={tmp_path / 'ctl'}", "--no-chdir", f"--pidfile={tmp_path / 'pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if d.sock.exists():
                break
            time.sleep(0.02)
        d.vsctl("init")
        d.vsctl("add-br", "br-int")
        yield d
    finally:
        proc.terminate()
        proc.wait(5)


def test_our_only_controller_is_rewritten_in_its_other_spelling(db: Db) -> None:
    db.vsctl("set-controller", "br-int", OURS)
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) == OTHER
    assert db.targets() == [OTHER]
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) == OURS  # and back
    assert db.targets() == [OURS]
    assert alternate_target(OURS) == OTHER  # the spellings the agent hands it


@pytest.mark.parametrize(
    "controllers",
    [
        [],  # no controller: ensure_config creates ours
        ["tcp:198.51.100.1:6653"],  # a foreign one: ensure_config replaces it
        [OURS, "tcp:198.51.100.1:6653"],  # ours beside another: likewise
    ],
)
def test_a_bridge_not_in_the_fast_reconnects_shape_is_left_alone(
    db: Db, controllers: list[str]
) -> None:
    if controllers:
        db.vsctl("set-controller", "br-int", *controllers)
    assert switch_poke.poke(db.target, "br-int", SPELLINGS, 5) is None
    assert db.targets() == sorted(controllers)


def test_no_such_bridge_is_left_alone(db: Db) -> None:
    db.vsctl("set-controller", "br-int", OURS)
    assert switch_poke.poke(db.target, "br-other", SPELLINGS, 5) is None
    assert db.targets() == [OURS]


def test_an_unreachable_ovsdb_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(switch_poke.PokeError):
        switch_poke.poke(f"unix:{tmp_path / 'none.sock'}", "br-int", SPELLINGS, 1)


def test_a_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A listener that accepts and says nothing (a hung ovsdb-server): the poke is bounded."""
    import socket

    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(path))
    mute.listen(1)
    try:
        with pytest.raises(switch_poke.PokeError, match="no answer"):
            switch_poke.poke(f"unix:{path}", "br-int", SPELLINGS, 0.3)
    finally:
        mute.close()
