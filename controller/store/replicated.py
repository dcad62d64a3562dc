"""The store on an etcd cluster: etcd holds the replicated log, each instance's SQLite applies it.

Why this shape (docs/ha.md has the longer story): the store's rules - allocation of segmentation
ids, MACs and IPs, revision numbers and If-Match, quotas, all-or-nothing bulk creates, the change
events - are ~3,900 lines over SQL.  Rewriting them for a key-value store would be a second
implementation to keep equal to the first.  Instead every instance keeps a full SQLite replica and
etcd orders the transactions:

* **A write** runs on the local replica (which has applied the log up to entry N) inside
  ``BEGIN IMMEDIATE`` exactly as on a single node, while `RecordingConnection` records each
  statement it executes (with its parameters: every value the rules chose - ids, addresses,
  timestamps - is a parameter, and no statement calls a non-deterministic SQL function).  The
  statements and the `ChangeEvent` list become entry N+1, appended with one etcd transaction
  that *compares* the head with N.  Only after etcd acknowledged it (a quorum has it) does the
  local transaction COMMIT and the API answer 2xx.  If the compare fails another instance wrote
  first: roll back, apply the missing entries, run the whole write again (bounded, then 503).
  So writes are serialised cluster-wide and two instances can never hand out the same id.
  Writes run on their own connection under their own lock: while one waits for etcd, the
  instance's reads go on (they see the last local commit; see `EtcdStore._write`).
* **Every instance applies** new entries in order (on the watch's thread as they arrive, else
  on the follower's, which the watch rings; a poll covers a silent watch) by executing their
  statements and its position in one local transaction, then publishes their events: each
  data plane sees every change exactly once, in log order, also after a reconnect or a
  restart (the position is durable with the data it describes).
* **API reads** first ask etcd for the head (a quorum read) and apply what is missing, so a
  read on any instance sees every write acknowledged before it.  Reads of the data plane are
  local (they follow the events anyway).  Without quorum, reads are served from the replica.

The default single-node path (`Store`) is untouched: this subclass only replaces how a write
transaction ends and adds the follower.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from controller.events import KINDS, ChangeEvent, EventBus
from controller.metrics import Metrics
from controller.store.errors import InvalidInput, StoreError, StoreUnavailable
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_members import first_rank
from controller.store.etcd_settings import EtcdSettings
from controller.store.etcd_watch import LogWatch
from controller.store.pending import Observations, PendingObservations
from controller.store.schema import LATEST
from controller.store.store import Store
from controller.store.tx import Tx
from controller.throttle import Throttle

LOG = logging.getLogger(__name__)
T = TypeVar("T")
POSITION_TABLE = "etcd_replica"
CREATE_POSITION = f"CREATE TABLE IF NOT EXISTS {POSITION_TABLE} (epoch TEXT, seq INTEGER)"
# The ids of the last entries applied, kept with the position (and so in every snapshot): a
# write whose append was committed but answered as lost finds its entry here even when the log
# was truncated past it meanwhile (`_write`), instead of running a second time.
APPLIED_IDS_TABLE = "etcd_applied_ids"
CREATE_APPLIED_IDS = (
    f"CREATE TABLE IF NOT EXISTS {APPLIED_IDS_TABLE} (seq INTEGER PRIMARY KEY, id TEXT NOT NULL)"
)
APPLIED_IDS_KEPT = 4096
MAX_ATTEMPTS = 50
ARRIVED_MAX_BYTES = 16 * 1024 * 1024  # entries delivered by the watch, awaiting the follower
WRITES = (
    "create",
    "update",
    "delete",
    "update_quota",
    "delete_quota",
    "upsert_host",
    "router_interface",
    "router_routes",
    "set_ports_observed",
    "_observe",
)
"""Every Store method that opens a write transaction: each is re-run from the start when
another instance appended first (a unit test checks the list is complete)."""
API_READS = (
    "get",
    "list_all",
    "page",
    "ip_availability",
    "quota_limits",
    "quota_details",
    "quota_list",
)
"""Reads the API serves: linearisable (they wait for the head of the log first)."""
_READ_ONLY = ("SELECT", "BEGIN", "COMMIT", "ROLLBACK", "PRAGMA")


class LogMovedOn(StoreUnavailable):
    """The log was truncated past this replica again while it loaded a snapshot (a cluster
    taking snapshots faster than this instance loads them): a 503 for the request, and the
    follower tries again, unlike a log it can never apply."""


class NotOwner(Exception):
    """A data-plane observation written after this instance stopped being a live member (its
    lease ended, or was replaced by a new one since the observation was held): not written,
    since the hosts it is about may be another instance's now, which reports them itself."""


class Overtaken(Exception):
    """Another instance appended to the log first: apply its entries and run the write again."""


class RecordingConnection(sqlite3.Connection):
    """A connection that, while ``recorded`` is a list, appends every statement that may write
    (with its parameters) to it."""

    recorded: list[tuple[str, Any]] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.recorded is not None and not sql.lstrip().upper().startswith(_READ_ONLY):
            self.recorded.append((sql, parameters))
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        rows = list(seq_of_parameters)
        if self.recorded is not None:
            self.recorded.extend((sql, row) for row in rows)
        return super().executemany(sql, rows)


