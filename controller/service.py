"""One controller process: store, data plane, os-ken OpenFlow app and the REST API, wired once.

Wiring order follows the one-way data path: the store publishes to the event bus, the data plane
subscribes, the OpenFlow app reports switches to the data plane, and the API only ever talks to
the store.  Stopping (SIGTERM) leaves every flow on the switches: they run ``fail_mode=secure``,
so a restart is hitless.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from controller import gc_tuning, limits, tls
from controller.config import Settings, parse_hostport
from controller.dataplane.admission import Admission
from controller.events import EventBus
from controller.metrics import Metrics
from flows.tables import OwnerKind, owner_kind

LOG = logging.getLogger(__name__)

OFP_APP = "controller.southbound.ofp_app"


def _start_os_ken(settings: Settings, fd_budget: int) -> tuple[Any, Any]:
    """Load the OpenFlow app through os-ken's AppManager, listening where the settings say,
    with the connection handling of southbound/ofp_server (liveness, caps, no leaked threads)."""
    from os_ken import cfg
    from os_ken.base import app_manager

    from controller.southbound import (
        ofp_server,
        osken_addrconv,
        osken_flowstats,
        osken_guard,
        osken_packetin,
    )

    host, port = parse_hostport(settings.ofp_listen, "ofp_listen")
    conf = cfg.CONF
    if not getattr(_start_os_ken, "_parsed", False):
        conf(args=[], project="os_ken")
        _start_os_ken._parsed = True  # type: ignore[attr-defined]
    conf.set_override("ofp_listen_host", host)
    conf.set_override("ofp_tcp_listen_port", port)
    if settings.ofp_tls:
        # os-ken's listener: TLS on the "ssl" port with these files; with ca_certs it requires
        # and verifies a client certificate (mutual TLS), whose CN admission then checks.
        conf.set_override("ofp_ssl_listen_port", port)
        conf.set_override("ctl_privkey", settings.ofp_tls_key)
        conf.set_override("ctl_cert", settings.ofp_tls_cert)
        conf.set_override("ca_certs", settings.ofp_tls_ca)
    ofp_server.install(
        ofp_server.ConnectionLimits(
            echo_interval_s=settings.ofp_echo_interval_s,
            dead_after_s=settings.ofp_dead_after_s,
            handshake_timeout_s=settings.ofp_handshake_timeout_s,
            max_connections=settings.ofp_max_connections,
            max_per_source=settings.ofp_max_connections_per_source,
        ),
        fd_budget=fd_budget,
    )
    osken_addrconv.install()
    osken_flowstats.install()
    osken_packetin.install()
    osken_guard.install()
    manager = app_manager.AppManager.get_instance()
    manager.load_apps([OFP_APP])
    contexts = manager.create_contexts()
    manager.instantiate_apps(**contexts)
    app = next(a for a in manager.applications.values() if type(a).__name__ == "TenantnetOfpApp")
    return manager, app


def _southbound_security(s: Settings) -> None:
    """TLS for OVSDB ``ssl:`` targets, or the loud warning of development mode; and a warning
    when python-ovs has no C JSON parser (a slower restart, README 'Performance')."""
    from controller.southbound.ovsdb_host import json_parser_is_c

    if not json_parser_is_c():
        LOG.warning(
            "python-ovs parses OVSDB JSON in pure Python (no ovs._json C extension): reading "
            "each host's OVSDB costs ~4x the CPU and restarts reconcile later (README, "
            "'Performance': how to use python3-openvswitch's parser)"
        )
    if s.ofp_tls:
        tls.configure_ovsdb_client(*s.ovsdb_tls_files)
        return
    LOG.warning(
        "DEVELOPMENT MODE: OpenFlow and OVSDB without TLS (no ofp_tls_key/cert/ca). Switches "
        "are told apart only by their source address and flows travel in clear text; anyone "
        "on the management network can read them. Configure TLS (README, 'TLS') in production."
    )


def _member_id(s: Settings) -> str:
    """This instance's id among the controllers on one etcd cluster (default: host name and
    API address)."""
    return (s.etcd_member_id or f"{socket.gethostname()}-{s.api_listen}").replace("/", "_")


def _own_addresses(s: Settings) -> set[str]:
    """Where a switch on this machine (a ``unix:`` OVSDB host) connects from."""
    hosts = {parse_hostport(s.ofp_listen, "ofp_listen")[0]}
    if s.advertise.startswith(("tcp:", "ssl:")):
        hosts.add(s.advertise[4:].rpartition(":")[0].strip("[]"))  # [IPv6]:PORT
    return {h for h in hosts if h not in ("0.0.0.0", "::", "")}


def _switch_ssl(s: Settings) -> tuple[str, str, str] | None:
    """The SSL record written on hosts (paths on the hypervisor), only when TLS is on."""
    if not s.ofp_tls:
        return None
    return (s.switch_ssl_key, s.switch_ssl_cert, s.switch_ssl_ca)


def _api_tls(s: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: HTTPS with the API's key and certificate; with a CA, clients
    must present a certificate it signed."""
    if not s.api_tls:
        return {}
    opts: dict[str, Any] = {"ssl_keyfile": s.api_tls_key, "ssl_certfile": s.api_tls_cert}
    if s.api_tls_ca:
        import ssl

        opts |= {"ssl_ca_certs": s.api_tls_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return opts


def _build_routes(routes: list[Any]) -> int:
    """Build every included router's routes now; returns how many routers were built.

    FastAPI (0.16x) builds the routes of an included router (dependencies, pydantic models) at
    the first request that is matched against it: ~0.2 s of CPU for our ten routers.  The first
    request after a restart (an orchestrator's, or anyone polling ``/tenantnet/status``, which
    is matched after all of them) would do it while the hosts reconnect, holding the interpreter
    the OVSDB and OpenFlow threads need; at start-up it costs the same and delays nothing.  A
    FastAPI without these lazily built routers has nothing to build (0)."""
    built = 0
    for route in routes:
        build = getattr(route, "effective_candidates", None)
        if build is None:
            continue
        built += 1 + _build_routes(build())
        low = getattr(route, "effective_low_priority_routes", None)
        if low is not None:
            low()
    return built


class Controller:
    """The whole controller in one object, so tests, the demo and the CLI start it the same way."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = EventBus()
        # One registry per controller (several run in one test process); see metrics.py.
        self.metrics = Metrics(process=True)
        self.metrics.add_status(self.status)
        self.store: Any = None
        self.dataplane: Any = None
        self.ofp_app: Any = None
        self.dhcp: Any = None  # controller.dataplane.dhcp.DhcpPunt, once started
        self.members: Any = None  # controller.store.etcd_members.EtcdMembership, on etcd
        self.ttl: Any = None  # controller.dataplane.ttl.TtlExpired, once started
        self.vips: Any = None  # controller.dataplane.vips.VipLearner, once started
        self.api: Any = None
        self._manager: Any = None
        self._server: Any = None
        self._api_thread: threading.Thread | None = None
        self._startup_cpu_s: float | None = None

    def start(self) -> None:
        from controller.api import server
        from controller.api.app import ApiSettings, create_app
        from controller.api.drift import add_drift_route
        from controller.dataplane.dhcp import DhcpPunt
        from controller.dataplane.punt_source import PortPunts
        from controller.dataplane.reconciler import DataPlane
        from controller.dataplane.ttl import TtlExpired  # imported before the data plane starts
        from controller.dataplane.vips import VipLearner
        from controller.services.dhcp import DhcpResponder
        from controller.services.dhcp_guard import FloodGuard
        from controller.southbound.ovsdb_host import (
            EarlyReads,
            OvsdbHost,
            controller_settings,
            datapath_id_for,
            poke_switches,
        )
        from controller.store import Store

        s = self.settings
        t0 = time.monotonic()
        # Bound first: a taken port fails the start before anything else runs.
        api_socket = server.bind(*parse_hostport(s.api_listen, "api_listen"))
        # Also bound now, before anything starts: os-ken would listen on a thread of its own,
        # where a taken port is only logged (`ofp_server.bind`).
        from controller.southbound import ofp_server

        ofp_server.bind(*parse_hostport(s.ofp_listen, "ofp_listen"))
        fd_budget = limits.listener_budget(limits.raise_fd_limit())
        Path(s.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        options: dict[str, Any] = {
            "underlay_mtu": s.underlay_mtu,
            "quota_defaults": s.quota_defaults,
            "metrics": self.metrics,
        }
        if s.etcd is None:
            self.store = Store(s.database, self.bus, **options)
        else:  # several instances on one etcd cluster (docs/ha.md)
            from controller.store.replicated import EtcdStore

            self.store = EtcdStore(s.database, self.bus, s.etcd, member_id=_member_id(s), **options)
        # with TLS to the hypervisors, a host's OVSDB target is ssl: (never plain tcp:)
        self.store.ovsdb_scheme = "ssl" if s.ofp_tls else "tcp"
        _southbound_security(s)
        # The OpenFlow listener first, then every switch is told to reconnect now (the poke,
        # southbound/ovsdb_host.poke_switches): its TCP and TLS handshake, HELLO and FEATURES
        # happen while the API is built below, instead of after the data plane started (the
        # switch's reaction to the poke was 50-400 ms of a restart on a loaded machine).  They
        # are admitted against the store's hosts at once and their flows read back meanwhile
        # too; nothing is sent to them until the data plane is attached.
        # With several instances (etcd) only a host's owner's agent pokes it, as before: a
        # switch may have a live session with another instance that this one cannot see.
        self._manager, self.ofp_app = _start_os_ken(s, fd_budget)
        self.ofp_app.barrier_timeout_s = s.ofp_barrier_timeout_s
        self.ofp_app.metrics = self.metrics
        admission = Admission(tls=s.ofp_tls, local_addresses=_own_addresses(s))
        early_reads = EarlyReads()  # what the pokes read of the bridges, for the agents
        if s.etcd is None:
            # Admitted from the store's hosts and read back now, while the API is built (see
            # TenantnetOfpApp.admit_early); the data plane keeps this table current after.
            hosts = self.store.list_hosts()
            for host in hosts:
                admission.set_host(datapath_id_for(host["id"]), host)
            self.ofp_app.admit_early(admission.check)
            poke_switches(hosts, s.controller_target, self.ofp_app.has_session, early_reads)
        # The API is built and serving before the data plane starts: FastAPI/pydantic models
        # and uvicorn's start are the costliest part of start-up, and done later they would
        # hold the interpreter while the hosts are read back (measured at H=3: hosts reconciled
        # ~0.6-1.0 s after the data plane started instead of ~0.1-0.2 s).  Until the data
        # plane runs, its status says nothing is reconciled yet; the store is already there.
        self.api = create_app(
            self.store,
            ApiSettings(
                auth_token=s.auth_token or None,
                basic_user=s.basic_user or None,
                basic_password=s.basic_password or None,
                max_body_bytes=s.max_body_bytes,
                underlay_mtu=s.underlay_mtu,
                ovsdb_scheme="ssl" if s.ofp_tls else "tcp",
                public_url=s.public_url,
                metrics_auth=s.metrics_auth,
            ),
            metrics=self.metrics,
            status=self.status,
        )
        self.api.add_api_route(
            "/tenantnet/status",
            self.status,
            methods=["GET"],
            tags=["tenantnet"],
            summary="Data-plane status: hosts, flow-mods sent, time to reconcile",
        )
        self._add_wait_route()
        add_drift_route(self.api, lambda: self.dataplane)
        self._add_trace_route()
        _build_routes(self.api.router.routes)
        self._server = server.make_server(
            self.api,
            max_connections=min(s.api_max_connections, fd_budget),
            header_timeout=s.api_header_timeout_s,
            keepalive=s.api_keepalive_s,
            **_api_tls(s),
        )
        self._api_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [api_socket]}, name="api", daemon=True
        )
        self._api_thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            if not self._api_thread.is_alive():
                raise RuntimeError(f"REST API on {s.api_listen} stopped during start-up")
            time.sleep(0.02)
        # The full collection before the freeze takes ~0.1-0.3 s: done while hosts reconnect,
        # it would stall them.
        frozen = gc_tuning.freeze_startup_objects()
        gc_tuning.watch_slow_collections()
        LOG.debug("%d start-up objects exempted from garbage collection", frozen)
        self._startup_cpu_s = time.process_time()
        if s.etcd is not None:
            # Joined only now, when this instance can act on its hosts at once: the members
            # that held them let go as soon as they see it (docs/ha.md, handover).
            self._join_members(s, s.etcd)
        self.dataplane = DataPlane(
            self.store,
            self.ofp_app,
            s.controller_target,
            agent_factory=functools.partial(
                OvsdbHost,
                switch_connected=self.ofp_app.has_session,
                switch_session=self.ofp_app.session_of,
                idl_may_load=self._reconciled_once,
                early_reads=early_reads,
            ),
            startup_grace_s=s.startup_grace_s,
            admission=admission,
            agent_options={
                "switch_ssl": _switch_ssl(s),
                "max_backoff_s": s.ovsdb_max_backoff_s,
                "controller_settings": controller_settings(
                    s.switch_max_backoff_s, s.switch_inactivity_probe_s
                ),
            },
            metrics=self.metrics,
            audit_interval_s=s.drift_audit_interval_s,
            audit_read_timeout_s=s.ofp_barrier_timeout_s,
            membership=None if self.members is None else self.members.current,
            # a host gained from a live member: after that member's next read of the members
            handover_delay_s=s.etcd_member_ttl_s / 3 + 0.5,
        )
        self.bus.subscribe(self.dataplane.on_events)
        self.dataplane.mirror.dhcp_server_mac = s.dhcp.server_mac  # its ARP answers
        # Native DHCP (issue 15): the ports' punt rules send DHCP here, answered off the actor.
        dp = self.dataplane
        # Packet-ins of the ports' own rules speak for the port the switch names (punt_source).
        punts = PortPunts(dp.mirror, dp.bindings, dp.hosts, dp.by_dpid)
        self.dhcp = DhcpPunt(
            punts,
            DhcpResponder(s.dhcp),
            FloodGuard(s.dhcp_guard),
            self.ofp_app.add_transient_flow,
        )
        # Routers (issue 16): a routed packet whose TTL ran out, answered ICMP time exceeded.
        self.ttl = TtlExpired(dp.mirror, dp.bindings, dp.hosts, dp.by_dpid)
        # Virtual IPs (address pairs): the ARP a port announces one with says it holds it now.
        self.vips = VipLearner(punts, dp.post, FloodGuard(), self.ofp_app.add_transient_flow)
        self.ofp_app.packet_in_meter = (s.packet_in_rate_pps, s.packet_in_burst)
        self.ofp_app.on_packet_in(self._packet_in, after_replies=self.dhcp.after_replies)
        # Hosts first, then the OpenFlow app: connections that came meanwhile are admitted
        # against the host table.
        self.dataplane.start()
        early_reads.close()  # the first agents have claimed theirs (OvsdbHost.start)
        if self.members is not None:  # hosts move with the members (docs/ha.md)
            self.members.on_change = self.dataplane.on_membership
            dataplane = self.dataplane
            self.ofp_app.on_role_refused = lambda dpid, gen: dataplane.post(
                "role_refused", (dpid, gen)
            )
            self.ofp_app.owns = lambda dpid: dataplane.owns(dataplane.by_dpid.get(dpid))
            self.dataplane.on_membership(self.members.view)  # a change before the line above
        self.ofp_app.attach(self.dataplane)

        LOG.info(
            "tenantnet up in %.2f s: API %s://%s (auth: %s), OpenFlow %s (hosts connect to "
            "%s), store %s, pid %d",
            time.monotonic() - t0,
            "https" if s.api_tls else "http",
            s.api_listen,
            s.auth_mode,
            s.ofp_listen,
            s.controller_target,
            s.database if s.etcd is None else f"{s.store} (replica {s.database})",
            os.getpid(),
        )

    def _reconciled_once(self) -> bool:
        """Whether the data plane has reconciled every host since it started (the agents load
        their IDLs after that, see OvsdbHost._defer_idl)."""
        return self.dataplane is not None and self.dataplane.stats.reconciled_after_s is not None

    def _packet_in(self, pkt: Any) -> bytes | None:
        """Packet-ins to the handler of the owner whose flow sent them: a router interface's
        (TTL expired) or a port's (an ARP announcing a virtual IP, else DHCP)."""
        if owner_kind(pkt.cookie) == OwnerKind.ROUTER:
            return self.ttl.handle(pkt)
        if self.vips.handle(pkt):
            return None
        return self.dhcp.handle(pkt)

    def _add_wait_route(self) -> None:
        from controller.port_wait import PortWaiter, add_wait_route

        waiter = PortWaiter(
            self.store,
            self.bus,
            max_waits=self.settings.wait_max_concurrent,
            max_ports=self.settings.wait_max_ports,
        )
        add_wait_route(self.api, waiter)

    def _add_trace_route(self) -> None:
        from controller.api.trace import add_trace_route
        from controller.tracer import Tracer

        # installed mode reads the switches as the drift audit does (read_all: every cookie)
        read = lambda: self.ofp_app.read_all if self.ofp_app is not None else None  # noqa: E731
        add_trace_route(self.api, Tracer(self.store, lambda: self.dataplane, read))

    def status(self) -> dict[str, Any]:
        st = self.dataplane.status() if self.dataplane else {}
        # The process's CPU seconds so far and until the data plane started: what a restart
        # costs after start-up (the bench's restart probe reads both when hosts are reconciled).
        st["cpu_s"] = round(time.process_time(), 3)
        st["startup_cpu_s"] = (
            None if self._startup_cpu_s is None else round(self._startup_cpu_s, 3)
        )
        if self.ofp_app is not None:
            from controller.southbound.ofp_server import TenantnetOpenFlowController

            st["openflow"] = {
                **vars(self.ofp_app.counters),
                "error_types": dict(self.ofp_app.counters.error_types),
                "connections": TenantnetOpenFlowController.stats.as_dict(),
            }
            if self.ofp_app.packet_ins is not None:
                st["packet_in"] = vars(self.ofp_app.packet_ins.counters).copy()
        if self.dhcp is not None:
            st["dhcp"] = self.dhcp.status()
        lost_for = getattr(self.store, "quorum_lost_for", None)  # on etcd (health.py's rule)
        if lost_for is not None:
            st["store_quorum"] = lost_for() is None
        if self.vips is not None:
            st["vips"] = self.vips.status()
        if self.members is not None:  # who owns each host (this instance acts on its own)
            st["cluster"] = self.members.current().status(
                h["id"] for h in self.store.list_hosts()
            )
        return st

    def _join_members(self, s: Settings, etcd: Any) -> None:
        """Membership on the store's etcd cluster (docs/ha.md): which hosts this instance owns."""
        from controller.store.etcd_members import EtcdMembership

        self.members = EtcdMembership(
            etcd,
            _member_id(s),
            s.etcd_member_ttl_s,
            ofp_target=s.controller_target,
        )
        log = getattr(self.store, "log", None)  # the EtcdStore's: its calls follow the rank too
        if log is not None:
            # before the start: its first view then spreads both logs, and no older view read
            # here can be applied after a newer one the membership thread spread
            self.members.spread_over(log)
        self.members.start()
        if hasattr(self.store, "fence"):  # observations only while a live member (replicated.py)
            self.store.lease_key = self.members.lease_key
            self.store.fence = self.members.fence
            # /readyz and tenantnet_store_quorum judge etcd by the lease renewals
            self.store.quorum_signal = self.members.quorum_lost_for
            # a replica that can no longer follow the log owns no host (others take them)
            self.store.on_halt = self._leave_members

    def _leave_members(self, why: str) -> None:
        """The store's replica stopped following the etcd log: leave the membership, so the
        other instances own this one's hosts and change them; this one answers /readyz 503."""
        if self.members is not None:
            LOG.error("leaving the controllers' cluster: %s", why)
            self.members.stop()

    def stop(self) -> None:
        LOG.info("tenantnet stopping (flows stay on the switches)")
        if self._server is not None:
            self._server.should_exit = True
        if self._api_thread is not None:
            self._api_thread.join(timeout=5)
        if self.dataplane is not None:
            self.dataplane.stop()
        if self.members is not None:
            self.members.stop()
        # os-ken's AppManager.close() joins its native hub threads, which can block for good on
        # a listening socket; the process is about to exit, which ends them.
