"""Controller membership on the store's etcd cluster: each instance holds ``members/<id>`` under
an etcd lease and reads the list of live members (issue 18, for host ownership).

A member is live while its lease is: one that is killed disappears from the list when its lease
expires (``ttl_s``, configurable; the failover time is about that), one that stops revokes it
at once.  The list goes to `controller.membership.MemberView`, which assigns hosts by
rendezvous hashing.  An instance that cannot renew its lease for ``ttl_s`` (counted from the
last renewal *sent* that succeeded, so never later than etcd's own expiry) considers itself
not live at once and owns nothing, before another instance can take its hosts over.

Only the view for now: nothing connects to or releases switches by it yet.
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

LOG = logging.getLogger(__name__)
PREFIX = "members/"


class EtcdMembership:
    """This instance's lease and view of the live members (a thread renews and re-reads every
    third of the TTL)."""

    def __init__(
        self,
        settings: EtcdSettings,
        member_id: str,
        ttl_s: int = 3,
        on_change: Callable[[MemberView], None] | None = None,
    ) -> None:
        if not member_id or "/" in member_id:
            raise ValueError(f"member id {member_id!r}: non-empty, without '/'")
        self._log = EtcdLog(settings)
        self.ttl_s = ttl_s
        self.view = MemberView(member_id)
        self._on_change = on_change
        self._lease: int | None = None
        self._renewed_at = 0.0  # monotonic time the last successful renewal was sent
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcd-membership", daemon=True)

    @property
    def lease_id(self) -> int | None:
        """The lease this instance is a member under (the future role generation's source)."""
        return self._lease

    def start(self) -> None:
        """Join (raises `EtcdUnavailable` if the cluster cannot be reached) and keep renewing."""
        self._step()
        self._thread.start()

    def stop(self) -> None:
        """Leave at once: revoke the lease (other instances see it gone on their next read)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._lease is not None:
            with contextlib.suppress(EtcdUnavailable):  # else it expires by itself
                self._log.revoke(self._lease)
            self._lease = None

    def _run(self) -> None:
        while not self._stopping.wait(self.ttl_s / 3):
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
        if self._lease is None or self._log.keep_alive(self._lease) <= 0:
            if self._lease is not None:
                LOG.warning("membership lease %x expired: joining again", self._lease)
            self._lease = self._log.grant(self.ttl_s)
            body = json.dumps({"id": self.view.me, "since": time.time()})
            self._log.put_leased(PREFIX + self.view.me, body, self._lease)
        self._renewed_at = sent
        revision, items = self._log.list_prefix(PREFIX)
        self._set(MemberView(self.view.me, tuple(sorted(k for k, _ in items)), revision))

    def _set(self, view: MemberView) -> None:
        changed = view.members != self.view.members
        self.view = view
        if changed:
            LOG.info("controller members: %s (this one: %s)", ", ".join(view.members), view.me)
            if self._on_change is not None:
                self._on_change(view)
