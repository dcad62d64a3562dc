"""OVSDB southbound for one hypervisor (ovsdbapp): prepare the integration bridge, watch bindings.

What the controller writes on a host, and why:

* the integration bridge (``br-int`` by default) with the host's datapath type,
  ``fail_mode=secure`` (flows stay when the controller is away: a controller restart is
  hitless), OpenFlow 1.3 only, a fixed ``datapath-id`` derived from the host id (so an OpenFlow
  connection is recognised before anything else is known), and a controller target with a short
  reconnect backoff and inactivity probe (``ssl:`` with TLS, plus the host's SSL record: its key,
  certificate and the CA).  A switch that is not connected when this controller (re)connects
  gets its target rewritten in its other spelling, which makes vswitchd reconnect at once
  (see `_controller_target`; done before the IDL is loaded, by `switch_poke`, whose read
  also reports the host's bindings before the IDL's); once a switch
  has a new OpenFlow session, vswitchd is made to apply that backoff and probe to it (see
  `_settle_controller_settings`: OVS 3.1.0-3.1.2 otherwise keep their built-in 8 s backoff on
  a new connection);
* one flow-based tunnel port per encapsulation (``tn-vxlan``, ``tn-gre``) with
  ``remote_ip=flow`` and ``key=flow``.  One port per type instead of one per remote host means a
  host joining or leaving a network changes only flows, never OVSDB; the ofport numbers stay
  stable, the port count stays O(1) however many hosts there are, and the remote is chosen per
  packet by ``set_field:IP->tun_dst``.  Ingress rules match ``tun_src`` so a host still only
  accepts a network's key from the hosts that share that network.

Everything created is marked ``external_ids:tenantnet-owned=true``; removal only touches marked
rows.  Bindings follow the Nova/OVN convention: an Interface on the integration bridge with
``external_ids:iface-id=<port id>`` binds that port here, at that interface's ofport.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import ovs.json
import tenacity
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import command as ovs_command
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from controller import tls
from controller.datapath_id import datapath_id_for
from controller.southbound import switch_poke

LOG = logging.getLogger(__name__)

OWNED = {"tenantnet-owned": "true"}
# Bridge key: which agent configured the bridge last, "<host id> <controller target>" (each
# instance has a target of its own).  `OvsdbHost.remove_config` removes nothing once another
# wrote it: a host deleted and registered again (the same OVSDB, under another id or owned by
# another instance) is not stripped by the old agent's late cleanup.
WRITER = "tenantnet-writer"
TUNNEL_PORTS = {"vxlan": "tn-vxlan", "gre": "tn-gre"}
_TUNNEL_NAMES = {name: kind for kind, name in TUNNEL_PORTS.items()}
TUNNEL_OFPORT_REQUEST = {"vxlan": 64001, "gre": 64002}
# The largest ofport an OVS interface can have (the schema's range for ``ofport_request``) and
# name in OpenFlow 1.3: OVS refuses a port 0xff00-0xfffffeff in a flow ("port ... is outside
# the supported range"), so one such flow fails the host's whole bundle.  The bridge's own
# interface shows 65534 (OpenFlow 1.0's LOCAL) in OVSDB, which is not a port to compile for.
OFPORT_MAX = 65279
# The switch's Controller row: retry every second (``max_backoff``, ms; vswitchd rounds it down
# to whole seconds, 1 s is its minimum) and probe an idle connection after 5 s (the defaults;
# settings switch_max_backoff_s and switch_inactivity_probe_s, `controller_settings`).  See
# `OvsdbHost._settle_controller_settings` for when vswitchd actually applies them.
CONTROLLER_SETTINGS = {"max_backoff": 1000, "inactivity_probe": 5000}
# Controller row key: when tenantnet last made vswitchd apply CONTROLLER_SETTINGS to a new
# OpenFlow session (see `OvsdbHost._settle_controller_settings`).
SETTINGS_APPLIED = "tenantnet-settings-applied"
# How long the controller's own OVSDB session waits at most between reconnect attempts.
# python-ovs doubles its wait up to 8 s by default, so a host whose ovsdb-server restarted
# could be re-read up to 8 s late; 1 s is python-ovs's minimum and the switch's own backoff.
OVSDB_MAX_BACKOFF_S = 1.0
# The most the poke before the IDL (`OvsdbHost._early_read`) may take.
POKE_TIMEOUT_S = 2.0
# The longest the IDL's load waits, after the early read, for the restart's reconcile (see
# `OvsdbHost._defer_idl`), and how often it looks.
IDL_DEFER_MAX_S = 1.0
IDL_DEFER_POLL_S = 0.01
# How old a new OpenFlow session must be before its settings are re-applied (see
# `OvsdbHost._settle_controller_settings`): past a controller restart's reconcile.
SETTLE_AFTER_S = 1.0


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def json_parser_is_c() -> bool:
    """Whether python-ovs parses OVSDB's JSON with its C extension (``ovs._json``).

    Without it (PyPI's ``ovs`` is pure Python) reading a host's OVSDB - schema, ``_Server``
    monitor and initial dump - costs ~4x the CPU (measured: 78 vs 21 ms per host with 25
    interfaces), which is most of the time from a controller restart to every host reconciled.
    `make`'s bootstrap links the extension Debian's python3-openvswitch ships into the venv."""
    return bool(ovs.json.PARSER == ovs.json.PARSER_C)


@dataclass
class HostObservation:
    """What one OVSDB sync says about a host."""

    bindings: dict[str, int] = field(default_factory=dict)  # iface-id -> ofport
    tunnel_ofports: dict[str, int] = field(default_factory=dict)  # "vxlan"/"gre" -> ofport


def controller_settings(max_backoff_s: int, inactivity_probe_s: int) -> dict[str, int]:
    """The Controller row's columns for these settings (OVSDB wants milliseconds)."""
    return {"max_backoff": 1000 * max_backoff_s, "inactivity_probe": 1000 * inactivity_probe_s}


def bound_reconnect_backoff(idl: Any, max_backoff_s: float) -> None:
    """Cap the IDL's reconnect backoff at ``max_backoff_s`` (python-ovs: at least 1 s).

    The IDL's jsonrpc session keeps one `ovs.reconnect.Reconnect` for its whole life (a
    reconnect reuses it), so setting it once, before the connection thread starts, holds for
    every later outage.  Its connect attempts time out after the same backoff."""
    fsm = idl._session.reconnect
    fsm.set_backoff(fsm.get_min_backoff(), max(1000, int(max_backoff_s * 1000)))


def alternate_target(target: str) -> str | None:
    """The same OVS connection target spelt the other way, or None if it has no other spelling.

    ``tcp:192.0.2.1:6653`` <-> ``tcp:[192.0.2.1]:6653`` (OVS accepts brackets around IPv4 too);
    IPv6 compressed <-> exploded.  Used to make vswitchd reconnect at once without ever leaving
    the bridge without a controller (see `OvsdbHost._controller_target`).
    """
    method, sep, rest = target.partition(":")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not port.isdigit():
        return None
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return None
    if ip.version == 4:
        other = str(ip) if host.startswith("[") else f"[{ip}]"
    else:
        other = f"[{ip.exploded if bare == ip.compressed else ip.compressed}]"
    return f"{method}:{other}:{port}"


def _classify(name: str, ofport: int | None, iface_id: str | None) -> tuple[str, str, int] | None:
    """What one interface of the bridge contributes to a `HostObservation`: a tunnel port
    ``("tunnel", kind, ofport)``, a binding ``("binding", iface-id, ofport)``, or nothing (no
    ofport yet, or neither).  An ofport outside 1..`OFPORT_MAX` (-1: vswitchd could not add
    it; 65534: the bridge's own interface; anything a faulty or hostile OVSDB reports) is no
    ofport: the port stays DOWN there instead of ACTIVE with flows the switch refuses."""
    if ofport is None or not 0 < ofport <= OFPORT_MAX:
        return None
    if name in _TUNNEL_NAMES:
        return ("tunnel", _TUNNEL_NAMES[name], ofport)
    if iface_id:
        return ("binding", iface_id, ofport)
    return None


def _observation(seen: Iterable[tuple[str, str, int] | None]) -> HostObservation:
    obs = HostObservation()
    for entry in seen:
        if entry is not None:
            kind, key, ofport = entry
            (obs.tunnel_ofports if kind == "tunnel" else obs.bindings)[key] = ofport
    return obs


def _spellings(controller_target: str) -> dict[str, str]:
    """Each spelling of our controller target -> the other one (the fast reconnect's rewrite,
    see `OvsdbHost._controller_target`); empty if it has no other spelling."""
    return {
        t: other
        for t in (controller_target, alternate_target(controller_target))
        if t is not None and (other := alternate_target(t)) is not None
    }


def _log_poked(host_id: str, written: str) -> None:
    LOG.info(
        "host %s: switch not connected; target rewritten as %s to connect now", host_id, written
    )


class EarlyReads:
    """What the start-up pokes (`poke_switches`) read of each host's bridge, each taken once by
    the host's agent (`OvsdbHost._early_read`) instead of reading it again.

    Why: the agents start with the data plane, and their own read (one OVSDB connection and
    select per host) was what every host waited for after its switch had been read back
    (that read-back now overlaps the API build too, see `TenantnetOfpApp.admit_early`).  What
    is read is as old as the API build (1-3 s): a port plugged or unplugged meanwhile is seen
    when the IDL loads, right after the restart's reconcile, as with the agent's own read.

    Single-use, for start-up only: a read is the current state for the first agent of its
    host and for no later one.  A host's read that comes after its agent asked is dropped,
    and the table is closed (`close`) once the data plane's first agents have claimed theirs:
    an agent restarted much later (host updated, or deleted and added again) reads afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, tuple[str, str, switch_poke.Poked]] = {}
        self._asked: set[str] = set()
        self._closed = False

    def put(self, host_id: str, target: str, bridge: str, poked: switch_poke.Poked) -> None:
        with self._lock:
            if not self._closed and host_id not in self._asked:
                self._reads[host_id] = (target, bridge, poked)

    def take(self, host_id: str, target: str, bridge: str) -> switch_poke.Poked | None:
        """The read of this host's ``bridge`` through ``target``, once; None if there is none
        (not read yet, read for another target or bridge, or the table is closed)."""
        with self._lock:
            if self._closed:
                return None
            self._asked.add(host_id)
            read = self._reads.pop(host_id, None)
        if read is None or read[:2] != (target, bridge):
            return None
        return read[2]

    def close(self) -> None:
        """End start-up: reads not taken are dropped, and so is every later one."""
        with self._lock:
            self._closed = True
            self._reads.clear()
            self._asked.clear()


def poke_switches(
    hosts: Iterable[dict[str, Any]],
    controller_target: str,
    switch_connected: Callable[[int], bool],
    reads: EarlyReads | None = None,
) -> list[threading.Thread]:
    """The fast reconnect's rewrite for every host at once, each on a thread of its own that
    ends with its poke (bounded by POKE_TIMEOUT_S), before the data plane and its agents exist;
    the threads (nobody needs to wait for them but tests).

    Called at start-up as soon as the OpenFlow listener is up: the switches then reconnect
    and answer FEATURES while the REST API is built (over a second of CPU), and are admitted
    and read back then (`TenantnetOfpApp.admit_early`; nothing else is sent to them before the
    data plane starts).  A switch that is connected by then (`switch_connected` counts the
    connections waiting for admission) is not poked again by its agent.  Any failure is left
    to the agent, which tries once more.  What each poke read of the bridge goes to ``reads``,
    for the host's agent."""
    ours = _spellings(controller_target)
    threads = [
        threading.Thread(
            target=_poke_one,
            args=(dict(host), ours, switch_connected, reads),
            name=f"poke-{host['id']}",
            daemon=True,
        )
        for host in (hosts if ours else ())
    ]
    for t in threads:
        t.start()
    return threads


def _poke_one(
    host: dict[str, Any],
    ours: dict[str, str],
    switch_connected: Callable[[int], bool],
    reads: EarlyReads | None,
) -> None:
    if switch_connected(datapath_id_for(host["id"])):
        if reads is None:
            return
        ours = {}  # connected already: a read alone
    bridge = host.get("integration_bridge") or "br-int"
    try:
        poked = switch_poke.read_and_poke(
            host["ovsdb"], bridge, ours, POKE_TIMEOUT_S, host_id=host["id"]
        )
    except Exception as exc:
        LOG.debug("host %s: no early reconnect of its switch: %s", host["id"], exc)
        return
    if poked.written is not None:
        _log_poked(host["id"], poked.written)
    if reads is not None:
        reads.put(host["id"], host["ovsdb"], bridge, poked)


ObservationCallback = Callable[[str, HostObservation], None]
StateCallback = Callable[[str, bool], None]


class _NotifyingIdl(connection.OvsdbIdl):
    """An IDL that wakes the host watcher whenever a row changes, and remembers what changed.

    Called from the IDL's thread with the connection lock held (the watcher reads these under
    the same lock).  A change to a Bridge or Port row can move interfaces in or out of the
    integration bridge, so it asks for a full walk; a change to an Interface row (vswitchd
    assigning an ofport, an iface-id being set) is applied to that interface alone.  After 500
    interfaces are plugged at once, vswitchd reports their ofports over the following seconds
    in many small updates: walking every port on each of them was quadratic, and profiling at
    5,000 ports showed those walks holding the interpreter most of the time.
    """

    changed: threading.Event
    walk_needed: bool = True
    dirty_ifaces: dict[Any, Any]
    synced: bool = False
    losses: int = 0
    sync_deadline_s: float = 10.0
    _unsynced_since: float | None = None
    _stall_reported: bool = False
    # the host whose server an ssl: session must reach (`_peer_is_the_host`); None: any
    expected_host: str | None = None
    _peer_checked: int = -1  # the session seqno last checked
    _peer_ok: bool = True

    def run(self) -> Any:
        """python-ovs's step, then a wake when `synced` changed: connected *and* the server's
        dump read (python-ovs's MONITORING state).  A server that dies changes no row (the IDL
        keeps them until the resync), so without this the watcher heard of the loss only at
        its next tick, up to 1 s later; and a session back is "up" only once its dump is in,
        not when its socket connects, while the rows are still the previous session's.
        ``losses`` counts the falls: the watcher, busy in a transaction while the session
        dropped and came back (this runs on the connection's thread meanwhile), still sees
        that it was lost.  Recomputed even if python-ovs's step raised."""
        try:
            return super().run()
        finally:
            connected = bool(self._session.is_connected()) and self._peer_is_the_host()
            synced = connected and self.state == self.IDL_S_MONITORING
            if synced != self.synced:
                self.losses += not synced
                self.synced = synced
                self.changed.set()
            self._check_stall(connected, synced)

    def _peer_is_the_host(self) -> bool:
        """Whether this session's server is ``expected_host`` (`tls.ovsdb_peer_mismatch`),
        checked once per session.  One that is not is never synced (the agent neither reads
        nor configures through it) and is dropped, with one error line per run of them: the
        first connection is checked by the schema fetch, this checks every reconnect."""
        if self.expected_host is None:
            return True
        seqno = self._session.get_seqno()
        if seqno != self._peer_checked:
            self._peer_checked = seqno
            rpc = self._session.rpc
            sock = getattr(getattr(rpc, "stream", None), "socket", None)
            target = self._session.get_name()
            wrong = tls.ovsdb_peer_mismatch(target, sock, self.expected_host)
            if wrong is not None and self._peer_ok:
                LOG.error("OVSDB %s: %s; not used, reconnecting", target, wrong)
            self._peer_ok = wrong is None
            if wrong is not None:
                self.force_reconnect()
        return self._peer_ok

    def _check_stall(self, connected: bool, synced: bool) -> None:
        """Reconnect a session that is connected but has not had the server's dump within
        ``sync_deadline_s``.  python-ovs waits for good when a server answers its echoes but
        refuses the monitor request with anything but "unknown method" (or never answers it):
        the host would stay down with no reason given.  The first connection is bounded by
        ovsdbapp's start timeout and retried; this bounds every later one (a server restarted
        broken, or one that lies).  One warning per stall, until a session syncs again."""
        if synced or not connected:
            self._unsynced_since = None
            if synced:
                self._stall_reported = False
            return
        now = time.monotonic()
        if self._unsynced_since is None:
            self._unsynced_since = now
        elif now - self._unsynced_since >= self.sync_deadline_s:
            log = LOG.debug if self._stall_reported else LOG.warning
            log(
                "OVSDB %s: connected %.0f s without the database's contents (state %s); "
                "reconnecting",
                self._session.get_name(),
                now - self._unsynced_since,
                self._state_name(),
            )
            self._stall_reported = True
            self._unsynced_since = None
            self.force_reconnect()

    def _state_name(self) -> str:
        names = [n for n in dir(self) if n.startswith("IDL_S_") and getattr(self, n) == self.state]
        return names[0][len("IDL_S_") :] if names else str(self.state)

    def wait(self, poller: Any) -> None:
        """python-ovs's wait, plus a wake at the sync deadline (see `_check_stall`)."""
        super().wait(poller)
        if self._unsynced_since is not None:
            left = self._unsynced_since + self.sync_deadline_s - time.monotonic()
            poller.timer_wait(max(0, int(left * 1000) + 1))

    def notify(self, event: Any, row: Any, updates: Any = None) -> None:
        table = row._table.name
        if table in ("Bridge", "Port"):
            self.walk_needed = True
        elif table == "Interface":
            self.dirty_ifaces[row.uuid] = None if event == ovs_idl.ROW_DELETE else row
        self.changed.set()


class _NotOurs(Exception):
    """The bridge is no longer the one this agent configured (`OvsdbHost.remove_config`)."""


class _IfStillOurs(ovs_command.BaseCommand):
    """First command of `OvsdbHost.remove_config`'s transactions: aborts them (`_NotOurs`)
    unless the bridge still carries the agent's `WRITER` mark (and, with ``empty``, has no
    port left but its own), and verifies what it read, so that a transaction committed by
    another agent since its read (the bridge configured again, a port plugged) makes the server
    refuse this one: ovsdbapp then runs it again on the new state, and this check aborts it."""

    def __init__(self, api: Any, bridge: str, writer: str, empty: bool = False) -> None:
        super().__init__(api)
        self.bridge, self.writer, self.empty = bridge, writer, empty

    def run_idl(self, txn: Any) -> None:
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge, None)
        if br is None or br.external_ids.get(WRITER) != self.writer:
            raise _NotOurs(self.bridge)
        br.verify("external_ids")
        if self.empty:
            if any(p.name != self.bridge for p in br.ports):  # not its own internal port
                raise _NotOurs(self.bridge)
            br.verify("ports")


