"""Faults of the etcd cluster under the store (issue 18, "faults are normal, nothing stalls"):
a member that answers nothing (frozen, or waiting on a killed leader), a write whose answer is
lost after etcd committed it, a snapshot whose answer is lost, and a watch whose member dies.

Each test injects the fault into the real 3-member cluster (or into one member's client) and
asserts what the API and the data plane rely on: the write completes, it is in the log once,
allocations stay unique, no change is missed or applied twice.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from etcd3gw import exceptions as etcd_errors

from controller.events import ChangeEvent, EventBus
from controller.store import etcd_log, replicated
from controller.store.errors import StoreUnavailable
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


def first_writer(log: EtcdLog) -> int:
    """The member the log's next transaction goes to first (the leader, once learnt: here
    now, not by the background search a transaction's answer starts)."""
    log.find_leader()
    return log.write_member


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
        lost = lose_answers(store._log, first_writer(store._log), 1)
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
        lost = lose_answers(store._log, first_writer(store._log), 1, after=1)  # not the claim
        assert store.snapshot(force=True)
        assert lost == [1]
        found = store._log.snapshot()
        assert found is not None and found[0] == store.applied
    finally:
        store.close()


def test_a_claim_taken_before_its_answer_was_lost_is_held(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """The snapshot's claim is a compare on the claim key: the retry fails the compare against
    the key its own first attempt put.  The key holds our lease, so the claim is ours: the
    snapshot is taken (before, nobody held the claim but the instance gave up, and a forced
    snapshot under a loaded cluster returned False), and the claim is given back after."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    try:
        store.create_network({"name": "n"})
        lost = lose_answers(store._log, first_writer(store._log), 1)  # the claim's
        assert store.snapshot(force=True)
        assert lost == [1]
        found = store._log.snapshot()
        assert found is not None and found[0] == store.applied
        again = store._log.claim("snap/claim", 10)  # released: free for the next snapshot
        assert again is not None
        store._log.release(again)
    finally:
        store.close()


def test_a_log_created_before_its_answer_was_lost_is_ours(etcd_settings: EtcdSettings) -> None:
    """Creating the log is a compare on its meta: the retry fails against the meta its own
    first attempt put.  That log is ours (a migration raised "written to during the
    migration" before); one created by another epoch is still refused."""
    log = EtcdLog(etcd_settings)
    lost = lose_answers(log, first_writer(log), 1)
    assert log.create({"epoch": "ours", "schema": 0})
    assert lost == [1]
    assert not log.create({"epoch": "theirs", "schema": 0})
    assert log.meta() == {"epoch": "ours", "schema": 0}


def test_a_claim_whose_release_timed_out_is_released_on_another_member(
    etcd_settings: EtcdSettings,
) -> None:
    """Giving the claim back is one revoke: one that times out on the first member (never
    sent) goes to the next, so the claim is free at once (before, the one attempt failed
    quietly and the claim stayed held for its whole lease: the next snapshot was refused)."""
    log = EtcdLog(etcd_settings)
    lease = log.claim("snap/claim", 60)
    assert lease is not None
    timed_out = [0]
    for clients in log._passes:
        client = clients[log.current_member]
        real = client.post

        def revoke_times_out(url: str, *args: Any, real: Any = real, **kwargs: Any) -> Any:
            if url.endswith("/lease/revoke") and not timed_out[0]:
                timed_out[0] += 1
                raise etcd_errors.ConnectionTimeoutError("timed out (injected)")
            return real(url, *args, **kwargs)

        client.post = revoke_times_out
    log.release(lease)
    assert timed_out == [1]
    again = log.claim("snap/claim", 60)
    assert again is not None
    log.release(again)
    log.release(again)  # already given back: quiet


def watching(
    tmp_path: Path, settings: EtcdSettings
) -> tuple[EtcdStore, list[ChangeEvent], list[int]]:
    """An instance that only its watch moves on (no poll), with its watch started:
    (the store, the events it published, the entries its watch delivered, in order)."""
    bus, seen = EventBus(), []
    bus.subscribe(seen.extend)
    store = EtcdStore(str(tmp_path / "watching.db"), bus, settings, poll_s=3600)
    delivered: list[int] = []
    arrived = store._entry_arrived

    def recorded(seq: int, raw: bytes) -> None:
        delivered.append(seq)
        arrived(seq, raw)

    store._entry_arrived = recorded  # type: ignore[method-assign]
    store._doorbell.set()  # the follower creates its watch at its first wake-up
    wait_for(lambda: store._watch is not None, "the watch")
    return store, seen, delivered


def assert_resumed_without_gap(
    writer: EtcdStore, seen: list[ChangeEvent], delivered: list[int], fault: Callable[[], None]
) -> None:
    """One write through the watch, ``fault()``, three more writes: all four reach the
    watching instance once, in order, and the watch itself delivered each entry once."""
    first = writer.create_network({"name": "first"})
    wait_for(lambda: len(seen) == 1, "the first change through the watch")
    before = writer.applied
    fault()
    during = [writer.create_network({"name": f"during{i}"}) for i in range(3)]
    wait_for(lambda: len(seen) == 4, "the changes after the fault")
    assert [e.obj_id for e in seen] == [first["id"], *(n["id"] for n in during)]
    assert [s for s in delivered if s > before] == [before + 1, before + 2, before + 3]


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_watch_whose_member_fails_resumes_on_another_from_its_revision(
    tmp_path: Path,
    restore_members: Any,  # noqa: F811  (the fixture imported above)
    etcd_settings: EtcdSettings,
    fault: str,
) -> None:
    """kill -9 of the member the watch is on, or a freeze (it sends nothing and closes
    nothing).  The end of the stream (killed), or its idle timeout and then a new watch the
    member does not confirm (frozen), is noticed - etcd3gw's iterator waited for ever, and the
    instance depended on its poll - and the watch resumes on another member from the
    revision after the last one it delivered: nothing missed, nothing twice."""
    cluster = restore_members
    settings = dataclasses.replace(etcd_settings, watch_idle_s=1.0)
    writer = EtcdStore(str(tmp_path / "w.db"), EventBus(), etcd_settings)
    store, seen, delivered = watching(tmp_path, settings)
    watch = store._watch
    assert watch is not None
    member = cluster.members[watch.member]
    try:
        inject = cluster.stop_member if fault == "kill" else cluster.pause_member
        assert_resumed_without_gap(writer, seen, delivered, lambda: inject(member))
    finally:
        cluster.pause_member(member, False)
        store.close()
        writer.close()


def test_a_watch_thread_that_fails_is_logged_once_and_replaced_from_its_revision(
    tmp_path: Path, etcd_settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error on the watch's thread (here: delivering an entry) ends it with one
    logged error and a ring; the follower starts another from the revision of the entry that
    failed, which is delivered again: nothing is lost."""
    writer = EtcdStore(str(tmp_path / "w.db"), EventBus(), etcd_settings)
    store, seen, delivered = watching(tmp_path, etcd_settings)
    failed = [False]
    deliver = store._entry_arrived

    def fails_once(seq: int, raw: bytes) -> None:
        if not failed[0]:
            failed[0] = True
            raise RuntimeError("a bug (injected)")
        deliver(seq, raw)

    try:
        first_watch = store._watch
        store._entry_arrived = fails_once  # type: ignore[method-assign]
        assert first_watch is not None
        first_watch._entry = fails_once  # the running watch calls what it was given
        with caplog.at_level("WARNING"):
            assert_resumed_without_gap(writer, seen, delivered, lambda: None)
        assert store._watch is not first_watch and not first_watch.alive
        stopped = [r for r in caplog.records if "etcd watch stopped" in r.getMessage()]
        assert len(stopped) == 1 and stopped[0].exc_info is not None
    finally:
        store.close()
        writer.close()


@pytest.fixture
def watchdog(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> tuple[EtcdStore, EtcdStore, Any, list[int], list[float], float]:
    """For a test of the follower's watchdog: (a writer, a store whose follower never polls, a
    fake watch, its restarts, the faked clock, the watchdog's grace)."""
    now = [1000.0]
    clock = SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(replicated, "time", clock)
    writer = EtcdStore(str(tmp_path / "w.db"), EventBus(), etcd_settings)
    store = EtcdStore(str(tmp_path / "r.db"), EventBus(), etcd_settings, poll_s=3600)
    restarts: list[int] = []
    watch: Any = SimpleNamespace(last_seq=0, compactions=0, restart=lambda: restarts.append(1))
    return writer, store, watch, restarts, now, max(store._poll_s, etcd_settings.timeout_s)


def test_the_watchdog_restarts_a_watch_that_lags_behind_the_log(
    watchdog: Any,
) -> None:
    """A stream stuck without closing delivers nothing: once an entry read from the log has
    not come through the watch for the longer of the poll and the etcd timeout, the follower
    restarts the watch (on the next member); one that delivers in time is left alone.  The
    clock and the watch are faked; the follower's calls are made here."""
    writer, store, watch, restarts, now, grace = watchdog
    try:
        writer.create_network({"name": "before"})
        store.catch_up()
        store._check_watch(watch)  # the watch starts here: what came before is not its to carry
        writer.create_network({"name": "delivered"})
        store.catch_up()
        watch.last_seq = store.applied
        store._check_watch(watch)
        writer.create_network({"name": "stuck"})
        store.catch_up()
        store._check_watch(watch)
        now[0] += grace / 2
        store._check_watch(watch)
        assert restarts == []
        now[0] += grace / 2
        store._check_watch(watch)
        assert restarts == [1]
    finally:
        store.close()
        writer.close()


def test_entries_skipped_by_a_compaction_do_not_make_the_watch_lag(
    watchdog: Any,
) -> None:
    """After a compaction the watch resumes past entries the follower reads from the log: they
    never come through the watch.  On a quiet cluster the watchdog restarted the watch at
    every check after that (a warning and a member hop each time); it takes its floor again
    instead, and still restarts a watch that then misses a new entry.  The clock and the watch
    are faked; the follower's calls are made here, in its order (check, then read the log)."""
    writer, store, watch, restarts, now, grace = watchdog
    try:
        store._check_watch(watch)  # the watch starts here
        writer.create_network({"name": "skipped 1"})
        writer.create_network({"name": "skipped 2"})
        watch.compactions += 1  # the watch resumed past both, and rang
        store._check_watch(watch)
        store.catch_up()
        for _ in range(3):  # quiet
            store._check_watch(watch)
            now[0] += grace
        assert restarts == []
        writer.create_network({"name": "missed"})
        store.catch_up()
        for _ in range(3):
            store._check_watch(watch)
            now[0] += grace
        assert restarts == [1]
    finally:
        store.close()
        writer.close()


def test_short_attempts_go_round_until_a_member_has_the_new_leader(
    etcd_settings: EtcdSettings,
) -> None:
    """During an election every live member times out (it forwarded the request to the dead
    leader, where it is lost) until it learns the new leader; an attempt sent after that
    succeeds.  The call keeps going round the members in short attempts and succeeds then,
    instead of waiting out a long attempt sent during the election.  Fake clients: member 0
    refuses (the killed leader), members 1 and 2 time out on their first three calls."""
    log = EtcdLog(etcd_settings)
    calls: list[tuple[int, float]] = []

    class Member:
        def __init__(self, index: int, timeout: float) -> None:
            self.index, self.timeout, self.host, self.port = index, timeout, "m", index

        def get(self, key: str) -> list[bytes]:
            calls.append((self.index, self.timeout))
            if self.index == 0:
                raise etcd_errors.ConnectionFailedError("refused")
            if sum(1 for i, _ in calls if i == self.index) <= 3:
                raise etcd_errors.ConnectionTimeoutError("no leader yet")
            return [b"7"]

    log._passes = [[Member(i, c.timeout) for i, c in enumerate(clients)] for clients in log._passes]
    log._clients = log._passes[-1]
    assert log.head() == 7
    assert calls[-1] == (1, etcd_settings.attempt_timeout_s)  # a short attempt succeeded
    assert len(calls) == 11  # three rounds of 3, then members 0 and 1


@pytest.mark.parametrize(("call_timeout_s", "calls", "took"), [(6.0, 7, 5.0), (60.0, 9, 9.0)])
def test_a_call_without_quorum_ends_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, call_timeout_s: float, calls: int, took: float
) -> None:
    """Three members that accept and time out (a cluster without quorum): the short attempts
    go round for ``timeout_s`` (two rounds of three, 3 s), then one attempt with ``timeout_s``
    (5 s), and no other, which would end after ``call_timeout_s``: the 503 comes after 5 s, not
    9.5 s (every member's long attempt; 9 s here, the short rounds being exact).  With a
    large bound every member gets its long attempt, as before.  Fake clock and members."""
    now = [0.0]
    monkeypatch.setattr(
        etcd_log, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=lambda s: None)
    )
    settings = EtcdSettings(endpoints=(("m", 1),) * 3, call_timeout_s=call_timeout_s)
    log = EtcdLog(settings)
    made: list[float] = []

    class Member:
        def __init__(self, timeout: float) -> None:
            self.timeout, self.host, self.port = timeout, "m", 1

        def get(self, key: str) -> list[bytes]:
            made.append(self.timeout)
            now[0] += self.timeout
            raise etcd_errors.ConnectionTimeoutError("no quorum")

    log._passes = [[Member(c.timeout) for c in clients] for clients in log._passes]
    log._clients = log._passes[-1]
    with pytest.raises(replicated.EtcdUnavailable):
        log.head()
    assert len(made) == calls and now[0] == took
    assert made[6:] == [settings.timeout_s] * (calls - 6)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda: None, id="200 with null"),
        pytest.param(lambda: [], id="200 with a list"),
        pytest.param(
            lambda: (_ for _ in ()).throw(
                urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            ),
            id="urllib3 error unwrapped",
        ),
    ],
)
def test_a_write_whose_answer_is_not_etcds_answers_503_and_the_next_write_works(
    tmp_path: Path, etcd_settings: EtcdSettings, answer: Callable[[], Any]
) -> None:
    """Every member answers the write's transaction with something that is not etcd's (a
    proxy's ``null``, a body cut off that urllib3 raises unwrapped).  That escaped the store's
    handlers: the write answered 500 and left the replica's writer connection inside its
    transaction, so every later write, apply and catch-up failed until a restart.  Now it
    is a 503 that says the write may have been taken, and the next write commits."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    try:
        net = store.create_network({"name": "n"})
        real = [(client, client.transaction) for p in store._log._passes for client in p]
        for client, _ in real:
            client.transaction = lambda txn: answer()
        with pytest.raises(StoreUnavailable, match="may still be committed"):
            store.create_network({"name": "lost"})
        for client, transaction in real:
            client.transaction = transaction
        assert not store._wconn.in_transaction
        kept = store.create_network({"name": "kept"})
        assert sorted(n["id"] for n in store.list_all("network")) == sorted([net["id"], kept["id"]])
    finally:
        store.close()


def test_a_write_no_member_answered_is_not_asked_for_again(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append that no member answered has already taken the call's whole bound
    (``call_timeout_s``); the catch-up the write then made to learn whether it was committed
    was a second call with a bound of its own, so the 503 came after twice the documented
    wait (8 s instead of 4 measured on a frozen member).  The 503 says the write may still be
    committed, and the follower applies it if it was: no second call."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    try:
        store.create_network({"name": "n"})
        caught_up: list[int] = []

        def append(*args: Any) -> bool:
            raise etcd_log.EtcdUnavailable("every member timed out (injected)", maybe_sent=True)

        monkeypatch.setattr(store._log, "append", append)
        monkeypatch.setattr(store, "catch_up", lambda: caught_up.append(1) or [])
        with pytest.raises(StoreUnavailable, match="may still be committed"):
            store.create_network({"name": "lost"})
        assert caught_up == []
        assert not store._wconn.in_transaction
    finally:
        store.close()


def test_a_committed_write_whose_local_commit_failed_answers_503_without_quorum(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd committed the write, the replica's own commit failed (a disk error) and etcd
    cannot be read to apply it from the log: that answered 500 (a bare `EtcdUnavailable`).
    It is a 503 that says the write was committed; the replica applies it once etcd answers."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    try:
        store.create_network({"name": "n"})
        real_catch_up = store.catch_up

        def set_position(*args: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error (injected)")

        def catch_up() -> list[str]:
            raise etcd_log.EtcdUnavailable("no quorum (injected)")

        monkeypatch.setattr(store, "_set_position", set_position)
        monkeypatch.setattr(store, "catch_up", catch_up)
        with pytest.raises(StoreUnavailable, match="was committed"):
            store.create_network({"name": "committed"})
        assert not store._wconn.in_transaction
        monkeypatch.undo()
        real_catch_up()
        assert sorted(n["name"] for n in store.list_all("network")) == ["committed", "n"]
    finally:
        store.close()


def test_a_replica_that_stops_following_the_log_says_so_and_gives_up_its_hosts(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """An entry this replica cannot apply (another instance runs a newer schema) stops its
    follower for good.  The instance stayed ready and a live member: the hosts it owned got
    no change from then on.  Now /readyz says why it is not ready, and the store calls
    ``on_halt`` once (the service leaves the membership with it: `Controller._leave_members`)."""
    import json
    import uuid
    import zlib

    from controller.api import health
    from controller.store.schema import LATEST

    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings)
    halts: list[str] = []
    store.on_halt = halts.append
    try:
        store.create_network({"name": "n"})
        assert health.not_ready(store, None) is None
        newer = {"id": uuid.uuid4().hex, "schema": LATEST + 1, "sql": [], "events": []}
        raw = zlib.compress(json.dumps(newer).encode())
        assert store._log.append(store._log.head(), raw)
        wait_for(lambda: store.halted is not None, "the follower to stop")
        assert len(halts) == 1 and f"store schema {LATEST + 1}" in halts[0]
        reason = health.not_ready(store, None)
        assert reason is not None and "no longer follows the etcd log" in reason
    finally:
        store.close()


def test_the_service_leaves_the_membership_when_its_replica_stops() -> None:
    from controller.service import Controller

    left: list[bool] = []
    service = Controller.__new__(Controller)
    service.members = SimpleNamespace(stop=lambda: left.append(True))
    service._leave_members("etcd log entry 9 was written with store schema 99")
    assert left == [True]
