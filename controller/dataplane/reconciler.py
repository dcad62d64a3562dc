"""The data plane: store changes in, minimal flow-mods out.

Everything that changes data-plane state runs on one worker thread (an actor): store events,
OVSDB observations, switch connects/disconnects and barrier replies are only *queued* by the
threads that deliver them.  That keeps the state free of locks and makes batching natural: a bulk
create of 300 ports arrives as a burst of events that is drained at once, and each network it
touches is recompiled once.

Two paths turn a change into flow-mods:

* **Per port** (the common case: a port created, deleted, updated, plugged or unplugged on a host
  that stays in its network): only that port's fragments are compiled (its own rules on its host,
  one unicast rule per MAC on each peer) plus its host's flood groups, and patched into what the
  switches hold.  The cost does not depend on how many ports the network has.
* **Per network** (everything else: a host joining or leaving a network, MAC or ofport conflicts,
  several ports of one network in one step (bulk creates), reconnects, tunnel changes): the
  network is recompiled for every host of it and diffed against what each switch has.

Both read ports and networks' membership from an in-memory mirror kept current by the store's
events.  The store is read only for the network record of a recompile and for the ports recorded
on a host when that host is first read or removed.  Nothing here is O(all ports).

Around the compile:

* **Who holds a port** is decided by `controller.dataplane.bindings` from the hosts' OVSDB
  claims (a requested host, else the first claim); a refused claim gets no flows.
* **Which connection is a host's switch** is decided by `controller.dataplane.admission` (the
  OpenFlow app asks through `admit`).
* **Health.**  A host is ready once its OVSDB and its switch's flows were read; a switch that
  lets a batch time out or rejects one is *degraded* (ports elsewhere stop waiting for it) and
  is re-read, until it confirms a batch again.  Hosts that have not come back ``startup_grace_s``
  after a start have their ports set DOWN.  Whether a switch is alive at all is decided by the
  OpenFlow connection's watchdog (southbound/ofp_server), which ends its session.
* **Write-back.**  Port statuses, holders (``binding:host_id``) and refused claims go to the
  store in one transaction per step (`_write_observations`); host states on each change.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.dataplane.admission import Admission
from controller.dataplane.batch import Batch
from controller.dataplane.bindings import Bindings, requested_host
from controller.dataplane.compiled import NetCompiled
from controller.dataplane.views import (
    LocatedPort,
    host_context,
    local_port_of,
    port_macs,
    segment_of,
)
from controller.events import ChangeEvent
from controller.metrics import Metrics
from controller.southbound.ovsdb_host import HostObservation, OvsdbHost, datapath_id_for
from controller.store.ports import REFUSED_HOSTS
from flows import tables as t
from flows.compiler import (
    compile_base,
    compile_network_owners,
    local_port_rules,
    network_slice,
    peer_list,
    remote_port_rules,
    usable,
)
from flows.diff import FlowDiff, diff, split_by_cookie
from flows.model import LocalPort, Rule, Slice

LOG = logging.getLogger(__name__)

EMPTY = Slice()
MAX_RESYNCS = 3
# How long port bindings/statuses may wait for outstanding barriers, so that a new port's
# binding and its ACTIVE status are one commit (see _write_observations).
OBSERVATION_HOLD_S = 0.05

# Port fields whose change alters flows; status/revision/timestamps do not.  The binding
# fields alter flows only through the holder they lead to (see _rebind).
PORT_FLOW_FIELDS = (
    "network_id",
    "mac_address",
    "fixed_ips",
    "admin_state_up",
    "port_security_enabled",
    "allowed_address_pairs",
)
PORT_BINDING_FIELDS = ("binding:host_id", "_host_requested")
HOST_AGENT_FIELDS = ("ovsdb", "tunnel_ip", "integration_bridge", "datapath_type")


class Switches(Protocol):
    """The OpenFlow side as the data plane uses it (implemented by `TenantnetOfpApp`)."""

    def apply(self, dpid: int, diff: FlowDiff, on_done: Callable[..., None]) -> bool: ...

    def remove_all(self, dpid: int, group_ids: list[int], on_done: Callable[..., None]) -> bool: ...

    def resync(self, dpid: int) -> None: ...


@dataclass
class HostRuntime:
    """What the data plane knows about one registered host right now."""

    record: dict[str, Any]
    agent: Any = None
    dpid: int = 0
    obs: HostObservation | None = None  # None until its OVSDB was read since start
    # What its switch holds, by owner cookie (flows.tables); None until read since start.
    installed: dict[int, Slice] | None = None
    # Network key -> the owners of that network (its own, its ports') installed there.
    net_owners: dict[int, set[int]] = field(default_factory=dict)
    ovsdb_up: bool = False
    down_reported: bool = False
    failures: int = 0  # consecutive unconfirmed batches
    switch_up: bool = False  # its OpenFlow connection is up (read back or not)
    # Why its switch is degraded ("" if it is not): it let a batch time out or rejected one.
    # Ports elsewhere stop waiting for it; cleared by its next confirmed batch or a reconnect.
    degraded: str = ""

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
    ) -> None:
        self.store = store
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
        self._refused_logged: dict[str, set[str]] = {}  # port id -> refused hosts reported
        self.members: dict[int, set[str]] = {}  # network key -> hosts compiled with flows of it
        self.key_to_net: dict[int, str] = {}
        self.net_to_key: dict[str, int] = {}
        self.ports: dict[str, dict[str, Any]] = {}  # mirror of the store's ports, by id
        self.num_to_port: dict[int, str] = {}  # port number (owner cookie) -> port id
        self.net_ports: dict[str, set[str]] = {}  # network id -> its port ids
        self.compiled: dict[int, NetCompiled] = {}
        self._dirty: set[int] = set()  # networks to recompile whole
        self._dirty_ports: dict[int, set[str]] = {}  # network key -> ports changed in it
        self._dirty_base: set[str] = set()
        self._inbox: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._outstanding = 0
        self._grace_over = False
        self._status_out: dict[str, str] = {}  # written once per step, see _write_observations
        self._binding_out: dict[str, str | None] = {}
        self._refused_out: dict[str, list[str]] = {}
        self._held_since: float | None = None
        self._steps = 0
        self._decided: dict[str, int] = {}  # port -> the latest step that decided its status

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

    def _on_observation(self, host_id: str, obs: HostObservation) -> None:
        self._inbox.put(("observation", (host_id, obs)))

    def _on_ovsdb_state(self, host_id: str, up: bool) -> None:
        self._inbox.put(("ovsdb_state", (host_id, up)))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for net in self.store.list_networks():
            self._learn_network(net)
        for port in self.store.list_ports():
            self._mirror_port(port["id"], port)
        for host in self.store.list_hosts():
            self._add_host(host)
        # The recorded holders, before any host has been heard from (bindings.py, rule 3).
        for port in self.ports.values():
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
            if (
                not self._inbox.unfinished_tasks
                and not self._dirty
                and not self._dirty_ports
                and not self._outstanding
            ):
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
                    "networks": sorted(k for k, hs in list(self.members.items()) if h in hs),
                    **_installed_counts(rt.installed),
                }
                for h, rt in list(self.hosts.items())
            },
            "queue_depth": self._inbox.qsize(),
            "flow_mods": self.stats.flow_mods,
            "group_mods": self.stats.group_mods,
            "batches": self.stats.batches,
            "networks_compiled": self.stats.networks_compiled,
            "ports_patched": self.stats.ports_patched,
            "binding_conflicts": self.stats.binding_conflicts,
            "reconciled_after_s": self.stats.reconciled_after_s,
            "uptime_s": round(time.monotonic() - self.stats.started_at, 3),
        }

    # ------------------------------------------------------------------ the actor

    def _run(self) -> None:
        while not self._stopping:
            taken = 0
            timeout = 1.0
            if self._held_since is not None:
                timeout = max(0.0, self._held_since + OBSERVATION_HOLD_S - time.monotonic())
            try:
                kind, args = self._inbox.get(timeout=timeout)
                taken = 1
            except queue.Empty:
                kind, args = "tick", ()
            try:
                self._handle(kind, args)
                # drain whatever else arrived, so a burst is compiled once
                while True:
                    try:
                        kind, args = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    self._handle(kind, args)
                self._flush()
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
            self._apply_observation(*args)
        elif kind == "ovsdb_state":
            self._apply_ovsdb_state(*args)
        elif kind == "switch_ready":
            self._apply_switch_ready(*args)
        elif kind == "switch_gone":
            self._apply_switch_gone(*args)
        elif kind == "batch_done":
            self._apply_batch_done(*args)
        elif kind == "tick":
            self._tick()

    # ------------------------------------------------------------------ store events

    def _learn_network(self, net: dict[str, Any]) -> None:
        key = int(net["_key"])
        self.key_to_net[key] = net["id"]
        self.net_to_key[net["id"]] = key

    def _apply_event(self, ev: ChangeEvent) -> None:
        if ev.kind == "network":
            if ev.new is not None:
                self._learn_network(ev.new)
                if ev.old is not None and (
                    ev.old.get("provider:segmentation_id") != ev.new.get("provider:segmentation_id")
                    or ev.old.get("provider:network_type") != ev.new.get("provider:network_type")
                ):
                    self._dirty.add(int(ev.new["_key"]))
            elif ev.old is not None:
                key = int(ev.old["_key"])
                self._dirty.add(key)  # desired becomes empty everywhere
                self.net_to_key.pop(ev.old["id"], None)
        elif ev.kind == "port":
            old, new = ev.old, ev.new
            pid = (new or old or {})["id"]
            self._mirror_port(pid, new)
            if old is None or new is None or any(
                old.get(f) != new.get(f) for f in PORT_BINDING_FIELDS
            ):
                self._rebind([pid])
            if old and new and all(old.get(f) == new.get(f) for f in PORT_FLOW_FIELDS):
                return  # a status/name/binding record change: the holder decides the flows
            for rec in (old, new):
                if rec and rec.get("network_id") in self.net_to_key:
                    self._port_changed(self.net_to_key[rec["network_id"]], rec["id"])
        elif ev.kind == "host":
            if ev.new is None and ev.old is not None:
                self._remove_host(ev.old["id"])
            elif ev.new is not None and ev.old is None:
                self._add_host(ev.new)
            elif ev.new is not None and ev.old is not None:
                self.hosts[ev.new["id"]].record = ev.new
                self.admission.set_host(self.hosts[ev.new["id"]].dpid, ev.new)
                if any(ev.old.get(f) != ev.new.get(f) for f in HOST_AGENT_FIELDS):
                    self._restart_agent(ev.new["id"])

    def _mirror_port(self, port_id: str, record: dict[str, Any] | None) -> None:
        old = self.ports.pop(port_id, None)
        if old is not None:
            self.net_ports.get(old["network_id"], set()).discard(port_id)
            self.num_to_port.pop(old["_num"], None)
        if record is not None:
            self.ports[port_id] = record
            self.net_ports.setdefault(record["network_id"], set()).add(port_id)
            self.num_to_port[record["_num"]] = port_id

    def _port_changed(self, key: int, port_id: str) -> None:
        self._dirty_ports.setdefault(key, set()).add(port_id)

    def _rebind(self, port_ids: Any) -> None:
        """Apply the binding rules (bindings.py) to these ports: a new holder recompiles the
        port, is written back to the store, and refused claims are logged and shown."""
        unsynced = self._unsynced()
        for pid in port_ids:
            port = self.ports.get(pid)
            old = self.bindings.holder(pid)
            if port is None:
                self.bindings.forget(pid)
                self._refused_logged.pop(pid, None)
                continue
            new = self.bindings.resolve(port, unsynced, self.hosts)
            if new != old:
                key = self.net_to_key.get(port["network_id"])
                if key is not None:
                    self._port_changed(key, pid)
                if new is not None:
                    rt = self.hosts[new]
                    ofport = rt.obs.bindings.get(pid) if rt.obs is not None else None
                    LOG.info("port %s bound to host %s (ofport %s)", pid, new, ofport)
                    if not rt.ready:  # no flows there until its switch is read: not ACTIVE
                        self._set_status(pid, "DOWN")
                elif old is not None:
                    LOG.info("port %s no longer bound to host %s", pid, old)
            if (
                new is not None
                and requested_host(port) is None
                and port.get("binding:host_id") != new
            ):
                self._binding_out[pid] = new
            self._report_refused(port, self.bindings.refused(pid, unsynced))

    def _report_refused(self, port: dict[str, Any], refused: list[str]) -> None:
        """Each refused claim is logged and counted once while it lasts; the current list is
        shown in the port's binding:vif_details."""
        pid = port["id"]
        before = self._refused_logged.get(pid, set())
        holder = self.bindings.holder(pid)
        requested = requested_host(port)
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
        shown = (port.get("binding:vif_details") or {}).get(REFUSED_HOSTS, [])
        if shown != refused:
            self._refused_out[pid] = refused
        else:
            self._refused_out.pop(pid, None)

    # ------------------------------------------------------------------ hosts

    def _add_host(self, record: dict[str, Any]) -> None:
        host_id = record["id"]
        rt = HostRuntime(record=record, dpid=datapath_id_for(host_id))
        self.hosts[host_id] = rt
        self.by_dpid[rt.dpid] = host_id
        self.admission.set_host(rt.dpid, record)
        self._start_agent(rt)

    def _start_agent(self, rt: HostRuntime) -> None:
        rt.agent = self.agent_factory(
            rt.record,
            self.controller_target,
            self._on_observation,
            self._on_ovsdb_state,
            **self.agent_options,
        )
        rt.agent.start()

    def _restart_agent(self, host_id: str) -> None:
        rt = self.hosts[host_id]
        if rt.agent is not None:
            rt.agent.stop()
        rt.obs = None
        rt.ovsdb_up = False
        self._start_agent(rt)
        self._dirty.update(k for k, hs in self.members.items() if host_id in hs)

    def _remove_host(self, host_id: str) -> None:
        """DELETE of a host: its flows go, peers forget it, its ports are unbound."""
        rt = self.hosts.pop(host_id, None)
        if rt is None:
            return
        self.by_dpid.pop(rt.dpid, None)
        self.admission.remove_host(rt.dpid)
        if rt.installed is not None:
            group_ids = sorted({g.group_id for s in rt.installed.values() for g in s.groups})
            self.switches.remove_all(rt.dpid, group_ids, lambda ok, why="": None)
        if rt.agent is not None:
            agent = rt.agent
            threading.Thread(target=_remove_agent, args=(agent,), daemon=True).start()
        affected = self.bindings.drop_host(host_id)
        affected |= {p["id"] for p in self.store.list_ports(host_id=host_id)}
        self._rebind(sorted(affected))
        for pid in affected:  # not taken over by another host that has it plugged: unbound
            port = self.ports.get(pid)
            if port is not None and self.bindings.holder(pid) is None:
                if requested_host(port) is None:
                    self._binding_out[pid] = None
                self._set_status(pid, "DOWN")
        nets = [k for k, hs in self.members.items() if host_id in hs]
        for k in nets:
            self.members[k].discard(host_id)
        self._dirty.update(nets)
        LOG.info("host %s removed: %d networks recompiled on its peers", host_id, len(nets))

    def _apply_observation(self, host_id: str, obs: HostObservation) -> None:
        rt = self.hosts.get(host_id)
        if rt is None:
            return
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
            rebind |= {p["id"] for p in self.store.list_ports(host_id=host_id)}
            rebind |= set(self.bindings.held_by(host_id))
        for pid in changed:
            port = self.ports.get(pid)
            if port is None:
                continue  # an interface of something that is not a tenantnet port
            key = self.net_to_key.get(port["network_id"])
            if key is not None and self.bindings.holder(pid) == host_id:
                self._port_changed(key, pid)  # e.g. a new ofport where it is bound
            if pid not in obs.bindings and self.bindings.holder(pid) == host_id:
                LOG.info("port %s unplugged from host %s", pid, host_id)
        self._rebind(sorted(rebind))
        if tunnels_changed:
            self._dirty_base.add(host_id)
            self._dirty.update(k for k, hs in self.members.items() if host_id in hs)
        if first:
            self._host_became_known(host_id)

    def _apply_ovsdb_state(self, host_id: str, up: bool) -> None:
        rt = self.hosts.get(host_id)
        if rt is None:
            return
        rt.ovsdb_up = up
        if not up:
            self._host_down(host_id, "OVSDB connection lost")
        self._report_host_state(host_id)

    def _apply_switch_ready(self, dpid: int, installed: Slice) -> None:
        host_id = self.by_dpid.get(dpid)
        if host_id is None:
            LOG.warning("switch %016x is not a registered host's integration bridge; ignored", dpid)
            return
        rt = self.hosts[host_id]
        rt.installed = split_by_cookie(installed)
        rt.net_owners = {}
        for owner in rt.installed:
            key = self._network_of_owner(owner)
            if key is not None:
                rt.net_owners.setdefault(key, set()).add(owner)
        rt.switch_up = True
        rt.down_reported = False
        if rt.failures > MAX_RESYNCS:  # a fresh connection gets a fresh chance
            rt.failures = 0
        self._report_host_state(host_id)
        self._host_became_known(host_id)

    def _network_of_owner(self, owner: int) -> int | None:
        """The network key an installed owner is compiled with, None for the base pipeline and
        for owners the state does not know (a port or network deleted while the controller was
        down, the network cookies of the layout before owners): those are removed whole."""
        kind, num = t.owner_kind(owner), t.owner_num(owner)
        if kind == t.OwnerKind.NETWORK:
            return num if num in self.key_to_net else None
        if kind == t.OwnerKind.PORT:
            port = self.ports.get(self.num_to_port.get(num, ""))
            return self.net_to_key.get(port["network_id"]) if port is not None else None
        return None

    def _apply_switch_gone(self, dpid: int) -> None:
        host_id = self.by_dpid.get(dpid)
        if host_id is None:
            return
        rt = self.hosts[host_id]
        rt.installed = None
        rt.switch_up = False
        rt.degraded = ""  # a new connection starts afresh
        self._host_down(host_id, "OpenFlow connection lost")
        self._report_host_state(host_id)

    def _host_became_known(self, host_id: str) -> None:
        """Once a host's OVSDB and switch were both read: converge everything it touches."""
        rt = self.hosts[host_id]
        if not rt.ready:
            return
        self.metrics.reconcile.started(host_id)
        assert rt.installed is not None and rt.obs is not None
        keys = set(rt.net_owners)
        keys |= {k for k, hs in self.members.items() if host_id in hs}
        for pid in self.bindings.held_by(host_id):
            port = self.ports.get(pid)
            if port is not None and port["network_id"] in self.net_to_key:
                keys.add(self.net_to_key[port["network_id"]])
        for port in self.store.list_ports(host_id=host_id):
            if port["network_id"] in self.net_to_key:
                keys.add(self.net_to_key[port["network_id"]])
        self._dirty.update(keys)
        self._dirty_base.add(host_id)

    def _host_down(self, host_id: str, why: str) -> None:
        rt = self.hosts[host_id]
        if rt.down_reported:
            return
        rt.down_reported = True
        LOG.warning("host %s down (%s): its ports go DOWN, peers keep their flows", host_id, why)
        for pid in self.bindings.held_by(host_id):
            self._set_status(pid, "DOWN")

    def _report_host_state(self, host_id: str) -> None:
        rt = self.hosts.get(host_id)
        if rt is None:
            return
        status = "disconnected"
        if rt.ovsdb_up and rt.switch_up:
            status = "degraded" if rt.degraded else "connected"
        self.store.set_host_state(host_id, status, f"{rt.dpid:016x}")

    def _tick(self) -> None:
        if not self._grace_over and time.monotonic() - self.stats.started_at > self.startup_grace_s:
            self._grace_over = True
            for host_id, rt in self.hosts.items():
                if not rt.ready:
                    self._host_down(host_id, "not reconnected after start")
                    # Also when an earlier loss already reported it down (its held ports are
                    # the recorded holders: nothing was observed from it since the start).
                    for pid in self.bindings.held_by(host_id):
                        self._set_status(pid, "DOWN")
                    self._report_host_state(host_id)  # still "connected" from before the restart

    # ------------------------------------------------------------------ compile + send

    def _flush(self) -> None:
        """Recompile what is dirty, then send each host one diff (one bundle, one barrier)."""
        if not self._dirty and not self._dirty_base and not self._dirty_ports:
            return
        t0 = time.perf_counter()
        sent_before = self.stats.flow_mods + self.stats.group_mods
        plans: dict[str, list[FlowDiff]] = {}
        self._steps += 1
        batch = Batch(step=self._steps)
        for host_id in sorted(self._dirty_base):
            rt = self.hosts.get(host_id)
            if rt is None or not rt.ready:
                continue
            assert rt.installed is not None and rt.obs is not None
            desired = compile_base(host_context(rt.record["tunnel_ip"], rt.obs.tunnel_ofports))
            self._plan(rt, t.BASE_COOKIE, None, desired, plans)
            for owner in sorted(rt.installed):  # owners no state object claims: removed
                if owner != t.BASE_COOKIE and self._network_of_owner(owner) is None:
                    self._plan(rt, owner, None, EMPTY, plans)
        self._dirty_base.clear()
        dirty_ports, self._dirty_ports = self._dirty_ports, {}
        patched = 0
        for key, pids in dirty_ports.items():
            # One port: patch it in.  Several of one network in one step (a bulk): one whole
            # compile is cheaper, and patches of one slice in one step must not interleave.
            if key in self._dirty:
                continue
            if len(pids) == 1 and self._patch_port(key, next(iter(pids)), batch, plans):
                patched += 1
            else:
                self._dirty.add(key)
        dirty, self._dirty = sorted(self._dirty), set()
        for key in dirty:
            self._recompile(key, batch, plans)
        # Hosts a port waits for first: their barriers come back first (a switch on a busy
        # hypervisor answers in milliseconds, and the other hosts' sends would come before).
        awaited = {h for own, peers in batch.active.values() for h in (own, *peers)}
        for host_id in sorted(plans, key=lambda h: h not in awaited):
            self._send(self.hosts[host_id], merge_diffs(plans[host_id]), batch)
        self._settle(batch)
        self.metrics.reconcile.flushed(plans)
        sent = self.stats.flow_mods + self.stats.group_mods - sent_before
        ms = (time.perf_counter() - t0) * 1000
        self.stats.last_batch_ms = ms
        self.metrics.dataplane_step.observe(ms / 1000)
        if sent:
            LOG.info(
                "%d networks recompiled, %d ports patched: %d flow/group mods to %d hosts"
                " in %.1f ms",
                len(dirty), patched, sent, len(plans), ms,
            )  # fmt: skip
        self._check_reconciled()

    def _recompile(self, key: int, batch: Batch, plans: dict[str, list[FlowDiff]]) -> None:
        """The whole network on every host of it (and on hosts that still carry its flows)."""
        self.stats.networks_compiled += 1
        net_id = self.key_to_net.get(key)
        net = self.store.get_network(net_id) if net_id and net_id in self.net_to_key else None
        located: list[LocatedPort] = []
        if net is not None:
            for pid in sorted(self.net_ports.get(net["id"], ())):
                port = self.ports[pid]
                located.append(LocatedPort(port, self.bindings.holder(pid)))
        new_members = {lp.host_id for lp in located if lp.host_id is not None}
        old_members = self.members.get(key, set())
        # Peers a port of a newly joined host waits for (see batch.py); degraded ones not.
        healthy = frozenset(
            h for h in new_members if h in self.hosts and not self.hosts[h].degraded
        )
        targets = new_members | self.members.get(key, set())
        targets |= {h for h, rt in self.hosts.items() if rt.installed and key in rt.net_owners}
        nc = NetCompiled(segment_of(net)) if net is not None else None
        for lp in located:
            joined = lp.host_id is not None and lp.host_id not in old_members
            peers = healthy - {lp.host_id} if joined else frozenset()
            self._report(lp.port, lp.host_id, batch, peers)
            if nc is not None and lp.host_id is not None:
                self._track(nc, lp.port, lp.host_id)
        for host_id in sorted(targets):
            rt = self.hosts.get(host_id)
            if rt is None or not rt.ready:
                continue
            assert rt.obs is not None
            desired: dict[int, Slice] = {}
            if nc is not None and host_id in new_members:
                ctx = host_context(rt.record["tunnel_ip"], rt.obs.tunnel_ofports)
                desired = compile_network_owners(ctx, nc.view(host_id))
            for owner in sorted(desired.keys() | rt.net_owners.get(key, set())):
                self._plan(rt, owner, key, desired.get(owner, EMPTY), plans)
        self.members[key] = new_members
        if nc is None:
            self.members.pop(key, None)
            self.key_to_net.pop(key, None)
            self.compiled.pop(key, None)
            return
        self.compiled[key] = nc

    def _unsynced(self) -> set[str]:
        return {h for h, rt in self.hosts.items() if rt.obs is None}

    def _report(
        self, port: dict[str, Any], host_id: str | None, batch: Batch, peers: frozenset[str]
    ) -> None:
        """A port's status once the hosts it depends on confirmed (batch.py): ACTIVE if plugged
        and up; `peers` are the other hosts it waits for."""
        rt = self.hosts.get(host_id) if host_id else None
        if rt is not None and rt.ready and port["id"] in (rt.obs.bindings if rt.obs else {}):
            assert host_id is not None
            if port.get("admin_state_up", True):
                batch.active[port["id"]] = (host_id, peers)
            else:
                batch.down[port["id"]] = host_id
        elif host_id is None:
            batch.down[port["id"]] = None
        else:
            return
        self._decided[port["id"]] = batch.step

    def _settle(self, batch: Batch) -> None:
        """Take the statuses the batch knows now, unless a later step decided them since."""
        settled = batch.settle()
        self.metrics.ports_settled(batch.started, settled, self.ports)
        for pid, status in settled.items():
            if self._decided.get(pid) == batch.step:
                del self._decided[pid]
                if status is not None:
                    self._status_out[pid] = status

    def _set_status(self, pid: str, status: str) -> None:
        """A status known without a barrier; pending decisions of earlier steps are void."""
        self._decided.pop(pid, None)
        self._status_out[pid] = status

    def _local_port(self, port: dict[str, Any], host_id: str) -> LocalPort | None:
        """The port as its host compiles it; None while the host shows no ofport for it."""
        rt = self.hosts.get(host_id)
        ofport = rt.obs.bindings.get(port["id"]) if rt is not None and rt.obs else None
        return local_port_of(port, ofport) if ofport is not None else None

    def _track(self, nc: NetCompiled, port: dict[str, Any], host_id: str) -> None:
        rt = self.hosts.get(host_id)
        tunnel_ip = rt.record["tunnel_ip"] if rt is not None else None
        nc.track(port, host_id, self._local_port(port, host_id), tunnel_ip)

    def _patch_port(
        self, key: int, pid: str, batch: Batch, plans: dict[str, list[FlowDiff]]
    ) -> bool:
        """The per-port path (see the module docstring).  False: recompile the network."""
        nc = self.compiled.get(key)
        net_id = self.key_to_net.get(key)
        if nc is None or net_id is None or self.net_to_key.get(net_id) != key:
            return False
        port = self.ports.get(pid)
        if port is not None and port["network_id"] != net_id:
            port = None
        new_host = self.bindings.holder(pid) if port else None
        old_host = nc.where.get(pid)
        # The network's hosts must stay the same: a host joining or leaving changes the peers
        # (tunnel ingress, flood buckets) of every host of the network.
        if old_host != new_host and (
            (old_host is not None and nc.hosts[old_host] == 1)
            or (new_host is not None and nc.hosts[new_host] == 0)
        ):
            return False
        if new_host is not None and new_host not in self.hosts:
            return False
        # No other port may claim one of its MACs (old or new): the network compile resolves
        # such duplicates, fragments alone would not.
        old_macs = nc.macs.get(pid, frozenset())
        new_macs = port_macs(port) if port is not None and new_host is not None else frozenset()
        if any(nc.mac_users[m] > 1 for m in old_macs) or any(
            nc.mac_users[m] - (m in old_macs) > 0 for m in new_macs
        ):
            return False
        old_lp = nc.local.get(old_host, {}).get(pid) if old_host else None
        new_lp = self._local_port(port, new_host) if port is not None and new_host else None
        for host_id, lp in ((old_host, old_lp), (new_host, new_lp)):
            if host_id is None or lp is None or not usable(lp):
                continue
            if nc.ofport_taken(host_id, lp, pid):
                return False  # two ports on one ofport: the network compile picks one
        # A host whose last usable port goes (or whose first comes) has an empty slice instead.
        usable_after = Counter(nc.usable)
        if old_host is not None and old_lp is not None:
            usable_after[old_host] -= usable(old_lp)
        if new_host is not None and new_lp is not None:
            usable_after[new_host] += usable(new_lp)
        for host_id in {h for h in (old_host, new_host) if h is not None}:
            if (nc.usable[host_id] > 0) != (usable_after[host_id] > 0):
                return False

        num = nc.nums.get(pid) if pid in nc.nums else port["_num"] if port is not None else None
        if num is None:
            return True  # gone, and never compiled: nothing to remove
        owner = t.port_cookie(num)
        nc.untrack(pid)
        if port is not None and new_host is not None:
            self._track(nc, port, new_host)
        new_rp = nc.remote.get(pid)
        self.stats.ports_patched += 1
        tunnel_ips = {
            h: self.hosts[h].record["tunnel_ip"]
            for h, n in nc.hosts.items()
            if n > 0 and h in self.hosts
        }
        for host_id in sorted(tunnel_ips):
            rt = self.hosts[host_id]
            if not rt.ready or nc.usable[host_id] == 0:
                continue  # not synced yet (compiled whole when it is), or an empty slice
            assert rt.obs is not None and rt.installed is not None
            ctx = host_context(rt.record["tunnel_ip"], rt.obs.tunnel_ofports)
            # The port's own owner: its rules where it is, its unicast rules elsewhere.
            rules: frozenset[Rule] = frozenset()
            if host_id == new_host:
                if new_lp is not None:
                    rules = local_port_rules(nc.seg, new_lp)
            elif new_rp is not None:
                rules = remote_port_rules(ctx, nc.seg, new_rp)
            self._plan(rt, owner, key, Slice(rules=rules), plans)
            if host_id in (old_host, new_host):  # the network on the host: its flood groups
                peers = peer_list(ctx, nc.seg, [ip for h, ip in tunnel_ips.items() if h != host_id])
                local = nc.local.get(host_id, {}).values()
                net_slice = network_slice(ctx, nc.seg, local, peers)
                self._plan(rt, t.network_cookie(key), key, net_slice, plans)
        if port is not None:
            self._report(port, new_host, batch, frozenset())
        return True

    def _plan(
        self,
        rt: HostRuntime,
        owner: int,
        key: int | None,
        desired: Slice,
        plans: dict[str, list[FlowDiff]],
    ) -> None:
        """Diff one owner's slice against the switch and queue the difference; the switch is
        assumed to follow (optimistic).  ``key``: the network the owner is compiled with (None
        for the base pipeline and for owners being removed whole)."""
        assert rt.installed is not None
        installed = rt.installed.get(owner, EMPTY)
        if key is not None:
            owners = rt.net_owners.setdefault(key, set())
            if desired.rules or desired.groups:
                owners.add(owner)
            else:
                owners.discard(owner)
                if not owners:
                    del rt.net_owners[key]
        if desired == installed:
            return
        if desired.rules or desired.groups:
            rt.installed[owner] = desired
        else:
            rt.installed.pop(owner, None)
        plans.setdefault(rt.record["id"], []).append(diff(desired, installed))

    def _send(self, rt: HostRuntime, d: FlowDiff, batch: Batch) -> None:
        self._outstanding += 1
        host_id, dpid = rt.record["id"], rt.dpid
        batch.waiting.add(host_id)

        def done(ok: bool, why: str = "") -> None:
            self._inbox.put(("batch_done", (host_id, dpid, batch, ok, why)))

        if not self.switches.apply(dpid, d, done):
            done(False, "disconnected")
            return
        # Counted once the southbound took the batch (a switch that is gone was sent nothing).
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
        if not ok and rt is not None and rt.installed is not None:
            rt.failures += 1
            rt.installed = None
            if rt.failures <= MAX_RESYNCS:
                LOG.warning("host %s did not confirm its flows; re-reading its switch", host_id)
                self.switches.resync(dpid)
            else:  # a rule the switch keeps refusing: don't spin, wait for a reconnect
                LOG.error("host %s keeps rejecting flows; left alone until it reconnects", host_id)
        elif ok and rt is not None:
            rt.failures = 0
        batch.confirmed(host_id, ok)
        self._settle(batch)
        self._check_reconciled()

    def _note_health(self, rt: HostRuntime, ok: bool, why: str) -> None:
        """A switch that lets a batch time out or rejects one is degraded until it confirms one
        (a disconnect is not degradation: the host is down, see _apply_switch_gone)."""
        before = rt.degraded
        if ok:
            rt.degraded = ""
        elif why in ("timeout", "rejected") and rt.switch_up:
            rt.degraded = "rejected flows" if why == "rejected" else "confirmed nothing in time"
        if rt.degraded != before:
            host_id = rt.record["id"]
            if rt.degraded:
                LOG.warning(
                    "host %s degraded: its switch %s; ports elsewhere do not wait for it",
                    host_id,
                    rt.degraded,
                )
            else:
                LOG.info("host %s healthy again", host_id)
            self._report_host_state(host_id)

    def _write_observations(self) -> None:
        """What this step learnt about ports, in one store transaction.

        While barriers are outstanding and only bindings are pending, the write is held back
        (at most OBSERVATION_HOLD_S): a new port's binding, observed when it is created, and
        its ACTIVE status, known when its host's barrier returns, then share one commit, and
        the switches get the CPU in between.  A status is written as soon as it is known.
        """
        if not self._status_out and not self._binding_out and not self._refused_out:
            self._held_since = None
            return
        now = time.monotonic()
        if self._outstanding and not self._status_out:
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since < OBSERVATION_HOLD_S:
                return
        self._held_since = None
        statuses, self._status_out = self._status_out, {}
        bindings, self._binding_out = self._binding_out, {}
        refused, self._refused_out = self._refused_out, {}
        self.store.set_ports_observed(statuses=statuses, bindings=bindings, refused=refused)

    def _check_reconciled(self) -> None:
        if self.stats.reconciled_after_s is not None or self._outstanding or self._dirty:
            return
        if not self.hosts or not all(rt.ready for rt in self.hosts.values()):
            return
        self.stats.reconciled_after_s = round(time.monotonic() - self.stats.started_at, 3)
        LOG.info(
            "all %d hosts reconciled %.2f s after start (%d flow-mods, %d group-mods sent)",
            len(self.hosts),
            self.stats.reconciled_after_s,
            self.stats.flow_mods,
            self.stats.group_mods,
        )


def _installed_counts(installed: dict[int, Slice] | None) -> dict[str, int | None]:
    """Flows and groups of ours on a switch, from the data plane's view of it."""
    if installed is None:
        return {"flows": None, "groups": None}
    slices = list(installed.values())  # one C-level copy: the actor may change the dict
    return {
        "flows": sum(len(s.rules) for s in slices),
        "groups": sum(len(s.groups) for s in slices),
    }


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


def _remove_agent(agent: Any) -> None:
    try:
        agent.remove_config()
    except Exception:
        LOG.exception("could not remove tenantnet config from a removed host")
    finally:
        agent.stop()
