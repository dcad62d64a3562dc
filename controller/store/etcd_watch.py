"""A watch on the etcd log that outlives the member it is on (issue 18: faults are normal).

etcd3gw's watch reads the stream on a thread of its own and hands events to an iterator
through a queue; when the member dies the reading thread ends and the iterator waits on its
queue for ever, and the stream has no read timeout, so a watch on a frozen member stays silent
for ever too.  Nothing noticed either: the follower fell back to its poll (1 s per change).

`LogWatch` owns the stream instead (the same HTTP session and gateway route as etcd3gw, with a
read timeout) and keeps it going itself:

* it remembers the last revision it delivered (an event's ``mod_revision``, or the revision of
  a progress notification), and every new stream resumes at the next one, on the same member
  after an idle timeout, on the next member after a failure: no change is missed, none comes
  twice (etcd delivers each revision of the range once per stream, in order);
* a failure is noticed when the stream ends or breaks (a killed member: at once), or when it
  stays silent for ``idle_s`` and then does not even confirm a new watch (a frozen member:
  within two ``idle_s``); the follower's watchdog (`EtcdStore._check_watch`) also restarts it
  when it lags behind what the log already holds;
* if etcd compacted the revision to resume at, the watch starts again at the oldest one kept
  and rings: the follower reads the log's keys (its source of truth; the watch only spares
  it those reads), so that is the full resync;
* every end is logged once (a warning when a member fails, the resume at info level; an idle
  reconnect says nothing), and each one rings the follower, which applies what the log holds
  meanwhile (``resyncs`` counts those rings: the follower reads the log after each, even if
  entries came meanwhile).  An unexpected error ends the thread with a logged traceback and a
  ring; the follower then sees ``alive`` false and starts a new watch from ``revision``.  An
  error of the ``entry`` callback is one of those, not a malformed response of the member;
* a member (or something in its place) that confirms each watch and ends it at once is a
  failure like any other: streams that delivered no new event (a progress notification alone
  does not count) and lasted less than ``idle_s`` count towards the pause after a round of
  failed members, so such a peer gets a paced retry, not a tight loop of watch requests each
  ringing the follower into a log read;
* a token that cannot be renewed (`etcd_auth`: the member does not answer the authenticate,
  or refuses the password, e.g. rotated) fails the member the same way, paced, logged once (an
  error for a refused password), instead of ending the thread with a traceback every poll;
* the member's stream is hostile input: it is read in pieces of ``READ_BYTES`` whatever the
  HTTP chunk sizes it announces (a chunk header of a terabyte allocates nothing), and a line
  (one watch response) longer than ``MAX_LINE_BYTES`` ends the stream as a failed member.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from urllib3.exceptions import ReadTimeoutError

from controller.store import etcd_auth
from controller.store.etcd_log import EtcdLog, _b64

LOG = logging.getLogger(__name__)
MAX_LINE_BYTES = 64 * 1024 * 1024  # one watch response (a batch of entries) at most
READ_BYTES = 64 * 1024  # read from the stream at a time, whatever its HTTP chunks announce


class WatchEnded(Exception):
    """The stream ended without an error of the transport (EOF, a cancel, a restart)."""


class _DeliveryFailed(Exception):
    """The ``entry`` callback raised (its error is the cause): a bug on this side, which ends
    the thread with a traceback, whatever its type (a KeyError is not a malformed response)."""


class LogWatch:
    """Delivers ``entry(seq, value)`` for each log entry put and then ``ring()``, from
    ``start_revision`` on, until `stop` (see the module docstring).

    ``prefix``: the keys watched, under the log's prefix (default the log's entries).  Without
    ``entry`` a change there only rings: the membership watches ``members/`` so that a member
    that joins or whose lease ends is seen at once, not at the next poll (`etcd_members`)."""

    def __init__(
        self,
        log: EtcdLog,
        start_revision: int,
        ring: Callable[[], None],
        entry: Callable[[int, bytes], None] | None = None,
        idle_s: float | None = None,
        prefix: str = "log/",
        name: str = "etcd-watch",
    ) -> None:
        self.log = log
        self.revision = start_revision - 1  # every change up to this one has been delivered
        self.member = log.current_member
        self.last_seq = 0  # the highest log entry delivered
        # rings after which the follower must read the log (a failed member, a compaction,
        # the thread's end), and how many of them were compactions (see `EtcdStore`)
        self.resyncs = 0
        self.compactions = 0
        self.idle_s = log.settings.watch_idle_s if idle_s is None else idle_s
        self._ring = ring
        self._entry = entry
        self._prefix = log.key(prefix)
        # what its log lines call it: the log's watch keeps its plain name
        self._label = "etcd watch" if prefix == "log/" else f"etcd watch of {prefix}"
        self._stopping = threading.Event()
        self._move_on = threading.Event()  # `restart`: leave this member
        self._response: requests.Response | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        self._close()

    def restart(self) -> None:
        """Leave the current stream and resume on the next member (it is not delivering)."""
        self._move_on.set()
        self._close()

    def _close(self) -> None:
        # under the lock: `_stream` lets go of its response under it too, so this never shuts
        # a connection the stream has finished with (and that may be in use elsewhere)
        with self._lock:
            if self._response is not None:
                _shut(self._response)

    def _resync(self) -> None:
        """Ring for a read of the log (entries may have been missed, or skipped)."""
        self.resyncs += 1
        self._ring()

    # -- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        failing = ""  # the failure being reported ("" while the watch is healthy)
        failed_in_a_row = 0
        try:
            while not self._stopping.is_set():
                member = self.member
                # the watch was confirmed; events that advanced the revision came through it
                created = [False, False]
                began = time.monotonic()
                try:
                    self._stream(member, created)
                    error: Exception = WatchEnded("the stream ended")
                except (
                    requests.RequestException,
                    OSError,
                    ValueError,
                    WatchEnded,
                    # the token's renewal (`etcd_auth`): a member that does not answer it, a
                    # password refused (rotated): a failed member, paced, logged once
                    etcd_errors.Etcd3Exception,
                    etcd_auth.EtcdAuthError,
                ) as exc:
                    error = exc
                except (LookupError, TypeError, AttributeError) as exc:
                    # JSON that is not a watch response (a list, fields of the wrong type):
                    # the member failed, as for a body that is not JSON at all (ValueError)
                    error = WatchEnded(f"a malformed watch response ({type(exc).__name__})")
                if self._stopping.is_set():
                    return
                if created[0] and failing:
                    where = self._where(member)
                    LOG.info(
                        "%s resumed on %s from revision %d", self._label, where, self.revision + 1
                    )
                    failing = ""
                if created[0] and _idle(error) and not self._move_on.is_set():
                    failed_in_a_row = 0
                    continue  # only quiet: a new stream on the same member
                self._move_on.clear()
                if created[1] or time.monotonic() - began >= self.idle_s:
                    failed_in_a_row = 0  # a stream that worked for a while: not spinning
                failed_in_a_row += 1
                self.member = (member + 1) % self.log.members
                if not failing:
                    failing = f"{type(error).__name__}: {error}"[:200]
                    refused = isinstance(error, etcd_auth.EtcdAuthError)
                    (LOG.error if refused else LOG.warning)(
                        "%s on %s ended (%s): resuming from revision %d on %s",
                        self._label,
                        self._where(member),
                        failing,
                        self.revision + 1,
                        self._where(self.member),
                    )
                self._resync()  # the follower reads the log meanwhile
                if failed_in_a_row >= self.log.members:  # every member failed: do not spin
                    self._pause()
        except Exception:
            LOG.exception("%s stopped at revision %d", self._label, self.revision)
            self._resync()  # the follower notices (`alive`) and starts another

    def _pause(self) -> None:
        """After a round of failed members, before the next attempt."""
        self._stopping.wait(min(1.0, self.idle_s))

    def _stream(self, member: int, created: list[bool]) -> None:
        """One watch stream on ``member`` from ``revision + 1``, until it ends or breaks."""
        client = self.log.client(member)
        body = {
            "create_request": {
                "key": _b64(self._prefix),
                "range_end": _b64(self._prefix[:-1] + chr(ord(self._prefix[-1]) + 1)),
                "start_revision": self.revision + 1,
                "progress_notify": True,
            }
        }
        response = client.session.post(
            client.get_url("/watch"),
            json=body,
            stream=True,
            timeout=(self.log.settings.timeout_s, self.idle_s),
        )
        with self._lock:
            self._response = response
        try:
            if self._stopping.is_set() or self._move_on.is_set():
                raise WatchEnded("stopped")
            if response.status_code != 200:
                # a bounded read of the body (``text`` would read all of it)
                reason = etcd_auth.head(response)[:200]
                raise WatchEnded(f"HTTP {response.status_code}: {reason}")
            # in pieces of READ_BYTES: with no size, urllib3 reads each HTTP chunk whole,
            # allocated at the size its header announces; the line is searched for from where
            # the last piece ended (not from its start: quadratic with many small pieces)
            pending = bytearray()
            for piece in response.iter_content(chunk_size=READ_BYTES):
                scanned = len(pending)
                pending += piece
                start = 0
                while (end := pending.find(b"\n", scanned)) >= 0:
                    line = pending[start:end]
                    start = scanned = end + 1
                    if line and not line.isspace():
                        self._handle(json.loads(line), created)
                del pending[:start]
                if len(pending) > MAX_LINE_BYTES:  # so it holds at most that and one piece
                    raise WatchEnded(f"a watch response over {MAX_LINE_BYTES} bytes")
        except WatchEnded as exc:
            if etcd_auth.INVALID_TOKEN in str(exc):  # expired, or the member restarted
                etcd_auth.forget(client.session, response.request.headers.get("Authorization"))
            raise
        finally:
            with self._lock:
                self._response = None
                _shut(response)

    def _handle(self, message: dict[str, Any], created: list[bool]) -> None:
        if "error" in message:
            raise WatchEnded(f"etcd: {str(message['error'])[:200]}")
        result = message.get("result", {})
        if result.get("created"):
            created[0] = True
        compacted = int(result.get("compact_revision", 0) or 0)
        if result.get("canceled"):
            if compacted > self.revision + 1:
                LOG.warning(
                    "%s: revision %d was compacted (oldest kept %d): resuming there, "
                    "the keys are read again meanwhile",
                    self._label,
                    self.revision + 1,
                    compacted,
                )
                self.revision = compacted - 1
                self.compactions += 1
                self._resync()
            raise WatchEnded(f"canceled: {result.get('cancel_reason', '')}"[:200])
        events = result.get("events") or []
        before = self.revision
        for event in events:
            kv = event.get("kv", {})
            name = _text(kv.get("key", ""))
            tail = name[len(self._prefix) :]
            if (
                self._entry is not None
                and event.get("type", "PUT") == "PUT"
                and "value" in kv
                and name.startswith(self._prefix)
                and tail.isdigit()
            ):
                value = _bytes(kv["value"])
                try:
                    self._entry(int(tail), value)
                except Exception as exc:
                    raise _DeliveryFailed from exc
                self.last_seq = max(self.last_seq, int(tail))
            self.revision = max(self.revision, int(kv.get("mod_revision", 0)))
        if events:
            # events past what was delivered: the stream works (a progress notification alone
            # does not count: a peer that sends one and closes each stream gets paced retries)
            created[1] = created[1] or self.revision > before
            self._ring()
        elif created[0] and not result.get("created"):  # a progress notification
            self.revision = max(self.revision, int(result.get("header", {}).get("revision", 0)))

    def _where(self, member: int) -> str:
        client = self.log.client(member)
        return f"{client.host}:{client.port}"


def _idle(error: Exception) -> bool:
    """A read timeout on a stream (nothing arrived for ``idle_s``), not a broken one."""
    if isinstance(error, requests.exceptions.ReadTimeout):
        return True
    return isinstance(error, requests.exceptions.ConnectionError) and any(
        isinstance(a, ReadTimeoutError) for a in error.args
    )


def _text(b64: str) -> str:
    return _bytes(b64).decode(errors="replace")


def _bytes(b64: str) -> bytes:
    return base64.b64decode(b64)


def _shut(response: requests.Response) -> None:
    """End a streaming response from any thread (its reader gets EOF or an error at once):
    closing alone would wait for the reader.

    Through the connection's socket object, not its descriptor number (as etcd3gw's
    `Watcher.stop` does, with `socket.fromfd`): once the stream closed, that number may be
    another socket's (an OpenFlow session's), while the closed object has none.  A TLS
    socket is shut at the TCP level (``socket.socket.shutdown``), as by number before: its
    TLS state belongs to the reading thread."""
    with contextlib.suppress(Exception):
        sock = response.raw._connection.sock
        if sock is not None:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()
