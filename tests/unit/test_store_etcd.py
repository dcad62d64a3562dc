"""The store on a real 3-member etcd cluster: the core store tests again (the API's are in
`test_api_etcd`), then what only a cluster has - two instances writing at once, events on the
other instance exactly once, a dropped connection, a lost member, lost quorum - and the
migration both ways.

The imported tests run here with this module's ``store`` fixture (an `EtcdStore`), so they prove
the same behaviour on both backends.
"""

from __future__ import annotations

import dataclasses
import inspect
import sqlite3
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.events import ChangeEvent, EventBus
from controller.store import InvalidInput, NotFound, Store, StoreUnavailable
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_settings import EtcdSettings, parse_url
from controller.store.ports import REFUSED_HOSTS
from controller.store.replicated import WRITES, EtcdStore
from controller.store.transfer import etcd_to_sqlite, sqlite_to_etcd
from tests.unit.test_store import (  # noqa: F401  (collected again, on etcd)
    kill_writer_after,
    make_net_with_subnet,
    run_threads,
    test_bulk_subnet_create_is_atomic,
    test_events_are_published_after_commit,
    test_failed_write_rolls_back_and_publishes_nothing,
    test_fifty_concurrent_port_creates,
    test_ip_allocation_skips_gateway_and_reuses_freed,
    test_mac_unique_per_network_only,
    test_network_crud_round_trip,
    test_port_status_and_binding,
    test_refused_hosts_shown_in_vif_details,
    test_segmentation_ids_are_lowest_free_and_unique,
    test_subnet_in_use_and_network_in_use,
    test_two_hosts_never_share_a_datapath_id,
    test_update_without_change_publishes_nothing,
)

pytestmark = pytest.mark.etcd


@pytest.fixture
def store(
    db_path: str, bus: EventBus, events: list[ChangeEvent], etcd_settings: EtcdSettings
) -> Iterator[Store]:
    s = EtcdStore(db_path, bus, etcd_settings)
    yield s
    s.close()


@pytest.fixture
def second(tmp_path: Path, etcd_settings: EtcdSettings) -> Iterator[tuple[EtcdStore, list[Any]]]:
    """Another instance on the same log, with its own replica and bus; (store, its events)."""
    bus, seen = EventBus(), []
    bus.subscribe(seen.extend)
    s = EtcdStore(str(tmp_path / "second.db"), bus, etcd_settings)
    yield s, seen
    s.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Until ``predicate()`` holds; fails naming ``what`` (a bound on a hang, not a speed goal)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def restore_members(etcd_cluster: Any) -> Iterator[Any]:
    """Whatever a test stops or freezes, the next test finds all members running again."""
    yield etcd_cluster
    for m in etcd_cluster.members:
        if m.proc is None:
            etcd_cluster.start_member(m)
        else:
            etcd_cluster.pause_member(m, False)
    etcd_cluster.wait_healthy(60)


def test_every_writing_method_is_retried() -> None:
    """A write method missing from WRITES would not be re-run when overtaken (it would fail)."""
    writing = set()
    for name, fn in inspect.getmembers(Store, inspect.isfunction):
        if "self._write(" in inspect.getsource(fn):
            writing.add(name)
    assert writing == set(WRITES)


