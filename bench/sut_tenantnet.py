"""tenantnet as the system under test: a Lab of emulated hypervisors + `tenantnet serve`."""

from __future__ import annotations

import contextlib
import http.client
import json
import tempfile
import time
import urllib.request
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import TN_LAB, ConfirmTimeout, cpu_seconds, gateway_ip, log, rss_kb
from controller.services.dhcp_records import DEFAULT_SERVER_MAC
from lab.hypervisors import Lab
from lab.tenantnet_proc import TenantnetProcess

# What `rule_phases` reads from the controller's /metrics: (metric, labels that must match).
_PHASES = {
    "api": ("tenantnet_api_request_seconds",
            {"method": "POST", "route": "/v2.0/security-group-rules"}),
    "commit": ("tenantnet_store_commit_seconds", {"kind": "durable"}),
    "step": ("tenantnet_dataplane_step_seconds", {}),
    "barrier": ("tenantnet_openflow_barrier_rtt_seconds", {}),
}

INTERFACE_ROUTE = "/v2.0/routers/{obj_id}/add_router_interface"


def phase_totals(metrics_text: str, api_route: str | None = None
                 ) -> dict[str, tuple[float, float]]:
    """``{phase: (count, seconds)}`` of the `_PHASES` histograms in a /metrics exposition
    (``api_route``: the PUT of that route instead of the rule POST)."""
    phases = dict(_PHASES)
    if api_route:
        phases["api"] = (_PHASES["api"][0], {"method": "PUT", "route": api_route})
    out = dict.fromkeys(phases, (0.0, 0.0))
    for family in text_string_to_metric_families(metrics_text):
        for phase, (name, labels) in phases.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if not all(sample.labels.get(k) == v for k, v in labels.items()):
                    continue
                n, total = out[phase]
                if sample.name == f"{name}_count":
                    out[phase] = (n + sample.value, total)
                elif sample.name == f"{name}_sum":
                    out[phase] = (n, total + sample.value)
    return out


_NS = uuid.UUID("6d1e6c2a-57a4-4c39-9d43-1c0b5e7a1b00")


