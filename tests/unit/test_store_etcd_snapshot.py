"""Snapshots and truncation of the etcd log (issue 18, second step): the log stays bounded, a new
instance joins from the snapshot and the entries after it, an instance behind a truncation loads
the snapshot and keeps working, and instances snapshotting at once leave one consistent snapshot.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.events import ChangeEvent, EventBus
from controller.store.etcd_log import EtcdLog
from controller.store.etcd_settings import EtcdSettings
from controller.store.replicated import EtcdStore, difference
from tests.unit.test_store_etcd import freeze_follower, wait_for

pytestmark = pytest.mark.etcd
EVERY, MARGIN = 20, 5


@pytest.fixture
def settings(etcd_settings: EtcdSettings) -> EtcdSettings:
    return dataclasses.replace(etcd_settings, snapshot_every=EVERY, log_margin=MARGIN)


@pytest.fixture
def instances(tmp_path: Path, settings: EtcdSettings) -> Iterator[Any]:
    """``start(name)`` -> (an instance on the log, the events on its bus); all closed after.
    ``manual``: it snapshots only when the test calls ``snapshot(force=True)``."""
    started: list[EtcdStore] = []

    def start(name: str, manual: bool = False) -> tuple[EtcdStore, list[ChangeEvent]]:
        bus, seen = EventBus(), []  # type: ignore[var-annotated]
        bus.subscribe(seen.extend)
        own = dataclasses.replace(settings, snapshot_every=10**9) if manual else settings
        s = EtcdStore(str(tmp_path / f"{name}.db"), bus, own, poll_s=0.2)
        started.append(s)
        return s, seen

    yield start
    for s in started:
        s.close()


def kept_entries(log: EtcdLog) -> list[int]:
    return [seq for seq, _ in log.entries_after(0)]


def snapshot_folders(log: EtcdLog) -> set[str]:
    keys = log._call(
        lambda c: list(c.get(log.key("snap/"), metadata=True, range_end=log.key("snap0")))
    )
    return {kv["key"].decode()[len(log.prefix) :].rsplit("/", 1)[0] for _, kv in keys} - {"snap"}


def networks(s: EtcdStore) -> list[dict[str, Any]]:
    return s.list_all("network")


def test_the_log_stays_bounded_after_many_writes(instances: Any, settings: EtcdSettings) -> None:
    store, _ = instances("a")
    log = EtcdLog(settings)
    for i in range(6 * EVERY):
        store.create_network({"name": f"n{i}"})
    # The follower snapshots in the background: wait for it to have caught up with the writes
    # and be done.  A truncated log alone is not enough: a snapshot at entry 100 truncates it
    # to 25 entries, then the one due at 120 puts its chunks into a second folder before it
    # replaces the meta and deletes the first.  No snapshot is due once the last one taken
    # covers the writes (the thread that takes it moves `snapshot_due` before it finishes,
    # hence the thread is asked second).
    wait_for(
        lambda: (
            not store.snapshot_due()
            and not store._snapshotting.is_alive()
            and len(kept_entries(log)) <= EVERY + MARGIN
        ),
        "the last snapshot taken and the log truncated behind it",
    )
    kept = kept_entries(log)
    assert kept[-1] == log.head() == 6 * EVERY
    assert kept == list(range(kept[0], kept[-1] + 1))  # a contiguous tail, the head included
    meta = log.snapshot_meta()
    assert meta is not None and kept[0] <= meta[0]["seq"] - MARGIN + 1
    assert snapshot_folders(log) == {meta[0]["dir"]}  # replaced snapshots were deleted


def test_a_fresh_instance_joins_from_the_snapshot_and_the_tail(
    instances: Any, settings: EtcdSettings
) -> None:
    store, _ = instances("a", manual=True)
    for i in range(2 * EVERY):
        store.create_network({"name": f"n{i}"})
    assert store.snapshot(force=True)
    for i in range(3):  # the tail after the snapshot
        store.create_network({"name": f"tail{i}"})
    log = EtcdLog(settings)
    assert kept_entries(log)[0] > 1  # entry 1 is gone: only the snapshot has it
    fresh, _ = instances("fresh")
    assert fresh.applied == log.head()
    assert networks(fresh) == networks(store) and len(networks(fresh)) == 2 * EVERY + 3
    fresh.create_network({"name": "from the new one"})  # and it writes like any other
    assert len(networks(store)) == 2 * EVERY + 4


def test_a_lagging_instance_behind_a_truncation_recovers(
    instances: Any, settings: EtcdSettings
) -> None:
    store, _ = instances("a", manual=True)
    lagging, seen = instances("lagging", manual=True)
    gone = store.create_network({"name": "deleted while lagging"})
    kept = store.create_network({"name": "renamed while lagging"})
    wait_for(lambda: lagging.applied == 2, "the second instance following")
    freeze_follower(lagging)
    seen.clear()
    store.delete("network", gone["id"])
    store.update("network", kept["id"], {"name": "renamed"})
    for i in range(2 * EVERY):
        store.create_network({"name": f"n{i}"})
    assert store.snapshot(force=True)
    assert kept_entries(EtcdLog(settings))[0] > lagging.applied + 1
    # an API read brings it to the head: through the snapshot, then the entries after it
    store.create_network({"name": "after the snapshot"})
    assert networks(lagging) == networks(store)
    assert lagging.applied == store.applied
    # its data plane heard of every change it missed, as events
    created = {e.new["name"] for e in seen if e.kind == "network" and e.old is None and e.new}
    assert created == {f"n{i}" for i in range(2 * EVERY)} | {"after the snapshot"}
    assert [e.old["id"] for e in seen if e.new is None and e.old] == [gone["id"]]
    assert any(e.new and e.new["name"] == "renamed" for e in seen)
    lagging.create_network({"name": "written by the lagging one"})  # no restart needed
    assert len(networks(store)) == 2 * EVERY + 3


def test_two_instances_snapshotting_at_once_leave_one_consistent_snapshot(
    instances: Any, settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = instances("a", manual=True)
    b, _ = instances("b", manual=True)
    log = EtcdLog(settings)
    # without the claim, only the compare on the snapshot's meta keeps them apart
    monkeypatch.setattr(EtcdLog, "claim", lambda self, name, ttl: object())
    monkeypatch.setattr(EtcdLog, "release", staticmethod(lambda lease: None))
    for round_ in range(3):
        for i in range(EVERY):
            (a, b)[i % 2].create_network({"name": f"r{round_}-{i}"})
        a.sync(), b.sync()
        results: list[bool] = []

        def take(s: EtcdStore, results: list[bool] = results) -> None:
            results.append(s.snapshot(force=True))

        threads = [threading.Thread(target=take, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert True in results
        meta = log.snapshot_meta()
        assert meta is not None
        assert snapshot_folders(log) == {meta[0]["dir"]}  # the loser left nothing behind
    fresh, _ = instances("fresh")
    assert networks(fresh) == networks(a) == networks(b)
    assert len(networks(fresh)) == 3 * EVERY


def test_a_stale_snapshot_does_not_replace_a_newer_one(settings: EtcdSettings) -> None:
    log = EtcdLog(settings)
    assert log.create({"epoch": "e", "schema": 0})
    assert log.publish_snapshot(10, b"ten", 0)
    found = log.snapshot_meta()
    assert found is not None
    assert log.publish_snapshot(20, b"twenty", found[1])
    assert not log.publish_snapshot(15, b"fifteen", found[1])  # read the meta before 20 won
    assert log.snapshot() == (20, b"twenty")
    assert len(snapshot_folders(log)) == 2  # 10's (its replacer deletes it) and 20's


def test_the_claim_lets_one_instance_at_a_time(settings: EtcdSettings) -> None:
    log = EtcdLog(settings)
    lease = log.claim("snap/claim", 10)
    assert lease is not None
    assert log.claim("snap/claim", 10) is None
    log.release(lease)
    again = log.claim("snap/claim", 10)
    assert again is not None
    log.release(again)


def test_difference_orders_parents_first_and_deletes_last() -> None:
    before = {"network": [{"id": "n1"}, {"id": "n2", "v": 1}], "port": [{"id": "p1"}]}
    after = {"network": [{"id": "n2", "v": 2}, {"id": "n3"}], "port": [{"id": "p2"}]}
    events = difference(before, after)
    assert [(e.kind, e.obj_id, e.old is None, e.new is None) for e in events] == [
        ("network", "n2", False, False),
        ("network", "n3", True, False),
        ("port", "p2", True, False),
        ("port", "p1", False, True),
        ("network", "n1", False, True),
    ]
