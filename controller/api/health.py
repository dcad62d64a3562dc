"""``GET /metrics``, ``GET /healthz`` and ``GET /readyz``: what Prometheus, systemd and k8s
probes ask.

* ``/healthz``: the process answers HTTP (its event loop is not stuck).  Nothing else: a
  liveness probe that failed on a dead switch would restart a healthy controller.
* ``/readyz``: the store is open, it can commit (on etcd: the cluster has a quorum this
  instance reaches), and the data plane has an answer for every registered host - read back
  and reconciled, known to be down (lost, or not back within the start-up grace) or known to
  be degraded.  Otherwise 503 with the reason, e.g. right after a start while the switches
  reconnect, or ``store: etcd cluster has no quorum or cannot be reached (writes answer 503)
  for 9 s`` while every write answers 503 (forwarding goes on; reads are served from the
  replica).

  The etcd rule (`EtcdStore.quorum_lost_for`): not ready once the membership lease has not
  been renewed for as long as a write waits before its 503 - the longer of the lease TTL and
  ``etcd_call_timeout_s`` (6 s by default) - counted from the first renewal sent after the
  last success (a slow renewal that succeeds never counts);
  ready again as soon as one succeeds (every TTL/3 while it can).  A renewal needs etcd's
  leader, hence a quorum, like every write, and it runs every TTL/3 whether or not anyone
  writes.  A shorter gap (a leader election, ~1 s; one slow call) is not reported: writes
  sent then wait and commit, and a balancer would otherwise take every instance out at once
  for it.  The answer costs no etcd call (the renewal thread's last success is read), so it
  comes at once even while etcd hangs.  Also not ready, for good, once the instance's replica
  stopped following the etcd log (an entry of a newer schema: instances of mixed versions);
  the instance then leaves the membership too, so its hosts go to the others.  On SQLite
  there is nothing to judge: unchanged.
* ``/metrics``: the Prometheus text format of the controller's own registry
  (controller/metrics.py).

How they authenticate: middleware.AuthMiddleware (``metrics_auth``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from controller.metrics import CONTENT_TYPE, Metrics, host_state

Status = Callable[[], Mapping[str, Any]]


def not_ready(store: Any, status: Status | None) -> str | None:
    """Why the controller is not ready, or None.  ``status``: the data plane's status
    document; None when there is no data plane (an API-only app)."""
    if getattr(store, "closed", False):
        return "store closed"
    halted = getattr(store, "halted", None)  # EtcdStore's: its replica stopped following
    if halted:
        return f"store: this instance no longer follows the etcd log ({halted})"
    lost_for = getattr(store, "quorum_lost_for", None)  # EtcdStore's; none on SQLite
    if lost_for is not None and (lost := lost_for()) is not None:
        return (
            "store: etcd cluster has no quorum or cannot be reached (writes answer 503) "
            f"for {lost:.0f} s"
        )
    if status is None:
        return None
    st = status()
    if "hosts" not in st:
        return "data plane not started"
    waiting = sorted(
        f"{h} ({host_state(host)})"
        for h, host in st["hosts"].items()
        if not (host.get("ready") or host.get("down") or host.get("degraded"))
    )
    if waiting:
        shown = ", ".join(waiting[:10]) + (
            f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
        )
        return f"hosts not reconciled yet: {shown}"
    return None


def router(metrics: Metrics, store: Any, status: Status | None = None) -> APIRouter:
    r = APIRouter(tags=["operations"])

    @r.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def get_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @r.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get(
        "/readyz",
        summary="Readiness: store open and committing, every host reconciled or known down",
        responses={503: {"description": "Not ready; the body says why"}},
    )
    def readyz() -> JSONResponse:
        reason = not_ready(store, status)
        if reason is not None:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    return r