def test_parse_url() -> None:
    assert parse_url("etcd://a:1,[::1]:2") == (("a", 1), ("::1", 2))
    for bad in ("http://a:1", "etcd://a", "etcd://a:0", "etcd://:5"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_two_instances_creating_at_once_never_collide(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    other, _ = second
    net_id, _ = make_net_with_subnet(store)
    stores = (store, other)
    made = run_threads(
        40,
        lambda i: (
            stores[i % 2].create_network({}),
            stores[i % 2].create_port({"network_id": net_id}),
        ),
    )
    seg_ids = [n["provider:segmentation_id"] for n, _ in made]
    macs = [p["mac_address"] for _, p in made]
    ips = [p["fixed_ips"][0]["ip_address"] for _, p in made]
    assert len(set(seg_ids)) == 40 and len(set(macs)) == 40 and len(set(ips)) == 40
    # both replicas hold the same 40 ports (an API read waits for the head of the log)
    for s in stores:
        assert {p["id"] for p in s.list_all("port")} == {p["id"] for _, p in made}
    assert store.applied == other.applied


def test_refused_claims_written_by_two_instances_at_once_are_all_kept(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    """Each instance writes the refused claims of its own hosts (per host, docs/ha.md): 20
    writes from both at once, each setting its own host, lose none of the other's (a write
    that finds another one waiting for etcd is held and written by the follower: merged per
    host there too)."""
    other, _ = second
    net_id, _ = make_net_with_subnet(store)
    port = store.create_port({"network_id": net_id})
    # the other replica has the port, as the data plane knows it from its replica's events
    # (a write finding no such port is skipped, nothing appended)
    assert other.get("port", port["id"])["id"] == port["id"]
    stores = (store, other)
    run_threads(
        20,
        lambda i: stores[i % 2].set_ports_observed(refused={port["id"]: {f"hv{i}": True}}),
    )

    def shown(s: EtcdStore) -> list[str]:
        return list(s.get_port(port["id"])["binding:vif_details"].get(REFUSED_HOSTS, []))

    want = sorted(f"hv{i}" for i in range(20))
    for s in stores:
        wait_for(lambda s=s: shown(s) == want, "every instance's refused claims")
    other.set_ports_observed(refused={port["id"]: {f"hv{i}": False for i in range(1, 20, 2)}})
    even = sorted(f"hv{i}" for i in range(0, 20, 2))
    wait_for(lambda: shown(store) == even, "the other instance's claims cleared, the rest kept")


def test_a_write_reaches_the_other_instance_once_in_order(
    store: EtcdStore, events: list[ChangeEvent], second: tuple[EtcdStore, list[Any]]
) -> None:
    _, seen = second
    net_id, _ = make_net_with_subnet(store)
    for _ in range(5):
        store.create_port({"network_id": net_id})
    port = store.create_port({"network_id": net_id})
    store.update("port", port["id"], {"name": "renamed"})
    store.delete("port", port["id"])
    wait_for(lambda: len(seen) >= len(events), "the other instance's events")
    time.sleep(0.3)  # a duplicate would arrive now: the follower polls and the watch rings

    def key(e: ChangeEvent) -> tuple[str, str, int]:
        return (e.kind, e.obj_id, (e.new or e.old or {}).get("revision_number", 0))

    assert [key(e) for e in seen] == [key(e) for e in events]
    assert seen[-1].new is None and seen[-1].old is not None  # the delete, with its old value


def test_the_follower_applies_what_the_watch_carried_without_reading_it_again(
    store: EtcdStore, tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """An entry reaches the other instance in the watch event (no range read per entry and
    instance); a gap (an entry the watch did not carry) is read from the log, in order."""
    bus, seen = EventBus(), []
    bus.subscribe(seen.extend)
    other = EtcdStore(str(tmp_path / "w.db"), bus, etcd_settings, poll_s=60)  # no poll here
    try:
        other._doorbell.set()  # the follower creates its watch at its first wake-up
        wait_for(lambda: other._watch is not None, "the other instance's watch")
        first = store.create_network({"name": "first"})
        wait_for(lambda: other.applied == store.applied, "the first write on the other")
        yielded = count_log_reads(other)
        second_net = store.create_network({"name": "second"})
        wait_for(lambda: other.applied == store.applied, "the second write on the other")
        assert yielded == []  # applied from the watch's copy
        assert [e.obj_id for e in seen if e.new] == [first["id"], second_net["id"]]

        freeze_follower(other)  # from here on, only this test moves the replica
        store.create_network({"name": "third"})
        store.create_network({"name": "fourth"})
        wait_for(lambda: len(other._arrived) == 2, "both entries in the watch")
        fourth = other._arrived[store.applied]
        other._take_arrived(store.applied + 1)  # forget both, then only the later one came
        other._entry_arrived(store.applied, fourth)
        assert not other._apply_arrived() and other.applied == store.applied - 2
        other.catch_up()
        assert other.applied == store.applied
        assert [e.new["name"] for e in seen if e.new] == ["first", "second", "third", "fourth"]
    finally:
        other.close()


def test_an_entry_is_applied_on_the_watch_s_thread_unless_the_replica_is_busy(
    store: EtcdStore, tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """Another instance's entry is applied and published by the thread its watch delivered
    it on, without waking the follower (a thread hand-over per entry, twice on a port's path
    to ACTIVE); while something else holds the replica's writer lock (a write waiting for
    etcd), the entry is left to the follower, which applies it once the lock is free."""
    bus, threads = EventBus(), []
    bus.subscribe(lambda events: threads.extend(threading.current_thread().name for _ in events))
    other = EtcdStore(str(tmp_path / "w.db"), bus, etcd_settings, poll_s=60)  # no poll here
    try:
        other._doorbell.set()  # the follower creates its watch at its first wake-up
        wait_for(lambda: other._watch is not None, "the other instance's watch")
        store.create_network({"name": "first"})
        wait_for(lambda: other.applied == store.applied, "the first write on the other")
        assert threads == ["etcd-watch"]

        tried: list[bool] = []  # what the watch's thread did with each ring
        real = other._apply_on_watch
        other._apply_on_watch = lambda: tried.append(real()) or tried[-1]  # type: ignore
        with other._writer:  # e.g. a write of the other instance waiting for etcd
            store.create_network({"name": "second"})
            wait_for(lambda: False in tried, "the watch leaving the entry to the follower")
            assert other.applied == store.applied - 1
        wait_for(lambda: other.applied == store.applied, "the second write on the other")
        assert threads == ["etcd-watch", "etcd-follower"]
        assert sorted(n["name"] for n in other.list_all("network")) == ["first", "second"]
    finally:
        other.close()


def test_an_entry_applied_on_the_watch_s_thread_still_wakes_the_follower_for_its_chores(
    store: EtcdStore, tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """After an outage (``down``), an entry applied by the watch's thread still rings the
    follower, which then marks etcd reachable again at once: reads go back to quorum reads
    without waiting ``poll_s`` (60 s here)."""
    other = EtcdStore(str(tmp_path / "w.db"), EventBus(), etcd_settings, poll_s=60)
    try:
        other._doorbell.set()  # the follower creates its watch at its first wake-up
        wait_for(lambda: other._watch is not None, "the other instance's watch")
        store.create_network({"name": "first"})
        wait_for(lambda: other.applied == store.applied, "the first write on the other")
        other.down = True  # as the follower leaves it after an outage
        store.create_network({"name": "second"})
        wait_for(lambda: other.applied == store.applied, "the second write on the other")
        wait_for(lambda: not other.down, "the follower marking etcd reachable again")
    finally:
        other.close()


def test_a_gap_after_entries_from_the_watch_is_read_in_the_same_wake_up(
    store: EtcdStore, tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """The follower applies what the watch carried up to a gap, then reads the gap from the
    log at once: not at its next poll (the entries after the gap would wait ``poll_s``).
    One wake-up of the follower is run, with the poll made never to come."""
    bus = EventBus()
    other = EtcdStore(str(tmp_path / "w.db"), bus, etcd_settings, poll_s=60)
    try:
        other._doorbell.set()  # the follower creates its watch at its first wake-up
        wait_for(lambda: other._watch is not None, "the other instance's watch")
        freeze_follower(other)  # from here on, only this test moves the replica
        at = other.applied
        for name in ("third", "fourth", "fifth"):
            store.create_network({"name": name})
        wait_for(lambda: len(other._arrived) == 3, "the three entries in the watch")
        third = other._take_arrived(at + 1)
        other._take_arrived(at + 2)  # the fourth never came with the watch
        assert third is not None
        other._entry_arrived(at + 1, third)
        read = count_log_reads(other)
        follow_once(other)
        assert other.applied == at + 3, "the entries after the gap waited for the poll"
        assert read == [at + 2, at + 3]  # the gap and what followed, from the log
    finally:
        other.close()


def test_an_instance_does_not_read_the_log_after_its_own_writes(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    """A write is one etcd transaction on the instance that made it: when its own entry comes
    back with the watch (already applied), the follower does not read the log after it (that
    range read found nothing new: one per write and instance before).  A wake-up with a
    watch just made still reads the log (entries before the new watch's start come from
    there)."""
    store._doorbell.set()  # the follower creates its watch at its first wake-up
    wait_for(lambda: store._watch is not None, "the instance's watch")
    freeze_follower(store)  # from here on, only this test moves the follower
    reads = count_log_range_reads(store)
    bell = store._doorbell  # what the watch rings (follow_once replaces the attribute)
    for renewed in (False, True):
        store._doorbell = bell
        bell.clear()
        store.create_network({"name": f"renewed {renewed}"})
        # the watch hands an entry over before it rings
        wait_for(bell.is_set, "the own entry back with the watch")
        follow_once(store, renewed)
        if not renewed:
            assert reads == [], "the follower read the log after the instance's own write"
    assert reads == [store.applied]


def test_a_ring_for_a_resync_reads_the_log_even_if_entries_arrived(
    store: EtcdStore, tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """A ring of the watch after a failed member or a compaction (its ``resyncs``) makes the
    follower read the log in that wake-up, even if an entry arrived meanwhile (here: the
    instance's own write back with the watch, which alone reads nothing): the entry the
    watch skipped waited for the poll before."""
    other = EtcdStore(str(tmp_path / "w.db"), EventBus(), etcd_settings, poll_s=60)
    try:
        other._doorbell.set()  # the follower creates its watch at its first wake-up
        wait_for(lambda: other._watch is not None, "the other instance's watch")
        freeze_follower(other)  # from here on, only this test moves the replica
        watch = other._watch
        assert watch is not None
        store.create_network({"name": "skipped"})
        wait_for(lambda: len(other._arrived) == 1, "the entry in the watch")
        other._take_arrived(store.applied + 1)  # it never came (a compaction skipped it)
        other._arrivals = 0
        other._entry_arrived(other.applied, b"")  # an own entry came back
        watch.resyncs += 1  # ... and the watch rang for a read of the log
        follow_once(other)
        assert other.applied == store.applied, "the skipped entry waited for the poll"
    finally:
        other.close()


def test_the_cluster_is_reached_directly_whatever_the_proxy_environment(
    etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clients do not read the environment (requests did on every call, for proxies,
    .netrc and CA bundles: CPU on each etcd request): a proxy variable that would send the
    calls to a closed port changes nothing."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert EtcdLog(etcd_settings).revision() > 0


@pytest.fixture
def not_etcd() -> Iterator[tuple[str, int]]:
    """An HTTP server answering every request 200 with a body that is not JSON (a proxy's
    or another service's page, on a port the settings name)."""
    from tests.unit.test_tenantnet_proc import answering_server

    server = answering_server(200, b"<html>503 starting</html>", "text/html")
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_that_is_not_json_is_a_failed_member(
    not_etcd: tuple[str, int], etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    """A member answering something that is not etcd's JSON counts as failed: the call moves on
    to the next member, and when none answers the start is a clear `StoreUnavailable`
    (etcd3gw lets the decoding error through: it ended the start with a traceback)."""
    only_bad = dataclasses.replace(etcd_settings, endpoints=(not_etcd,), timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="malformed answer"):
        EtcdStore(str(tmp_path / "x.db"), EventBus(), only_bad)
    bad_first = dataclasses.replace(etcd_settings, endpoints=(not_etcd, *etcd_settings.endpoints))
    log = EtcdLog(bad_first)
    assert log.revision() > 0
    assert log.current_member != 0
    assert log.create({"epoch": "e", "schema": 1}) and log.meta() == {"epoch": "e", "schema": 1}


def test_a_watch_response_that_is_not_etcd_s_ends_the_stream_not_the_watch(
    etcd_settings: EtcdSettings,
) -> None:
    """JSON that is not a watch response (here a list, line after line) is a failed member:
    the watch goes on trying (a ring each time) instead of its thread ending with a traceback
    (old code: one ring, then ``alive`` false)."""
    from controller.store.etcd_watch import LogWatch
    from tests.unit.test_tenantnet_proc import answering_server

    server = answering_server(200, b"[1]\n" * 3, "application/json")
    settings = dataclasses.replace(
        etcd_settings, endpoints=(("127.0.0.1", server.server_address[1]),)
    )
    rings: list[int] = []
    watch = LogWatch(EtcdLog(settings), 1, lambda: rings.append(1), idle_s=0.2)
    try:
        wait_for(lambda: len(rings) >= 3, "the watch trying again", timeout=30)
        assert watch.alive
    finally:
        watch.stop()
        server.shutdown()
        server.server_close()


def test_replica_commits_skip_the_fsync_that_the_single_node_keeps(
    store: EtcdStore, tmp_path: Path
) -> None:
    """The replica is a cache of the log (etcd's commit makes a write durable): synchronous
    NORMAL on both of its connections, while the single node's store keeps FULL."""
    normal, full = 1, 2
    assert store._wconn.execute("PRAGMA synchronous").fetchone()[0] == normal
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == normal
    single = Store(str(tmp_path / "single.db"), EventBus())
    try:
        assert single._conn.execute("PRAGMA synchronous").fetchone()[0] == full
    finally:
        single.close()


def test_watch_resumes_after_the_connection_drops(
    store: EtcdStore,
    tmp_path: Path,
    etcd_settings: EtcdSettings,
    restore_members: Any,
) -> None:
    """An instance whose only etcd member goes away misses nothing and repeats nothing."""
    cluster = restore_members
    lonely = cluster.members[2]
    settings = EtcdSettings(((("127.0.0.1", lonely.client_port),)), prefix=etcd_settings.prefix)
    bus, seen = EventBus(), []
    bus.subscribe(seen.extend)
    other = EtcdStore(str(tmp_path / "other.db"), bus, settings, poll_s=0.2)
    try:
        net = store.create_network({"name": "before"})
        wait_for(lambda: len(seen) == 1, "the first event")
        cluster.stop_member(lonely)
        wait_for(lambda: other.down, "the instance noticing its member is gone")
        during = [store.create_network({"name": f"during{i}"}) for i in range(3)]
        cluster.start_member(lonely)
        cluster.wait_healthy(60, [lonely])
        wait_for(lambda: len(seen) >= 4 and not other.down, "the missed events")
        after = store.create_network({"name": "after"})
        wait_for(lambda: len(seen) >= 5, "the event after the resume")
        time.sleep(0.5)
        assert [e.obj_id for e in seen] == [net["id"], *(n["id"] for n in during), after["id"]]
        assert other.get_network(after["id"]) is not None
    finally:
        other.close()


def test_losing_one_member_changes_nothing(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]], restore_members: Any
) -> None:
    cluster = restore_members
    other, _ = second
    net_id, _ = make_net_with_subnet(store)
    cluster.stop_member(cluster.members[0])
    ports = [(store, other)[i % 2].create_port({"network_id": net_id}) for i in range(6)]
    assert len({p["fixed_ips"][0]["ip_address"] for p in ports}) == 6
    assert {p["id"] for p in other.list_all("port")} == {p["id"] for p in ports}


def test_losing_quorum_answers_503_then_recovers(
    store: EtcdStore,
    second: tuple[EtcdStore, list[Any]],
    restore_members: Any,
    make_client: Any,
) -> None:
    cluster = restore_members
    other, _ = second
    client = make_client()
    net = client.post("/v2.0/networks", json={"network": {"name": "kept"}}).json()["network"]
    cluster.stop_member(cluster.members[0])
    cluster.stop_member(cluster.members[1])
    answer = client.post("/v2.0/networks", json={"network": {"name": "refused"}})
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "1"
    error = answer.json()["NeutronError"]
    assert error["type"] == "ServiceUnavailable"
    assert "cannot commit now" in error["message"]
    # A member that was leader a moment ago may have taken the request into its log: then the
    # answer must not claim nothing changed (etcd may commit it once the others return).
    maybe = "may still be committed" in error["message"]
    assert maybe or "Nothing was changed" in error["message"]
    # reads are served from the replica meanwhile (what the data plane needs to keep forwarding)
    assert client.get(f"/v2.0/networks/{net['id']}").status_code == 200
    for m in cluster.members[:2]:
        cluster.start_member(m)
    cluster.wait_healthy(60)
    wait_for(
        lambda: (
            client.post("/v2.0/networks", json={"network": {"name": "again"}}).status_code == 201
        ),
        "a write once quorum is back",
    )
    wait_for(lambda: not other.down, "the other instance reconnecting")
    names = [n["name"] for n in other.list_all("network")]
    assert {"kept", "again"} <= set(names) and len(names) == len(set(names))
    if not maybe:
        assert "refused" not in names
    # whatever the cluster decided, both instances hold the same
    assert other.list_all("network") == store.list_all("network")


def count_log_reads(s: EtcdStore) -> list[int]:
    """From now on, the sequence number of every entry an instance reads from etcd's log
    (`entries_after`, the range read), in order, in the list returned."""
    read: list[int] = []
    real = s._log.entries_after

    def counted(seq: int) -> Iterator[tuple[int, bytes]]:
        for got in real(seq):
            read.append(got[0])
            yield got

    s._log.entries_after = counted  # type: ignore[method-assign]
    return read


class OneWakeUp:
    """A doorbell rung once: waiting for it again ends the follower of ``s``."""

    def __init__(self, s: EtcdStore) -> None:
        self.s = s
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        if self.waits > 1:
            self.s._stopping.set()
        return True

    def clear(self) -> None:
        pass

    def set(self) -> None:
        pass


def follow_once(s: EtcdStore, renewed: bool = False) -> None:
    """Run one wake-up of a frozen follower on this thread, its watch kept as it is
    (``renewed``: as if the follower had just made a new one)."""
    s._keep_watching = lambda: renewed  # type: ignore[method-assign]
    s._doorbell = OneWakeUp(s)  # type: ignore[assignment]
    s._stopping.clear()
    s._follow()


def count_log_range_reads(s: EtcdStore) -> list[int]:
    """From now on, the position after which every range read of the log starts (one per
    `entries_after` call, whether it finds entries or not), in the list returned."""
    calls: list[int] = []
    real = s._log.entries_after

    def counted(seq: int) -> Iterator[tuple[int, bytes]]:
        calls.append(seq)
        return real(seq)

    s._log.entries_after = counted  # type: ignore[method-assign]
    return calls


def freeze_follower(s: EtcdStore) -> None:
    """Stop an instance's follower, so only its own calls move its replica on."""
    s._stopping.set()
    s._doorbell.set()
    s._follower.join(timeout=10)


def test_an_update_that_changes_nothing_on_a_lagging_replica_is_judged_on_the_latest(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    """B's replica has not applied A's acknowledged rename to "y" yet.  A client sets the
    name back to "x" through B: on B's stale view that changes nothing, and it was answered
    200 without asking etcd, so the cluster kept "y" - an acknowledged update lost.  And an
    If-Match with the revision the cluster has moved past passed.  The write now runs again
    on the latest state: it changes the name, and the stale If-Match is a 412.  Without the
    cluster's head, such a write is a 503 that says nothing was changed."""
    from controller.store import PreconditionFailed

    other, _ = second
    net = store.create_network({"name": "x"})
    other.catch_up()
    freeze_follower(other)  # as a watch a few ms behind
    store.update("network", net["id"], {"name": "y"})
    with pytest.raises(PreconditionFailed):
        other.update("network", net["id"], {"name": "y"}, expected_revision=net["revision_number"])
    store.update("network", net["id"], {"name": "x"})
    store.update("network", net["id"], {"name": "y"})
    assert other.update("network", net["id"], {"name": "x"})["name"] == "x"
    assert store.get("network", net["id"])["name"] == "x"
    assert other.update("network", net["id"], {"name": "x"})["name"] == "x"  # at the head

    def unreachable() -> int:
        raise EtcdUnavailable("every member refused (test)", maybe_sent=False)

    other._log.head = unreachable  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable, match="Nothing was changed"):
        other.update("network", net["id"], {"name": "x"})


def test_a_committed_write_whose_answer_was_lost_runs_once_even_after_a_truncation(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """B's append is committed but its answer is lost (the retry on the next member finds the
    head moved: its own entry).  Meanwhile the log went on and was truncated past B's entry
    after a snapshot: the catch-up loads the snapshot, which holds B's entry, but reads no
    entry ids.  B took that for "overtaken" and ran the create a second time: two networks
    for one POST.  The ids of the last entries applied are kept with the replica (and so in
    the snapshot): B finds its entry there."""
    settings = dataclasses.replace(etcd_settings, snapshot_every=10**9, log_margin=2)
    a = EtcdStore(str(tmp_path / "a.db"), EventBus(), settings, poll_s=0.2)
    b = EtcdStore(str(tmp_path / "b.db"), EventBus(), settings, poll_s=0.2)
    try:
        freeze_follower(b)
        real_append = b._log.append
        lost: list[int] = []

        def append_answer_lost(after: int, entry: bytes, fence: Any = None) -> bool:
            assert real_append(after, entry, fence)  # committed by the cluster
            if lost:
                return True
            lost.append(after + 1)
            a.catch_up()
            for i in range(6):  # the others go on writing meanwhile
                a.create_network({"name": f"other{i}"})
            assert a.snapshot(force=True)  # and truncate past B's entry
            return False  # the retry's compare found the head moved: its own entry

        b._log.append = append_answer_lost  # type: ignore[method-assign]
        mine = b.create_network({"name": "mine"})
        names = [n["name"] for n in a.list_all("network")]
        assert names.count("mine") == 1, names
        assert b.get("network", mine["id"])["name"] == "mine"
    finally:
        a.close()
        b.close()


def test_the_follower_goes_on_after_the_log_moved_on_while_it_loaded_a_snapshot(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    """"Kept being truncated past it" is a race with other instances' snapshots, not a log this
    replica can never apply: its follower used to stop for good on it, and the replica then
    applied nothing more by itself (no watch delivery, no poll)."""
    from controller.store.replicated import LogMovedOn

    other, _ = second
    real = other.catch_up
    raised: list[int] = []

    def moved_on_once() -> list[str]:
        if not raised:
            raised.append(other.applied)
            raise LogMovedOn("the etcd log kept being truncated (test)")
        return real()

    other.catch_up = moved_on_once  # type: ignore[method-assign]
    with other._arrived_lock:
        other._arrived_missed = True  # the follower's next round reads the log
    other._doorbell.set()
    wait_for(lambda: bool(raised), "the follower met the truncation")
    store.create_network({"name": "after"})
    wait_for(lambda: other.applied == store.applied, "the follower still applying")
    assert other._follower.is_alive()


def test_an_api_read_on_another_instance_sees_every_acknowledged_write(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    other, _ = second
    freeze_follower(other)
    net = store.create_network({"name": "just written"})
    assert other.get("network", net["id"]) is not None  # waited for the head of the log
    assert [n["id"] for n in other.list_all("network")] == [net["id"]]


def test_a_write_on_a_lagging_replica_is_judged_on_the_latest_state(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    """The network was just created through the other instance, whose entry this replica has
    not applied: the port create must not answer 404, nor an If-Match 412 on a stale revision."""
    other, _ = second
    freeze_follower(other)
    net_id, _ = make_net_with_subnet(store)
    assert other.create_port({"network_id": net_id})["network_id"] == net_id
    renamed = store.update("network", net_id, {"name": "newer"})
    updated = other.update(
        "network", net_id, {"name": "newest"}, expected_revision=renamed["revision_number"]
    )
    assert updated["name"] == "newest"
    with pytest.raises(NotFound):  # a refusal on the latest state still stands
        other.create_port({"network_id": "00000000-0000-4000-8000-000000000000"})


def test_a_refusal_from_a_lagging_replica_is_retried_when_it_caught_up_meanwhile(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port create is refused on the stale replica (its network not applied yet), and the
    follower applies the network before the refusal is judged: the replica is at the head by
    then, but the refusal was computed behind it, so the write runs again (CI once answered
    this 404 while a member was frozen)."""
    other, _ = second
    freeze_follower(other)
    net_id, _ = make_net_with_subnet(store)
    real_execute = other._wconn.execute
    applied_after_refusal = []

    def execute(sql: str, *args: Any) -> Any:
        result = real_execute(sql, *args)
        if sql == "ROLLBACK" and not applied_after_refusal:
            # the refused write is rolled back: the follower, waiting for the writer lock,
            # applies the missing entries before the refusal is judged
            applied_after_refusal.extend(other.catch_up())
        return result

    monkeypatch.setattr(other._wconn, "execute", execute)
    assert other.create_port({"network_id": net_id})["network_id"] == net_id
    assert applied_after_refusal  # the race was staged
    with pytest.raises(NotFound):  # a refusal on the latest state still stands
        other.create_port({"network_id": "00000000-0000-4000-8000-000000000000"})


def test_a_refusal_that_cannot_be_checked_against_the_cluster_is_a_503_not_a_404(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lagging replica refuses the port (its network not applied yet) just as the cluster
    stops answering: it cannot tell whether the refusal is stale, so the write answers
    StoreUnavailable (503, retry) naming the refusal, not a 404 for a network that exists and
    that a read will show once the cluster is back; the retry then succeeds."""
    other, _ = second
    freeze_follower(other)
    net_id, _ = make_net_with_subnet(store)

    def no_quorum() -> int:
        raise EtcdUnavailable("no quorum (test)")

    monkeypatch.setattr(other._log, "head", no_quorum)
    with pytest.raises(StoreUnavailable) as refused:
        other.create_port({"network_id": net_id})
    assert f"Network {net_id} could not be found." in refused.value.message
    assert "retry later" in refused.value.message
    monkeypatch.undo()
    port = other.create_port({"network_id": net_id})  # the cluster is back: the retry succeeds
    assert [p["id"] for p in store.list_all("port")] == [port["id"]]  # nothing else was kept


def test_concurrent_catch_ups_apply_each_entry_once(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    other, seen = second
    freeze_follower(other)
    made = [store.create_network({"name": f"n{i}"})["id"] for i in range(8)]
    errors: list[BaseException] = []

    def catch_up() -> None:
        try:
            other.catch_up()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=catch_up) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e.obj_id for e in seen] == made
    assert other.applied == store.applied


def test_an_overtaken_write_is_run_again_on_the_new_state(
    store: EtcdStore, second: tuple[EtcdStore, list[Any]]
) -> None:
    """The other instance's replica is behind (its follower is not told); its create must still
    take the next segmentation id, not the one it would have picked on its stale replica."""
    other, _ = second
    freeze_follower(other)  # only the retry can bring it up to date
    first = store.create_network({})
    mine = other.create_network({})
    assert mine["provider:segmentation_id"] != first["provider:segmentation_id"]
    assert other.applied == 2  # entry 1 (the first network) applied by the retry, then its own


def hold_appends(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Hold the store's next appends to etcd (as a slow or quorum-less cluster holds them for a
    timeout per member) until ``release`` is set; ``entered``: one is being held."""
    entered, release = threading.Event(), threading.Event()
    real_append = store._log.append

    def held_append(after: int, entry: bytes, fence: Any = None) -> bool:
        if not release.is_set():
            entered.set()
            release.wait(60)
        return real_append(after, entry, fence)

    monkeypatch.setattr(store._log, "append", held_append)
    return entered, release


def test_a_write_waiting_for_etcd_blocks_no_read(
    store: EtcdStore,
    events: list[ChangeEvent],
    second: tuple[EtcdStore, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a write waits for the cluster (its append held here, as a slow or quorum-less
    cluster holds it for a timeout per member), the instance's reads - the API's and the data
    plane's - answer at once, without the unacknowledged write; an instance appending
    meanwhile overtakes it, so it runs again on the new state, and every event comes once."""
    net = store.create_network({"name": "before"})
    entered, release = hold_appends(store, monkeypatch)
    written: list[dict[str, Any]] = []
    writer = threading.Thread(target=lambda: written.append(store.create_network({})))
    read: dict[str, Any] = {}

    def reads() -> None:
        read["api"] = store.get("network", net["id"])
        read["data plane"] = [n["id"] for n in store.list_networks()]
        read["hosts"] = store.list_hosts()

    reader = threading.Thread(target=reads)
    try:
        writer.start()
        assert entered.wait(20), "the write never reached etcd"
        reader.start()
        reader.join(20)  # a bound on the hang of the old code (the lock held across the append)
        assert not reader.is_alive(), "a read waited for a write's etcd round trip"
        assert read == {"api": net, "data plane": [net["id"]], "hosts": []}
        other, _ = second
        overtaking = other.create_network({})
    finally:
        release.set()
        writer.join(60)
    assert len(written) == 1
    held = written[0]
    assert held["provider:segmentation_id"] != overtaking["provider:segmentation_id"]
    assert [e.obj_id for e in events] == [net["id"], overtaking["id"], held["id"]]
    assert store.get("network", held["id"]) == held


def test_restart_resumes_from_the_replica_and_rebuilds_a_lost_one(
    store: EtcdStore, db_path: str, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    net = store.create_network({"name": "n"})
    replica = tmp_path / "r.db"
    bus, seen = EventBus(), []
    bus.subscribe(seen.extend)
    again = EtcdStore(str(replica), bus, etcd_settings)
    assert again.get_network(net["id"]) is not None
    assert [e.obj_id for e in seen] == [net["id"]]  # applied (and published) once
    again.close()
    store.create_network({"name": "while stopped"})
    seen.clear()
    again = EtcdStore(str(replica), bus, etcd_settings)
    assert [e.new["name"] for e in seen if e.new] == ["while stopped"]  # only what it missed
    again.close()
    replica.unlink()
    again = EtcdStore(str(replica), EventBus(), etcd_settings)
    assert {n["name"] for n in again.list_networks()} == {"n", "while stopped"}
    again.close()


def test_migration_sqlite_to_etcd_and_back(tmp_path: Path, etcd_settings: EtcdSettings) -> None:
    source = str(tmp_path / "single.db")
    single = Store(source, EventBus())
    net_id, _ = make_net_with_subnet(single)
    port = single.create_port({"network_id": net_id, "name": "p"})
    single.close()

    sqlite_to_etcd(source, etcd_settings)
    with pytest.raises(ValueError, match="already holds"):
        sqlite_to_etcd(source, etcd_settings)  # never over an existing log by accident
    clustered = EtcdStore(str(tmp_path / "replica.db"), EventBus(), etcd_settings)
    assert clustered.get_port(port["id"]) == port
    moved = clustered.create_port({"network_id": net_id})  # allocation continues from there
    assert moved["fixed_ips"][0]["ip_address"] != port["fixed_ips"][0]["ip_address"]
    clustered.close()

    back = str(tmp_path / "back.db")
    etcd_to_sqlite(etcd_settings, back)
    restored = Store(back, EventBus())
    assert {p["id"] for p in restored.list_ports()} == {port["id"], moved["id"]}
    restored.close()
    tables = {r[0] for r in sqlite3.connect(back).execute("SELECT name FROM sqlite_master")}
    assert "etcd_replica" not in tables


def test_a_bulk_too_large_for_one_etcd_transaction_is_a_400_and_changes_nothing(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    small = dataclasses.replace(etcd_settings, max_entry_bytes=20_000)
    s = EtcdStore(str(tmp_path / "s.db"), EventBus(), small)
    try:
        net_id, _ = make_net_with_subnet(s)
        head = s.applied
        with pytest.raises(InvalidInput, match="split it into smaller bulks"):
            s.create("port", [{"network_id": net_id} for _ in range(200)])
        assert s.list_ports() == [] and s.applied == head
        assert len(s.create("port", [{"network_id": net_id} for _ in range(5)])) == 5
    finally:
        s.close()


def test_a_local_commit_failing_after_etcd_acknowledged_loses_nothing(
    store: EtcdStore,
    events: list[ChangeEvent],
    second: tuple[EtcdStore, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other, seen = second
    real = store._set_position
    failures = iter([True])

    def flaky(seq: int, entry_id: str) -> None:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")
        real(seq, entry_id)

    monkeypatch.setattr(store, "_set_position", flaky)
    net = store.create_network({"name": "acknowledged"})  # answered: committed by the cluster
    assert store.get_network(net["id"]) == net  # applied here from the log
    assert [e.obj_id for e in events] == [net["id"]]  # published once
    after = store.create_network({"name": "next"})  # the replica is usable afterwards
    wait_for(lambda: len(seen) == 2, "the other instance's events")
    assert [e.obj_id for e in seen] == [net["id"], after["id"]]
    assert other.get("network", net["id"]) == net


ETCD_WRITER = textwrap.dedent(
    """
    import sys
    from controller.events import EventBus
    from controller.store.etcd_settings import EtcdSettings, parse_url
    from controller.store.replicated import EtcdStore

    store = EtcdStore(sys.argv[1], EventBus(), EtcdSettings(parse_url(sys.argv[2]), sys.argv[3]))
    net = store.create_network({})
    store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/16"})
    print("network", net["id"], flush=True)
    while True:
        port = store.create_port({"network_id": net["id"]})
        print("port", port["id"], flush=True)
    """
)


def test_every_acknowledged_write_survives_sigkill(
    tmp_path: Path, etcd_cluster: Any, etcd_settings: EtcdSettings
) -> None:
    """SIGKILL mid-stream: every write the killed instance acknowledged is there, on a fresh
    replica and on the killed one's own (which may have missed its last local commit)."""
    replica = str(tmp_path / "killed.db")
    acknowledged = kill_writer_after(
        40, ETCD_WRITER, replica, etcd_cluster.url, etcd_settings.prefix
    )
    for path in (str(tmp_path / "fresh.db"), replica):
        s = EtcdStore(path, EventBus(), etcd_settings)
        for kind, obj_id in acknowledged:
            assert s.get(kind, obj_id) is not None, (path, kind, obj_id)
        ports = s.list_ports()
        assert len({p["fixed_ips"][0]["ip_address"] for p in ports}) == len(ports) >= 39
        s.close()


def test_unreachable_cluster_at_start_is_a_clear_error(tmp_path: Path) -> None:
    from lab.tenantnet_proc import free_port

    settings = EtcdSettings((("127.0.0.1", free_port()),), timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        EtcdStore(str(tmp_path / "x.db"), EventBus(), settings)


def test_entries_are_compare_and_put_on_the_head(etcd_settings: EtcdSettings) -> None:
    log = EtcdLog(etcd_settings)
    assert log.create({"epoch": "e", "schema": 1})
    assert not log.create({"epoch": "f", "schema": 1})
    assert log.append(0, b"one")
    assert not log.append(0, b"stale")  # the head moved: a second writer on entry 1 loses
    assert log.append(1, b"two")
    assert list(log.entries_after(0)) == [(1, b"one"), (2, b"two")]
    assert log.head() == 2


def test_transactions_go_to_the_leader_first(
    etcd_cluster: Any, etcd_settings: EtcdSettings
) -> None:
    """An instance whose calls go first to a member that does not lead learns the leader from
    the first transaction's answer (its raft term), on a thread of its own, and sends the
    next transactions there: a follower would forward each one to the leader, a hop more
    on every write of a port's path."""
    settings = dataclasses.replace(etcd_settings, prefix=f"/leader-first-{time.time_ns()}/")
    leader = [m.name for m in etcd_cluster.members].index(etcd_cluster.leader().name)
    names = (f"i{n}" for n in range(99))
    log = next(log for n in names if (log := EtcdLog(settings, n)).current_member != leader)
    sent: list[int] = []
    for clients in log._passes:
        for index, client in enumerate(clients):
            real = client.transaction

            def recorded(txn: Any, index: int = index, real: Any = real) -> Any:
                sent.append(index)
                return real(txn)

            client.transaction = recorded
    assert log.create({"epoch": "e", "schema": 1})
    assert sent == [log.current_member]
    wait_for(lambda: log._leader == leader, "the leader found")
    assert log.append(0, b"entry") and log.append(1, b"entry")
    assert sent[1:] == [leader, leader]
    log.wipe()


def test_two_controller_processes_serve_one_store(
    tmp_path: Path, etcd_cluster: Any, etcd_settings: EtcdSettings
) -> None:
    """`tenantnet serve --store etcd://...` twice: a write answered by one is read on the other
    at once, and the survivor keeps serving when the first is killed."""
    from lab.tenantnet_proc import TenantnetProcess, free_port

    args = ("--store", etcd_cluster.url, "--etcd-prefix", etcd_settings.prefix)
    procs = [
        TenantnetProcess(tmp_path / f"c{i}", f"127.0.0.1:{free_port()}", extra_args=args)
        for i in range(2)
    ]
    try:
        for p in procs:
            p.start(timeout=60)
        a, b = (p.api for p in procs)
        net = a.create("network", name="shared")
        a.create("subnet", network_id=net["id"], cidr="10.9.0.0/24")
        port = a.create("port", network_id=net["id"])
        assert b.show("port", port["id"]) == port
        # both are members (etcd leases), and agree on who would own each host
        wait_for(  # each sees the other at its next read of the members (every TTL/3)
            lambda: all(len(x.status().get("cluster", {}).get("members", ())) == 2 for x in (a, b)),
            "both instances members",
        )
        cluster_a, cluster_b = a.status()["cluster"], b.status()["cluster"]
        assert cluster_a["members"] == cluster_b["members"] and cluster_a["live"]
        assert cluster_a["member"] != cluster_b["member"]
        procs[0].kill()
        other = b.create("port", network_id=net["id"])
        assert other["fixed_ips"][0]["ip_address"] != port["fixed_ips"][0]["ip_address"]
        # the killed one leaves the members when its lease expires (etcd_member_ttl_s)
        wait_for(
            lambda: b.status()["cluster"]["members"] == [cluster_b["member"]], "a's lease expiring"
        )
        assert "store on etcd 127.0.0.1:" in procs[1].log_tail()
    finally:
        for p in procs:
            p.stop()


def test_store_copy_command(tmp_path: Path, etcd_cluster: Any, etcd_settings: EtcdSettings) -> None:
    from controller.cli import main

    source = str(tmp_path / "one.db")
    single = Store(source, EventBus())
    net = single.create_network({"name": "copied"})
    single.close()
    prefix = ("--etcd-prefix", etcd_settings.prefix)
    assert main(["store-copy", source, etcd_cluster.url, *prefix]) == 0
    assert main(["store-copy", source, etcd_cluster.url, *prefix]) == 1  # exists: refused
    assert main(["store-copy", source, str(tmp_path / "x.db")]) == 2
    back = str(tmp_path / "back.db")
    assert main(["store-copy", etcd_cluster.url, back, *prefix]) == 0
    restored = Store(back, EventBus())
    assert restored.get_network(net["id"]) == net
    restored.close()
