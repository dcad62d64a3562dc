"""The drift audit: now and then, read each switch back, compare it with the desired state
(`controller.dataplane.drift`) and repair what differs; and the same read, without the repair,
for ``GET /tenantnet/hosts/{id}/drift``.

Why it exists: a switch is read only when it (re)connects, and between two reconnects the data
plane trusts its own record of what it sent.  Someone with ``ovs-ofctl`` on a hypervisor, a
vswitchd bug or a flow that expired would go unnoticed until the next reconnect.

How it stays out of the way (the actor serves every host from one thread):

* **Reads are asynchronous.**  The southbound sends a flow dump (every cookie), a group dump and
  a barrier (`Switches.read_all`); the answer comes back through the actor's inbox.  A switch
  that does not answer within the barrier timeout is skipped for this round and logged; it
  holds nothing else up.
* **A dump is compared only if it is current.**  OVS handles one connection's messages in
  order, so the dump shows everything sent before it.  If the actor sent the host anything
  after the request, or the host reconnected or was re-read meanwhile, the answer is
  *inconclusive* and the read is made again (a few times), never compared against a moving
  target.  The comparison runs after the step's own sends, so pending work is not taken for
  drift.
* **Spread over hosts.**  Host ``h`` is audited at ``phase(h) + k * interval`` after the data
  plane's start, with the phase a hash of its id: hosts come due one by one, not together,
  and a host's slot does not move when others come and go.
* **Cheap when nothing drifted.**  The periodic audit first compares the dump with the actor's
  record of the switch (`HostRuntime.installed`, the desired state as last planned): a set
  comparison.  Only when they differ (and always for a drift request) is the host compiled
  afresh (`controller.dataplane.drift.compare_host`), which costs what a reconnect costs.
* **The repair is the reconnect's path.**  The host's record of its switch becomes the dump
  (tenantnet's cookies only) and the host is planned again as after a reconnect
  (``Change("switch")``): the same diff, bundle and barrier as every other change, foreign
  flows untouched (they are never in a tenantnet slice; deletes are strict, full cookie).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from controller.dataplane.drift import CHANGES, compare_host, drift_document, foreign_rules
from controller.dataplane.planner import Change, index_owners
from controller.dataplane.services import services as fresh_services
from flows.diff import split_by_cookie
from flows.model import Slice

LOG = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # reads of one round that may come back inconclusive before it gives up
AUDIT_RESULTS = ("in_sync", "repaired", "unanswered", "inconclusive")

Reply = Callable[["DriftAnswer"], None]


@dataclass(frozen=True)
class DriftAnswer:
    """What a drift request gets: ``status`` 200 with the document, 404 (no such host), 409
    (the host's switch is not read back: ``state`` says how it is), 503 (the host kept
    changing under the read), 504 (its switch did not answer the read)."""

    status: int
    document: dict[str, Any] | None = None
    message: str = ""
    state: str = ""


@dataclass
class _Read:
    """One read in flight to one host's switch."""

    host: str
    rt: Any  # the HostRuntime asked: a host removed and added again is another one
    installed: Any  # its record of the switch then: replaced on a reconnect or a re-read
    sent: int  # its batches sent until then (`HostRuntime.sent_batches`)
    attempt: int = 1
    repair: bool = False  # a periodic audit wants it (else only drift requests)
    waiters: list[Reply] = field(default_factory=list)