class _KeepAlive:
    """One persistent HTTP/1.1 connection for tight polling (urllib opens one per request)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            try:
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def log_size(ctl: TenantnetProcess) -> int:
    try:
        return ctl.log_path.stat().st_size
    except OSError:
        return 0


def log_says_reconciled(ctl: TenantnetProcess, log_offset: int) -> bool:
    """Whether the controller logged, after ``log_offset``, that every host is reconciled."""
    with contextlib.suppress(OSError), open(ctl.log_path, "rb") as f:
        f.seek(log_offset)
        return b"hosts reconciled" in f.read()
    return False


def wait_reconciled_quietly(ctl: TenantnetProcess, log_offset: int,
                            timeout: float) -> dict[str, Any]:
    """Wait until the controller reports every host reconciled; its status.

    ``reconciled_after_s`` is measured inside the controller, so the wait must not load it:
    a status request costs it ~2.6 ms of CPU, and polling every 50 ms during a restart took
    CPU from the threads being measured.  The status is read when the log (from
    ``log_offset``) says the hosts are reconciled, and once a second regardless (should that
    line change)."""
    deadline = time.monotonic() + timeout
    next_poll = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if log_says_reconciled(ctl, log_offset) or time.monotonic() >= next_poll:
            st = ctl.api.status()
            if st.get("reconciled_after_s") is not None:
                return st
            next_poll = time.monotonic() + 1.0
        time.sleep(0.01)
    raise TimeoutError(f"controller did not report all hosts reconciled in {timeout} s")


class TenantnetSystem:
    name = "tenantnet"
    flow_mods_source = "/tenantnet/status flow_mods + group_mods"

    def __init__(self, n_hosts: int, bulk_chunk: int = 1000,
                 lab_kwargs: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.n_hosts = n_hosts
        self.extra_args = extra_args
        self.bulk_chunk = bulk_chunk
        self.lab = Lab(n_hosts, **(lab_kwargs or TN_LAB))
        self.ctl: TenantnetProcess | None = None
        self.http: _KeepAlive | None = None
        self.nets: dict[int, dict[str, Any]] = {}
        self.last_api_s: float | None = None  # bulk: time until the POSTs returned
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        t0 = time.monotonic()
        self.lab.start()
        self._tmp = tempfile.TemporaryDirectory(prefix="tnbench-")
        self.ctl = TenantnetProcess(self._tmp.name, ofp_listen=f"{self.lab.mgmt_ip}:6653",
                                    extra_args=self.extra_args)
        self.ctl.start()
        self.http = _KeepAlive(self.ctl.api_port)
        self._register_hosts()
        log(f"tenantnet: {self.n_hosts} hosts up in {time.monotonic() - t0:.1f} s")

    def _register_hosts(self) -> None:
        """Every hypervisor as a host (through ``self.ctl``), connected, and no port quota."""
        assert self.ctl is not None
        api = self.ctl.api
        for hv in self.lab.hvs:
            api.create("host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_tcp,
                       datapath_type="netdev")
        api.wait_hosts_connected([hv.name for hv in self.lab.hvs], timeout=60)
        # The full bench puts up to 5,000 ports in one project, past Neutron's default quota.
        unlimited = {"network": -1, "subnet": -1, "port": -1}
        api.request("PUT", "/v2.0/quotas/bench", {"quota": unlimited}, expect=200)
        for hv in self.lab.hvs:
            hv.wait_bridge("br-int", timeout=30)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        try:
            if self.ctl is not None:
                # SIGTERM, then SIGKILL after 2 s (early versions hung on SIGTERM; see README)
                self.ctl.stop(timeout=2)
        finally:
            self.lab.close()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def log_tail(self) -> str:
        return self.ctl.log_tail() if self.ctl else ""

    def rule_phases(self) -> dict[str, tuple[float, float]]:
        """``{phase: (count, seconds)}`` so far, from the controller's own histograms (the
        bench takes the difference around one rule create): the rule POST inside the server,
        its durable commit, the data-plane steps (plan, compile, send) and the barrier round
        trips (one per host a step sent to)."""
        return self._phases()

    def interface_phases(self) -> dict[str, tuple[float, float]]:
        """As `rule_phases`, with the ``add_router_interface`` PUT as the API phase."""
        return self._phases(INTERFACE_ROUTE)

    def _phases(self, api_route: str | None = None) -> dict[str, tuple[float, float]]:
        assert self.ctl is not None
        url = f"http://127.0.0.1:{self.ctl.api_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return phase_totals(resp.read().decode(), api_route)

    # ------------------------------------------------------------------ model
    def iface_id(self, name: str) -> str:
        """The port id the VM interface carries (tenantnet ports are UUIDs)."""
        return str(uuid.uuid5(_NS, name))

    def add_network(self, k: int, project: str = "bench", gateway: bool = False) -> None:
        """Network ``k`` with one subnet 10.<100+k>.0.0/16; ``gateway``: its gateway is
        `gateway_ip` (k) (a router can take it) and DHCP is off, as on OVN's switches here
        (with DHCP on, tenantnet's DHCP server answers ARP for a gateway no router holds
        yet, with its own MAC: see bench/README.md, measure 10); else no gateway."""
        api = self.ctl.api
        if project != "bench":
            unlimited = {"port": -1, "security_group": -1, "security_group_rule": -1}
            api.request("PUT", f"/v2.0/quotas/{project}", {"quota": unlimited}, expect=200)
        net = api.create("network", name=f"bnet{k}", project_id=project)
        sub = api.create("subnet", network_id=net["id"], cidr=f"10.{100 + k}.0.0/16",
                         ip_version=4, project_id=project,
                         **({"gateway_ip": gateway_ip(k), "enable_dhcp": False} if gateway
                            else {"gateway_ip": None}))
        self.nets[k] = {"id": net["id"], "subnet": sub["id"], "project": project}

    # ------------------------------------------------------------------ routers
    def create_router(self) -> str:
        """A router of the bench project (distributed, no external gateway)."""
        return str(self.ctl.api.create("router", name="brouter", project_id="bench")["id"])

    def _router_action(self, router: str, action: str, body: dict[str, str]) -> dict[str, Any]:
        assert self.http is not None
        st, resp = self.http.request("PUT", f"/v2.0/routers/{router}/{action}", body)
        if st != 200:
            raise RuntimeError(f"{action}: {st} {resp}")
        return dict(resp)

    def add_interface(self, router: str, k: int) -> None:
        """``add_router_interface`` by network ``k``'s subnet (a port at its gateway IP); returns
        when the API answered (the data plane follows, as OVN's NB write is not waited on)."""
        self._router_action(router, "add_router_interface", {"subnet_id": self.nets[k]["subnet"]})

    def wait_idle(self, timeout: float = 120) -> None:
        """Until the data plane is idle (`/tenantnet/status` ``idle``: nothing queued, planned
        but unsent, or awaiting a barrier), polled every 0.2 s (a status request costs the
        controller ~3 ms of CPU)."""
        deadline = time.monotonic() + timeout
        while not self.ctl.api.status().get("idle"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"data plane not idle after {timeout} s")
            time.sleep(0.2)

    def remove_interface(self, router: str, k: int) -> None:
        self._router_action(router, "remove_router_interface",
                            {"subnet_id": self.nets[k]["subnet"]})

    # ------------------------------------------------------------------ security groups
    def enable_security_groups(self) -> None:
        """Nothing to do: every port with port security gets its project's default group."""

    def default_group(self, k: int) -> str:
        """The default group of network ``k``'s project (created with its first port)."""
        project = self.nets[k]["project"]
        found = self.ctl.api.request(
            "GET", f"/v2.0/security-groups?project_id={project}&name=default")["security_groups"]
        if not found:
            raise RuntimeError(f"project {project} has no default group")
        return str(found[0]["id"])

    def create_group(self, k: int, name: str) -> str:
        """A new group in network ``k``'s project (Neutron's template: egress anywhere)."""
        body = {"security_group": {"name": name, "project_id": self.nets[k]["project"]}}
        return str(self.ctl.api.request("POST", "/v2.0/security-groups", body,
                                        expect=201)["security_group"]["id"])

    def add_rule(self, group: str, direction: str, protocol: str | None = None,
                 ports: tuple[int, int] | None = None, remote_ip: str | None = None,
                 remote_group: str | None = None, ethertype: str = "IPv4") -> None:
        body: dict[str, Any] = {"security_group_id": group, "direction": direction,
                                "ethertype": ethertype, "protocol": protocol}
        if ports:
            body["port_range_min"], body["port_range_max"] = ports
        if remote_ip:
            body["remote_ip_prefix"] = remote_ip
        if remote_group:
            body["remote_group_id"] = remote_group
        assert self.http is not None
        st, resp = self.http.request("POST", "/v2.0/security-group-rules",
                                     {"security_group_rule": body})
        if st != 201:
            raise RuntimeError(f"rule create: {st} {resp}")

    def enable_dhcp(self, k: int) -> None:
        """Native DHCP for network ``k``'s subnet (Neutron's default, set explicitly)."""
        self.ctl.api.update("subnet", self.nets[k]["subnet"], enable_dhcp=True)

    def dhcp_server(self, k: int) -> tuple[str, str]:
        """(MAC, IP) the DHCP server answers from: the default server MAC and, without a
        gateway, the subnet's last unicast address (controller/services/dhcp.py)."""
        return DEFAULT_SERVER_MAC, f"10.{100 + k}.255.254"

    def _port_body(self, k: int, name: str, mac: str, ip: str, groups: list[str] | None = None,
                   port_security: bool = True, pair_ip: str | None = None) -> dict[str, Any]:
        net = self.nets[k]
        body = {"id": self.iface_id(name), "name": name, "network_id": net["id"],
                "mac_address": mac, "project_id": net.get("project", "bench"),
                "fixed_ips": [{"subnet_id": net["subnet"], "ip_address": ip}]}
        if pair_ip:
            body["allowed_address_pairs"] = [{"ip_address": pair_ip}]
        if not port_security:
            body["port_security_enabled"] = False
        elif groups is not None:
            body["security_groups"] = groups
        return body

    def create_ports_wait(self, ports: list[tuple[int, str, str, str]],
                          poll: float | None = None, timeout: float = 120,
                          groups: list[str] | None = None, port_security: bool = True,
                          pair_ip: str | None = None) -> float:
        """Create ports (network index, name, mac, ip); seconds until every one is ACTIVE.

        One port: POST /v2.0/ports; several: bulk POSTs of ``bulk_chunk`` ports.  Then one
        POST /tenantnet/wait that blocks until they are all ACTIVE (like OVN's --wait=hv),
        instead of polling, which would compete with the data plane it measures.  ``groups``:
        their security groups (default: the project's default group); ``port_security``
        False: no filtering, no groups; ``pair_ip``: an allowed address pair of each port."""
        assert self.http is not None
        del poll  # kept for callers; the wait endpoint needs no polling interval
        bodies = [self._port_body(*p, groups=groups, port_security=port_security,
                                  pair_ip=pair_ip) for p in ports]
        t0 = time.perf_counter()
        if len(bodies) == 1:
            st, resp = self.http.request("POST", "/v2.0/ports", {"port": bodies[0]})
            if st != 201:
                raise RuntimeError(f"port create: {st} {resp}")
        else:
            for i in range(0, len(bodies), self.bulk_chunk):
                st, resp = self.http.request("POST", "/v2.0/ports",
                                             {"ports": bodies[i:i + self.bulk_chunk]})
                if st != 201:
                    raise RuntimeError(f"bulk port create: {st} {str(resp)[:500]}")
        self.last_api_s = time.perf_counter() - t0
        ids = [b["id"] for b in bodies]
        while True:
            left = timeout - (time.perf_counter() - t0)
            if left <= 0:
                raise ConfirmTimeout(f"{len(ids)} ports not all ACTIVE after {timeout} s")
            st, resp = self.http.request("POST", "/tenantnet/wait",
                                         {"port_ids": ids, "timeout": min(left, 300)})
            if st != 200:
                raise RuntimeError(f"wait: {st} {str(resp)[:500]}")
            if resp["done"]:
                return time.perf_counter() - t0
            ids = resp["pending"]

    def packet_in_counters(self) -> dict[str, int]:
        """The controller's packet-in counters (`/tenantnet/status` ``packet_in``): received,
        queue_full, replies, reply_failures..., for the DHCP load's JSON."""
        return dict(self.ctl.api.status().get("packet_in") or {})

    def flow_mods_total(self) -> int:
        st = self.ctl.api.status()
        return int(st["flow_mods"]) + int(st["group_mods"])

    # ------------------------------------------------------------------ measurements
    def control_plane_rss(self) -> dict[str, int]:
        return {"tenantnet": rss_kb(self.ctl.proc.pid if self.ctl and self.ctl.proc else None)}

    def control_plane_cpu(self) -> float:
        return cpu_seconds(self.ctl.proc.pid if self.ctl and self.ctl.proc else None)

    def kill_controller(self, hv_index: int) -> None:
        """kill -9 the (whole) controller; ``hv_index`` is unused (it serves every host)."""
        assert self.ctl is not None
        self.http.close()
        self.ctl.kill()

    def start_controller(self, hv_index: int, before: set[str] | None = None,
                         timeout: float = 60) -> dict[str, Any]:
        """Start it again on the same state; returns reconcile time and flow-mods sent."""
        t0 = time.monotonic()
        offset = log_size(self.ctl)
        self.ctl.start()
        wait_reconciled_quietly(self.ctl, offset, timeout)
        wall = time.monotonic() - t0
        # let late batches (if any) land before reading the counters
        time.sleep(0.5)
        st = self.ctl.api.status()
        return {"reconcile_s": st["reconciled_after_s"], "wall_s": round(wall, 3),
                "flow_mods": int(st["flow_mods"]) + int(st["group_mods"]),
                "detail": {"flow_mods": st["flow_mods"], "group_mods": st["group_mods"]}}
