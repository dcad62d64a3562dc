"""A removed host's old agent must not strip what a newer agent wrote to the same OVSDB.

With several instances, a host deleted and registered again at once can be owned by another
instance (the members changed, or the views differ for a moment), or the same hypervisor is
registered again under another id (which hashes elsewhere, and which the one-instance ordering
of `DataPlane._removing` does not cover: it is by host id).  The old agent's `remove_config`
runs on a thread of its own and can land after the new agent's `ensure_config`; the new agent
writes its config only when its OVSDB session comes up, so nothing would put back the
controllers and tunnel ports it removed.  `remove_config` therefore removes only while the
bridge still carries its own mark (``WRITER``), checked and verified in the same transaction.

Against a real ovsdb-server (a private one on a unix socket, no vswitchd: ovsdbapp's wait for
vswitchd to apply ``next_cfg`` is skipped)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.southbound.ovsdb_host import OvsdbHost
from tests.unit.private_ovsdb import PrivateOvsdb as Db
from tests.unit.private_ovsdb import running_ovsdb, without_vswitchd

TARGET_A = "tcp:192.0.2.10:6653"
TARGET_B = "tcp:192.0.2.11:6653"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Db]:
    without_vswitchd(monkeypatch)
    with running_ovsdb(tmp_path) as d:
        yield d


@pytest.fixture
def agents(db: Db) -> Iterator[Any]:
    started: list[OvsdbHost] = []

    def agent(host_id: str, target: str, peers: tuple[str, ...] | None) -> OvsdbHost:
        """An agent connected to ``db`` as its loop would be (without the loop's thread)."""
        host = {"id": host_id, "ovsdb": db.target, "tunnel_ip": "192.0.2.101"}
        a = OvsdbHost(host, target, lambda *_: None, lambda *_: None, timeout=5.0)
        started.append(a)
        if peers is not None:
            a.set_peer_targets(peers)
        a._connect()
        a.connected = True
        return a

    yield agent
    for a in started:
        a.stop()


def _caught_up(agent: OvsdbHost, db: Db) -> None:
    """Wait until the agent's IDL has every write made so far (the server sends a monitor's
    updates in order: one that shows a marker written now comes after all of them)."""
    assert agent._conn is not None
    mark = str(time.monotonic_ns())
    db.vsctl("set", "Open_vSwitch", ".", f"external_ids:test-mark={mark}")
    for _ in range(250):
        with agent._conn.lock:
            rows = list(agent._conn.idl.tables["Open_vSwitch"].rows.values())
            if rows and rows[0].external_ids.get("test-mark") == mark:
                return
        time.sleep(0.02)
    raise AssertionError("the agent's IDL never caught up")


# (old agent, new agent): (host id, own target, other instances' targets or None: one node)
RE_REGISTRATIONS = {
    # deleted at instance A, registered again under the same id and owned by instance B
    "same-id-other-instance": (("hv1", TARGET_A, (TARGET_B,)), ("hv1", TARGET_B, (TARGET_A,))),
    # the same hypervisor registered again under another id (one instance: not ordered by
    # `DataPlane._removing`, which is by host id)
    "other-id-same-instance": (("hv1", TARGET_A, None), ("hv1-new", TARGET_A, None)),
}


@pytest.mark.parametrize("vm_port", [False, True], ids=["empty-bridge", "vm-port"])
@pytest.mark.parametrize("wait_for_idl", [True, False], ids=["idl-current", "idl-maybe-stale"])
@pytest.mark.parametrize("case", sorted(RE_REGISTRATIONS))
def test_a_late_cleanup_leaves_what_the_new_agent_wrote(
    db: Db, agents: Any, case: str, wait_for_idl: bool, vm_port: bool
) -> None:
    """Without the check the old agent removed the new one's controllers and tunnel ports
    (a VM port on the bridge), or the whole bridge (none)."""
    old_spec, new_spec = RE_REGISTRATIONS[case]
    old = agents(*old_spec)
    old.ensure_config()
    if vm_port:
        db.vsctl("add-port", "br-int", "vm1")
    assert db.ports() == sorted(["tn-gre", "tn-vxlan", *(["vm1"] if vm_port else [])])
    new = agents(*new_spec)
    new.ensure_config()  # the new owner's agent has configured the host...
    after_new = (db.ports(), db.controllers(), db.bridge_row())
    if wait_for_idl:
        _caught_up(old, db)
    # (without the wait the old agent's IDL may not have the new write yet: the transaction's
    # verify then makes the server refuse it, and ovsdbapp runs it again on the new state)
    old.remove_config()  # ...when the old agent's cleanup lands
    assert db.bridges() == ["br-int"]
    assert (db.ports(), db.controllers(), db.bridge_row()) == after_new
    assert new_spec[1] in db.controllers()


def test_the_agent_still_removes_its_own_config(db: Db, agents: Any) -> None:
    a = agents("hv1", TARGET_A, (TARGET_B,))
    a.ensure_config()
    db.vsctl("add-port", "br-int", "vm1")  # a VM's interface: the bridge stays for it
    _caught_up(a, db)
    a.remove_config()
    assert db.bridges() == ["br-int"] and db.ports() == ["vm1"] and db.controllers() == []
    db.vsctl("del-port", "br-int", "vm1")
    a.ensure_config()
    a.remove_config()  # nothing of the hypervisor's on it: the bridge goes
    assert db.bridges() == []


def test_a_cleanup_before_the_new_agent_writes_is_undone_by_it(db: Db, agents: Any) -> None:
    old = agents("hv1", TARGET_A, (TARGET_B,))
    old.ensure_config()
    new = agents("hv1", TARGET_B, (TARGET_A,))
    old.remove_config()
    assert db.bridges() == []
    _caught_up(new, db)
    new.ensure_config()
    assert db.ports() == ["tn-gre", "tn-vxlan"]
    assert db.controllers() == [TARGET_A, TARGET_B]
