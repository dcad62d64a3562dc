"""The data plane's actor: store changes in, minimal flow-mods out.

The data plane has three parts (docs/architecture.md):

* **state** (`controller.dataplane.state`, `.bindings`, `HostRuntime` here): typed records
  mirrored from store events, who holds each port, what each host's OVSDB shows and what its
  switch holds, owner by owner;
* **planner** (`controller.dataplane.planner` and the services in `.services`): pure; dirty
  units and the state in, per-host flow diffs and the slices they lead to out;
* **actor** (this module): everything with threads or I/O.

Everything that changes data-plane state runs on one worker thread: store events, OVSDB
observations, switch connects/disconnects and barrier replies are only *queued* by the threads
that deliver them.  That keeps the state free of locks and makes batching natural: a bulk create
of 300 ports arrives as a burst of events that is drained at once, and each network it touches
is compiled once.  One step of the actor:

1. take every queued input; update the state (mirror, bindings, hosts) and turn each input into
   a `Change` that the planner maps to dirty units (a kind no service reads is ignored);
2. plan the dirty units (`Planner.plan`); a unit that raised is marked dirty again and retried
   with backoff (0.1 s doubling up to 30 s), logged once until it succeeds;
3. as soon as a host's plan is complete (pipelined: the planner hands it over before it plans
   the next host, hosts that ports wait for first), record the slices it leads to
   (optimistically) and send the host one diff (one bundle, one barrier);
4. write back what the step learnt: port statuses once barriers confirm (`batch.py`), holders
   (``binding:host_id``) and refused claims in one store transaction.

Around it:

* **Who holds a port** is decided by `controller.dataplane.bindings` from the hosts' OVSDB
  claims (a requested host, else the first claim); a refused claim gets no flows.
* **Which connection is a host's switch** is decided by `controller.dataplane.admission` (the
  OpenFlow app asks through `admit`).
* **Ownership** (several instances on one etcd cluster, docs/ha.md): ``membership`` gives the
  view to act on (`controller.membership.MemberView`); each host is owned by exactly one live
  instance.  Only the owner runs the host's OVSDB agent, so only it reads the host, plans and
  sends its flows and decides its ports' statuses; other instances know where its ports are
  from the holders the owner writes to the store (``binding:host_id``), exactly as for a host
  not yet read after a restart (bindings.py, rule 3).  Store writes are filtered by the view
  *at the time of the write*: an instance whose lease lapsed stops writing at once, before
  its agents are stopped.  Without ``membership`` (one node) this instance owns every host.
* **Health.**  A host is ready once its OVSDB and its switch's flows were read; a switch that
  lets a batch time out or rejects one is *degraded* (ports elsewhere stop waiting for it) and
  is re-read, until it confirms a batch again.  Hosts that have not come back ``startup_grace_s``
  after a start have their ports set DOWN.  Whether a switch is alive at all is decided by the
  OpenFlow connection's watchdog (southbound/ofp_server), which ends its session.

The store is only written here (statuses, holders, host states), never read after the start.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from controller.dataplane import garp
from controller.dataplane.admission import Admission
from controller.dataplane.audit import Auditor
from controller.dataplane.batch import Batch
from controller.dataplane.bindings import Bindings
from controller.dataplane.planner import (
    Change,
    Inputs,
    Plan,
    Planner,
    Service,
    Unit,
    index_owners,
)
from controller.dataplane.services import services as default_services
from controller.dataplane.services.l2 import L2Service
from controller.dataplane.state import MIRRORED, RECORDS, HostRec, Mirror, NetworkRec, PortRec
from controller.dataplane.vips import Claim, VipClaims
from controller.events import ChangeEvent
from controller.membership import MemberView
from controller.metrics import Metrics
from controller.southbound.ovsdb_host import HostObservation, OvsdbHost, datapath_id_for
from flows.diff import FlowDiff, Owners, split_by_cookie
from flows.model import Slice

LOG = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RESYNCS = 3
# A host whose switch let MAX_RESYNCS + 1 batches in a row go unconfirmed (timed out or
# rejected) is not re-read at once again; it is re-read after this, doubling each time it
# fails again, up to LEFT_ALONE_MAX_S, until it confirms a batch or reconnects.
LEFT_ALONE_FIRST_S = 5.0
LEFT_ALONE_MAX_S = 60.0
RETRY_FIRST_S = 0.1  # a unit whose planning raised is retried after this, doubling ...
RETRY_MAX_S = 30.0  # ... up to this
# How long port bindings/statuses may wait for outstanding barriers, so that a new port's
# binding and its ACTIVE status are one commit (see _write_observations).
OBSERVATION_HOLD_S = 0.05
# The actor's periodic work (`_tick`: a handover that fell due, a stale role asked again, the
# start-up grace's end) runs this often, however busy the inbox is.
TICK_S = 1.0


class Switches(Protocol):
    """The OpenFlow side as the data plane uses it (implemented by `TenantnetOfpApp`)."""

    def apply(self, dpid: int, diff: FlowDiff, on_done: Callable[..., None]) -> bool: ...

    def remove_all(self, dpid: int, group_ids: list[int], on_done: Callable[..., None]) -> bool: ...

    def resync(self, dpid: int) -> None: ...

    def read_all(self, dpid: int, on_done: Callable[..., None]) -> bool:
        """Dump every flow (any cookie) and group, then ``on_done(Slice | None, why)``."""
        ...

    def flush_ct_zones(self, dpid: int, zones: list[int]) -> bool: ...

    def packet_outs(
        self, dpid: int, frames: Sequence[tuple[int, bytes]], wait: bool = True
    ) -> bool | None:
        """Send each (port, frame) out of that port (gratuitous ARPs, `garp`)."""
        ...


@dataclass
class HostRuntime:
    """What the data plane knows about one registered host right now."""

    rec: HostRec
    agent: Any = None
    # Which of the host's agents is `agent` (`DataPlane._start_agent` numbers them): what an
    # agent reports is tagged with its number, and a replaced agent's late reports are dropped.
    agent_epoch: int = 0
    dpid: int = 0
    obs: HostObservation | None = None  # None until its OVSDB was read since start
    # What its switch holds, by owner cookie (flows.tables); None until read since start.
    installed: dict[int, Slice] | None = None
    # The installed owners by index group (Step.want): e.g. a network's owners on the host.
    groups: dict[Hashable, set[int]] = field(default_factory=dict)
    ovsdb_up: bool = False
    down_reported: bool = False
    failures: int = 0  # consecutive unconfirmed batches
    left_alone: int = 0  # times in a row it was left alone after them (`_leave_alone`)
    switch_up: bool = False  # its OpenFlow connection is up (read back or not)
    # Why its switch is degraded ("" if it is not): it let a batch time out or rejected one.
    # Ports elsewhere stop waiting for it; cleared by its next confirmed batch or a reconnect.
    degraded: str = ""
    sent_batches: int = 0  # batches the southbound took for it (the drift audit's clock)
    # Several instances (docs/ha.md): the host's owner as this instance last saw it, and the
    # generation id of its OpenFlow role: the etcd revision at which that owner was seen (a
    # later owner is seen at a later revision, so a stale master's id is the older one).
    owner: str | None = None
    owner_lease: int = 0  # this instance's lease (`MemberView.lease`) when it saw that owner
    generation: int = 0
    role_refused: int | None = None  # a generation the switch refused as stale

    @property
    def ready(self) -> bool:
        return self.obs is not None and self.installed is not None


@dataclass
class Stats:
    """Exposed on the status endpoint; the restart tests and the bench read flow_mods and
    group_mods (the one count of what was sent to switches) and reconciled_after_s."""

    started_at: float = field(default_factory=time.monotonic)
    flow_mods: int = 0
    group_mods: int = 0
    batches: int = 0
    networks_compiled: int = 0
    ports_patched: int = 0
    reconciled_after_s: float | None = None
    last_batch_ms: float = 0.0
    binding_conflicts: int = 0  # claims refused (bindings.py), counted once per occurrence
    ct_zones_flushed: int = 0  # conntrack zones flushed (security_groups.py: which, when)
    ct_zone_flush_errors: int = 0  # flushes that raised (logged once per host until one works)


class DataPlane:
    """Owns the desired state of every host and drives switches towards it."""

    def __init__(
        self,
        store: Any,
        switches: Switches,
        controller_target: str,
        agent_factory: Callable[..., Any] = OvsdbHost,
        startup_grace_s: float = 15.0,
        admission: Admission | None = None,
        agent_options: dict[str, Any] | None = None,
        metrics: Metrics | None = None,
        services: Iterable[Service] | None = None,
        audit_interval_s: float = 0.0,
        audit_read_timeout_s: float = 5.0,
        membership: Callable[[], MemberView] | None = None,
        handover_delay_s: float = 0.0,
    ) -> None:
        self.store = store
        # The membership view to act on now (None: one node, every host is ours), and the
        # members the hosts' agents were last arranged for (see _apply_ownership).
        self.membership = membership
        self._arranged_for: tuple[str, ...] | None = None
        # A host this instance gains from a member that is still live (it joined, or started
        # without knowing who owned what) is taken only after handover_delay_s (the members'
        # read interval and a margin): the previous owner sees the change and stops first, so
        # the two never act on the host at once.  host -> monotonic time it may be taken.
        self.handover_delay_s = handover_delay_s
        self._takeover_at: dict[str, float] = {}
        # hosts left alone after too many unconfirmed batches -> when to re-read them
        self._left_alone: dict[str, float] = {}
        self.metrics = metrics or Metrics()
        self.switches = switches
        self.controller_target = controller_target
        self.agent_factory = agent_factory
        self.agent_options = agent_options or {}
        self.admission = admission or Admission(tls=False)
        self.startup_grace_s = startup_grace_s
        self.stats = Stats()
        self.hosts: dict[str, HostRuntime] = {}
        self.by_dpid: dict[int, str] = {}
        self.bindings = Bindings()  # which host holds each port (claims from OVSDB)
        self.mirror = Mirror()  # the store's networks and ports, as records
        self._refused_logged: dict[str, set[str]] = {}  # port id -> refused hosts reported
        self.planner = Planner(default_services() if services is None else services)
        self.inputs = Inputs(
            self.mirror, self.bindings, self.hosts, lambda o: self.planner.group_of(o, self.inputs)
        )
        self._dirty: set[Unit] = set()
        self._retry: dict[Unit, tuple[int, float]] = {}  # failed unit -> (failures, due at)
        self._flush_failing: set[str] = set()  # hosts whose last zone flush raised (logged)
        self._inbox: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        # A host's observation still queued, by host: a newer one replaces it in place (each is
        # the host's whole state), so a host whose OVSDB churns holds one message in the inbox,
        # not one full copy of its ports per change (`_on_observation`).
        # Keyed by (host, agent epoch): a replaced agent's late observation never takes the
        # place of its successor's (see `HostRuntime.agent_epoch`).
        self._obs_lock = threading.Lock()
        self._obs_queued: dict[tuple[str, int], list[HostObservation]] = {}
        self._epochs = 0  # the last agent epoch handed out (`_start_agent`)
        # Removed hosts' agents still cleaning up (`_remove_host`), by host id: a host registered
        # again meanwhile starts its new agent only once they are done (`_apply_agent_removed`).
        self._removing: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._outstanding = 0
        self._grace_over = False
        self._status_out: dict[str, str] = {}  # written once per step, see _write_observations
        self._binding_out: dict[str, str | None] = {}
        self._refused_out: dict[str, dict[str, bool]] = {}  # port -> host -> refused?
        self.vip_claims = VipClaims()  # virtual IPs learnt from ARP (vips.py), to write
        self._held_since: float | None = None
        self._steps = 0
        self._decided: dict[str, int] = {}  # port -> the latest step that decided its status
        # The drift audit (audit.py): every audit_interval_s per host (0: only on request).
        self.audit = Auditor(self, audit_interval_s, audit_read_timeout_s)

    # ------------------------------------------------------------------ inbound (any thread)

    def on_events(self, events: list[ChangeEvent]) -> None:
        self._inbox.put(("events", (events,)))

    def switch_ready(self, dpid: int, installed: Slice) -> None:
        self._inbox.put(("switch_ready", (dpid, installed)))

    def switch_gone(self, dpid: int) -> None:
        self._inbox.put(("switch_gone", (dpid,)))

    def admit(self, dpid: int, peer_ip: str | None, peer_cn: str | None) -> str | None:
        """Asked by the OpenFlow app before it accepts a session: None, or why it may not."""
        return self.admission.check(dpid, peer_ip, peer_cn)

    def _on_observation(self, epoch: int, host_id: str, obs: HostObservation) -> None:
        """The host's OVSDB changed (the thread of its agent number ``epoch``).  Observations
        are snapshots: one still queued from the same agent takes the newer one instead of a
        second message, which bounds what a host that churns rows (buggy, hostile) keeps
        queued to one."""
        key = (host_id, epoch)
        with self._obs_lock:
            slot = self._obs_queued.get(key)
            if slot is not None:
                slot[0] = obs
                return
            slot = self._obs_queued[key] = [obs]
            self._inbox.put(("observation", (host_id, epoch, slot)))

    def _on_ovsdb_state(self, epoch: int, host_id: str, up: bool) -> None:
        with self._obs_lock:  # an observation after this is applied after it, not before
            self._obs_queued.pop((host_id, epoch), None)
            self._inbox.put(("ovsdb_state", (host_id, epoch, up)))

    def _take_observation(
        self, host_id: str, epoch: int, slot: list[HostObservation]
    ) -> HostObservation:
        """The newest observation of a queued message; later ones get a message of their own."""
        with self._obs_lock:
            if self._obs_queued.get((host_id, epoch)) is slot:
                del self._obs_queued[(host_id, epoch)]
            return slot[0]

    def on_membership(self, view: MemberView) -> None:
        """The live members changed (membership thread): hosts may have moved."""
        self._inbox.put(("ownership", ()))

    def owns(self, host_id: str | None) -> bool:
        """Whether this instance acts for the host now (any thread); ``None`` (no host): no
        instance of several does.

        The view alone is not enough: it changes on the membership thread, while the handover
        delay is armed by the actor when it takes the change (``_note_owner``).  A host gained
        from a live member is acted on only once the actor has recorded this instance as its
        owner and the delay is over, so an input queued before the change (an API update) never
        writes over what the previous owner, still acting, writes."""
        if self.membership is None:
            return True
        view = self.membership()
        if not view.live:
            return False
        if host_id is None or view.owner(host_id) != view.me:
            return False
        rt = self.hosts.get(host_id)
        if rt is not None and (rt.owner != view.me or rt.owner_lease != view.lease):
            return False  # the actor has not taken the change (or a rejoin) yet: no handover armed
        due = self._takeover_at.get(host_id)
        return due is None or time.monotonic() >= due

    def post(self, kind: str, args: tuple[Any, ...]) -> None:
        """Queue an input for the actor (the audit's reads and requests: kind ``audit``)."""
        self._inbox.put((kind, args))

    def on_actor(self, fn: Callable[[DataPlane], T], timeout: float) -> T:
        """Run ``fn(self)`` on the actor thread, between two inputs, and return its result: how
        another thread reads the state consistently (e.g. the trace's copy of every host's
        flows).  ``fn`` must only read and copy.  TimeoutError if the actor did not get to it
        within ``timeout`` (busy with a big step, or not running)."""
        done: Future[T] = Future()
        self._inbox.put(("call", (fn, done)))
        try:
            return done.result(timeout)
        except FutureTimeout:
            done.cancel()
            raise TimeoutError(f"the data plane did not answer within {timeout:g} s") from None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for net in self.store.list_networks():
            self.mirror.set_network(net["id"], NetworkRec.from_store(net))
        for port in self.store.list_ports():
            self.mirror.set_port(port["id"], PortRec.from_store(port))
        for kind in MIRRORED:
            for body in self.store.list_all(kind):
                self.mirror.set_record(kind, body["id"], RECORDS[kind](body))
        for host in self.store.list_hosts():
            self._add_host(HostRec.from_store(host))
        self.admission.keep_only(set(self.by_dpid))  # a host deleted since it was filled
        # The recorded holders, before any host has been heard from (bindings.py, rule 3).
        for port in self.mirror.ports.values():
            self.bindings.resolve(port, self.hosts, self.hosts)
        self._thread = threading.Thread(target=self._run, name="dataplane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", ()))
        if self._thread is not None:
            self._thread.join(timeout=5)
        for rt in self.hosts.values():
            if rt.agent is not None:
                rt.agent.stop()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and the demo: True once nothing is queued, dirty or awaiting a barrier."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._inbox.unfinished_tasks and not self._dirty and not self._outstanding:
                return True
            time.sleep(0.02)
        return False

    def status(self) -> dict[str, Any]:
        """Read from other threads (API, metrics): dicts the actor changes are copied first.
        ``flows``/``groups``: what the switch holds of ours (null until it was read back);
        ``down``: reported down (lost, or not back within the start-up grace)."""
        return {
            "hosts": {
                h: {
                    "ovsdb": rt.ovsdb_up,
                    "openflow": rt.installed is not None,
                    "ready": rt.ready,
                    "degraded": rt.degraded or None,
                    "down": rt.down_reported and not rt.ready,
                    "datapath_id": f"{rt.dpid:016x}",
                    "owned": rt.agent is not None,
                    "networks": self._networks_of(h),
                    **_installed_counts(rt.installed),
                }
                for h, rt in list(self.hosts.items())
            },
            "queue_depth": self._inbox.qsize(),
            # nothing queued, planned but unsent, or awaiting a barrier: what the store holds is
            # on every reachable switch (tests and scripts wait for it after a change)
            "idle": not self._inbox.unfinished_tasks and not self._dirty and not self._outstanding,
            "flow_mods": self.stats.flow_mods,
            "group_mods": self.stats.group_mods,
            "batches": self.stats.batches,
            "networks_compiled": self.stats.networks_compiled,
            "ports_patched": self.stats.ports_patched,
            "binding_conflicts": self.stats.binding_conflicts,
            "ct_zones_flushed": self.stats.ct_zones_flushed,
            "ct_zone_flush_errors": self.stats.ct_zone_flush_errors,
            "vip_claims_written": self.vip_claims.written,
            "reconciled_after_s": self.stats.reconciled_after_s,
            "uptime_s": round(time.monotonic() - self.stats.started_at, 3),
        }

    def _networks_of(self, host_id: str) -> list[int]:
        l2 = self.planner.services.get("l2")
        return l2.networks_of(host_id) if isinstance(l2, L2Service) else []

    # ------------------------------------------------------------------ the actor

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK_S
        while not self._stopping:
            taken = 0
            now = time.monotonic()
            timeout = next_tick - now
            if self._held_since is not None:
                timeout = min(timeout, self._held_since + OBSERVATION_HOLD_S - now)
            if self._retry:
                timeout = min(timeout, min(at for _, at in self._retry.values()) - now)
            # nothing arrived: only what fell due runs (tick, retries, held writes)
            kind, args = "wait", ()
            try:
                kind, args = self._inbox.get(timeout=max(0.0, timeout))
                taken = 1
            except queue.Empty:
                pass
            try:
                if taken:
                    self._handle(kind, args)
                # drain whatever else arrived, so a burst is compiled once
                while True:
                    try:
                        kind, args = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    self._handle(kind, args)
                # On time, not only when the inbox is quiet: steady input (a port a second,
                # the observations of a busy host) must not hold back a handover or a retry.
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    kind = "tick"
                    self._tick()
                self._flush()
                if self.audit.after_step():  # a repair: planned and sent in this step
                    self._flush()
                self.audit.poll(time.monotonic())
                self._write_observations()
            except Exception:
                LOG.exception("data plane step failed (%s)", kind)
            finally:
                for _ in range(taken):  # wait_idle: these are fully handled now
                    self._inbox.task_done()

    def _handle(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "events":
            for ev in args[0]:
                self._apply_event(ev)
        elif kind == "observation":
            host_id, epoch, slot = args
            obs = self._take_observation(host_id, epoch, slot)
            self._apply_observation(host_id, epoch, obs)
        elif kind == "ovsdb_state":
            self._apply_ovsdb_state(*args)
        elif kind == "agent_removed":
            self._apply_agent_removed(*args)
        elif kind == "switch_ready":
            self._apply_switch_ready(*args)
        elif kind == "switch_gone":
            self._apply_switch_gone(*args)
        elif kind == "batch_done":
            self._apply_batch_done(*args)
        elif kind == "audit":
            self.audit.handle(*args)
        elif kind == "ownership":
            self._apply_ownership()
        elif kind == "role_refused":
            self._apply_role_refused(*args)
        elif kind == "vip_claim":
            self._apply_vip_claim(args)
        elif kind == "tick":
            self._tick()
        elif kind == "call":
            fn, done = args
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(self))
                except Exception as exc:  # handed to the caller, who asked
                    done.set_exception(exc)

    # ------------------------------------------------------------------ store events

    def _changed(self, change: Change) -> None:
        """An input the planner should know of: the units it makes dirty."""
        self._dirty |= self.planner.changed(change, self.inputs)

    planned_again = _changed  # for the audit's repair (audit.py)

    def _apply_event(self, ev: ChangeEvent) -> None:
        obj_id = str((ev.new or ev.old or {}).get("id", ""))
        if ev.kind == "network":
            old_net, new_net = _typed(NetworkRec, ev.old), _typed(NetworkRec, ev.new)
            self.mirror.set_network(obj_id, new_net)
            self._changed(Change("network", obj_id, old_net, new_net))
        elif ev.kind == "port":
            old_port, new_port = _typed(PortRec, ev.old), _typed(PortRec, ev.new)
            self.mirror.set_port(obj_id, new_port)
            if old_port is None or new_port is None or old_port.binding_differs(new_port):
                self._follow_recorded_holder(obj_id, old_port, new_port)
                self._rebind([obj_id])
            self._changed(Change("port", obj_id, old_port, new_port))
        elif ev.kind == "host":
            old_host, new_host = _typed(HostRec, ev.old), _typed(HostRec, ev.new)
            if new_host is None and old_host is not None:
                self._remove_host(old_host.id)
            elif new_host is not None and old_host is None:
                self._add_host(new_host)
            elif new_host is not None and old_host is not None:
                rt = self.hosts[new_host.id]
                rt.rec = new_host
                self.admission.set_host(rt.dpid, dict(new_host.config))
                if old_host.agent_differs(new_host):
                    self._restart_agent(new_host.id)
        else:  # another kind: mirrored if it has a record, ignored unless a service reads it
            typed = RECORDS.get(ev.kind)
            old = typed(ev.old) if typed is not None and ev.old is not None else ev.old
            new = typed(ev.new) if typed is not None and ev.new is not None else ev.new
            if typed is not None:
                self.mirror.set_record(ev.kind, obj_id, new)
            self._changed(Change(ev.kind, obj_id, old, new))

    def _rebind(self, port_ids: Iterable[str]) -> None:
        """Apply the binding rules (bindings.py) to these ports: a new holder recompiles the
        port, is written back to the store, and refused claims are logged and shown."""
        unsynced = self._unsynced()
        for pid in port_ids:
            port = self.mirror.ports.get(pid)
            old = self.bindings.holder(pid)
            if port is None:
                self.bindings.forget(pid)
                self._refused_logged.pop(pid, None)
                continue
            new = self.bindings.resolve(port, unsynced, self.hosts)
            if new != old:
                self._changed(Change("binding", pid, old, new))
                if new is not None:
                    rt = self.hosts[new]
                    ofport = rt.obs.bindings.get(pid) if rt.obs is not None else None
                    LOG.info("port %s bound to host %s (ofport %s)", pid, new, ofport)
                    if not rt.ready:  # no flows there until its switch is read: not ACTIVE
                        self._set_status(pid, "DOWN")
                elif old is not None:
                    LOG.info("port %s no longer bound to host %s", pid, old)
                    # DOWN at once, in the same write as the cleared holder: with several
                    # instances a port's observations are written by its host's owner, and once
                    # the cleared holder is stored the port names no host, so a DOWN decided
                    # after the step's barrier would have no writer (_ours)
                    self._set_status(pid, "DOWN")
            if new is not None and port.requested_host is None and port.host != new:
                self._binding_out[pid] = new
            elif (
                new is None
                and self.membership is not None
                and port.requested_host is None
                and port.host is not None
                and port.host == old
                and old not in unsynced
            ):  # its host no longer has it: other instances must not keep it held there
                self._binding_out[pid] = None
            # a holder on a host another instance reads is as its owner recorded it: claims on
            # this instance's hosts are refused now (while one of its own hosts is not read yet
            # since a start, the holder may have unplugged meanwhile: reported once read)
            self._report_refused(port, self.bindings.refused(pid, self._own(unsynced)))

    def _follow_recorded_holder(self, pid: str, old: PortRec | None, new: PortRec | None) -> None:
        """Several instances: a port held by a host this instance does not read is held where
        the store says (its owner writes it), so when the recorded host changes the holding is
        decided again from it, not kept (bindings.py keeps a holder on a host not read)."""
        if self.membership is None or old is None or new is None or old.host == new.host:
            return
        holder = self.bindings.holder(pid)
        if holder is not None and holder in self._unsynced():
            self.bindings.forget(pid)

    def _report_refused(self, port: PortRec, refused: list[str]) -> None:
        """Each refused claim is logged and counted once while it lasts; the current list is
        shown in the port's binding:vif_details."""
        pid = port.id
        before = self._refused_logged.get(pid, set())
        holder = self.bindings.holder(pid)
        requested = port.requested_host
        for host_id in sorted(set(refused) - before):
            self.stats.binding_conflicts += 1
            if requested is not None:
                why = f"binding:host_id requests {requested}"
            else:
                why = f"held by {holder}" if holder else "not bound"
            LOG.warning(
                "port %s: interface on host %s refused (%s); no flows for it there",
                pid, host_id, why,
            )  # fmt: skip
        if refused:
            self._refused_logged[pid] = set(refused)
        else:
            self._refused_logged.pop(pid, None)
        # per host, for the hosts this instance reads (each instance of several owns its own
        # and keeps the others' entries: ports.set_observed); a host no longer known is
        # cleared by its rendezvous owner
        shown = set(port.refused_shown)
        changed = {
            h: h in refused
            for h in shown.symmetric_difference(refused)
            if self.membership is None or h not in self.hosts or self.hosts[h].agent is not None
        }
        if changed:
            self._refused_out[pid] = changed
        else:
            self._refused_out.pop(pid, None)

    # ------------------------------------------------------------------ hosts

    def _add_host(self, rec: HostRec) -> None:
        rt = HostRuntime(rec=rec, dpid=datapath_id_for(rec.id))
        self.hosts[rec.id] = rt
        self.by_dpid[rt.dpid] = rec.id
        self.admission.set_host(rt.dpid, dict(rec.config))
        self._note_owner(rt)
        if self.owns(rec.id) and rec.id not in self._removing:
            self._start_agent(rt)
        self._arrange_role(rt)

    def _start_agent(self, rt: HostRuntime) -> None:
        """Start a new agent for the host, with callbacks that tag what it reports with a new
        epoch: an agent replaced since (stopped, or still cleaning up after its host's
        delete) may report late from its own thread, and must not speak for its successor."""
        self._epochs += 1
        epoch = rt.agent_epoch = self._epochs
        rt.agent = self.agent_factory(
            dict(rt.rec.config),
            self.controller_target,
            functools.partial(self._on_observation, epoch),
            functools.partial(self._on_ovsdb_state, epoch),
            **self.agent_options,
        )
        self._tell_peers(rt.agent)
        rt.agent.start()

    def _tell_peers(self, agent: Any) -> None:
        """The other live instances' OpenFlow targets, which the owner's agent lists as the
        bridge's other controllers (their sessions are slaves)."""
        if self.membership is not None and hasattr(agent, "set_peer_targets"):
            agent.set_peer_targets(self.membership().peer_targets())

    def _note_owner(self, rt: HostRuntime) -> None:
        """Track the host's owner in the current view, with its generation id (the revision
        at which this instance first saw that owner); a host gained from a member that may
        still act on it (live, or unknown: this instance just started) waits for the handover
        delay (see ``_takeover_at``)."""
        if self.membership is None:
            return
        view = self.membership()
        host_id = rt.rec.id
        owner = view.owner(host_id) if view.live else None
        # Owned under another lease: this instance left the members and joined again, perhaps
        # before the actor heard it was out (the two views can come in one step).  Another
        # instance may have taken the host meanwhile and used a newer generation: taken like a
        # host gained from a live member (handover delay, re-read, MASTER with a new id), not
        # kept with the old id, which the switch refuses or, unasked, leaves this session SLAVE.
        if owner == rt.owner and (owner != view.me or rt.owner_lease == view.lease):
            if rt.generation == 0:  # a refused one is taken again (_retry_roles)
                rt.generation, rt.role_refused = view.revision, None
            return
        if owner != view.me:
            self._takeover_at.pop(host_id, None)
        elif self.handover_delay_s > 0 and (
            rt.owner in view.members or (rt.owner is None and len(view.members) > 1)
        ):
            self._takeover_at[host_id] = time.monotonic() + self.handover_delay_s
        rt.owner, rt.owner_lease = owner, view.lease
        rt.generation, rt.role_refused = view.revision, None

    def _arrange_role(self, rt: HostRuntime) -> None:
        """Ask the host's switch for MASTER if this instance owns the host, else SLAVE, with
        the generation id of the current owner (several instances only)."""
        set_role = getattr(self.switches, "set_role", None)
        if self.membership is None or set_role is None:
            return
        self._note_owner(rt)
        set_role(rt.dpid, self.owns(rt.rec.id), rt.generation)

    def _apply_role_refused(self, dpid: int, generation: int) -> None:
        host_id = self.by_dpid.get(dpid)
        rt = self.hosts.get(host_id) if host_id is not None else None
        if rt is not None and generation == rt.generation:
            LOG.warning(
                "host %s: switch refused generation %d as stale; asked again with a newer one",
                host_id,
                generation,
            )
            rt.role_refused = generation
            # A refused SLAVE leaves this session the switch's master.  While some instance is
            # live its MASTER request demotes it; with none live (etcd without quorum) no newer
            # generation can be read until quorum returns, so step down to EQUAL, which the
            # switch grants without one.  This instance acts on nothing meanwhile (it is not
            # live), so no fencing is lost: a zombie that thinks it is live asks MASTER, not
            # this; `_retry_roles` asks SLAVE again once a newer revision is read.
            step_down = getattr(self.switches, "step_down", None)
            view = self.membership() if self.membership is not None else None
            if step_down is not None and view is not None and not view.live:
                step_down(dpid)

    def _retry_roles(self) -> None:
        """A role refused as stale is asked again once this instance has read a newer etcd
        revision (at least the one the switch saw, which some instance read before)."""
        if self.membership is None:
            return
        revision = self.membership().revision
        for rt in self.hosts.values():
            if rt.role_refused is not None and revision > rt.role_refused:
                rt.generation = 0  # taken again from the view, at its newer revision
                self._arrange_role(rt)
                if self.owns(rt.rec.id) and rt.installed is not None:
                    rt.installed = None  # what was planned meanwhile was not sent
                    self.switches.resync(rt.dpid)

    def _restart_agent(self, host_id: str) -> None:
        rt = self.hosts[host_id]
        if rt.agent is None:
            return  # another instance's host: its owner restarts its agent
        rt.agent.stop()
        rt.obs = None
        rt.ovsdb_up = False
        self._start_agent(rt)
        self._changed(Change("host_facts", host_id))

    def _apply_ownership(self) -> None:
        """Start the agents of hosts this instance now owns, stop those of hosts it lost.

        A host taken over is read afresh, OVSDB and switch (its previous owner changed its
        flows meanwhile), and reconciled like after a restart: nothing is sent if nothing
        changed.  A host given up is forgotten as read: no flows are planned for it here, and
        its ports stay with their recorded holders (bindings.py, rule 3), which its new owner
        keeps writing."""
        view = self.membership() if self.membership is not None else None
        self._arranged_for = view.members if view is not None else None
        for host_id, rt in self.hosts.items():
            self._note_owner(rt)
            owned = self.owns(host_id)
            if owned and self._takeover_at.pop(host_id, None) is not None and view is not None:
                # a handover now due: the previous owner asked SLAVE with what it read since
                rt.generation = max(rt.generation, view.revision)
            self._arrange_role(rt)  # before a take-over's re-read: no flow-mod as a slave
            if owned and rt.agent is not None:
                self._tell_peers(rt.agent)
            if owned and rt.agent is None and host_id not in self._removing:
                LOG.info("host %s: owned by this instance now; reading it", host_id)
                rt.down_reported = False
                # also a switch up whose flows are unknown (a host left alone after its
                # failures): read now, or it waited for a reconnect
                if rt.installed is not None or rt.switch_up:
                    rt.installed = None
                    self._left_alone.pop(host_id, None)
                    self.switches.resync(rt.dpid)
                self._start_agent(rt)
            elif not owned and rt.agent is not None:
                owner = view.owner(host_id) if view is not None and view.live else None
                LOG.info("host %s: owned by %s now; its agent stops here", host_id, owner)
                threading.Thread(target=rt.agent.stop, daemon=True).start()
                rt.agent = None
                rt.obs = None
                rt.ovsdb_up = False
                rebind = self.bindings.set_claims(host_id, ()) | set(self.bindings.held_by(host_id))
                self._rebind(sorted(rebind))

    def _remove_host(self, host_id: str) -> None:
        """DELETE of a host: its flows go, peers forget it, its ports are unbound."""
        rt = self.hosts.pop(host_id, None)
        if rt is None:
            return
        self._flush_failing.discard(host_id)
        self.audit.forget(host_id)
        self.by_dpid.pop(rt.dpid, None)
        self.admission.remove_host(rt.dpid)
        if rt.installed is not None:
            group_ids = sorted({g.group_id for s in rt.installed.values() for g in s.groups})
            self.switches.remove_all(rt.dpid, group_ids, lambda ok, why="": None)
        # Several instances: its role and pending handover go with it (kept per host, they
        # would outlive it for good; a host registered again is arranged afresh).
        self._takeover_at.pop(host_id, None)
        forget_role = getattr(self.switches, "forget_role", None)
        if forget_role is not None:
            forget_role(rt.dpid)
        if rt.agent is not None:
            self._removing[host_id] = self._removing.get(host_id, 0) + 1
            self._clean_up_agent(host_id, rt.agent)
        affected = self.bindings.drop_host(host_id) | self.mirror.recorded_on(host_id)
        self._rebind(sorted(affected))
        for pid in affected:  # not taken over by another host that has it plugged: unbound
            port = self.mirror.ports.get(pid)
            if port is not None and self.bindings.holder(pid) is None:
                if port.requested_host is None:
                    self._binding_out[pid] = None
                self._set_status(pid, "DOWN")
        before = len(self._dirty)
        self._changed(Change("host", host_id, rt.rec, None))
        LOG.info("host %s removed: %d units planned again", host_id, len(self._dirty) - before)

    def _clean_up_agent(self, host_id: str, agent: Any) -> None:
        """Remove a removed host's agent on a thread of its own: it talks to the host's OVSDB,
        which may be slow or gone, and the actor must not wait for it."""
        threading.Thread(
            target=self._remove_agent_then_report, args=(host_id, agent), daemon=True
        ).start()

    def _remove_agent_then_report(self, host_id: str, agent: Any) -> None:
        """A removed host's agent: its config off the host, then stopped; the actor hears
        when it is done (`_apply_agent_removed`)."""
        try:
            _unconfigure_and_stop(agent)
        finally:
            self._inbox.put(("agent_removed", (host_id,)))

    def _apply_agent_removed(self, host_id: str) -> None:
        """A removed host's agent is cleaned up and stopped.  If the host was registered again
        meanwhile, its new agent starts now, not before: the old one's ``remove_config`` (the
        bridge's controllers and tunnel ports) would otherwise remove what the new one wrote,
        and the new one writes them again only when its OVSDB connection comes up again.
        Where this ordering cannot hold (the same OVSDB registered again under another id, or
        owned by another instance now), the old agent's ``remove_config`` removes nothing once
        the bridge carries another agent's mark (``ovsdb_host.WRITER``)."""
        left = self._removing.pop(host_id, 0) - 1
        if left > 0:
            self._removing[host_id] = left
            return
        rt = self.hosts.get(host_id)
        if rt is not None and rt.agent is None and self.owns(host_id):
            LOG.info("host %s: registered again; its old agent is cleaned up, reading it", host_id)
            self._start_agent(rt)

    def _apply_observation(self, host_id: str, epoch: int, obs: HostObservation) -> None:
        rt = self.hosts.get(host_id)
        if rt is None or rt.agent is None or epoch != rt.agent_epoch:
            return  # a late one from an agent stopped or replaced since
        first = rt.obs is None
        before = rt.obs.bindings if rt.obs is not None else {}
        tunnels_changed = rt.obs is None or rt.obs.tunnel_ofports != obs.tunnel_ofports
        rt.obs = obs
        changed = {
            p for p in set(before) | set(obs.bindings) if before.get(p) != obs.bindings.get(p)
        }
        rebind = self.bindings.set_claims(host_id, obs.bindings)
        if first:
            # Ports recorded or trusted here: the host is read now, so they are decided again
            # (those it no longer has are withdrawn, or taken over by a host that has them).
            rebind |= self.mirror.recorded_on(host_id)
            rebind |= set(self.bindings.held_by(host_id))
        for pid in changed:
            if pid not in self.mirror.ports:
                continue  # an interface of something that is not a tenantnet port
            if self.bindings.holder(pid) == host_id:
                self._changed(Change("iface", pid, None, host_id))  # e.g. a new ofport there
                if pid not in obs.bindings:
                    LOG.info("port %s unplugged from host %s", pid, host_id)
        self._rebind(sorted(rebind))
        if tunnels_changed:
            self._changed(Change("host_facts", host_id))
        if first:
            self._host_became_known(host_id)

    def _apply_ovsdb_state(self, host_id: str, epoch: int, up: bool) -> None:
        rt = self.hosts.get(host_id)
        if rt is None or rt.agent is None or epoch != rt.agent_epoch:
            return  # from an agent stopped or replaced since
        rt.ovsdb_up = up
        if not up:
            self._host_down(host_id, "OVSDB connection lost")
        elif rt.down_reported and rt.switch_up:
            # Back after an OVSDB-only loss (OpenFlow stayed up): its ports were set DOWN,
            # and the observation the agent sends again changes nothing, so nothing decided
            # them again: they stayed DOWN for good while their flows worked.  Converge the
            # host as after a reconnect (no flow-mod when nothing changed).
            rt.down_reported = False
            self._host_became_known(host_id)
        self._report_host_state(host_id)

    def _apply_switch_ready(self, dpid: int, installed: Slice) -> None:
        host_id = self.by_dpid.get(dpid)
        if host_id is None:
            LOG.warning("switch %016x is not a registered host's integration bridge; ignored", dpid)
            return
        rt = self.hosts[host_id]
        rt.installed = split_by_cookie(installed)
        rt.groups = index_owners(rt.installed, self.inputs.group_of)
        rt.switch_up = True
        rt.down_reported = False
        if rt.failures > MAX_RESYNCS:
            # a fresh connection gets a fresh chance; the re-read of a host left alone
            # (`_tick`) one batch: if that fails too, it is left alone again, twice as long
            rt.failures = MAX_RESYNCS if rt.left_alone else 0
        self._report_host_state(host_id)
        self._host_became_known(host_id)

    def _apply_switch_gone(self, dpid: int) -> None:
        host_id = self.by_dpid.get(dpid)
        if host_id is None:
            return
        rt = self.hosts[host_id]
        rt.installed = None
        rt.switch_up = False
        rt.degraded = ""  # a new connection starts afresh
        rt.left_alone = 0
        self._left_alone.pop(host_id, None)
        self._host_down(host_id, "OpenFlow connection lost")
        self._report_host_state(host_id)

    def _host_became_known(self, host_id: str) -> None:
        """Once a host's OVSDB and switch were both read: converge everything it touches."""
        if self.hosts[host_id].ready:
            self.metrics.reconcile.started(host_id)
            self._changed(Change("switch", host_id))

    def _host_down(self, host_id: str, why: str) -> None:
        rt = self.hosts[host_id]
        if rt.down_reported or not self.owns(host_id):
            return
        rt.down_reported = True
        LOG.warning("host %s down (%s): its ports go DOWN, peers keep their flows", host_id, why)
        for pid in self.bindings.held_by(host_id):
            self._set_status(pid, "DOWN")

    def _report_host_state(self, host_id: str) -> None:
        rt = self.hosts.get(host_id)
        if rt is None or not self.owns(host_id):
            return
        status = "disconnected"
        if rt.ovsdb_up and rt.switch_up:
            status = "degraded" if rt.degraded else "connected"
        self.store.set_host_state(host_id, status, f"{rt.dpid:016x}")

    def _tick(self) -> None:
        now = time.monotonic()
        if self.membership is not None and (
            self.membership().members != self._arranged_for
            or any(
                due <= now and self.hosts[h].agent is None
                for h, due in self._takeover_at.items()
                if h in self.hosts
            )
        ):
            self._apply_ownership()  # the lease lapsed while a renewal hangs; a handover due
        self._retry_roles()
        for host_id, due in list(self._left_alone.items()):
            rt = self.hosts.get(host_id)
            if rt is None or not rt.switch_up:
                del self._left_alone[host_id]  # gone, or read afresh when it is back
            elif due <= now and self.owns(host_id):  # not ours now: when it is again
                del self._left_alone[host_id]
                LOG.info("host %s: re-reading its switch, left alone since its failures", host_id)
                self.switches.resync(rt.dpid)
        if not self._grace_over and time.monotonic() - self.stats.started_at > self.startup_grace_s:
            self._grace_over = True
            for host_id, rt in self.hosts.items():
                if not rt.ready and self.owns(host_id):
                    self._host_down(host_id, "not reconnected after start")
                    # Also when an earlier loss already reported it down (its held ports are
                    # the recorded holders: nothing was observed from it since the start).
                    for pid in self.bindings.held_by(host_id):
                        self._set_status(pid, "DOWN")
                    self._report_host_state(host_id)  # still "connected" from before the restart

    # ------------------------------------------------------------------ plan + send

    def _flush(self) -> None:
        """Plan what is dirty (and due), and send each host one diff (one bundle, one barrier)
        as soon as its plan is complete (`Planner.plan`'s ``release``): the first hosts'
        switches apply their bundles while the next hosts are planned."""
        if not self._dirty:
            return
        now = time.monotonic()
        due = {u for u in self._dirty if u not in self._retry or self._retry[u][1] <= now}
        if not due:
            return
        t0 = time.perf_counter()
        sent_before = self.stats.flow_mods + self.stats.group_mods
        self._dirty -= due
        self._steps += 1
        batch = Batch(step=self._steps)
        decided = 0  # the plan's decisions already in the batch
        writes: dict[str, list[tuple[int, Hashable, Slice]]] = {}  # by host, not yet recorded
        indexed = 0  # the plan's writes already in ``writes``

        def take_decisions(plan: Plan) -> None:
            nonlocal decided
            for d in plan.decisions[decided:]:
                if d.host is not None and d.active:
                    batch.active[d.port_id] = (d.host, d.peers)
                else:
                    batch.down[d.port_id] = d.host
                self._decided[d.port_id] = batch.step
            decided = len(plan.decisions)

        def release(host_id: str, plan: Plan) -> None:
            """The host's plan is complete: record what its switch will hold and send it.
            Never raises (`Planner.plan` goes on with the next hosts): a host whose send
            fails is re-read and planned again (`_not_sent`)."""
            nonlocal indexed
            take_decisions(plan)  # before the first send: a barrier may settle them
            for h, owner, group, after in plan.writes[indexed:]:
                writes.setdefault(h, []).append((owner, group, after))
            indexed = len(plan.writes)
            host_writes = writes.pop(host_id, ())
            rt = self.hosts[host_id]
            if not self._flush_zones(rt, plan.ct_flushes_first.get(host_id, ())):
                # Not its diff without the flush: a new port's flows would take up a zone
                # that still holds an old port's connections.  Re-read, the plan derives it
                # again from what the switch holds (the flows are not there yet).
                why = "a conntrack zone flush before its flows was not taken"
                self._not_sent(host_id, batch, why, logging.WARNING)
                return
            try:
                for owner, group, after in host_writes:
                    _record(rt, owner, group, after)
                if host_id in plan.diffs:
                    diff = merge_diffs(plan.diffs[host_id])
                    self._send(rt, diff, batch)
                    self._announce(rt, diff, batch)
            except Exception as exc:  # the re-read plans the flushes after it again
                self._not_sent(host_id, batch, f"{type(exc).__name__}: {exc}")
            else:
                self._flush_zones(rt, plan.ct_flushes.get(host_id, ()))

        plan = self.planner.plan(due, self.inputs, release)
        take_decisions(plan)
        failed = {unit for unit, _ in plan.failed}
        for unit, exc in plan.failed:
            self._failed(unit, exc, now)
        for unit in due - failed:
            if self._retry.pop(unit, None) is not None:
                LOG.info("planning %s succeeded again", _describe(unit))
        self.stats.networks_compiled += plan.counts.get("networks_compiled", 0)
        self.stats.ports_patched += plan.counts.get("ports_patched", 0)
        self._settle(batch)
        self.metrics.reconcile.flushed(plan.diffs)
        sent = self.stats.flow_mods + self.stats.group_mods - sent_before
        ms = (time.perf_counter() - t0) * 1000
        self.stats.last_batch_ms = ms
        self.metrics.dataplane_step.observe(ms / 1000)
        if sent:
            LOG.info(
                "%d networks recompiled, %d ports patched: %d flow/group mods to %d hosts"
                " in %.1f ms",
                plan.counts.get("networks_compiled", 0), plan.counts.get("ports_patched", 0),
                sent, len(plan.diffs), ms,
            )  # fmt: skip
        self._check_reconciled()

    def _announce(self, rt: HostRuntime, diff: FlowDiff, batch: Batch) -> None:
        """Gratuitous ARPs for the router interfaces whose ARP answer this diff adds to the
        host (garp.py), sent once the host confirms the step (`_apply_batch_done`)."""
        answers = garp.added_answers(diff.add_rules)
        if answers and rt.rec.id in batch.waiting:
            frames, what = garp.announcements(
                answers, rt.rec.id, rt.obs, self.mirror, self.bindings
            )
            if frames:
                queued = batch.announce.setdefault(rt.rec.id, ([], set()))
                queued[0].extend(frames)
                queued[1].update(what)

    def _send_announcements(self, host_id: str, frames: garp.Frames, what: set[str]) -> None:
        rt = self.hosts.get(host_id)
        if rt is None or not frames:
            return
        sent = self.switches.packet_outs(rt.dpid, frames)
        LOG.info(
            "host %s: router interface %s announced (gratuitous ARP) to %d ports%s",
            host_id, ", ".join(sorted(what)), len(frames),
            "" if sent else ": not sent, switch gone",
        )  # fmt: skip

    def _flush_zones(self, rt: HostRuntime, zones: Iterable[int]) -> bool:
        """Flush conntrack zones of the host (`Plan.ct_flushes_first` before its diff of the
        step, `Plan.ct_flushes` after it, on the same connection: OVS handles one connection's
        messages in order).  Taken means written to the connection, not confirmed (no barrier
        of its own; the diff's barrier, if any, comes after a first flush).

        A flush is tried once and never kept for later: the planner derives flushes from what
        the switch holds (services/security_groups.py), so one lost with a switch that is gone
        is planned again after the re-read on reconnect if its zone still needs it; a flush
        kept in memory would go stale when another instance takes the host or this one
        restarts, and would clear the live connections of a port given the zone meanwhile.  A
        flush that raises (a southbound bug) is logged, once per host until one succeeds, and
        costs the host nothing else: its flows are still sent and its record of the switch is
        kept (voiding it would re-read the switch, raise again and leave the host alone).

        False only if the switch did not take the flush (gone, or its send queue full): a
        first flush's caller then sends the host nothing more this step (see `_flush`)."""
        zones = sorted(set(zones))
        host_id = rt.rec.id
        if not zones or not self.owns(host_id) or rt.role_refused is not None:
            return True
        try:
            taken = self.switches.flush_ct_zones(rt.dpid, zones)
        except Exception as exc:
            self.stats.ct_zone_flush_errors += 1
            if host_id not in self._flush_failing:
                self._flush_failing.add(host_id)
                LOG.error(
                    "host %s: flushing conntrack zones %s failed (%s: %s); their old "
                    "connections stay until the zones are flushed again (logged once until a "
                    "flush works)",
                    host_id, zones, type(exc).__name__, exc,
                )  # fmt: skip
            return True
        if taken:
            self._flush_failing.discard(host_id)
            self.stats.ct_zones_flushed += len(zones)
        LOG.info(
            "host %s: conntrack zones %s %s",
            host_id, zones, "flushed" if taken else "not flushed (switch gone or not reading)",
        )  # fmt: skip
        return taken

    def _not_sent(self, host_id: str, batch: Batch, why: str, level: int = logging.ERROR) -> None:
        """Sending the host its part of the step raised (a flow-mod that does not encode, a
        southbound bug), or its first zone flush was not taken: what was recorded for it is
        void, so its switch is re-read and the host planned again whole, like after a batch
        it did not confirm (at most MAX_RESYNCS times until it reconnects).  The ports waiting
        for it settle as for a failed barrier; the other hosts of the step are planned and
        sent as usual."""
        rt = self.hosts.get(host_id)
        if host_id not in batch.waiting:  # nothing of the step in flight to it
            batch.confirmed(host_id, False)
        retry = rt is not None and rt.installed is not None and rt.failures < MAX_RESYNCS
        LOG.log(
            level, "host %s: sending this step failed (%s); %s",
            host_id, why,
            "re-reading its switch" if retry else "re-reading its switch later",
        )  # fmt: skip
        if rt is not None and rt.installed is not None:
            rt.failures += 1
            rt.installed = None
            if retry:
                self.switches.resync(rt.dpid)
            else:
                self._leave_alone(host_id, rt)

    def _failed(self, unit: Unit, exc: BaseException, now: float) -> None:
        """Planning ``unit`` raised: nothing of it was sent or recorded; it is planned again
        after a backoff (doubling up to RETRY_MAX_S), logged when it first fails."""
        failures = self._retry.get(unit, (0, 0.0))[0] + 1
        delay = min(RETRY_FIRST_S * 2 ** (failures - 1), RETRY_MAX_S)
        self._retry[unit] = (failures, now + delay)
        self._dirty.add(unit)
        if failures == 1:
            LOG.error(
                "planning %s failed; retried with backoff until it succeeds",
                _describe(unit), exc_info=exc,
            )  # fmt: skip

    def _unsynced(self) -> set[str]:
        return {h for h, rt in self.hosts.items() if rt.obs is None}

    def _settle(self, batch: Batch) -> None:
        """Take the statuses the batch knows now, unless a later step decided them since."""
        settled = batch.settle()
        self.metrics.ports_settled(batch.started, settled, self.mirror.ports)
        for pid, status in settled.items():
            if self._decided.get(pid) == batch.step:
                del self._decided[pid]
                if status is not None:
                    self._status_out[pid] = status

    def _set_status(self, pid: str, status: str) -> None:
        """A status known without a barrier; pending decisions of earlier steps are void."""
        self._decided.pop(pid, None)
        self._status_out[pid] = status

    def _send(self, rt: HostRuntime, d: FlowDiff, batch: Batch) -> None:
        self._outstanding += 1
        host_id, dpid = rt.rec.id, rt.dpid
        batch.waiting.add(host_id)

        def done(ok: bool, why: str = "") -> None:
            self._inbox.put(("batch_done", (host_id, dpid, batch, ok, why)))

        # The ownership may have lapsed since the plan (the lease, on another thread): nothing
        # more is sent until the actor has given the host up (_apply_ownership).
        # Nor while the switch refused our MASTER request: the session's role is then not
        # ours to use (an equal one would still take flow-mods); re-read once asked again.
        try:
            taken = (
                self.owns(host_id)
                and rt.role_refused is None
                and self.switches.apply(dpid, d, done)
            )
        except BaseException:  # nothing in flight: the caller handles the host (_not_sent)
            self._outstanding -= 1
            batch.waiting.discard(host_id)
            raise
        if not taken:
            done(False, "disconnected")
            return
        # Counted once the southbound took the batch (a switch that is gone was sent nothing).
        rt.sent_batches += 1
        self.stats.flow_mods += len(d.add_rules) + len(d.del_rules)
        self.stats.group_mods += len(d.add_groups) + len(d.mod_groups) + len(d.del_groups)
        self.stats.batches += 1

    def _apply_batch_done(
        self, host_id: str, dpid: int, batch: Batch, ok: bool, why: str = ""
    ) -> None:
        self._outstanding -= 1
        rt = self.hosts.get(host_id)
        if rt is not None and rt.dpid == dpid:
            self._note_health(rt, ok, why)
            self.metrics.reconcile.confirmed(host_id, ok)
        elif rt is None:  # deleted with this batch in flight: its timer goes (no sample)
            self.metrics.reconcile.confirmed(host_id, False)
        if not ok and rt is not None and (not self.owns(host_id) or rt.role_refused is not None):
            pass  # not sent: not ours, or not master (read afresh when it is again)
        elif not ok and rt is not None and rt.installed is not None:
            rt.failures += 1
            rt.installed = None
            if rt.failures <= MAX_RESYNCS:
                LOG.warning("host %s did not confirm its flows; re-reading its switch", host_id)
                self.switches.resync(dpid)
            else:  # a rule the switch keeps refusing, or a switch this slow: don't spin
                self._leave_alone(host_id, rt)
        elif ok and rt is not None:
            rt.failures = rt.left_alone = 0
            self._left_alone.pop(host_id, None)
        batch.confirmed(host_id, ok)
        frames, what = batch.announce.pop(host_id, ([], set()))
        if ok and rt is not None and rt.dpid == dpid:
            self._send_announcements(host_id, frames, what)
        self._settle(batch)
        self._check_reconciled()

    def _leave_alone(self, host_id: str, rt: HostRuntime) -> None:
        """Too many unconfirmed batches in a row: stop re-reading the switch at once, and
        re-read it later (`_tick`), later each time it fails again.  Left alone until it
        reconnected, a switch that is slow but alive (answering echoes, never reconnecting)
        got no flow again: every change for its host was lost while it showed degraded."""
        rt.left_alone += 1
        wait = min(LEFT_ALONE_MAX_S, LEFT_ALONE_FIRST_S * 2 ** (rt.left_alone - 1))
        self._left_alone[host_id] = time.monotonic() + wait
        LOG.error(
            "host %s did not confirm %d batches in a row (%s); re-reading its switch in %.0f s",
            host_id, rt.failures, rt.degraded or "not sent", wait,
        )  # fmt: skip

    def _note_health(self, rt: HostRuntime, ok: bool, why: str) -> None:
        """A switch that lets a batch time out or rejects one is degraded until it confirms one
        (a disconnect is not degradation: the host is down, see _apply_switch_gone)."""
        before = rt.degraded
        if ok:
            rt.degraded = ""
        elif why in ("timeout", "rejected") and rt.switch_up:
            rt.degraded = "rejected flows" if why == "rejected" else "confirmed nothing in time"
        if rt.degraded != before:
            host_id = rt.rec.id
            if rt.degraded:
                LOG.warning(
                    "host %s degraded: its switch %s; ports elsewhere do not wait for it",
                    host_id,
                    rt.degraded,
                )
            else:
                LOG.info("host %s healthy again", host_id)
            self._report_host_state(host_id)

    def _apply_vip_claim(self, claim: Claim) -> None:
        """A port announced a virtual IP (`controller.dataplane.vips.VipLearner`): written with
        this step's observations if it is news and this instance acts for the port's host."""
        self.vip_claims.add(claim, self.mirror, self.owns)

    def _write_observations(self) -> None:
        """What this step learnt about ports, in one store transaction.

        While barriers are outstanding and only bindings are pending, the write is held back
        (at most OBSERVATION_HOLD_S): a new port's binding, observed when it is created, and
        its ACTIVE status, known when its host's barrier returns, then share one commit, and
        the switches get the CPU in between.  A status is written as soon as it is known.
        """
        vips = self.vip_claims.due()  # one walk of the pending claims: `take` writes these
        if not self._status_out and not self._binding_out and not self._refused_out and not vips:
            self._held_since = None
            return
        now = time.monotonic()
        if self._outstanding and not self._status_out and not vips:
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since < OBSERVATION_HOLD_S:
                return
        self._held_since = None
        statuses, self._status_out = self._ours(self._status_out), {}
        bindings, self._binding_out = self._ours(self._binding_out), {}
        refused, self._refused_out = self._ours_per_host(self._refused_out), {}
        claims = self.vip_claims.take(self.owns, vips)
        if statuses or bindings or refused or claims:
            self.store.set_ports_observed(
                statuses=statuses, bindings=bindings, refused=refused, vips=claims
            )

    def _ours(self, out: dict[str, T]) -> dict[str, T]:
        """The observations of ports whose host this instance owns (the holder, else the
        recorded one): each port has one writer (see `owns`).  A port that never had a host
        is written by none: it was created DOWN, and every instance decides it on its own
        view, which may be older than the owner's that binds it (a late DOWN would undo the
        owner's ACTIVE); a port that loses its holder still has its recorded host."""
        if self.membership is None:
            return out
        kept = {}
        for pid, value in out.items():
            port = self.mirror.ports.get(pid)
            if self.owns(self.bindings.holder(pid) or (port.host if port is not None else None)):
                kept[pid] = value
        return kept

    def _ours_per_host(self, out: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
        """Refused claims: per host, the entries of hosts this instance owns when the write is
        made (whoever holds the port: a claim is refused where it is made)."""
        if self.membership is None:
            return out
        kept = {}
        for pid, hosts in out.items():
            mine = {h: v for h, v in hosts.items() if self.owns(h)}
            if mine:
                kept[pid] = mine
        return kept

    def _own(self, hosts: set[str]) -> set[str]:
        """Those of ``hosts`` this instance owns (all of them on a single node)."""
        if self.membership is None:
            return hosts
        return {h for h in hosts if self.owns(h)}

    def _check_reconciled(self) -> None:
        if self.stats.reconciled_after_s is not None or self._outstanding or self._dirty:
            return
        owned = [rt for h, rt in self.hosts.items() if self.owns(h)]
        if not owned or not all(rt.ready for rt in owned):
            return
        self.stats.reconciled_after_s = round(time.monotonic() - self.stats.started_at, 3)
        LOG.info(
            "all %d hosts reconciled %.2f s after start (%d flow-mods, %d group-mods sent)",
            len(owned),
            self.stats.reconciled_after_s,
            self.stats.flow_mods,
            self.stats.group_mods,
        )


def _installed_counts(installed: dict[int, Slice] | None) -> dict[str, int | None]:
    """Flows and groups of ours on a switch, from the data plane's view of it: the totals its
    `flows.diff.Owners` keeps (O(1)); a plain dict (tests, tools) is counted by the same rule,
    as an `Owners` built from one C-level copy of it (the actor may change the dict)."""
    if installed is None:
        return {"flows": None, "groups": None, "sg_flows": None}
    owners = installed if isinstance(installed, Owners) else Owners(list(installed.items()))
    flows, groups, sg_flows = owners.totals  # one read: never a mix of two changes
    return {"flows": flows, "groups": groups, "sg_flows": sg_flows}


def merge_diffs(diffs: list[FlowDiff]) -> FlowDiff:
    """One host's diffs of several owners as one: they never share a cookie, and the strict
    full-cookie deletes keep one owner's delete from removing another's re-added flow."""
    if len(diffs) == 1:
        return diffs[0]
    return FlowDiff(
        add_groups=tuple(g for d in diffs for g in d.add_groups),
        mod_groups=tuple(g for d in diffs for g in d.mod_groups),
        del_groups=tuple(g for d in diffs for g in d.del_groups),
        add_rules=tuple(sorted((r for d in diffs for r in d.add_rules), key=lambda r: -r.table)),
        del_rules=tuple(sorted((r for d in diffs for r in d.del_rules), key=lambda r: r.table)),
        replaces_rules=any(d.replaces_rules for d in diffs),
    )


def _record(rt: HostRuntime, owner: int, group: Hashable, after: Slice) -> None:
    """What the host's switch holds once it applied a plan (optimistic: a batch it does not
    confirm makes it read again)."""
    assert rt.installed is not None
    owners = rt.groups.setdefault(group, set()) if group is not None else None
    if after.rules or after.groups:
        rt.installed[owner] = after
        if owners is not None:
            owners.add(owner)
    else:
        rt.installed.pop(owner, None)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del rt.groups[group]


def _typed(cls: Any, body: dict[str, Any] | None) -> Any:
    return cls.from_store(body) if body is not None else None


def _describe(unit: Unit) -> str:
    return f"{unit.service} {'/'.join(map(str, unit.scope))}"


def _unconfigure_and_stop(agent: Any) -> None:
    """Take tenantnet's config off a removed host (best effort, logged), then stop its agent."""
    try:
        agent.remove_config()
    except Exception:
        LOG.exception("could not remove tenantnet config from a removed host")
    finally:
        agent.stop()
