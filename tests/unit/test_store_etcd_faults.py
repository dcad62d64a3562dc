"""Faults of the etcd cluster under the store (issue 18, "faults are normal, nothing stalls"):
a member that answers nothing (frozen, or waiting on a killed leader), a write whose answer is
lost after etcd committed it, a snapshot whose answer is lost, and a watch whose member dies.

Each test injects the fault into the real 3-member cluster (or into one member's client) and
asserts what the API and the data plane rely on: the write completes, it is in the log once,
allocations stay unique, no change is missed or applied twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from etcd3gw import exceptions as etcd_errors

from controller.events import ChangeEvent, EventBus
from controller.store.etcd_log import EtcdLog
from controller.store.etcd_settings import EtcdSettings
from controller.store.replicated import EtcdStore, decode_entry
from tests.unit.test_store_etcd import restore_members, wait_for  # noqa: F401  (a fixture)

pytestmark = pytest.mark.etcd


def entry_ids(log: EtcdLog) -> list[str]:
    """The id of every entry in the log, in order (each write's own, see `EtcdStore._write`)."""
    return [decode_entry(raw)["id"] for _, raw in log.entries_after(0)]


def test_a_frozen_member_does_not_stall_writes_nor_apply_them_twice(
    tmp_path: Path,
    restore_members: Any,  # noqa: F811  (the fixture imported above)
    etcd_settings: EtcdSettings,
) -> None:
    """The member a store calls first freezes (like a follower forwarding to a killed
    leader: the request is taken and never answered).  With a timeout far beyond this test's
    patience, the writes still complete (the short attempt moves them on), each is in the log
    once - also after the frozen member wakes up and runs the request it had taken - and the
    addresses stay unique across two instances."""
    cluster = restore_members
    patient = EtcdSettings(etcd_settings.endpoints, prefix=etcd_settings.prefix, timeout_s=600)
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), patient)
    other = EtcdStore(str(tmp_path / "b.db"), EventBus(), etcd_settings)
    frozen = cluster.members[store._log.current_member]
    try:
        net = store.create_network({"name": "n"})
        store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/24"})
        cluster.pause_member(frozen)
        ports: list[dict[str, Any]] = []

        def create() -> None:
            for _ in range(3):
                ports.append(store.create_port({"network_id": net["id"]}))

        writer = threading.Thread(target=create, daemon=True)
        writer.start()
        ports += [other.create_port({"network_id": net["id"]}) for _ in range(3)]
        wait_for(lambda: not writer.is_alive(), "the writes while a member is frozen")
        cluster.pause_member(frozen, False)
        cluster.wait_healthy(60)
        ports.append(store.create_port({"network_id": net["id"]}))
        assert len(ports) == 7
        ids = entry_ids(store._log)
        assert len(ids) == len(set(ids)) == 2 + 7  # the network, the subnet, the ports: once
        ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
        macs = [p["mac_address"] for p in ports]
        assert len(set(ips)) == len(set(macs)) == 7
        other.sync()
        assert sorted(p["id"] for p in other.list_all("port")) == sorted(p["id"] for p in ports)
        assert store.list_all("port") == other.list_all("port")
    finally:
        cluster.pause_member(frozen, False)
        store.close()
        other.close()


def lose_answers(log: EtcdLog, member: int, count: int, after: int = 0) -> list[int]:
    """Member ``member``'s next ``count`` transactions (after the next ``after``) commit, then
    their answers are lost (a timeout, as when the connection dies after the request went
    out); returns [how many were lost]."""
    lost, seen = [0], [0]
    for clients in log._passes:
        client = clients[member]
        real = client.transaction

        def answer_lost(txn: Any, real: Callable[[Any], Any] = real) -> Any:
            result = real(txn)
            seen[0] += 1
            if seen[0] > after and lost[0] < count:
                lost[0] += 1
                raise etcd_errors.ConnectionTimeoutError("answer lost (injected)")
            return result

        client.transaction = answer_lost
    return lost


def test_a_write_committed_before_its_answer_was_lost_is_acknowledged_once(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """The retry on the next member finds the head moved by the write itself: the store
    recognises its entry (its id) and answers success - not 503, not a second entry."""
    events: list[ChangeEvent] = []
    bus = EventBus()
    bus.subscribe(events.extend)
    store = EtcdStore(str(tmp_path / "a.db"), bus, etcd_settings)
    other = EtcdStore(str(tmp_path / "b.db"), EventBus(), etcd_settings)
    try:
        net = store.create_network({"name": "n"})
        store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/24"})
        lost = lose_answers(store._log, store._log.current_member, 1)
        port = store.create_port({"network_id": net["id"]})
        assert lost == [1]
        assert len(entry_ids(store._log)) == 3
        assert [e.obj_id for e in events if e.kind == "port"] == [port["id"]]
        twin = other.create_port({"network_id": net["id"]})
        assert twin["fixed_ips"][0]["ip_address"] != port["fixed_ips"][0]["ip_address"]
        assert store.get("port", port["id"]) == other.get("port", port["id"])
    finally:
        store.close()
        other.close()


def test_a_snapshot_published_before_its_answer_was_lost_is_kept(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """Publishing a snapshot is a compare on the meta: the retry fails the compare against
    the meta its own first attempt put.  That snapshot is ours and must stay readable (its
    chunks were deleted as a lost race's before)."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    try:
        store.create_network({"name": "n"})
        lost = lose_answers(store._log, store._log.current_member, 1, after=1)  # not the claim
        assert store.snapshot(force=True)
        assert lost == [1]
        found = store._log.snapshot()
        assert found is not None and found[0] == store.applied
    finally:
        store.close()