def encode_entry(
    entry_id: str, statements: list[tuple[str, Any]], events: list[ChangeEvent]
) -> bytes:
    """An entry as stored in etcd: compressed JSON (schema version, statements, events)."""
    body = {
        "id": entry_id,
        "schema": LATEST,
        "sql": [[sql, _params_out(params)] for sql, params in statements],
        "events": [[e.kind, e.old, e.new] for e in events],
    }
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def decode_entry(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(zlib.decompress(raw))
    body["sql"] = [(sql, _params_in(params)) for sql, params in body["sql"]]
    return body


def _params_out(params: Any) -> Any:
    def one(v: Any) -> Any:
        return {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes | bytearray) else v

    if isinstance(params, Mapping):
        return {"named": {k: one(v) for k, v in params.items()}}
    return [one(v) for v in params]


def _params_in(params: Any) -> Any:
    def one(v: Any) -> Any:
        return base64.b64decode(v["b64"]) if isinstance(v, dict) else v

    if isinstance(params, dict):
        return {k: one(v) for k, v in params["named"].items()}
    return tuple(one(v) for v in params)


_NOT_OWNER_LOG = Throttle()


def _log_not_owner(count: int) -> None:
    """One line per interval: observations dropped because this instance is not a member."""
    skipped = _NOT_OWNER_LOG("not owner")
    if skipped is not None and count:
        LOG.warning(
            "not a live member of the cluster: %d data-plane observations not written (the "
            "hosts' owners report them)%s",
            count,
            f"; {skipped} more times since last logged" if skipped else "",
        )


def read_position(path: str) -> tuple[str, int] | None:
    """(epoch, last applied entry) of a replica file, or None (no file, or not a replica)."""
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(f"SELECT epoch, seq FROM {POSITION_TABLE}").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else (str(row[0]), int(row[1]))


def _remove_database(path: str) -> None:
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class EtcdStore(Store):
    """A `Store` whose writes are committed by an etcd cluster first (see the module docstring).

    ``path`` is this instance's replica (a cache of the log: it may be deleted while the
    instance is stopped, it is then rebuilt from etcd).
    """

    connection_factory = RecordingConnection

    def __init__(
        self,
        path: str,
        bus: EventBus,
        etcd: EtcdSettings,
        underlay_mtu: int = 1500,
        quota_defaults: Mapping[str, int] | None = None,
        metrics: Metrics | None = None,
        poll_s: float = 1.0,
        member_id: str = "",
    ) -> None:
        self.etcd = etcd
        self._log = EtcdLog(etcd, spread_by=member_id)  # the first member: by the instance's id
        try:
            if member_id:  # ... or by its rank among the live instances (`first_rank`)
                self._log.spread(first_rank(self._log, member_id))
            meta = self._log.meta()
            if meta is None:
                meta = {"epoch": uuid.uuid4().hex, "schema": LATEST}
                if not self._log.create(meta):  # another instance created it meanwhile
                    meta = self._log.meta()
            assert meta is not None
            self.epoch = str(meta["epoch"])
            start = self._prepare_replica(path)
        except EtcdUnavailable as exc:
            raise StoreUnavailable(f"etcd cluster {_where(etcd)} unavailable: {exc}") from None
        super().__init__(
            path, bus, underlay_mtu=underlay_mtu, quota_defaults=quota_defaults, metrics=metrics
        )
        self._conn.execute(CREATE_POSITION)
        self._conn.execute(CREATE_APPLIED_IDS)
        if start is not None:
            self._conn.execute(f"DELETE FROM {POSITION_TABLE}")
            self._conn.execute(f"INSERT INTO {POSITION_TABLE} VALUES (?, ?)", (self.epoch, start))
        # Writes (the API's, the data plane's, and applying the log) go through their own
        # connection under their own lock: a write waiting for etcd holds only those, while
        # reads go on on ``_conn`` under the store lock (WAL: they see the last commit).
        self._writer = threading.RLock()
        # Per thread: the entry the replica was at when this thread's write transaction ran
        # (None: none ran yet in this attempt), which is what a refusal was judged on.
        self._judged_at = threading.local()
        wconn = self._connect()
        assert isinstance(wconn, RecordingConnection)
        self._wconn = wconn
        position = read_position(path)
        assert position is not None
        self.applied = position[1]
        # etcd unreachable as last seen by the follower (or an API read): since when
        # (monotonic), None while reachable (`down`)
        self._down_since: float | None = None
        self._poll_s = poll_s
        self._doorbell = threading.Event()
        self._stopping = threading.Event()
        self._watch: LogWatch | None = None
        # the watchdog (`_check_watch`): entries after ``_watch_floor`` are the watch's to
        # deliver; ``_lagging`` = (an entry applied from the log that it had not, since when)
        self._watch_floor: int | None = None
        self._lagging: tuple[int, float] | None = None
        # the watch's `resyncs` (`_watch_resynced`) and `compactions` (`_check_watch`) as last
        # seen by the follower
        self._resyncs_seen = self._compactions_seen = 0
        self._snapshot_seq = start or 0
        self._snapshotting = threading.Thread()
        self._pending = PendingObservations()
        # (member key, lease) while this instance is a live member, None when it is not
        # (`EtcdMembership.fence`); unset: a store without membership (tools, tests).
        self.fence: Callable[[], tuple[str, int] | None] | None = None
        # (member key, lease) it holds, live or not (`EtcdMembership.lease_key`), and that
        # lease when holding began: held observations are written only under the same one
        self.lease_key: Callable[[], tuple[str, int] | None] | None = None
        self._held_under: tuple[str, int] | None = None
        # `EtcdMembership.quorum_lost_for`, wired with the membership: what /readyz judges
        # etcd by (`quorum_lost_for`); unset: the follower's ``down`` instead
        self.quorum_signal: Callable[[], float | None] | None = None
        # Why the follower stopped for good (a log this replica cannot apply), None while it
        # follows; `on_halt` is called once with it (the service leaves the membership).
        self.halted: str | None = None
        self.on_halt: Callable[[str], None] | None = None
        # entries the watch delivered, not applied yet: seq -> value (bounded in bytes; an
        # entry that does not fit is read from the log instead)
        self._arrived: dict[int, bytes] = {}
        self._arrived_bytes = 0
        self._arrivals = 0  # entries the watch delivered since the follower last looked
        self._arrived_missed = False  # ... and one of them did not fit the bound
        self._arrived_lock = threading.Lock()
        self.catch_up()
        self._follower = threading.Thread(target=self._follow, name="etcd-follower", daemon=True)
        self._follower.start()
        LOG.info(
            "store on etcd %s (prefix %s): replica %s at entry %d",
            _where(etcd),
            self._log.prefix,
            path,
            self.applied,
        )

    @property
    def down(self) -> bool:
        """etcd unreachable (no quorum, or no member answers) as the follower, or an API
        read, last saw it; False again once the follower reads the log."""
        return self._down_since is not None

    @down.setter
    def down(self, value: bool) -> None:
        if not value:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.monotonic()

    def quorum_lost_for(self) -> float | None:
        """Seconds this instance has been unable to commit to etcd (no quorum, or no member
        reachable: every write answers 503), None while it can: what ``GET /readyz`` and the
        ``tenantnet_store_quorum`` gauge report.  No etcd call (a read of what the background
        threads last saw), so it answers at once while etcd hangs.

        With membership (`quorum_signal`, every instance of the service): its lease renewals,
        the rule of `EtcdMembership.quorum_lost_for` (no renewal succeeded for as long as a
        write waits before its 503).  Without (tools, tests): the follower's ``down`` - its
        last read of the log failed, after the whole call bound, and none succeeded since."""
        if self.quorum_signal is not None:
            return self.quorum_signal()
        since = self._down_since
        return None if since is None else time.monotonic() - since

    @property
    def log(self) -> EtcdLog:
        """The log's keys on the cluster (membership points its first member at this
        instance's rank: `controller.store.etcd_members.EtcdMembership.spread_over`)."""
        return self._log

    def _connect(self) -> sqlite3.Connection:
        """As the single node's, but local commits skip the fsync (synchronous=NORMAL).

        The replica is a cache of the log: what makes a write durable is etcd's commit, which
        comes first.  In WAL mode a NORMAL commit is still atomic and the replica stays
        consistent after a power loss; it may only lose its last commits, and since the
        position is written in the same transaction as the entry's statements, it then
        resumes from an earlier position and applies those entries again from the log.  With
        FULL, each instance paid an fsync per entry - three instances, two entries per port
        create - on the same disks as etcd's own write-ahead log."""
        conn = super()._connect()
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _prepare_replica(self, path: str) -> int | None:
        """Keep the replica if it belongs to this log and the log still has its next entry;
        otherwise replace it by the snapshot (or start empty).  Returns the new position, or
        None when the replica was kept."""
        position = read_position(path)
        first = self._log.first_entry()
        kept = position is not None and position[0] == self.epoch
        if kept and position is not None and (first is None or first <= position[1] + 1):
            return None
        _remove_database(path)
        snapshot = self._log.snapshot()
        if snapshot is None:
            if first not in (None, 1):
                raise StoreUnavailable(f"the etcd log starts at entry {first} and has no snapshot")
            LOG.info("replica %s: starting empty for log %s", path, self.epoch)
            return 0
        seq, image = snapshot
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(zlib.decompress(image))
        LOG.info("replica %s: loaded the snapshot at entry %d", path, seq)
        return seq

    def close(self) -> None:
        self._stopping.set()
        self._doorbell.set()
        if self._follower.is_alive() and self._follower is not threading.current_thread():
            self._follower.join(timeout=10)
        if self._watch is not None:
            self._watch.stop()
        with self._writer:
            self._wconn.close()
        super().close()

    # -- writes -----------------------------------------------------------------------------------

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[Tx]:
        """A write transaction committed by etcd first, then locally (see the module docstring).

        ``durable`` does not apply: everything written goes through the log.

        Only the writer lock is held, on the writer connection, also while etcd is asked (up
        to a timeout per member when the cluster is slow or without quorum): reads - the
        API's, the data plane's, /status - go on meanwhile on the read connection and see the
        last local commit, which is every entry up to ``applied`` and nothing after.  What
        the lock orders is everything that changes the replica (writes of this instance and
        the application of the log), so the guarantees are those of one lock:

        * entries are committed locally in log order, and each once: a write appends entry
          ``applied + 1`` only while no other local change can move ``applied``, and the
          catch-up skips entries already applied;
        * each entry's events are published once, by whoever applied it, in log order;
        * a 2xx only after etcd acknowledged (the local COMMIT follows the append);
        * an overtaken write rolls back, catches up and runs again on the new state;
        * an API read that finds the head ahead of ``applied`` (e.g. this very write was
          appended but not yet committed locally) catches up, which waits for the writer lock:
          it never answers without an acknowledged write.
        """
        with self._writer:
            self._judged_at.seq = self.applied
            conn = self._wconn
            conn.execute("BEGIN IMMEDIATE")
            conn.recorded = []
            tx = Tx(conn, self.underlay_mtu, self.ovsdb_scheme, ip_hints=self._ip_hints)
            try:
                yield tx
            except BaseException:
                conn.recorded = None
                conn.execute("ROLLBACK")
                raise
            # Whatever fails from here on (an etcd answer that is not etcd's, the fence, a
            # bug) leaves the writer connection out of its transaction: left in it, every
            # later write, apply and catch-up failed ("cannot start a transaction within a
            # transaction") until a restart.
            try:
                recorded, conn.recorded = conn.recorded, None
                if not recorded:  # nothing changed (e.g. an update to the same values)
                    if durable:
                        self._unchanged_on_the_latest(conn)
                    conn.execute("COMMIT")
                    self._publish(tx.events)
                    return
                fence = None
                if not durable and self.fence is not None:  # a data-plane observation
                    fence = self.fence()
                    if fence is None:
                        conn.execute("ROLLBACK")
                        raise NotOwner
                entry_id = uuid.uuid4().hex
                entry = encode_entry(entry_id, recorded, tx.events)
                if len(entry) > self.etcd.max_entry_bytes:
                    conn.execute("ROLLBACK")
                    raise InvalidInput(
                        f"The request changes too much for one etcd transaction ({len(entry)} "
                        f"bytes compressed, limit {self.etcd.max_entry_bytes}): split it into "
                        "smaller bulks.",
                        "HTTPBadRequest",
                    )
                t0 = time.perf_counter()
                lost: EtcdUnavailable | None = None
                before = self.applied
                try:
                    won = self._log.append(self.applied, entry, fence)
                except EtcdUnavailable as exc:
                    won, lost = False, exc
                if not won:
                    conn.execute("ROLLBACK")
                    # Another instance appended first, or the answer was lost (a member timed out
                    # after committing, and the retry on the next one found the head moved): the
                    # log says which.  Our entry there means committed: it has just been applied
                    # and published, and the result computed here is the same.  Not asked when no
                    # member answered at all (``lost``): that call already took the whole
                    # ``call_timeout_s``, a second would double the wait for the 503 (measured:
                    # 8 s instead of 4 on a frozen member), and the 503 says the write may still
                    # be committed; the follower applies it if it was.
                    if lost is None:
                        try:
                            if entry_id in self.catch_up() or self._applied_before(entry_id):
                                return
                        except EtcdUnavailable as exc:
                            lost = exc
                    if fence is not None and lost is None and self.applied == before:
                        raise NotOwner  # the head had not moved: the fence failed
                    if lost is not None:
                        raise StoreUnavailable(
                            f"The store's etcd cluster {_where(self.etcd)} cannot commit now "
                            f"(no quorum, or unreachable): {lost}. "
                            + (
                                "The write may still be committed when the cluster recovers: "
                                "read before retrying."
                                if lost.maybe_sent
                                else "Nothing was changed; retry later."
                            )
                        ) from None
                    raise Overtaken
                try:
                    self._set_position(self.applied + 1, entry_id)
                    conn.execute("COMMIT")
                except BaseException:
                    # Committed by the cluster, not here (disk full, I/O error): the entry is in
                    # the log, so this replica applies it from there like any other (or, if even
                    # that fails, at the next catch-up or restart); the write was not lost.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    LOG.exception("local commit of etcd log entry %d failed", self.applied + 1)
                    try:
                        if entry_id in self.catch_up() or self._applied_before(entry_id):
                            return
                    except EtcdUnavailable as exc:
                        raise StoreUnavailable(
                            "The write was committed by the store's etcd cluster "
                            f"{_where(self.etcd)}, but this instance could not apply it (its "
                            f"local commit failed and etcd cannot be read now: {exc}). Read it "
                            "before retrying."
                        ) from None
                    raise
            except BaseException:
                conn.recorded = None
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            self.applied += 1
            tx.commit_ip_hints(self._ip_hints)
            self.metrics.store_commit.labels("durable").observe(time.perf_counter() - t0)
            self._publish(tx.events)

    def _unchanged_on_the_latest(self, conn: sqlite3.Connection) -> None:
        """A write that changes nothing is answered only if the replica was at the cluster's
        head when it was judged.  Otherwise "nothing to change" may be a lagging replica's
        view: the client's update (say, a name set back to what it was before another
        instance's acknowledged rename) would get a 2xx and be lost, and an If-Match the
        cluster has moved past would pass.  Then the write rolls back, the replica catches up
        and it runs again (`Overtaken`).  One quorum read, on API writes only: the data
        plane's observations come from the one instance that owns their host."""
        judged_at = self._judged_at.seq
        assert judged_at is not None
        try:
            if self._log.head() <= judged_at:
                return
            conn.execute("ROLLBACK")  # before the catch-up applies entries on this connection
            self.catch_up()
        except EtcdUnavailable as lost:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(
                f"The store's etcd cluster {_where(self.etcd)} cannot be read now (no quorum, "
                f"or unreachable: {lost}), so this instance cannot tell whether the request "
                "changes anything on the latest state. Nothing was changed; retry later."
            ) from None
        raise Overtaken

    def _retrying(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a write; while another instance appends first, catch up and run it again."""
        for _ in range(MAX_ATTEMPTS):
            self._judged_at.seq = None
            try:
                return method(self, *args, **kwargs)
            except Overtaken:  # the replica has caught up meanwhile: run the write again
                continue
            except StoreError as exc:
                # A refusal (404, 409, 412 ...) may come from a replica that has not applied
                # the latest entries yet (the network was just created on another instance):
                # it stands only if the replica was at the head when the write was judged.
                # Refusals are rare, so this quorum read costs nothing on the path that
                # succeeds.  One raised before any write transaction ran (a method that reads
                # first) is judged against the replica's position now, at least the one it
                # read at.
                judged_at = self._judged_at.seq
                if judged_at is None:
                    judged_at = self.applied
                if isinstance(exc, StoreUnavailable):
                    raise
                try:
                    behind = self._was_behind(judged_at)
                except EtcdUnavailable as lost:
                    # Without the head the refusal may be stale, and a 404 or 409 that a read
                    # contradicts once the cluster is back makes an orchestrator give up on a
                    # network it has just created.  A write cannot commit now anyway: 503, as
                    # every write without quorum answers, naming the refusal it could not check.
                    raise StoreUnavailable(
                        f"The store's etcd cluster {_where(self.etcd)} cannot be read now (no "
                        f"quorum, or unreachable: {lost}), so this instance cannot tell whether "
                        f"its refusal holds on the latest state: {exc.message} Nothing was "
                        "changed; retry later."
                    ) from None
                if not behind:
                    raise
        raise StoreUnavailable(
            f"The write was overtaken by other instances {MAX_ATTEMPTS} times in a row; retry."
        )

    def _was_behind(self, judged_at: int) -> bool:
        """Whether the cluster has entries after ``judged_at`` (the replica's position when
        the refused write ran), now applied.  Compared with that position, not with the
        replica's current one: the follower may have applied the missing entries between the
        refusal and this read, which left the refusal judged on a stale state all the same.
        Raises `EtcdUnavailable` when the head cannot be read or the entries applied."""
        if self._log.head() <= judged_at:
            return False
        self.catch_up()
        return True

    def _set_position(self, seq: int, entry_id: str) -> None:
        """Entry ``seq`` (``entry_id``) applied: in the transaction that applies it."""
        self._wconn.execute(f"UPDATE {POSITION_TABLE} SET seq = ?", (seq,))
        self._wconn.execute(
            f"INSERT OR REPLACE INTO {APPLIED_IDS_TABLE} VALUES (?, ?)", (seq, entry_id)
        )
        self._wconn.execute(
            f"DELETE FROM {APPLIED_IDS_TABLE} WHERE seq <= ?", (seq - APPLIED_IDS_KEPT,)
        )

    def _applied_before(self, entry_id: str) -> bool:
        """Whether entry ``entry_id`` is among the last `APPLIED_IDS_KEPT` applied here
        (loaded with a snapshot too: the log may no longer hold it)."""
        with self._writer:
            row = self._wconn.execute(
                f"SELECT 1 FROM {APPLIED_IDS_TABLE} WHERE id = ?", (entry_id,)
            ).fetchone()
        return row is not None

    # -- applying the log -------------------------------------------------------------------------

    def catch_up(self) -> list[str]:
        """Apply every entry after the local position, in order; returns their ids.

        If the log no longer holds the next entry (truncated after a snapshot while this
        replica was behind), load the latest snapshot first, then the entries after it.
        Raises `EtcdUnavailable` when etcd cannot be read (nothing is applied then)."""
        for _ in range(3):
            fetched = list(self._log.entries_after(self.applied))
            if fetched and fetched[0][0] > self.applied + 1:
                self._load_snapshot(fetched[0][0])
                continue
            ids = []
            with self._writer:
                for seq, raw in fetched:
                    if seq <= self.applied:  # applied meanwhile (our own write, another thread)
                        continue
                    if seq != self.applied + 1:  # truncated meanwhile: load the snapshot
                        break
                    ids.append(self._apply(seq, raw))
                else:
                    return ids
        raise LogMovedOn(
            f"this replica is at entry {self.applied} and the etcd log kept being truncated "
            "past it while it loaded the snapshot"
        )

    def _entry_arrived(self, seq: int, raw: bytes) -> None:
        """The watch's copy of entry ``seq`` (called on the watch's thread, before its ring)."""
        with self._arrived_lock:
            self._arrivals += 1
            if seq <= self.applied or seq in self._arrived:
                return
            if self._arrived_bytes + len(raw) > ARRIVED_MAX_BYTES:
                self._arrived_missed = True  # the follower reads it from the log
                return
            self._arrived[seq] = raw
            self._arrived_bytes += len(raw)

    def _take_arrived(self, seq: int) -> bytes | None:
        """Entry ``seq`` as the watch delivered it, if it did; forgets entries before it."""
        with self._arrived_lock:
            for old in [s for s in self._arrived if s < seq]:
                self._arrived_bytes -= len(self._arrived.pop(old))
            raw = self._arrived.pop(seq, None)
            if raw is not None:
                self._arrived_bytes -= len(raw)
            return raw

    def _apply_arrived(self) -> bool:
        """Apply, in order, the entries the watch delivered from ``applied + 1`` on.

        They are the log's entries as committed (a watch event follows the commit), so this
        is what `catch_up` would apply, without reading them again: one etcd range read less
        per entry and instance, and one round trip less between a write on one instance and
        its events on another.  False when no entry arrived since the last call (a poll, or a
        ring that was not an entry), when one did not fit the bound, or when it stopped at a gap
        (the next entry did not arrive but later ones did: the watch was re-created): the
        follower then reads the log at once, not at its next poll.

        An entry that arrived already applied counts as arrived: it is this instance's own
        write, committed locally before its watch event came back.  Reading the log after it
        (as when only applied entries counted) found nothing new, at one etcd range read per
        write on the instance that made it.  The watch delivers entries in log order, so a
        later entry of another instance still rings when it arrives."""
        with self._writer:
            with self._arrived_lock:
                arrived, self._arrivals = self._arrivals, 0
                missed, self._arrived_missed = self._arrived_missed, False
            while (raw := self._take_arrived(self.applied + 1)) is not None:
                self._apply(self.applied + 1, raw)
            with self._arrived_lock:
                gap = any(seq > self.applied for seq in self._arrived)
        return arrived > 0 and not gap and not missed

    def _watch_rang(self) -> None:
        """The watch's ring, on its thread: apply what it delivered right here if nothing else
        is changing the replica (`_apply_on_watch`), else ring the follower, as before."""
        if not self._apply_on_watch():
            self._doorbell.set()

    def _apply_on_watch(self) -> bool:
        """Apply, on the watch's thread, the entries it delivered; True when that is all the
        follower would have done for this ring (it is then not woken).

        Handing every entry to the follower's thread cost a thread wake-up per entry and
        instance (0.3-0.7 ms median, 1-5 ms p90 on a loaded 2-core machine), and a port's
        path to ACTIVE has two such hand-overs in a row: its create reaching the host's
        owner, then the owner's ACTIVE reaching the instance that serves the wait.

        The guarantees are those of `_apply_arrived`, under the same writer lock: entries in
        log order, each once, from ``applied + 1``.  The lock is only tried: a write or the
        follower holding it (possibly waiting for etcd) leaves the entries to the follower.
        Everything that is not "the next entries arrived" stays the follower's: a ring for a
        resync (a failed member, a compaction: it reads the log), an entry that did not fit
        the bound, a gap, a follower that stopped (a log it cannot apply, or a test that
        froze it), and an entry that fails to apply (the follower reads it from the log again
        and reports the error)."""
        watch = self._watch
        if (
            watch is None  # a ring while the watch is being made
            or watch.resyncs != self._resyncs_seen
            or self._stopping.is_set()
            or not self._follower.is_alive()
            or not self._writer.acquire(blocking=False)
        ):
            return False
        try:
            with self._arrived_lock:
                if self._arrived_missed or self._stopping.is_set():
                    return False
            while (raw := self._take_arrived(self.applied + 1)) is not None:
                self._apply(self.applied + 1, raw)
            with self._arrived_lock:
                if any(seq > self.applied for seq in self._arrived):
                    return False
            # the follower's chores after an apply (a snapshot due, etcd back after an
            # outage, held observations) still need its turn: ring it for those
            return not (self.down or self._pending.holding or self.snapshot_due())
        except Exception:
            with self._arrived_lock:
                self._arrived_missed = True  # so the follower reads the log
            return False
        finally:
            self._writer.release()

    def _load_snapshot(self, resumes_at: int) -> None:
        """Replace the replica's content by the latest snapshot (the log resumes at entry
        ``resumes_at``, after this replica's position), and publish the difference as change
        events, so the data plane converges on the new state as if it had seen every entry."""
        found = self._log.snapshot()
        if found is None or found[0] < resumes_at - 1:
            raise StoreUnavailable(
                f"this replica is at entry {self.applied}, the etcd log resumes at {resumes_at} "
                f"and no snapshot covers the gap (snapshot at {found and found[0]})"
            )
        seq, image = found
        with self._writer, self._lock:  # no write in flight, no read while the content changes
            if seq <= self.applied:  # caught up meanwhile (another thread)
                return
            before = {kind: Store.list_all(self, kind) for kind in KINDS}
            folder = os.path.dirname(os.path.abspath(self.path))
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".snapshot-") as tmp:
                tmp.write(zlib.decompress(image))
                tmp.flush()
                source = sqlite3.connect(tmp.name)
                try:
                    source.backup(self._conn)
                finally:
                    source.close()
            self._conn.execute(CREATE_POSITION)
            self._conn.execute(CREATE_APPLIED_IDS)  # a snapshot from before it was kept
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(f"DELETE FROM {POSITION_TABLE}")
            self._conn.execute(f"INSERT INTO {POSITION_TABLE} VALUES (?, ?)", (self.epoch, seq))
            self._conn.execute("COMMIT")
            LOG.info(
                "replica %s was at entry %d behind the truncated log: loaded the snapshot at %d",
                self.path,
                self.applied,
                seq,
            )
            self.applied = seq
            self._ip_hints.clear()
            after = {kind: Store.list_all(self, kind) for kind in KINDS}
            self._publish(difference(before, after))

    def _apply(self, seq: int, raw: bytes) -> str:
        entry = decode_entry(raw)
        if entry["schema"] != LATEST:
            raise StoreUnavailable(
                f"etcd log entry {seq} was written with store schema {entry['schema']}, this "
                f"instance runs {LATEST}: run the same tenantnet version on every instance"
            )
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in entry["sql"]:
                conn.execute(sql, params)
            self._set_position(seq, str(entry["id"]))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.applied = seq
        self._publish([ChangeEvent(kind, old, new) for kind, old, new in entry["events"]])
        return str(entry["id"])

    def sync(self) -> None:
        """Apply everything the cluster has committed so far (a quorum read of the head); with
        etcd unreachable, leave the replica as it is (reads are then served from it)."""
        if self.down:
            return
        try:
            if self._log.head() > self.applied:
                self.catch_up()
        except EtcdUnavailable:
            self.down = True
            self._doorbell.set()

    def _follow(self) -> None:
        """Apply new entries as the watch rings (or every ``poll_s``), keep the watch alive."""
        while not self._stopping.is_set():
            self._doorbell.wait(self._poll_s)
            self._doorbell.clear()
            if self._stopping.is_set():
                return
            try:
                renewed = self._keep_watching()
                resync = self._watch_resynced()
                if not self._apply_arrived() or renewed or resync:
                    self.catch_up()
                if self.snapshot_due():
                    self._snapshot_in_background()
                if self.down:
                    LOG.info("etcd cluster %s reachable again", _where(self.etcd))
                    self.down = False
                if self._pending.holding:
                    self.write_held_observations()
            except EtcdUnavailable as exc:
                if not self.down:
                    LOG.warning("etcd cluster %s unreachable: %s", _where(self.etcd), exc)
                self.down = True  # the watch resumes by itself (`etcd_watch`)
            except LogMovedOn as exc:  # not for good: the next round loads the newer snapshot
                LOG.warning("etcd log: %s; trying again", exc.message)
                self._stopping.wait(self._poll_s)
            except StoreUnavailable as exc:  # a schema mismatch, a log without snapshot: stop
                # (writes then fail with the same reason, since this replica cannot catch up).
                # Said where operators look (/readyz), and the instance gives up its hosts:
                # otherwise it stayed ready and a live member, and the hosts it owned got no
                # change from then on while their observations were held for good.
                LOG.error("etcd log: %s; this instance no longer follows it", exc.message)
                self.halted = exc.message
                if self.on_halt is not None:
                    try:
                        self.on_halt(exc.message)
                    except Exception:
                        LOG.exception("leaving the cluster after the etcd log stopped failed")
                return
            except Exception:
                LOG.exception("applying the etcd log failed at entry %d", self.applied + 1)
                self._stopping.wait(10 * self._poll_s)

    def _keep_watching(self) -> bool:
        """A watch on the log (`LogWatch`: it resumes by itself after its member fails), from
        the current revision on at first (what happened before is read by the catch-up that
        follows); one whose thread ended (a bug: it logged why) is replaced by another from
        its last revision; one that lags is restarted (`_check_watch`).  True when it started
        a new one (the follower then reads the log)."""
        watch = self._watch
        if watch is not None and watch.alive:
            self._check_watch(watch)
            return False
        if watch is None:
            start = self._log.revision() + 1
        else:
            LOG.warning("etcd watch thread ended at revision %d: starting another", watch.revision)
            start = watch.revision + 1
        self._watch = LogWatch(self._log, start, self._watch_rang, self._entry_arrived)
        self._watch_floor, self._lagging = None, None
        self._resyncs_seen = self._compactions_seen = 0
        return True

    def _watch_resynced(self) -> bool:
        """Whether the watch rang for a read of the log since the follower last looked (a
        failed member, a compaction): the follower then reads the log even if entries
        arrived meanwhile - they may be later ones, the missed or skipped ones are in the log
        only, and would otherwise wait for the poll."""
        watch = self._watch
        if watch is None:
            return False
        seen, self._resyncs_seen = self._resyncs_seen, watch.resyncs
        return seen != self._resyncs_seen

    def _check_watch(self, watch: LogWatch) -> None:
        """The watchdog: an entry this replica read from the log that the watch has still not
        delivered a while later (the longer of the poll and the etcd timeout) means its stream
        is stuck - a member frozen, or cut off without a reset - even before the stream's idle
        timeout says so: the watch resumes on the next member.

        After a compaction the watch resumed past entries the follower reads from the log:
        those never come through the watch, so the floor is taken again (at the next check,
        after that read), as for a new watch; on a quiet cluster the watch would otherwise
        "lag" behind them for ever, restarted at every check."""
        if watch.compactions != self._compactions_seen:
            self._compactions_seen = watch.compactions
            self._watch_floor, self._lagging = None, None
            return
        if self._watch_floor is None:  # entries up to here came before the watch started
            self._watch_floor = self.applied
            return
        ahead = self.applied > max(watch.last_seq, self._watch_floor)
        if not ahead:
            self._lagging = None
        elif self._lagging is None:
            self._lagging = (self.applied, time.monotonic())
        elif watch.last_seq < self._lagging[0] and time.monotonic() - self._lagging[1] >= max(
            self._poll_s, self.etcd.timeout_s
        ):
            LOG.warning(
                "etcd watch has not delivered entry %d, applied from the log: restarting it",
                self._lagging[0],
            )
            self._lagging = None
            watch.restart()

    # -- the data plane's observations ----------------------------------------------------------

    def set_ports_observed(
        self,
        statuses: dict[str, str] | None = None,
        bindings: dict[str, str | None] | None = None,
        refused: dict[str, dict[str, bool]] | None = None,
        vips: dict[tuple[str, str], str] | None = None,
    ) -> None:
        """As `Store.set_ports_observed`, but never fails nor waits on a cluster without
        quorum, nor behind another write waiting for etcd: the observations are then held
        (latest per port, and per virtual IP) and written by the follower
        (`write_held_observations`), since the data plane must keep forwarding meanwhile."""
        observed = Observations(
            dict(statuses or {}), dict(bindings or {}), dict(refused or {}), vips=dict(vips or {})
        )
        if not observed or self._held(observed):
            return
        try:
            self._retrying(Store.set_ports_observed, statuses, bindings, refused, vips)
        except StoreUnavailable as exc:
            self._hold(observed, exc)
        except NotOwner:
            _log_not_owner(len(observed))
        finally:
            self._writer.release()

    def set_host_state(
        self, host_id: str, status: str, datapath_id: str | None
    ) -> dict[str, Any] | None:
        """As `Store.set_host_state`, held like `set_ports_observed` (then returns None)."""
        observed = Observations(hosts={host_id: (status, datapath_id)})
        if self._held(observed):
            return None
        try:
            return self._retrying(Store.set_host_state, host_id, status, datapath_id)
        except StoreUnavailable as exc:
            self._hold(observed, exc)
            return None
        except NotOwner:
            _log_not_owner(1)
            return None
        finally:
            self._writer.release()

    def _held(self, observed: Observations) -> bool:
        """Queue ``observed`` behind held ones, or at once when etcd is known unreachable (a
        write would wait a timeout per member) or another write holds the writer lock (it may
        be waiting for etcd just as long); False: write it now, with the writer lock taken
        (the caller releases it)."""
        if self._pending.add_if_holding(observed):
            return True
        if self.down:
            self._hold(observed, None)
            return True
        if not self._writer.acquire(blocking=False):
            self._note_holder()
            self._pending.hold(observed)  # not a failure: no warning, the follower writes it
            self._doorbell.set()
            return True
        return False

    def _note_holder(self) -> None:
        """Before holding starts: the fence it starts under (`write_held_observations`)."""
        if not self._pending.holding:
            self._held_under = self.lease_key() if self.lease_key is not None else None

    def _hold(self, observed: Observations, why: StoreUnavailable | None) -> None:
        self._note_holder()
        if not self._pending.holding:
            LOG.warning(
                "etcd cluster %s cannot take the data plane's observations now%s: holding the "
                "latest port statuses, bindings and host states until it is back",
                _where(self.etcd),
                f" ({why.message})" if why is not None else "",
            )
        self._pending.hold(observed)
        self._doorbell.set()  # the follower probes the cluster and writes them when it answers

    def write_held_observations(self) -> bool:
        """Write what was held, oldest first; True when nothing is held any more.  On the
        follower's thread once etcd answers again (and callable from tests)."""
        written = 0
        now = self.fence() if self.fence is not None else None
        if self.fence is not None and now is None:
            return False  # not live (yet: etcd answers before the lease is renewed): keep them
        if now is not None and now != self._held_under:
            # held under a lease that ended since: the hosts they are about may be another
            # instance's now, which reports them itself
            dropped = 0
            while (taken := self._pending.take()) is not None:
                dropped += len(taken)
            _log_not_owner(dropped)
            return True
        while (taken := self._pending.take()) is not None:
            try:
                if taken.of_ports:
                    self._retrying(
                        Store.set_ports_observed,
                        taken.statuses,
                        taken.bindings,
                        taken.refused,
                        taken.vips,
                    )
                for host_id, (status, dpid) in taken.hosts.items():
                    self._retrying(Store.set_host_state, host_id, status, dpid)
            except StoreUnavailable:
                self._pending.give_back(taken)  # rewriting what did go through is a no-op
                return False
            except StoreError as exc:  # refused (cannot happen for the data plane's values)
                LOG.error("held data-plane observations refused, dropped: %s", exc.message)
            except NotOwner:  # the lease ended meanwhile: the rest is no longer ours either
                _log_not_owner(len(taken))
                while self._pending.take() is not None:
                    pass
                return True
            written += len(taken)
        if written:
            LOG.info("etcd: wrote %d held data-plane observations", written)
        return True

    # -- snapshots --------------------------------------------------------------------------------

    def image(self) -> tuple[int, bytes]:
        """(entry, compressed SQLite image of the replica at that entry)."""
        # the copy under the locks (no commit between reading the position and the copy), the
        # compression (the slow part) outside
        with self._writer, self._lock:
            seq, raw = self.applied, self._conn.serialize()
        return seq, zlib.compress(raw, 6)

    def snapshot_due(self) -> bool:
        return self.applied - self._snapshot_seq >= self.etcd.snapshot_every

    def snapshot(self, force: bool = False) -> bool:
        """Publish a snapshot at the replica's position and truncate the log behind it, if one
        is due (``force``: if there is any entry after the last one) and no other instance is
        doing it; True if this one did.

        One instance at a time holds ``snap/claim`` (a lease of a few timeouts, so a crashed
        holder frees it); the meta is replaced by a compare on its mod revision, so even two
        claims overlapping (a lease expired mid-way) cannot interleave two snapshots.  Bounded:
        one image, in chunks, then one range delete."""
        found = self._log.snapshot_meta()
        if found is not None:
            self._snapshot_seq = max(self._snapshot_seq, int(found[0]["seq"]))
        if not (self.snapshot_due() or (force and self.applied > self._snapshot_seq)):
            return False
        lease = self._log.claim("snap/claim", max(10, int(10 * self.etcd.timeout_s)))
        if lease is None:
            return False
        try:
            seq, image = self.image()
            if not self._log.publish_snapshot(seq, image, found[1] if found else 0):
                return False
            self._snapshot_seq = seq
            if found is not None and found[0]["dir"]:
                self._log.delete_folder(found[0]["dir"])
            self._log.truncate(seq - max(1, self.etcd.log_margin))
            LOG.info(
                "etcd log: snapshot at entry %d (%d bytes), entries up to %d deleted",
                seq,
                len(image),
                seq - max(1, self.etcd.log_margin),
            )
            return True
        finally:
            self._log.release(lease)

    def _snapshot_in_background(self) -> None:
        """Start `snapshot` on its own thread (the follower keeps applying meanwhile)."""
        if self._snapshotting.is_alive():
            return

        def run() -> None:
            try:
                self.snapshot()
            except EtcdUnavailable as exc:
                LOG.warning("etcd log: snapshot not taken now: %s", exc)
            except Exception:
                LOG.exception("etcd log: snapshot failed")

        self._snapshotting = threading.Thread(target=run, name="etcd-snapshot", daemon=True)
        self._snapshotting.start()


def difference(
    before: Mapping[str, list[dict[str, Any]]], after: Mapping[str, list[dict[str, Any]]]
) -> list[ChangeEvent]:
    """The change events that take ``before`` to ``after`` (objects by kind): creates and
    updates in `KINDS` order (a network before its ports), deletes in the reverse order."""
    changed: list[ChangeEvent] = []
    deleted: list[ChangeEvent] = []
    for kind in KINDS:
        old = {o["id"]: o for o in before.get(kind, [])}
        new = {o["id"]: o for o in after.get(kind, [])}
        changed += [ChangeEvent(kind, old.get(i), o) for i, o in new.items() if old.get(i) != o]
        deleted += [ChangeEvent(kind, o, None) for i, o in old.items() if i not in new]
    deleted.sort(key=lambda e: -KINDS.index(e.kind))
    return changed + deleted


def _retried(name: str) -> Callable[..., Any]:
    base = getattr(Store, name)

    @functools.wraps(base)
    def method(self: EtcdStore, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(base, *args, **kwargs)

    return method


def _synced(name: str) -> Callable[..., Any]:
    base = getattr(Store, name)

    @functools.wraps(base)
    def method(self: EtcdStore, *args: Any, **kwargs: Any) -> Any:
        self.sync()
        return base(self, *args, **kwargs)

    return method


for _name in WRITES:
    if _name not in EtcdStore.__dict__:  # the observations retry (and hold) themselves
        setattr(EtcdStore, _name, _retried(_name))
for _name in API_READS:
    setattr(EtcdStore, _name, _synced(_name))


def _where(etcd: EtcdSettings) -> str:
    return ",".join(f"{host}:{port}" for host, port in etcd.endpoints)
