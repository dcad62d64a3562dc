"""The replicated log of store transactions, kept in an etcd v3 cluster (through etcd3gw).

Key layout under a prefix (default ``/tenantnet/``):

* ``meta``: ``{"epoch": uuid, "schema": N}``, written once when the log is created (or replaced
  by a migration).  An instance whose local replica names another epoch starts over.
* ``head``: the sequence number of the last entry, as decimal text.  Appending entry N+1 is one
  etcd transaction: *compare* ``head == N``, *then* put ``head = N+1`` and ``log/<N+1>``.  The
  compare is what serialises writers on different instances (a loser learns it was overtaken,
  catches up and retries), so allocations stay atomic across the cluster.
* ``log/%016d``: one entry per committed store transaction (compressed JSON, see `replicated`).
  Entries are ordinary keys, not etcd history: a catch-up is a range read, unaffected by etcd's
  compaction, and the watch on ``log/`` is only a doorbell.
* ``snap/meta`` and ``snap/<seq>-<token>/<i>``: a snapshot of the whole state at entry ``seq``
  (an SQLite image, compressed, in chunks below etcd's request limit).  A migration writes one;
  instances write one every so many entries, then delete the entries older than it minus a
  margin (``snap/claim``, held under a lease, lets one instance at a time do it).

Every call goes to one member and moves on to the next on a connection failure or timeout; a
call that no member can answer raises `EtcdUnavailable` (quorum lost, or the cluster is gone).
Transactions (every write of the log) go to the Raft leader first, learnt off the write path
(`EtcdLog.find_leader`), so a follower does not forward each one; the rest go to the member
the instance's id picks.
Attempts are short (``attempt_timeout_s``) and go round the members for up to ``timeout_s``,
then each member gets one attempt with the full ``timeout_s``, the first always and the others
while they end within ``call_timeout_s`` (see `EtcdLog._call`): a member
whose leader was just killed forwards a write to the dead leader and answers only at the
timeout, so short attempts reach a member of the new leader's term about an election after
the kill instead of ``timeout_s``; the long pass keeps a slow but working cluster answering.
Retrying a write on another member (or the same one) is safe because every write that must
happen once carries something only its writer knows: an append compares the
head (a second attempt fails if the first was committed) and its entry holds a unique id that
`replicated.EtcdStore` looks for in the log; a snapshot's meta names a folder with a unique
token (`publish_snapshot` recognises its own after a lost answer); a claim is revoked and
simply not taken; a lease granted twice expires by itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

with warnings.catch_warnings():
    # futurist (etcd3gw's thread pool) imports eventlet to detect it; eventlet warns about itself.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import etcd3gw
    from etcd3gw import exceptions as etcd_errors

import requests
import urllib3

from controller.store import etcd_auth
from controller.store.etcd_settings import EtcdSettings

LOG = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK_BYTES = 1_000_000  # below etcd's default 1.5 MiB request limit
PAGE = 500  # entries per catch-up range read
SPREAD_AVOID_S = 30.0
"""A member a call found failed is not chosen by `EtcdLog.spread` for this long."""


class EtcdUnavailable(RuntimeError):
    """No member could answer (no quorum, or none reachable).

    ``maybe_sent``: some member may have received the request before failing (a timeout or a
    server error, not a refused connection).  For a write that means its outcome is unknown:
    a member that had just lost its followers may still commit it once they return.
    """

    def __init__(self, message: str, maybe_sent: bool = True) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


def _session(settings: EtcdSettings, timeout_s: float) -> requests.Session:
    """The HTTP session of one member's client: TLS from the settings, nothing from the
    environment.

    requests reads the environment on every call of a session that trusts it (proxy variables,
    ``NO_PROXY`` matching, ``.netrc``, ``REQUESTS_CA_BUNDLE``): 0.5-0.8 ms of CPU per etcd
    call measured on a 2-core machine (a third of a range read's cost), and every port create
    makes a few calls on each instance.  None of it applies to the store's cluster, reached
    directly on the management network with the CA and the client certificate named in the
    settings (an HTTP proxy between the controllers and their store would be one more hop for
    every commit).  The etcd user's token rides on the session too (`etcd_auth`)."""
    session = requests.Session()
    session.trust_env = False
    if settings.ca_cert:
        session.verify = settings.ca_cert
    if settings.cert and settings.key:
        session.cert = (settings.cert, settings.key)
    etcd_auth.install(session, settings.user, settings.password, timeout_s)
    return session


def _object(answer: Any) -> dict[str, Any]:
    """``answer`` if it is a JSON object; a member (or something else on its port) that
    answers 200 with ``null`` or a list failed like one whose body is not JSON (`_call`)."""
    if not isinstance(answer, dict):
        raise TypeError(f"an answer that is not a JSON object: {type(answer).__name__}")
    return answer


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


class EtcdLog:
    """The log's keys on one etcd cluster; thread-safe (each call is one HTTP request)."""

    def __init__(self, settings: EtcdSettings, spread_by: str = "") -> None:
        """``spread_by``: the instance's id, which picks the member its calls go to first (a
        stable hash of it), so that instances spread over the members instead of all asking
        the first one: the member a call reaches pays its HTTP gateway's work (JSON to gRPC
        and back) and the watch streams' fan-out, which made the first member of a 3-instance
        cluster use twice the CPU of the others."""
        self.settings = settings
        self.prefix = settings.prefix if settings.prefix.endswith("/") else settings.prefix + "/"
        # one client per member and timeout (a client's timeout is fixed; clients are shared
        # between threads): the short first pass, then the full one (see the module docstring)
        self._clients = self._connect(settings.timeout_s)
        self._passes = [self._clients]
        if settings.attempt_timeout_s < settings.timeout_s:
            self._passes.insert(0, self._connect(settings.attempt_timeout_s))
        self._current = zlib.crc32(spread_by.encode()) % len(self._clients) if spread_by else 0
        self._failed_at: dict[int, float] = {}  # member -> monotonic time a call to it failed
        self._lock = threading.Lock()
        # where transactions go first (`find_leader`): the leader, as last learnt, and the
        # raft term last searched in; an answer naming another term starts a new search
        self._leader: int | None = None
        self._leader_term = -1
        self._finding = threading.Thread()

    def _connect(self, timeout_s: float) -> list[Any]:
        settings = self.settings
        return [
            etcd3gw.Etcd3Client(
                host=host,
                port=port,
                protocol=settings.protocol,
                timeout=timeout_s,
                api_path="/v3/",  # etcd >= 3.4; saves a discovery round trip per client
                session=_session(settings, timeout_s),
            )
            for host, port in settings.endpoints
        ]

    def client(self, member: int) -> Any:
        """The etcd3gw client of member ``member`` (with the full timeout)."""
        return self._clients[member % len(self._clients)]

    @property
    def members(self) -> int:
        return len(self._clients)

    def spread(self, rank: int) -> None:
        """Send calls first to member ``rank`` (modulo the members): the instance's rank among
        the live controllers (`controller.store.etcd_members.EtcdMembership`), so that while
        there are no more instances than members each member serves one instance's reads and
        watch.  The hash of the instance's id the log starts with spreads them only by chance
        (CRC-32 of ``ctl-1``, ``ctl-2``, ``ctl-3`` is the same modulo 3).  A member that fails
        is still left for the next one at the call that finds it failed, and one that failed
        in the last ``SPREAD_AVOID_S`` is not chosen (a node that died with its etcd member
        changes the ranks: the survivors must not all be sent to it)."""
        index = rank % len(self._clients)
        with self._lock:
            failed = self._failed_at.get(index)
            if failed is None or time.monotonic() - failed >= SPREAD_AVOID_S:
                self._current = index

    @property
    def current_member(self) -> int:
        """Index of the member calls go to first (the last one that answered)."""
        return self._current

    @property
    def write_member(self) -> int:
        """Index of the member transactions go to first: the leader as last learnt
        (`find_leader`), else `current_member`."""
        with self._lock:
            return self._current if self._leader is None else self._leader

    def key(self, name: str) -> str:
        return self.prefix + name

    def entry_key(self, seq: int) -> str:
        return self.key(f"log/{seq:016d}")

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, fn: Callable[[Any], T], first: int | None = None) -> T:
        """``fn(client)`` on the current member (or ``first``), then on each other one until
        one answers.

        Short attempts (``attempt_timeout_s``) go round the members for up to ``timeout_s``,
        then each member gets one attempt with ``timeout_s`` while it can end within
        ``call_timeout_s`` of the call's start (the first always).  A request a member forwarded
        to a leader that died is lost, so only an attempt sent after the member learned the
        new leader succeeds: short attempts repeated reach it about an election after the
        kill, whatever the election takes (a long attempt sent during the election would
        wait out its whole timeout).  The long pass keeps a slow but working cluster
        answering.  A round that failed without any member timing out (all refused: nothing
        reachable) ends the short phase; one that failed fast ("no leader" during an
        election) pauses briefly before the next, so as not to spin."""
        with self._lock:
            start = self._current if first is None else first
        errors: list[str] = []
        maybe_sent = False
        n = len(self._clients)
        order = [(start + i) % n for i in range(n)]
        called = time.monotonic()
        short_until = called + self.settings.timeout_s
        ends = called + self.settings.call_timeout_s
        for clients in self._passes:
            while True:
                began = time.monotonic()
                waited = False  # some member may have taken the request (not refused)
                for index in order:
                    if (
                        clients is self._clients
                        and index != order[0]
                        and time.monotonic() + self.settings.timeout_s > ends
                    ):
                        break  # the call's bound (`EtcdSettings.call_timeout_s`)
                    client = clients[index]
                    try:
                        result = fn(client)
                    except etcd_auth.EtcdAuthError as exc:  # every member would say the same
                        where = f"{client.host}:{client.port}"
                        raise EtcdUnavailable(f"{where}: {exc}", maybe_sent=False) from None
                    except etcd_errors.ConnectionFailedError as exc:  # refused, reset, a 503
                        errors.append(f"{client.host}:{client.port}: {_short(exc)}")
                        self._failed_at[index] = time.monotonic()
                        # only a connection never made sent nothing: a reset or an abort may
                        # come after the member read the request, and etcd answers 503 to a
                        # proposal that timed out, which may still commit
                        maybe_sent = maybe_sent or not _never_connected(exc)
                        continue
                    except etcd_errors.Etcd3Exception as exc:  # a timeout, a 500 ("no leader")
                        errors.append(f"{client.host}:{client.port}: {_short(exc)}")
                        self._failed_at[index] = time.monotonic()
                        maybe_sent = waited = True
                        continue
                    except (
                        requests.RequestException,
                        urllib3.exceptions.HTTPError,
                        ValueError,
                        LookupError,
                        TypeError,
                    ) as exc:
                        # An answer that is not etcd's: a body that is not JSON (something
                        # else on the port, a proxy's page), one cut off mid-way (urllib3's own
                        # errors where requests does not wrap them), JSON without the fields
                        # read.  etcd3gw lets these through; the member failed like any other,
                        # and may have taken the request.
                        errors.append(
                            f"{client.host}:{client.port}: malformed answer: {_short(exc)}"
                        )
                        self._failed_at[index] = time.monotonic()
                        maybe_sent = waited = True
                        continue
                    self._failed_at.pop(index, None)  # answered: no longer avoided (`spread`)
                    if index != start:
                        with self._lock:
                            self._current = index
                            if first is not None and self._leader == first:
                                self._leader = None  # it failed: until the next search
                    return result
                now = time.monotonic()
                if clients is self._clients or not waited or now >= short_until:
                    break
                pause = self.settings.attempt_timeout_s / 5
                if now - began < pause:
                    time.sleep(pause)
        raise EtcdUnavailable("; ".join(dict.fromkeys(errors[-2 * n :])), maybe_sent)

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        """A transaction, sent to the leader first (`find_leader`)."""
        txn = {"compare": compare, "success": success, "failure": []}
        with self._lock:
            leader = self._leader
        answer = self._call(lambda c: _object(c.transaction(txn)), first=leader)
        self._note_term(answer)
        return bool(answer.get("succeeded", False))

    def _note_term(self, answer: dict[str, Any]) -> None:
        """A transaction's answer names the raft term: one other than the term in which the
        leader was learnt (an election since, or none learnt yet) starts `find_leader` on a
        thread of its own, off the write path (a member that does not answer costs it an
        attempt's timeout)."""
        try:
            term = int(answer.get("header", {}).get("raft_term", 0))
        except (TypeError, ValueError, AttributeError):
            return
        with self._lock:
            if term == self._leader_term or self._finding.is_alive():
                return
            self._leader_term = term  # one search per term, whatever it finds
            self._finding = threading.Thread(
                target=self.find_leader, name="etcd-leader", daemon=True
            )
            self._finding.start()

    def find_leader(self) -> int | None:
        """Ask every member (one short attempt each) which one leads, so that transactions go
        there first; its index (None: no member knows one, or the one named did not answer).

        A member that is not the leader forwards a proposal to it: one more hop per write
        (0.6 ms of a 5.4-6.0 ms transaction measured through the gateways on a 3-member
        loopback cluster), and a port's path to ACTIVE holds two transactions in a row.  The
        instances' spread over the members (``spread_by``) stays for everything else: reads
        and the watch, whose fan-out is each member's main cost."""
        ids: dict[int, int] = {}  # member id -> index
        leader_id = term = 0
        for index, client in enumerate(self._passes[0]):
            try:
                status = client.status()
                header = status["header"]
                ids[int(header["member_id"])] = index
                if int(header.get("raft_term", 0)) >= term:
                    term = int(header.get("raft_term", 0))
                    leader_id = int(status.get("leader", 0))
            except (
                etcd_auth.EtcdAuthError,
                etcd_errors.Etcd3Exception,
                requests.RequestException,
                ValueError,
                LookupError,
                TypeError,
            ):
                continue  # this member is not asked first, that is all
        with self._lock:
            self._leader = ids.get(leader_id) if leader_id else None
            self._leader_term = max(self._leader_term, term)
            return self._leader

    @staticmethod
    def _put(key: str, value: bytes | str) -> dict[str, Any]:
        return {"request_put": {"key": _b64(key), "value": _b64(value)}}

    def get(self, name: str) -> bytes | None:
        values = self._call(lambda c: c.get(self.key(name)))
        return values[0] if values else None

    # -- the log ----------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any] | None:
        raw = self.get("meta")
        return None if raw is None else dict(json.loads(raw))

    def create(self, meta: dict[str, Any], head: int = 0) -> bool:
        """Create the log (meta + head) if there is none yet; False if another one exists.

        A meta equal to ``meta`` (its epoch is unique) is this call's own: an attempt whose
        answer was lost (a short attempt timing out on a loaded member) put it before the
        retry's compare failed."""
        compare = [
            {"key": _b64(self.key("meta")), "result": "EQUAL", "target": "CREATE",
             "create_revision": 0}
        ]  # fmt: skip
        meta_text = json.dumps(meta)
        success = [self._put(self.key("meta"), meta_text), self._put(self.key("head"), str(head))]
        return self._txn(compare, success) or self.meta() == meta

    def head(self) -> int:
        """The sequence number of the last entry (a quorum read)."""
        raw = self.get("head")
        return int(raw) if raw is not None else 0

    def append(self, after: int, entry: bytes, fence: tuple[str, int] | None = None) -> bool:
        """Entry ``after + 1``, if ``after`` is still the head (and, with ``fence`` = (key name,
        lease id), that key is still held under that lease: a member's own key, which etcd
        deletes when its lease ends); False if another writer won or the fence failed."""
        compare = [
            {"key": _b64(self.key("head")), "result": "EQUAL", "target": "VALUE",
             "value": _b64(str(after))}
        ]  # fmt: skip
        if fence is not None:
            name, lease = fence
            compare.append(
                {"key": _b64(self.key(name)), "result": "EQUAL", "target": "LEASE",
                 "lease": str(lease)}
            )  # fmt: skip
        seq = after + 1
        return self._txn(
            compare, [self._put(self.key("head"), str(seq)), self._put(self.entry_key(seq), entry)]
        )

    def entries_after(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """Entries ``seq + 1`` ... head, in order, paged."""
        end = self.key("log0")  # '0' follows '/': the end of the log/ range
        while True:
            start = self.entry_key(seq + 1)

            def page(c: Any, start: str = start) -> list[tuple[bytes, Any]]:
                return list(c.get(start, metadata=True, range_end=end, limit=PAGE))

            items = self._call(page)
            for value, meta in items:
                seq = int(meta["key"].decode().rsplit("/", 1)[1])
                yield seq, value
            if len(items) < PAGE:
                return

    def first_entry(self) -> int | None:
        """The oldest entry still kept (None: none)."""
        items = self._call(
            lambda c: c.get(self.entry_key(0), metadata=True, range_end=self.key("log0"), limit=1)
        )
        return int(items[0][1]["key"].decode().rsplit("/", 1)[1]) if items else None

    # -- snapshots --------------------------------------------------------------------------------
    #
    # ``snap/meta`` = {"seq", "dir", "chunks"} names the latest snapshot; its chunks live under
    # ``<dir>/%06d`` where ``dir`` is unique per attempt (``snap/<seq>-<token>``), so two
    # instances snapshotting at once never write into each other's chunks.  The meta is replaced
    # by a compare on its own mod revision (the last writer to have read it wins, the other
    # deletes its chunks), and only after every chunk is in: a reader never sees a partial one.

    def snapshot_meta(self) -> tuple[dict[str, Any], int] | None:
        """(meta of the latest snapshot, its mod revision), or None."""
        items = self._call(lambda c: list(c.get(self.key("snap/meta"), metadata=True)))
        if not items:
            return None
        value, kv = items[0]
        meta = dict(json.loads(value))
        meta.setdefault("dir", f"snap/{int(meta['seq']):016d}")  # written by the first step
        return meta, int(kv["mod_revision"])

    def _put_chunks(self, folder: str, image: bytes) -> int:
        chunks = [image[i : i + CHUNK_BYTES] for i in range(0, len(image), CHUNK_BYTES)] or [b""]
        for i, chunk in enumerate(chunks):
            key = self.key(f"{folder}/{i:06d}")

            def put(c: Any, key: str = key, chunk: bytes = chunk) -> None:
                c.put(key, chunk)

            self._call(put)
        return len(chunks)

    def put_snapshot(self, seq: int, image: bytes) -> None:
        """Store a compressed state image taken at entry ``seq`` unconditionally (a migration,
        with every instance stopped)."""
        folder = f"snap/{seq:016d}-{uuid.uuid4().hex[:12]}"
        meta = json.dumps({"seq": seq, "dir": folder, "chunks": self._put_chunks(folder, image)})
        self._call(lambda c: c.put(self.key("snap/meta"), meta))

    def publish_snapshot(self, seq: int, image: bytes, replaces: int) -> bool:
        """Store a snapshot at entry ``seq`` if ``snap/meta`` still has mod revision
        ``replaces`` (0: there is none); False (and nothing left behind) if another instance
        published one meanwhile."""
        folder = f"snap/{seq:016d}-{uuid.uuid4().hex[:12]}"
        count = self._put_chunks(folder, image)
        meta = json.dumps({"seq": seq, "dir": folder, "chunks": count})
        compare = [
            {"key": _b64(self.key("snap/meta")), "result": "EQUAL", "target": "MOD",
             "mod_revision": replaces}
        ]  # fmt: skip
        won = self._txn(compare, [self._put(self.key("snap/meta"), meta)])
        if not won:
            # an attempt whose answer was lost (a timeout, then a retry) may have put our
            # meta: the folder's token says whose it is; never delete a published snapshot
            found = self.snapshot_meta()
            if found is not None and found[0]["dir"] == folder:
                return True
            self.delete_folder(folder)
        return won

    def delete_folder(self, folder: str) -> None:
        """Delete a snapshot's chunks (one that was replaced, or lost the race)."""
        self._call(lambda c: c.delete_prefix(self.key(folder + "/")))

    def snapshot(self) -> tuple[int, bytes] | None:
        """(seq, compressed image) of the latest snapshot, or None.

        A chunk missing means another instance replaced that snapshot (and deleted its chunks)
        while this one read it: read the new one (a few times, then give up)."""
        for _ in range(5):
            found = self.snapshot_meta()
            if found is None:
                return None
            meta = found[0]
            parts = [self.get(f"{meta['dir']}/{i:06d}") for i in range(int(meta["chunks"]))]
            if all(p is not None for p in parts):
                return int(meta["seq"]), b"".join(p for p in parts if p is not None)
        raise EtcdUnavailable("the snapshot kept being replaced while it was read", False)

    def truncate(self, upto: int) -> None:
        """Delete entries 1 .. ``upto`` (one range delete)."""
        if upto > 0:
            end = self.entry_key(upto + 1)
            self._call(lambda c: c.delete(self.entry_key(0), range_end=end))

    def claim(self, name: str, ttl_s: int) -> Any | None:
        """Hold key ``name`` under a new lease of ``ttl_s`` if nobody holds it (the lease, to
        `release`), else None.  An instance that dies holding it frees it after ``ttl_s``."""
        lease = self._call(lambda c: c.lease(ttl_s))
        compare = [
            {"key": _b64(self.key(name)), "result": "EQUAL", "target": "CREATE",
             "create_revision": 0}
        ]  # fmt: skip
        put = self._put(self.key(name), str(lease.id))
        put["request_put"]["lease"] = lease.id
        if self._txn(compare, [put]):
            return lease
        # an attempt whose answer was lost (a short attempt timing out on a loaded member,
        # then a retry) may have put our own lease: the key's value says whose claim it is
        if self.get(name) == str(lease.id).encode():
            return lease
        self.release(lease)
        return None

    def release(self, lease: Any) -> None:
        """Give a claim back, trying each member like any call (one short attempt timing out
        on a loaded member held the claim for its whole lease); if every member fails, the
        lease expires by itself.  A lease etcd no longer knows is given back already (an
        attempt whose answer was lost revoked it)."""

        def revoke(c: Any) -> None:
            try:
                c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease.id})
            except etcd_errors.Etcd3Exception as exc:
                if "lease not found" not in str(getattr(exc, "detail_text", "")):
                    raise

        with contextlib.suppress(EtcdUnavailable):
            self._call(revoke)

    # -- leases (controller membership) -----------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; its id."""
        return self._call(
            lambda c: int(c.post(c.get_url("/lease/grant"), json={"TTL": ttl_s})["ID"])
        )

    def keep_alive(self, lease_id: int) -> int:
        """Renew a lease; its new TTL, or -1 if it had expired (or was revoked)."""
        answer = self._call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease_id}))
        return int(answer.get("result", {}).get("TTL", -1))

    def revoke(self, lease_id: int) -> None:
        """End a lease now: the keys put under it are deleted."""
        self._call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease_id}))

    def put_leased(self, name: str, value: str, lease_id: int) -> None:
        """Put ``name`` under a lease (deleted by etcd when the lease ends)."""
        body = {"key": _b64(self.key(name)), "value": _b64(value), "lease": lease_id}
        self._call(lambda c: c.post(c.get_url("/kv/put"), json=body))

    def list_prefix(self, name: str) -> tuple[int, list[tuple[str, bytes]]]:
        """(the cluster's revision, [(key after ``name``, value)]) of every key under ``name``."""
        start = self.key(name)
        end = start[:-1] + chr(ord(start[-1]) + 1)
        body = {"key": _b64(start), "range_end": _b64(end)}

        def read(c: Any) -> tuple[int, list[tuple[str, bytes]]]:
            answer = c.post(c.get_url("/kv/range"), json=body)
            items = [
                (base64.b64decode(kv["key"]).decode()[len(start) :], base64.b64decode(kv["value"]))
                for kv in answer.get("kvs", [])
            ]
            return int(answer["header"]["revision"]), items

        return self._call(read)

    def wipe(self) -> None:
        """Delete every key under the prefix (a migration replacing the log)."""
        self._call(lambda c: c.delete_prefix(self.prefix))

    def revision(self) -> int:
        """The cluster's current revision (where a new watch starts, `etcd_watch`)."""
        return self._call(lambda c: int(c.status()["header"]["revision"]))


def _never_connected(exc: Exception) -> bool:
    """Whether etcd3gw's ConnectionFailedError stands for a connection that was never made
    (refused, no route: urllib3's NewConnectionError behind requests' ConnectionError, which
    etcd3gw raised it from), so that the member cannot have read the request."""
    cause = exc.__context__
    if not isinstance(cause, requests.exceptions.ConnectionError) or not cause.args:
        return False
    reason = getattr(cause.args[0], "reason", None)  # urllib3's MaxRetryError
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _short(exc: Exception) -> str:
    """A member's failure in a few words.  etcd3gw keeps the reason in ``detail_text``, not in
    the args (without it a certificate that does not verify, a refused connection and a reset
    all read "ConnectionFailedError"); requests' text leads with the pool and the URL, and the
    reason follows "Caused by"."""
    parts = (getattr(exc, "detail_text", None), *exc.args)
    text = " ".join(str(a) for a in parts if a)
    _, caused, reason = text.partition("(Caused by ")
    text = reason.rstrip(")") if caused else text
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
