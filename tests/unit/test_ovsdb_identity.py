"""An ``ssl:`` OVSDB server must be the host it is registered as: its certificate names it.

python-ovs checks only that the server's certificate is signed by the CA, so any
hypervisor's ovsdb-server (or anyone on the path holding a switch certificate) could answer
for another host: the controller read that host's ports from it and configured its bridge
there.  A real ovsdb-server on ``pssl:``, with certificates made by ``ovs-pki``
(lab/pki.py); the first connection (the schema fetch, the early read) and every later one
(the agent's IDL) are checked.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import tls
from controller.southbound import switch_poke
from controller.southbound.ovsdb_host import OvsdbHost
from lab.pki import CONTROLLER_NAME, Pki
from tests.unit.private_ovsdb import SCHEMA, PrivateOvsdb, wait_until, without_vswitchd


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not (shutil.which("ovs-pki") and shutil.which("ovsdb-server") and Path(SCHEMA).exists()):
        pytest.skip("ovs-pki or ovsdb-server missing (openvswitch-common, openvswitch-switch)")
    pki = Pki.create(tmp_path_factory.mktemp("pki"), hosts=["hv1", "hv2"])
    tls.configure_ovsdb_client(pki.key(CONTROLLER_NAME), pki.cert(CONTROLLER_NAME), pki.switch_ca)
    return pki


class TlsOvsdb(PrivateOvsdb):
    """An ovsdb-server on ``pssl:`` presenting host ``host``'s switch certificate (`stop` as
    a private one's)."""

    def __init__(self, pki: Pki, path: Path) -> None:
        super().__init__(path)
        self.pki = pki
        subprocess.run(["ovsdb-tool", "create", str(path / "conf.db"), SCHEMA], check=True)
        init = '["Open_vSwitch", {"op": "insert", "table": "Open_vSwitch", "row": {}}]'
        subprocess.run(["ovsdb-tool", "transact", str(path / "conf.db"), init], check=True,
                       capture_output=True)  # fmt: skip
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.target = f"ssl:127.0.0.1:{self.port}"

    def serve(self, host: str = "hv1") -> None:
        self._proc = subprocess.Popen(
            ["ovsdb-server", str(self.path / "conf.db"),
             f"--remote=pssl:{self.port}:127.0.0.1", f"--private-key={self.pki.key(host)}",
             f"--certificate={self.pki.cert(host)}", f"--ca-cert={self.pki.controller_ca}",
             f"--unixctl={self.path / 'ctl'}", "--no-chdir"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "ovsdb-server did not listen"
                time.sleep(0.02)


@pytest.fixture
def server(pki: Pki, tmp_path: Path) -> Iterator[TlsOvsdb]:
    db = TlsOvsdb(pki, tmp_path)
    try:
        yield db
    finally:
        db.stop()


def test_the_first_connection_reaches_only_the_host_its_certificate_names(
    server: TlsOvsdb,
) -> None:
    server.serve("hv1")
    assert isinstance(switch_poke.fetch_schema(server.target, 5, host_id="hv1"), dict)
    with pytest.raises(switch_poke.PokeError, match="names 'hv1', not host 'hv2'"):
        switch_poke.fetch_schema(server.target, 5, host_id="hv2")
    with pytest.raises(switch_poke.PokeError, match="not host 'hv2'"):
        switch_poke.read_and_poke(server.target, "br-int", {}, 5, host_id="hv2")


def test_a_reconnect_to_a_server_of_another_host_is_not_used(
    server: TlsOvsdb, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """hv1's agent is up; its server is replaced by one presenting hv2's certificate at the
    same address.  The agent reports the loss and never the host up through it (one error
    line); hv1's server back, the host is up again."""
    without_vswitchd(monkeypatch)
    server.serve("hv1")
    states: list[bool] = []
    agent: Any = OvsdbHost(
        {"id": "hv1", "ovsdb": server.target, "tunnel_ip": "192.0.2.1"},
        "tcp:127.0.0.1:6653",
        lambda *_: None,
        lambda _host, up: states.append(up),
        timeout=5.0,
    )
    agent.start()
    try:
        wait_until(lambda: states == [True], "hv1 up")
        with caplog.at_level(logging.ERROR, logger="controller.southbound.ovsdb_host"):
            server.stop()
            server.serve("hv2")
            wait_until(lambda: states == [True, False], "the loss reported")
            time.sleep(3)  # reconnects to hv2's server meanwhile: never up
        assert states == [True, False]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "names 'hv2', not host 'hv1'" in errors[0], errors
        server.stop()
        server.serve("hv1")
        wait_until(lambda: states == [True, False, True], "hv1 up again")
    finally:
        agent.stop()