class Auditor:
    """The actor's side of the audit.  Every method but `request` runs on the actor's thread;
    the DataPlane calls `handle` for its inbox entries of kind ``"audit"``, `after_step` after
    each step's sends and `poll` on every turn of its loop."""

    def __init__(self, dp: Any, interval_s: float, read_timeout_s: float) -> None:
        self.dp = dp
        self.interval_s = interval_s
        self.read_timeout_s = read_timeout_s
        self._due: dict[str, float] = {}
        self._earliest = math.inf
        self._reads: dict[str, _Read] = {}
        self._answered: list[tuple[_Read, Slice | None, str]] = []
        self._foreign_seen: dict[str, int] = {}
        self._requests = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        r = dp.metrics.registry
        self.repairs = Counter(
            "tenantnet_drift_repairs",
            "Flows and groups the drift audit found missing, extra or modified and repaired, by "
            "owner kind",
            ["kind", "change"],
            registry=r,
        )
        self.audits = Counter(
            "tenantnet_drift_audits",
            "Drift audits of a host by result (in_sync, repaired, unanswered: the switch did not "
            "answer the read in time, inconclusive: the host kept changing under it)",
            ["result"],
            registry=r,
        )
        self.foreign = Gauge(
            "tenantnet_foreign_flows",
            "Flows without tenantnet's cookie on the host's br-int at its last audit (left alone)",
            ["host"],
            registry=r,
        )
        for result in AUDIT_RESULTS:
            self.audits.labels(result)

    # ------------------------------------------------------------------ any thread

    def request(self, host_id: str, timeout_s: float | None = None) -> DriftAnswer:
        """The host's drift now, without repairing it (blocks the calling thread, bounded).
        At most MAX_CONCURRENT_REQUESTS at once: the others get a 429."""
        if not self._requests.acquire(blocking=False):
            return DriftAnswer(429, message="too many drift requests in progress; retry later")
        try:
            done = threading.Event()
            box: list[DriftAnswer] = []

            def reply(answer: DriftAnswer) -> None:
                box.append(answer)
                done.set()

            self.dp.post("audit", ("request", host_id, reply))
            wait = timeout_s if timeout_s is not None else self.read_timeout_s * MAX_ATTEMPTS + 2
            if not done.wait(wait):
                return DriftAnswer(504, message=f"no answer from the data plane within {wait:g} s")
            return box[0]
        finally:
            self._requests.release()

    # ------------------------------------------------------------------ the actor's thread

    def handle(self, what: str, *args: Any) -> None:
        if what == "request":
            self._on_request(*args)
        elif what == "read":
            self._answered.append(args)  # compared after this step's sends (see module doc)

    def _on_request(self, host_id: str, reply: Reply) -> None:
        rt = self.dp.hosts.get(host_id)
        if rt is None:
            reply(DriftAnswer(404, message=f"Host {host_id} could not be found."))
            return
        if not rt.ready:
            state = _state(rt)
            reply(
                DriftAnswer(
                    409,
                    state=state,
                    message=f"Host {host_id} is {state}: its switch has not been read back, so "
                    "its drift cannot be known",
                )
            )
            return
        self._start(host_id, reply=reply)

    def poll(self, now: float) -> None:
        """Start the reads of hosts whose audit is due."""
        if self.interval_s <= 0 or (now < self._earliest and len(self._due) == len(self.dp.hosts)):
            return
        for host_id in list(self._due):
            if host_id not in self.dp.hosts:
                del self._due[host_id]
                if self._foreign_seen.pop(host_id, None) is not None:
                    self.foreign.remove(host_id)
        for host_id, rt in self.dp.hosts.items():
            due = self._due.get(host_id)
            if due is None:
                self._due[host_id] = self._next(host_id, now)
                continue
            if due > now:
                continue
            self._due[host_id] = self._next(host_id, now)
            if rt.ready and not rt.degraded:
                self._start(host_id, repair=True)
        self._earliest = min(self._due.values(), default=math.inf)

    def forget(self, host_id: str) -> None:
        """A host was deleted: its slot, and its foreign-flows series and count, go now.
        Why not only in `poll`'s sweep: with audits on request only (interval 0) that sweep
        never runs, and every deleted host that was asked for its drift kept its series."""
        self._due.pop(host_id, None)
        if self._foreign_seen.pop(host_id, None) is not None:
            self.foreign.remove(host_id)

    def _next(self, host_id: str, now: float) -> float:
        """The host's next slot after ``now``: its phase (a hash of its id) plus a whole number
        of intervals after the data plane's start."""
        epoch = self.dp.stats.started_at
        phase = zlib.crc32(host_id.encode()) / 2**32 * self.interval_s
        k = math.floor((now - epoch - phase) / self.interval_s) + 1
        return epoch + phase + k * self.interval_s

    def _start(self, host_id: str, repair: bool = False, reply: Reply | None = None) -> None:
        """Read the host's switch, or join the read already in flight."""
        read = self._reads.get(host_id)
        if read is None:
            rt = self.dp.hosts[host_id]
            read = _Read(host_id, rt, rt.installed, rt.sent_batches)
            self._reads[host_id] = read
            self._send(read)
        read.repair |= repair
        if reply is not None:
            read.waiters.append(reply)

    def _send(self, read: _Read) -> None:
        def done(dump: Slice | None, why: str = "") -> None:  # on a southbound thread
            self.dp.post("audit", ("read", read, dump, why))

        if not self.dp.switches.read_all(read.rt.dpid, done):
            done(None, "disconnected")

    def after_step(self) -> bool:
        """Compare the reads answered in this step; True if a repair made work for the
        planner (the actor then plans it at once)."""
        answered, self._answered = self._answered, []
        repaired = False
        for read, dump, why in answered:
            repaired |= self._compare(read, dump, why)
        return repaired

    def _compare(self, read: _Read, dump: Slice | None, why: str) -> bool:
        host_id = read.host
        if self._reads.get(host_id) is read:
            del self._reads[host_id]
        rt = self.dp.hosts.get(host_id)
        if rt is not read.rt or not rt.ready:
            self._finish(read, DriftAnswer(409, state=_state(rt), message=_gone(host_id, rt)))
            return False
        if dump is None:
            if read.repair:
                self.audits.labels("unanswered").inc()
            LOG.warning(
                "host %s: its switch did not answer the drift audit's read (%s) within %g s; "
                "skipped until the next audit",
                host_id, why or "no answer", self.read_timeout_s,
            )  # fmt: skip
            self._finish(
                read,
                DriftAnswer(
                    504,
                    message=f"the switch of host {host_id} did not answer the read of its flows "
                    f"({why or 'no answer'}) within {self.read_timeout_s:g} s",
                ),
            )
            return False
        if rt.installed is not read.installed or rt.sent_batches != read.sent:
            # Sent to, reconnected or re-read since the request: the dump is not current.
            if read.attempt < MAX_ATTEMPTS and host_id not in self._reads:
                read.attempt += 1
                read.installed, read.sent = rt.installed, rt.sent_batches
                self._reads[host_id] = read
                self._send(read)
                return False
            if read.repair:
                self.audits.labels("inconclusive").inc()
            LOG.info("host %s: drift audit inconclusive (flows kept changing); skipped", host_id)
            self._finish(
                read,
                DriftAnswer(503, message=f"host {host_id} kept changing during the read; retry"),
            )
            return False
        ours = split_by_cookie(dump)
        if not read.waiters and ours == rt.installed:
            # The periodic audit's common case: the switch holds exactly what the actor
            # recorded, which is the desired state whenever nothing is left to plan (the
            # incremental property test's invariant).  No compile needed.
            self._note_foreign(host_id, len(foreign_rules(dump)))
            self.audits.labels("in_sync").inc()
            return False
        found = compare_host(
            host_id, dump, self.dp.mirror, self.dp.bindings, self.dp.hosts, fresh_services()
        )
        self._note_foreign(host_id, len(found.foreign))
        doc = drift_document(found, self.dp.mirror)
        due = self._due.get(host_id) if self.interval_s > 0 else None
        doc["next_audit_s"] = None if due is None else round(max(0.0, due - time.monotonic()), 3)
        self._finish(read, DriftAnswer(200, doc))
        if not read.repair:
            return False
        if found.in_sync:
            self.audits.labels("in_sync").inc()
            if ours == rt.installed:
                return False
            # The switch is right and the record is not: take the switch's (plans nothing).
            LOG.info("host %s: record of its switch corrected from the audit's read", host_id)
        else:
            self.audits.labels("repaired").inc()
            for kind, counts in found.by_kind().items():
                for change in CHANGES:
                    if counts[change]:
                        self.repairs.labels(kind, change).inc(counts[change])
            LOG.warning(
                "host %s: drift found and repaired: %s%s",
                host_id, found.summary(),
                f" (not compared: {', '.join(found.unplanned)})" if found.unplanned else "",
            )  # fmt: skip
        # The reconnect's path: what the switch really holds, then the host planned again.
        rt.installed = ours
        rt.groups = index_owners(rt.installed, self.dp.inputs.group_of)
        self.dp.planned_again(Change("switch", host_id))
        return True

    def _note_foreign(self, host_id: str, n: int) -> None:
        """Foreign flows are reported (gauge, and a log line when their number changes)."""
        self.foreign.labels(host_id).set(n)
        if self._foreign_seen.get(host_id, 0) != n:
            LOG.info(
                "host %s: %d flows without tenantnet's cookie on its switch (left alone)",
                host_id, n,
            )  # fmt: skip
        self._foreign_seen[host_id] = n

    @staticmethod
    def _finish(read: _Read, answer: DriftAnswer) -> None:
        for reply in read.waiters:
            reply(answer)
        read.waiters.clear()


MAX_CONCURRENT_REQUESTS = 4  # drift requests waiting at once (each holds an API worker thread)


def _state(rt: Any) -> str:
    """How a host that cannot be read is, in the words of the status page."""
    if rt is None:
        return "removed"
    if rt.ovsdb_up or rt.switch_up:
        return "syncing"
    return "disconnected"


def _gone(host_id: str, rt: Any) -> str:
    if rt is None:
        return f"Host {host_id} was removed during the read."
    return f"Host {host_id} is {_state(rt)}: its switch went away during the read"