# The one thread that builds every agent's IDL (see `_build_idl`); started on first use.
_IDL_BUILDER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovsdb-idl")


def _build_idl(target: str, helper: Any) -> _NotifyingIdl:
    """A new IDL for ``target``, built on one long-lived thread shared by every agent.

    Why not on the agent's own thread: python-ovs's ``Idl()`` calls ``uuid.uuid1()``, which
    CPython hands to libuuid's ``uuid_generate_time_safe``; without a ``uuidd`` daemon, libuuid
    opens ``/var/lib/libuuid/clock.txt`` once per calling *thread*, keeps it in thread-local
    state and never closes it when the thread ends.  Each agent runs on a thread of its own,
    so every agent replaced (host updated, host moved to or from another instance, deleted
    and added again) left one open file for good: measured, 200 replacements, 200 more fds,
    towards the process's limit (controller/limits.py).  Built here, all IDLs share one such
    file.  ``Idl()`` does no I/O (its session connects in ``run``): a few ms of CPU each."""
    return _IDL_BUILDER.submit(_NotifyingIdl, target, helper).result()


class OvsdbHost:
    """Keeps one hypervisor's OVSDB in the shape tenantnet needs and reports what it sees."""

    # Only what tenantnet reads or writes.  Interface statistics/status and Controller status are
    # rewritten by ovs-vswitchd every few seconds for every row: watching them would wake the
    # controller and re-walk every host's ports for nothing.  ``Controller.is_connected`` changes
    # only when a connection comes up or goes down (`_settle_peer_settings` acts on it).
    COLUMNS: dict[str, tuple[str, ...] | None] = {
        "Open_vSwitch": ("bridges", "cur_cfg", "next_cfg", "external_ids", "ssl"),
        "Bridge": (
            "name", "ports", "controller", "fail_mode", "protocols", "other_config",
            "external_ids", "datapath_type",
        ),
        "Port": ("name", "interfaces", "external_ids"),
        "Interface": ("name", "type", "options", "ofport", "ofport_request", "external_ids"),
        "Controller": (
            "target", "max_backoff", "inactivity_probe", "external_ids", "is_connected",
        ),
        "SSL": ("private_key", "certificate", "ca_cert"),
    }  # fmt: skip

    def __init__(
        self,
        host: dict[str, Any],
        controller_target: str,
        on_observation: ObservationCallback,
        on_state: StateCallback,
        timeout: float = 10.0,
        switch_connected: Callable[[int], bool] | None = None,
        switch_ssl: tuple[str, str, str] | None = None,
        switch_session: Callable[[int], int | None] | None = None,
        max_backoff_s: float = OVSDB_MAX_BACKOFF_S,
        idl_may_load: Callable[[], bool] | None = None,
        early_reads: EarlyReads | None = None,
        controller_settings: dict[str, int] | None = None,
    ) -> None:
        self.host_id: str = host["id"]
        # written into every Controller row of the bridge (see CONTROLLER_SETTINGS)
        self.controller_settings = dict(controller_settings or CONTROLLER_SETTINGS)
        self.early_reads = early_reads  # the start-up poke's read of the bridge (`_early_read`)
        self._early_poked: switch_poke.Poked | None = None  # claimed by `start`
        self.max_backoff_s = max_backoff_s
        # Whether the controller has an OpenFlow session with a datapath id (the fast
        # reconnect's test, see `_controller_target`); None: never poke the switch.
        self.switch_connected = switch_connected
        # The number of the switch's current OpenFlow session, None without one (see
        # `_settle_controller_settings`); None: never re-apply the controller settings.
        self.switch_session = switch_session
        # Whether the IDL may load now: the data plane has reconciled every host since it
        # started (see `_defer_idl`); None: the IDL loads right after the early read.
        self.idl_may_load = idl_may_load
        self._settled_session: int | None = None
        # The target the poke wrote before the IDL came up (see `_early_read`): the next
        # `_controller_target` keeps it instead of rewriting it back while the switch connects.
        self._poked_target: str | None = None
        self._session_seen: tuple[int, float] | None = None  # (session, when first seen)
        self.target: str = host["ovsdb"]
        self.bridge: str = host.get("integration_bridge") or "br-int"
        self.datapath_type: str = host.get("datapath_type") or "system"
        self.tunnel_ip: str = host["tunnel_ip"]
        self.controller_target = controller_target
        self._writer = f"{self.host_id} {controller_target}"  # the bridge's WRITER mark
        # (private key, certificate, CA) paths *on the hypervisor*, "{host}" = host id: the SSL
        # record vswitchd needs to connect to an ssl: controller.  None without TLS.
        self.switch_ssl = (
            None
            if switch_ssl is None
            else tuple(p.replace("{host}", self.host_id) for p in switch_ssl)
        )
        self._ssl_kept_logged = False
        self.on_observation = on_observation
        self.on_state = on_state
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: connection.Connection | None = None
        self.api: impl_idl.OvsdbIdl | None = None
        self.connected = False
        self._last: HostObservation | None = None
        # interface uuid -> ("tunnel", kind, ofport) | ("binding", iface-id, ofport)
        self._seen: dict[Any, tuple[str, str, int]] = {}
        self._on_bridge: set[Any] = set()  # interfaces of the integration bridge
        # Several controller instances (docs/ha.md): the others' OpenFlow targets, listed as
        # the bridge's other controllers (they hold the slave role); None: one node, ours only.
        self.peer_targets: tuple[str, ...] | None = None
        self._peers_written: tuple[str, ...] | None = None
        # the other instances' Controller rows whose current connection had the settings
        # re-applied (`_settle_peer_settings`)
        self._settled_peers: set[Any] = set()

    def set_peer_targets(self, targets: tuple[str, ...]) -> None:
        """The other instances' targets (any thread): written with the bridge's config, now
        if the host is connected."""
        self.peer_targets = tuple(targets)
        conn = self._conn
        if conn is not None and self.peer_targets != self._peers_written:
            conn.idl.changed.set()  # the loop rewrites the controllers

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.claim_early_read()
        self._thread = threading.Thread(target=self._run, name=f"ovsdb-{self.host_id}", daemon=True)
        self._thread.start()

    def claim_early_read(self) -> None:
        """Take the start-up poke's read of the bridge now, on the caller's thread: the data
        plane starts its first agents before it closes the table (service.py), and only
        those may have it (`EarlyReads`)."""
        if self.early_reads is not None:
            self._early_poked = self.early_reads.take(self.host_id, self.target, self.bridge)

    def stop(self) -> None:
        self._stop.set()
        if self._conn is not None:
            self._conn.idl.changed.set()
            self._conn.stop(timeout=2)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _connect(self) -> None:
        """Open the IDL, retrying with capped backoff until the host's OVSDB answers."""
        for attempt in tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.2, max=self.max_backoff_s),
            retry=tenacity.retry_if_exception_type(Exception),
            stop=tenacity.stop_when_event_set(self._stop),
            reraise=True,
        ):
            with attempt:
                n = attempt.retry_state.attempt_number
                if n == 2:  # one line per outage, not one per retry
                    LOG.warning(
                        "host %s: OVSDB %s unreachable, retrying", self.host_id, self.target
                    )
                    if self._last is not None:  # the early read's: lost since, as on a loss
                        self._last = None
                        self.on_state(self.host_id, False)
                # Bounded (ovsdbapp's get_schema_helper waits for good on a server that
                # accepts and never answers: the agent would be stuck and never retried).
                helper = idlutils.create_schema_helper(
                    switch_poke.fetch_schema(self.target, self.timeout, host_id=self.host_id)
                )
                for table, columns in self.COLUMNS.items():
                    helper.register_columns(table, list(columns or ()))
                idl = _build_idl(self.target, helper)  # not on this thread: see there
                idl.changed = threading.Event()
                idl.dirty_ifaces = {}
                idl.sync_deadline_s = self.timeout
                idl.expected_host = self.host_id
                bound_reconnect_backoff(idl, self.max_backoff_s)
                conn = connection.Connection(idl, timeout=self.timeout)
                try:
                    conn.start()  # bounded by the timeout (the IDL's initial dump)
                except BaseException:
                    idl.close()  # its socket, before the next attempt opens another
                    raise
                self._conn = conn
                # ovsdbapp keeps the connection on the *class*: one subclass per host keeps
                # hosts from sharing (and writing through) the first host's connection.
                api_cls = type(f"OvsdbIdl_{self.host_id}", (impl_idl.OvsdbIdl,), {})
                self.api = api_cls(conn)

    def _early_read(self) -> bool:
        """Before the IDL, on one short OVSDB connection (`switch_poke`): the fast reconnect's
        rewrite, so that a switch without an OpenFlow session with us starts reconnecting while
        the IDL is still loading, and the bridge's bindings and tunnel ofports, reported at
        once, so that the host's reconcile waits only for its switch's read-back.

        The IDL's load (schema, monitor, full dump, then ensure_config's transaction) took
        100-300 ms per host after a restart at H=3 and was the last thing every host waited
        for.  Its first observation is compared with this one (`_last`): only a difference is
        reported.  If the read cannot be done, the IDL reports as without it, and
        `ensure_config` does the rewrite.  True if the host was reported and its switch is
        connected or connecting (then the IDL can wait, `_defer_idl`)."""
        dpid = datapath_id_for(self.host_id)
        ours: dict[str, str] = {}
        if self.switch_connected is not None and not self.switch_connected(dpid):
            ours = _spellings(self.controller_target)
        poked, self._early_poked = self._early_poked, None
        if poked is not None and (poked.written is not None or not ours):
            # read at start-up, and the switch was poked then or is connected now (else it
            # is read and poked again below)
            self._poked_target = poked.written
        else:
            try:
                poked = switch_poke.read_and_poke(
                    self.target,
                    self.bridge,
                    ours,
                    min(self.timeout, POKE_TIMEOUT_S),
                    host_id=self.host_id,
                )
            except Exception as exc:  # OVSDB not reachable yet: the IDL's retries take over
                LOG.debug("host %s: no early read of its OVSDB: %s", self.host_id, exc)
                return False
            if poked.written is not None:
                self._poked_target = poked.written
                _log_poked(self.host_id, poked.written)
        if poked.interfaces is None or self._stop.is_set():
            return False
        obs = _observation(_classify(i.name, i.ofport, i.iface_id) for i in poked.interfaces)
        self._last = obs
        self.on_observation(self.host_id, obs)
        return poked.written is not None or not ours

    def _defer_idl(self) -> None:
        """Load the IDL once the data plane has reconciled every host (or after IDL_DEFER_MAX_S).

        After a restart every host's IDL load (schema, monitor, full dump, ensure_config's
        transaction: ~20-40 ms of CPU each with the C JSON parser) ran while the switches'
        read-backs and the data plane's plan ran, on the one interpreter: it delayed
        "reconciled" although the early read already told the data plane what the host's OVSDB
        says (waiting for the host's own read-back only was not enough: the first hosts' loads
        then ran during the last one's).  What waits meanwhile: a port plugged or unplugged in
        that moment is seen once the IDL is loaded (at most IDL_DEFER_MAX_S later), and
        `ensure_config` repairs the bridge's settings then."""
        if self.idl_may_load is None:
            return
        deadline = time.monotonic() + IDL_DEFER_MAX_S
        while not self.idl_may_load() and time.monotonic() < deadline:
            if self._stop.wait(IDL_DEFER_POLL_S):
                return

    def _run(self) -> None:
        if self._early_read():
            self._defer_idl()
        try:
            self._connect()
        except Exception:
            if not self._stop.is_set():
                LOG.exception("host %s: OVSDB %s unusable", self.host_id, self.target)
            return
        assert self._conn is not None
        idl = self._conn.idl
        seen_seqno = seen_losses = -1
        while not self._stop.is_set():
            idl.changed.wait(timeout=self._settle_wait())
            idl.changed.clear()
            if self._stop.is_set():
                break
            losses, up = idl.losses, idl.synced  # in this order: a loss is not counted twice
            if losses != seen_losses and self.connected:
                self._lost()  # lost and back (or going) since the last look
            seen_losses = losses
            if up != self.connected:
                self.connected = up
                if up:
                    LOG.info("host %s: OVSDB connected (%s)", self.host_id, self.target)
                    with self._conn.lock:
                        idl.walk_needed = True  # a resynced IDL: start from a full walk
                    try:
                        self.ensure_config()
                    except Exception:
                        LOG.exception("host %s: could not prepare %s", self.host_id, self.bridge)
                        self.connected = False
                        continue
                    self.on_state(self.host_id, up)
                else:
                    self._lost()
            if up and idl.change_seqno != seen_seqno:
                seen_seqno = idl.change_seqno
                obs = self._observe()
                if obs != self._last:
                    self._last = obs
                    self.on_observation(self.host_id, obs)
            if up and self.peer_targets is not None and self.peer_targets != self._peers_written:
                try:
                    self.ensure_config()
                except Exception:
                    LOG.exception("host %s: could not list the other controllers", self.host_id)
            if up:
                self._settle_controller_settings()
                self._settle_peer_settings()

    def _lost(self) -> None:
        """Report the session lost: the next session is read from a full walk."""
        LOG.warning("host %s: OVSDB connection lost", self.host_id)
        self.connected = False
        self._last = None
        self.on_state(self.host_id, False)

    # ---------------------------------------------------------------------------- writes

    def ensure_config(self) -> None:
        """Make the host ready: bridge, controller target, tunnel ports.  Idempotent.

        One transaction: ovsdbapp's Open_vSwitch transactions (reads included) bump
        ``next_cfg`` and wait until vswitchd has applied it, so each one costs a vswitchd
        reconfiguration; after a controller restart this is on the path to "reconciled".
        """
        assert self.api is not None
        api = self.api
        dpid = datapath_id_for(self.host_id)
        controller, target = self._controller_target()
        peers = self.peer_targets
        with api.transaction(check_error=True) as txn:
            self._add_ssl_record(txn)
            txn.add(api.add_br(self.bridge, may_exist=True, datapath_type=self.datapath_type))
            txn.add(
                api.db_set(
                    "Bridge",
                    self.bridge,
                    ("fail_mode", "secure"),
                    ("protocols", ["OpenFlow13"]),
                    ("other_config", {"datapath-id": f"{dpid:016x}", "disable-in-band": "true"}),
                    ("external_ids", {**OWNED, WRITER: self._writer}),
                )
            )
            for kind, name in TUNNEL_PORTS.items():
                txn.add(api.add_port(self.bridge, name, may_exist=True))
                txn.add(
                    api.db_set(
                        "Interface",
                        name,
                        ("type", kind),
                        ("ofport_request", TUNNEL_OFPORT_REQUEST[kind]),
                        (
                            "options",
                            {"remote_ip": "flow", "key": "flow", "local_ip": self.tunnel_ip},
                        ),
                        ("external_ids", OWNED),
                    )
                )
                txn.add(api.db_set("Port", name, ("external_ids", OWNED)))
            settings = {"target": target, **self.controller_settings, "external_ids": OWNED}
            if controller is not None:
                txn.add(api.db_set("Controller", controller, *settings.items()))
            if peers is not None:  # ours first, then one row per other instance
                row = controller
                if row is None:
                    row = txn.add(api.db_create("Controller", **settings))
                rows = [row, *self._peer_rows(txn, peers)]
                txn.add(api.db_set("Bridge", self.bridge, ("controller", rows)))
            elif controller is None:  # none, or not only ours: ours replaces them
                row = txn.add(api.db_create("Controller", **settings))
                txn.add(api.db_set("Bridge", self.bridge, ("controller", [row])))
        self._peers_written = peers
        LOG.info(
            "host %s: %s ready (dpid %016x, controller %s)",
            self.host_id,
            self.bridge,
            dpid,
            target,
        )

    def _peer_rows(self, txn: Any, peers: tuple[str, ...]) -> list[Any]:
        """The Controller rows of the other instances' targets: kept where the bridge has one
        (vswitchd keeps that connection), created where it has none."""
        assert self.api is not None and self._conn is not None
        with self._conn.lock:
            br = idlutils.row_by_value(self._conn.idl, "Bridge", "name", self.bridge, None)
            have = {r.target: r.uuid for r in (br.controller if br is not None else [])}
        settings = {**self.controller_settings, "external_ids": OWNED}
        create = self.api.db_create
        return [
            have[t] if t in have else txn.add(create("Controller", target=t, **settings))
            for t in peers
            if t not in (self.controller_target, alternate_target(self.controller_target))
        ]

    def _settle_controller_settings(self) -> None:
        """Once per OpenFlow session: make vswitchd apply the Controller row's ``max_backoff``
        and ``inactivity_probe`` to the connection it just opened.

        OVS 3.1.0 (Debian 12's) reads those columns into a connection only when it reconfigures
        while that connection is up: ``ofproto/connmgr.c`` creates a controller's ``rconn`` with
        ``rconn_create(5, 8, ...)`` (8 s max backoff) in ``ofservice_create``, and
        ``ofservice_reconfigure`` hands the settings to the ``ofconn``s of the service, which do
        not exist before the first connect (``ofconn_create`` sets the rate limit only).  So
        after a vswitchd (re)start, after the fast-reconnect rewrite (a new target is a new
        service) and, depending on timing, after the bridge's first connect, the switch retries
        at 1, 2, 4, 8 s ("waiting 2 seconds before reconnect" in its log) during the next outage,
        and can come back up to 8 s after it ends instead of ~1 s.  Fixed upstream in OVS
        v3.1.3 by "connmgr: Fix ofconn configuration on vswitchd startup" (aa130966d).

        A transaction that changes something makes vswitchd reconfigure (ovsdbapp bumps
        ``next_cfg`` and waits for it; python-ovs sends nothing, not even that, for a write of
        the values a row already has): this one writes the time into our Controller row's
        ``external_ids:tenantnet-settings-applied`` and re-states the two settings, so
        ``ofconn_reconfigure`` calls ``rconn_set_max_backoff`` on the live connection, which
        keeps it for the life of that target.  The session number (a new one per connection,
        `switch_session`) makes this happen once per session, including a vswitchd restart that
        reconnects within one tick of this loop; a switch that drops before vswitchd applied it
        gets it on its next session.  Cost: one vswitchd reconfiguration per OpenFlow
        connection, `SETTLE_AFTER_S` after this loop first sees it: not at once, because after
        a controller restart every host's new session is being read back and reconciled then,
        and the reconfiguration (vswitchd walks its bridges) and this transaction (the agent
        waits for vswitchd) would compete with that for vswitchd's loop and the interpreter.
        An outage in that second still meets the 8 s backoff, as before the fix.
        """
        if self.switch_session is None:
            return
        session = self.switch_session(datapath_id_for(self.host_id))
        if session is None or session == self._settled_session:
            return
        now = time.monotonic()
        if self._session_seen is None or self._session_seen[0] != session:
            self._session_seen = (session, now)
        if now - self._session_seen[1] < SETTLE_AFTER_S:
            return
        assert self.api is not None and self._conn is not None
        ours = {self.controller_target, alternate_target(self.controller_target)}
        with self._conn.lock:
            br = idlutils.row_by_value(self._conn.idl, "Bridge", "name", self.bridge, None)
            rows = [r.uuid for r in (br.controller if br is not None else []) if r.target in ours]
        if len(rows) != 1:
            return  # not (yet) ours: ensure_config writes the row with the settings
        try:
            with self.api.transaction(check_error=True) as txn:
                txn.add(
                    self.api.db_set(
                        "Controller",
                        rows[0],
                        *self.controller_settings.items(),
                        ("external_ids", {SETTINGS_APPLIED: _utc_now()}),
                    )
                )
        except Exception as exc:  # retried on the next tick
            LOG.warning(
                "host %s: could not re-apply the controller settings: %s", self.host_id, exc
            )
            return
        self._settled_session = session
        LOG.debug(
            "host %s: controller settings applied to OpenFlow session %d", self.host_id, session
        )

    def _settle_peer_settings(self) -> None:
        """The same as `_settle_controller_settings` for the other instances' rows (several
        controllers, docs/ha.md): once per connection that vswitchd reports up
        (``is_connected``), re-state their ``max_backoff`` and ``inactivity_probe``.

        Without it, a peer's connection that came up after vswitchd last reconfigured kept
        OVS 3.1.0's 8 s backoff: when that instance was killed and restarted, each bridge
        retried it at 1, 2, 4, 8 s and it waited up to 8 s to be reconnected (and to take
        over hosts as MASTER), instead of ~1 s.  One vswitchd reconfiguration per peer
        connection that comes up; a connection that goes down is settled again on its next.

        Known gap: only ``is_connected`` tells connections apart here, and vswitchd refreshes
        it every few seconds (this runs every 1 s tick), so a peer connection that drops and
        comes back between two refreshes never reads false: it is not settled again and keeps
        the 8 s backoff for its next reconnect.  The per-connection value vswitchd has
        (``status:sec_since_connect``) is in the column it rewrites every few seconds for
        every row, which `COLUMNS` leaves out on purpose; the peer's next drop that is seen
        settles it."""
        if self.peer_targets is None:
            return
        assert self.api is not None and self._conn is not None
        ours = {self.controller_target, alternate_target(self.controller_target)}
        with self._conn.lock:
            br = idlutils.row_by_value(self._conn.idl, "Bridge", "name", self.bridge, None)
            rows = [r for r in (br.controller if br is not None else []) if r.target not in ours]
            up = {r.uuid for r in rows if r.is_connected}
        self._settled_peers &= up
        due = up - self._settled_peers
        if not due:
            return
        columns = (
            *self.controller_settings.items(),
            ("external_ids", {SETTINGS_APPLIED: _utc_now()}),
        )
        try:
            with self.api.transaction(check_error=True) as txn:
                for row in due:
                    txn.add(self.api.db_set("Controller", row, *columns))
        except Exception as exc:  # retried on the next tick
            LOG.warning(
                "host %s: could not re-apply the other controllers' settings: %s",
                self.host_id,
                exc,
            )
            return
        self._settled_peers |= due

    def _settle_wait(self) -> float:
        """How long the loop may sleep: its 1 s tick, or less when a session's settings are
        due (`_settle_controller_settings`)."""
        seen = self._session_seen
        if seen is None or seen[0] == self._settled_session:
            return 1.0
        return min(1.0, max(0.05, seen[1] + SETTLE_AFTER_S - time.monotonic()))

    def _controller_target(self) -> tuple[Any, str]:
        """Our Controller row on the bridge (None if the bridge has not exactly that one) and
        the target to write into it.

        Fast reconnect: right after a controller restart every switch sits in its reconnect
        backoff, at least 1 s (``max_backoff`` cannot go lower, and ``rconn`` does not
        reconnect when it or the probe interval change).  So when this controller (re)connects
        to a host's OVSDB, the bridge already carries our target, and the switch has no
        OpenFlow session with us, the target is rewritten in its other spelling
        (`alternate_target`: ``tcp:IP:PORT`` <-> ``tcp:[IP]:PORT``).  vswitchd keys controller
        connections by target string: it drops the idle one and connects the new one at once,
        to the same address.  The bridge has a primary controller before and after, so it keeps
        its flows; removing the controller first (or re-creating the row in two transactions)
        would not: vswitchd flushes the flow table whenever a bridge goes from no primary
        controller to one, which would cost the hitless restart.

        Why not let the controller connect to switches that listen (``ptcp:``/``pssl:`` on the
        switch)?  OVS treats those as *service* connections (no asynchronous messages by
        default, not counted for ``fail_mode``, no inactivity probe), and without TLS a
        listening switch lets anyone on the management network program it.  Poking over
        OVSDB keeps the switch the one that connects, to the one address tenantnet wrote.

        The agent first tries this rewrite on its own short OVSDB connection, before its IDL
        is loaded (`_early_read`, `switch_poke`): the switch then reconnects meanwhile, and the
        target the poke wrote is kept here (it is the one the switch is connecting through).

        Whether the switch is connected is the controller's own knowledge (its OpenFlow
        sessions, `switch_connected`): vswitchd refreshes ``Controller.is_connected`` only
        every few seconds, so right after a restart OVSDB still says "connected".  A switch
        with a session is never disturbed; one whose connection comes up in the milliseconds
        between that check and vswitchd applying the rewrite reconnects once more (an extra
        handshake and flow read; flows untouched).
        """
        assert self._conn is not None
        ours = {self.controller_target, alternate_target(self.controller_target)}
        with self._conn.lock:
            br = idlutils.row_by_value(self._conn.idl, "Bridge", "name", self.bridge, None)
            rows = list(br.controller) if br is not None else []
            if self.peer_targets is not None:  # several controllers: ours among them
                rows = [r for r in rows if r.target in ours]
            if len(rows) != 1 or rows[0].target not in ours:
                return None, self.controller_target
            row, current = rows[0].uuid, rows[0].target
        poked, self._poked_target = self._poked_target, None
        if current == poked:
            return row, current  # rewritten by the poke: the switch is connecting through it
        other = alternate_target(current)
        if (
            other is None
            or self.switch_connected is None
            or self.switch_connected(datapath_id_for(self.host_id))
        ):
            return row, current
        _log_poked(self.host_id, other)
        return row, other

    def _add_ssl_record(self, txn: Any) -> None:
        """With TLS, vswitchd needs an SSL record (its key, certificate and the controller CA)
        before it can reach an ``ssl:`` controller: added to ``txn`` (ensure_config's one
        transaction) when the host has none.  An SSL record the operator set (``ovs-vsctl
        set-ssl``; an ovsdb-server listening on ``pssl:`` reads it too) is kept as it is."""
        if self.switch_ssl is None:
            return
        assert self.api is not None and self._conn is not None
        with self._conn.lock:
            ovs_row = next(iter(self._conn.idl.tables["Open_vSwitch"].rows.values()), None)
            existing = ovs_row.ssl[0] if ovs_row is not None and ovs_row.ssl else None
            have = (
                None
                if existing is None
                else (existing.private_key, existing.certificate, existing.ca_cert)
            )
        if have is None:
            key, cert, ca = self.switch_ssl
            ssl_row = txn.add(
                self.api.db_create("SSL", private_key=key, certificate=cert, ca_cert=ca)
            )
            txn.add(self.api.db_set("Open_vSwitch", ".", ("ssl", ssl_row)))
            LOG.info(
                "host %s: SSL record set (key %s, certificate %s, CA %s)",
                self.host_id,
                key,
                cert,
                ca,
            )
        elif have != self.switch_ssl and not self._ssl_kept_logged:
            self._ssl_kept_logged = True
            LOG.info(
                "host %s: keeps its own SSL record (key %s, certificate %s, CA %s)",
                self.host_id,
                *have,
            )

    def remove_config(self) -> None:
        """Undo `ensure_config`: tunnel ports and controllers go; the bridge stays if it carries
        anything tenantnet did not create (VM interfaces belong to the hypervisor).

        Only while the bridge is still this agent's (its `WRITER` mark, checked and verified in
        the same transactions, `_IfStillOurs`): the host may have been registered again
        meanwhile, under another id or owned by another instance, whose agent has configured
        it already.  That agent writes its config only when it connects, so removing it would
        leave the switch without a controller and tunnels until its OVSDB session is lost."""
        if self.api is None or not self.connected:
            return
        api = self.api
        try:
            with api.transaction(check_error=True, log_errors=False) as txn:
                txn.add(_IfStillOurs(api, self.bridge, self._writer))
                for name in TUNNEL_PORTS.values():
                    txn.add(api.del_port(name, bridge=self.bridge, if_exists=True))
                txn.add(api.del_controller(self.bridge))
            remaining = [p for p in api.list_ports(self.bridge).execute(check_error=True) or []]
            if not remaining:
                with api.transaction(check_error=True, log_errors=False) as txn:
                    txn.add(_IfStillOurs(api, self.bridge, self._writer, empty=True))
                    txn.add(api.del_br(self.bridge, if_exists=True))
        except _NotOurs:
            LOG.info(
                "host %s: %s was configured again since; left as it is", self.host_id, self.bridge
            )
            return
        LOG.info("host %s: removed tenantnet config from %s", self.host_id, self.bridge)

    # ---------------------------------------------------------------------------- reads

    def _observe(self) -> HostObservation:
        """Bindings and tunnel ofports on the integration bridge, read from the IDL cache:
        a full walk after the bridge's ports changed, else only the interfaces that did."""
        assert self._conn is not None
        with self._conn.lock:
            idl = self._conn.idl
            if idl.walk_needed:
                idl.walk_needed = False
                idl.dirty_ifaces.clear()
                self._walk(idl)
            else:
                dirty, idl.dirty_ifaces = idl.dirty_ifaces, {}
                for uuid, row in dirty.items():
                    if uuid in self._on_bridge:
                        self._iface_seen(uuid, row)
        return _observation(self._seen.values())

    def _walk(self, idl: Any) -> None:
        self._seen = {}
        self._on_bridge = set()
        br = idlutils.row_by_value(idl, "Bridge", "name", self.bridge, None)
        if br is None:
            return
        for port in br.ports:
            for iface in port.interfaces:
                self._on_bridge.add(iface.uuid)
                self._iface_seen(iface.uuid, iface)

    def _iface_seen(self, uuid: Any, iface: Any) -> None:
        """What one interface of the bridge contributes: a tunnel port, a binding, or nothing."""
        self._seen.pop(uuid, None)
        if iface is None:
            return
        seen = _classify(
            iface.name,
            iface.ofport[0] if iface.ofport else None,
            iface.external_ids.get("iface-id"),
        )
        if seen is not None:
            self._seen[uuid] = seen
