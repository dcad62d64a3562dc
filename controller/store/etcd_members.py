"""Controller membership on the store's etcd cluster: each instance holds ``members/<id>`` under
an etcd lease and reads the list of live members (issue 18, for host ownership).

A member is live while its lease is: one that is killed disappears from the list when its lease
expires (``ttl_s``, configurable; the failover time is about that), one that stops revokes it
at once.  The list is read again whenever it changes, through a watch on ``members/``
(`etcd_watch.LogWatch`), and at every renewal (a third of the TTL), which also covers a watch
that is down: with the renewal's read alone, an expired lease was seen up to a third of the
TTL late by the others (0.67 s of a failover with the default 2 s TTL).  The list goes to
`controller.membership.MemberView`, which assigns hosts by rendezvous hashing.  An instance
that cannot renew its lease for ``ttl_s`` (counted from the last renewal *sent* that
succeeded, so never later than etcd's own expiry) considers itself not live at once and owns
nothing, before another instance can take its hosts over.

The data plane acts on the view (`controller.dataplane.reconciler`): an instance runs the
OVSDB agent of, and writes observations for, only the hosts it owns.

The renewals are also what ``GET /readyz`` judges etcd by (`EtcdMembership.quorum_lost_for`,
read through `EtcdStore.quorum_lost_for`): a renewal needs etcd's leader, so a quorum, as
every write does.  Renewals failing or unanswered for as long as a write waits before its 503
(the longer of ``ttl_s`` and ``etcd_call_timeout_s``, counted from when the first of them was
sent, not from the last success: a slow renewal that succeeds must not count) means the
cluster has no quorum or cannot be reached from here: not ready, until a renewal succeeds.
Shorter gaps (a leader election, one slow call) are not reported: a write sent then waits
and commits.  Reading it is a clock read: no etcd call, so /readyz answers at once even while
a renewal hangs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable

from controller.membership import MemberView
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_settings import EtcdSettings
from controller.store.etcd_watch import LogWatch

LOG = logging.getLogger(__name__)
PREFIX = "members/"


def first_rank(log: EtcdLog, member_id: str) -> int:
    """The rank ``member_id`` has among the live members and itself (sorted ids), read before
    it joins: what its store's log and watch start on (`EtcdLog.spread`), so that instances
    started one after the other, or one restarted among the others, each take another etcd
    member (`EtcdMembership` follows the rank as members come and go, for the calls; the
    watch stays on its member until that member fails).  Raises `EtcdUnavailable` as any
    call."""
    _, items = log.list_prefix(PREFIX)
    return sorted({k for k, _ in items} | {member_id}).index(member_id)


class EtcdMembership:
    """This instance's lease and view of the live members (a thread renews and re-reads every
    third of the TTL, and re-reads as soon as the watch on the members rings)."""

    def __init__(
        self,
        settings: EtcdSettings,
        member_id: str,
        ttl_s: int = 3,
        on_change: Callable[[MemberView], None] | None = None,
        ofp_target: str = "",
    ) -> None:
        if not member_id or "/" in member_id:
            raise ValueError(f"member id {member_id!r}: non-empty, without '/'")
        self._log = EtcdLog(settings, spread_by=member_id)
        self._spread: list[EtcdLog] = [self._log]  # the logs whose first member follows the rank
        self.ttl_s = ttl_s
        self.ofp_target = ofp_target  # published for the owners of bridges (MemberView.targets)
        self.view = MemberView(member_id)
        self.on_change = on_change
        self._lease: int | None = None
        # Taken to install or take away ``_lease``: a grant that returns after `stop` took the
        # lease revokes itself instead of leaving a lease to expire by itself.
        self._lease_lock = threading.Lock()
        self._stopped = False
        self._renewed_at = 0.0  # monotonic time the last successful renewal was sent
        # monotonic time the first renewal since the last success was sent (None: the last one
        # succeeded, or none was tried yet): what `quorum_lost_for` judges
        self._failing_since: float | None = None
        self._stopping = threading.Event()
        self._changed = threading.Event()  # rung by the watch: the members' keys changed
        self._watch: LogWatch | None = None
        self._thread = threading.Thread(target=self._run, name="etcd-membership", daemon=True)

    @property
    def lease_id(self) -> int | None:
        """The lease this instance is a member under (the future role generation's source)."""
        return self._lease

    def fence(self) -> tuple[str, int] | None:
        """(this member's key, its lease) while it is live, else None: the data plane's
        observations are appended only while etcd still holds that key under that lease
        (`EtcdStore.fence`), so that none commits after the lease ended and another instance
        took the hosts."""
        if not self.current().live:
            return None
        return self.lease_key()

    def lease_key(self) -> tuple[str, int] | None:
        """(this member's key, the lease it holds now, live or not), or None without one."""
        lease = self._lease
        return None if lease is None else (PREFIX + self.view.me, lease)

    @property
    def quorum_bound_s(self) -> float:
        """How long without a successful renewal before `quorum_lost_for` reports it: as long
        as a write waits before its 503 (`EtcdSettings.call_timeout_s`), and at least the TTL
        (not live from then on)."""
        return max(float(self.ttl_s), self._log.settings.call_timeout_s)

    def quorum_lost_for(self) -> float | None:
        """Seconds since the first renewal after the last success was sent (it and any after it
        failed or are unanswered), once that is at least
        `quorum_bound_s` (the etcd cluster has no quorum, or this instance cannot reach it:
        writes answer 503); None until then, and before the first renewal (not joined yet:
        the start says why).  No etcd call: a clock read."""
        since = self._failing_since
        if since is None:
            return None
        age = time.monotonic() - since
        return age if age >= self.quorum_bound_s else None

    def current(self) -> MemberView:
        """The view to act on now: not live (owns nothing) once no renewal succeeded for a TTL,
        even while the renewal under way still waits on an unresponsive cluster (the thread
        notices only when the call gives up, which can take a timeout per etcd member)."""
        view = self.view
        if view.live and time.monotonic() - self._renewed_at >= self.ttl_s:
            return MemberView(view.me, (), view.revision)
        return view

    def start(self) -> None:
        """Join (raises `EtcdUnavailable` if the cluster cannot be reached) and keep renewing."""
        self._step()
        self._thread.start()

    def stop(self) -> None:
        """Leave at once: revoke the lease (other instances see it gone at once, through their
        watch on the members).
        A renewal still running (the join below may time out on a slow cluster) that is granted
        a new lease after this revokes that one itself (`_take_lease`)."""
        self._stopping.set()
        self._changed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        # Owns nothing from now (`current`), not only once the TTL since the last renewal has
        # run out: the others take its hosts as soon as the lease is revoked below, and an
        # instance that left while running (its replica stopped following the log) must not
        # keep acting for them meanwhile.
        self._renewed_at = float("-inf")
        with self._lease_lock:
            self._stopped = True
            lease, self._lease = self._lease, None
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        if lease is not None:
            with contextlib.suppress(EtcdUnavailable):  # else it expires by itself
                self._log.revoke(lease)

    def _take_lease(self, lease: int) -> bool:
        """Keep a lease just granted, unless `stop` ran meanwhile: then revoke it (False)."""
        with self._lease_lock:
            if not self._stopped:
                self._lease = lease
                return True
        with contextlib.suppress(EtcdUnavailable):
            self._log.revoke(lease)
        return False

    def _run(self) -> None:
        while True:
            self._changed.wait(self.ttl_s / 3)
            self._changed.clear()
            if self._stopping.is_set():
                return
            try:
                self._step()
            except EtcdUnavailable as exc:
                self._not_renewed(exc)
            except Exception as exc:  # a bug or a malformed answer: same rule as an outage
                LOG.exception("membership: renewing or reading the members failed")
                self._not_renewed(exc)

    def _not_renewed(self, exc: Exception) -> None:
        """Not live once the lease may have expired on the cluster: owns nothing from then."""
        if self.view.live and time.monotonic() - self._renewed_at >= self.ttl_s:
            LOG.warning("membership lease not renewed for %d s: %s", self.ttl_s, exc)
            self._set(MemberView(self.view.me, (), self.view.revision))

    def _step(self) -> None:
        """Renew the lease (or take a new one if it expired), then read the live members."""
        sent = time.monotonic()
        if self._failing_since is None:
            self._failing_since = sent
        held = self._lease
        if held is None or self._log.keep_alive(held) <= 0:
            if held is not None:
                LOG.warning("membership lease %x expired: joining again", held)
            if self.view.live:
                # The view read under the lease that ended is void: with the renewal's time
                # set below, `current` would show it live while the members are read again
                # (the hosts this instance owned then, which another instance owns now).
                self._set(MemberView(self.view.me, (), self.view.revision))
            lease = self._log.grant(self.ttl_s)
            if not self._take_lease(lease):
                return
            try:
                self._put_key(lease)
            except BaseException:
                # A lease without the member key would be renewed at every step and the key
                # never put again: this instance would stay out of the members for good.
                self._drop_lease(lease)
                raise
        # Before the view it reads is set: whoever `on_change` wakes sees that view live.
        self._renewed_at = sent
        self._failing_since = None
        revision, items = self._log.list_prefix(PREFIX)
        members = tuple(sorted(k for k, _ in items))
        current = self._lease
        if current is not None and self.view.me not in members:
            # The key is gone while its lease lives (deleted by hand, `etcdctl del`): renewing
            # the lease alone would keep this instance out of the members for good.
            LOG.warning("membership key of %s gone while its lease lives: put again", self.view.me)
            self._put_key(current)
            revision, items = self._log.list_prefix(PREFIX)
            members = tuple(sorted(k for k, _ in items))
        self._keep_watching(revision)
        targets = tuple(sorted((k, t) for k, v in items if (t := _ofp_target(v))))
        self._set(MemberView(self.view.me, members, revision, targets, self._lease or 0))

    def _put_key(self, lease: int) -> None:
        """``members/<id>`` under ``lease``: this instance's record (its OpenFlow target)."""
        body = json.dumps({"id": self.view.me, "since": time.time(), "ofp": self.ofp_target})
        self._log.put_leased(PREFIX + self.view.me, body, lease)

    def _drop_lease(self, lease: int) -> None:
        """Forget ``lease`` (the next step takes a new one and puts the key) and revoke it."""
        with self._lease_lock:
            if self._lease == lease:
                self._lease = None
        with contextlib.suppress(EtcdUnavailable):
            self._log.revoke(lease)

    def _keep_watching(self, revision: int) -> None:
        """A watch on the members' keys from the revision just read (nothing after it is
        missed), unless one is running; one that ended (a bug: it logged why) is replaced.  A
        member failing or an idle stream is the watch's own business (it resumes elsewhere and
        rings, which costs one more read here)."""
        with self._lease_lock:  # `stop` takes the watch under it: none is started after
            if self._stopped or (self._watch is not None and self._watch.alive):
                return
            self._watch = LogWatch(
                self._log,
                revision + 1,
                self._changed.set,
                prefix=PREFIX,
                name="etcd-members-watch",
            )

    def spread_over(self, log: EtcdLog) -> None:
        """Also point ``log``'s calls at this instance's member (`EtcdLog.spread`)."""
        self._spread.append(log)
        view = self.view
        if view.live:
            log.spread(view.members.index(view.me))

    def _set(self, view: MemberView) -> None:
        changed = view.members != self.view.members or view.targets != self.view.targets
        self.view = view
        if view.live:
            # Instances spread over the etcd members by their rank, asked at every renewal and
            # not only when the members change: a rank's member skipped because it had just
            # failed (an election, a quorum loss: every member looks failed for a moment) is
            # taken again once that failure is old (`EtcdLog.spread`), so the spread comes
            # back by itself after an outage.
            for log in self._spread:
                log.spread(view.members.index(view.me))
        if changed:
            LOG.info("controller members: %s (this one: %s)", ", ".join(view.members), view.me)
            if self.on_change is not None:
                self.on_change(view)


def _ofp_target(record: bytes) -> str:
    """The OpenFlow target a member published ("" if none or its record is malformed: it is
    still a member, its bridges just do not list it)."""
    try:
        target = json.loads(record).get("ofp", "")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(target, str) or not target.startswith(("tcp:", "ssl:")) or len(target) > 300:
        return ""
    return target
