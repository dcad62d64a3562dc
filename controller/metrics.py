"""Prometheus metrics of one controller process, in a registry of its own.

Each `Metrics` owns a `CollectorRegistry` (never prometheus_client's global one), so tests and
several controllers in one process never share or collide on a metric.  Two kinds of metric:

* **Read at scrape time** (`StatusCollector`): everything the controller already counts or knows
  - hosts by state, flows and groups per host, flow-mods, group-mods, batches, bundles,
  barriers, OpenFlow errors by type, the data plane's queue depth - is taken from the one
  status document (`Controller.status()`, what ``GET /tenantnet/status`` shows) when Prometheus
  scrapes.  Nothing on the hot path pays for it, and the numbers cannot disagree with the status
  endpoint.
* **Observed as they happen**: latencies, which need every sample (histograms): barrier round
  trip, port ready, host reconcile after a (re)connect, store commit, data-plane step, API
  requests.  Each is one call where the duration is known.

Label values are bounded: hosts (registered by the operator), OpenFlow error types (the
protocol's list), API routes as their templates (``/v2.0/ports/{obj_id}``, never a raw path) and
status codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Switch answers are sub-millisecond to seconds (a busy userspace switch, a 5 s barrier timeout).
SWITCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A commit is an fsync (ms) unless the disk stalls.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
# Reconciling a host: its read-back, compile and one batch (0.1 s to tens of seconds).
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HOST_STATES = ("connected", "degraded", "syncing", "disconnected")


def host_state(host: Mapping[str, Any]) -> str:
    """One word for a host of the status document: connected (read back and healthy), degraded
    (its switch let a batch time out or rejected one), syncing (one of its two channels is up
    but it is not read back yet) or disconnected."""
    if host.get("degraded"):
        return "degraded"
    if host.get("ready"):
        return "connected"
    if host.get("ovsdb") or host.get("openflow"):
        return "syncing"
    return "disconnected"


class StatusCollector(Collector):
    """The status document as metrics, read when Prometheus scrapes (see module doc)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        """Nothing: registering must not call ``status`` (the controller is not built yet),
        and the metric names are fixed here, none of them taken by the registry's others."""
        return []

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        hosts: Mapping[str, Mapping[str, Any]] = st.get("hosts") or {}
        by_state = GaugeMetricFamily(
            "tenantnet_hosts", "Registered hosts by state", labels=["state"]
        )
        counts = {s: 0 for s in HOST_STATES}
        for host in hosts.values():
            counts[host_state(host)] += 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        up = GaugeMetricFamily(
            "tenantnet_host_ready",
            "1 if the host's OVSDB and flows were read back",
            labels=["host"],
        )
        flows = GaugeMetricFamily(
            "tenantnet_host_flows", "tenantnet's flows on the host's switch", labels=["host"]
        )
        groups = GaugeMetricFamily(
            "tenantnet_host_groups", "tenantnet's groups on the host's switch", labels=["host"]
        )
        sg_flows = GaugeMetricFamily(
            "tenantnet_host_sg_flows",
            "tenantnet's security-group (firewall) flows on the host's switch",
            labels=["host"],
        )
        for host_id, host in sorted(hosts.items()):
            up.add_metric([host_id], 1 if host.get("ready") else 0)
            if host.get("flows") is not None:
                flows.add_metric([host_id], host["flows"])
                groups.add_metric([host_id], host.get("groups") or 0)
                sg_flows.add_metric([host_id], host.get("sg_flows") or 0)
        yield from (up, flows, groups, sg_flows)
        for key, name, doc in (
            ("flow_mods", "tenantnet_flow_mods", "Flow-mods sent to switches"),
            ("group_mods", "tenantnet_group_mods", "Group-mods sent to switches"),
            ("batches", "tenantnet_batches", "Diffs sent to switches (each closed by a barrier)"),
            ("networks_compiled", "tenantnet_networks_compiled", "Whole-network compiles"),
            ("ports_patched", "tenantnet_ports_patched", "Ports patched in on the per-port path"),
            ("binding_conflicts", "tenantnet_binding_conflicts", "Port claims refused"),
            (
                "ct_zones_flushed",
                "tenantnet_ct_zones_flushed",
                "Conntrack zones flushed: a filtered port's flows went, or came to a zone",
            ),
            (
                "ct_zone_flush_errors",
                "tenantnet_ct_zone_flush_errors",
                "Conntrack zone flushes that raised (not sent; logged once per host)",
            ),
        ):
            if key in st:
                yield CounterMetricFamily(name, doc, value=st[key])
        if "queue_depth" in st:
            yield GaugeMetricFamily(
                "tenantnet_dataplane_queue_depth",
                "Inputs (events, observations, replies) waiting for the data plane",
                value=st["queue_depth"],
            )
        if "reconciled_after_s" in st:
            yield GaugeMetricFamily(
                "tenantnet_reconciled_after_start_seconds",
                "From the data plane's start until every host was first reconciled (NaN: not yet)",
                value=float("nan")
                if st["reconciled_after_s"] is None
                else st["reconciled_after_s"],
            )
        if "store_quorum" in st:  # on etcd only
            yield GaugeMetricFamily(
                "tenantnet_store_quorum",
                "1 while the store's etcd cluster can commit this instance's writes, 0 once it "
                "has no quorum or cannot be reached (writes answer 503; as GET /readyz)",
                value=1 if st["store_quorum"] else 0,
            )
        yield from _openflow_metrics(st.get("openflow") or {})
        yield from _dhcp_metrics(st.get("dhcp") or {}, st.get("packet_in") or {})


def _openflow_metrics(of: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, doc in (
        ("bundles", "tenantnet_openflow_bundles", "Atomic bundles committed to switches"),
        ("barriers", "tenantnet_openflow_barriers", "Barrier requests sent"),
        (
            "barrier_timeouts",
            "tenantnet_openflow_barrier_timeouts",
            "Barriers not answered in time",
        ),
        ("connects", "tenantnet_openflow_connects", "Switch sessions accepted"),
        (
            "refused",
            "tenantnet_openflow_refused",
            "Connections refused (could not prove their host)",
        ),
    ):
        if key in of:
            yield CounterMetricFamily(name, doc, value=of[key])
    if "error_types" in of:
        yield _by_label(
            "tenantnet_openflow_errors",
            "OpenFlow error replies by error type",
            "type",
            of["error_types"],
        )


def _by_label(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    """One counter family with a sample per ``{label value: count}``."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def _dhcp_metrics(dhcp: Mapping[str, Any], packet_in: Mapping[str, Any]) -> Iterator[Metric]:
    """Native DHCP (`controller.dataplane.dhcp.DhcpPunt.status`) and the packet-in queue that
    feeds it (`controller.southbound.packet_in.PacketInCounters`)."""
    if "answers" in dhcp:
        yield _by_label(
            "tenantnet_dhcp_answers",
            "DHCP replies sent, by message type",
            "type",
            dhcp["answers"],
        )
        yield _by_label(
            "tenantnet_dhcp_drops",
            "DHCP packet-ins not answered, by reason (malformed, not_served, unmatched, flood)",
            "reason",
            dhcp["drops"],
        )
        for key, name, doc in (
            ("released", "tenantnet_dhcp_releases", "DHCP RELEASE and DECLINE messages"),
            ("port_bans", "tenantnet_dhcp_port_bans", "Temporary DHCP drops of flooding ports"),
        ):
            yield CounterMetricFamily(name, doc, value=dhcp[key])
    if "received" in packet_in:
        yield CounterMetricFamily(
            "tenantnet_packet_ins", "Packet-ins from switches", value=packet_in["received"]
        )
        yield _by_label(
            "tenantnet_packet_in_drops",
            "Packet-ins dropped before any handler saw them, or by a failing handler",
            "reason",
            {
                r: packet_in.get(r, 0)
                for r in ("queue_full", "refused", "not_owner", "handler_errors")
            },
        )


class ReconcileTimer:
    """Time from a host becoming known (its OVSDB and its switch's flows read, after a start or
    a reconnect) to the moment its switch holds the desired state: at once when the first step
    sends it nothing, else when it confirms that step's batch."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._since: dict[str, float] = {}
        self._sent: set[str] = set()
        self._lock = threading.Lock()

    def started(self, host_id: str) -> None:
        with self._lock:
            self._since[host_id] = time.monotonic()
            self._sent.discard(host_id)

    def flushed(self, sent_to: Any) -> None:
        """A data-plane step sent batches to the hosts in ``sent_to``."""
        with self._lock:
            for host_id in list(self._since):
                if host_id in self._sent:
                    continue
                if host_id in sent_to:
                    self._sent.add(host_id)
                else:
                    self._histogram.observe(time.monotonic() - self._since.pop(host_id))

    def confirmed(self, host_id: str, ok: bool) -> None:
        with self._lock:
            if host_id not in self._sent:
                return
            self._sent.discard(host_id)
            since = self._since.pop(host_id)
            if ok:  # a failed batch re-reads the switch, which starts the timer again
                self._histogram.observe(time.monotonic() - since)


class Metrics:
    """The metric objects of one controller and its registry (see module doc)."""

    def __init__(self, process: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:  # CPU, memory, descriptors of this process (Linux /proc)
            ProcessCollector(namespace="tenantnet", registry=self.registry)
        r = self.registry
        self.barrier_rtt = Histogram(
            "tenantnet_openflow_barrier_rtt_seconds",
            "From a barrier request to its reply (the switch processed the batch before it)",
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.port_ready = Histogram(
            "tenantnet_port_ready_seconds",
            "From the data-plane step that compiled a port's flows to its status ACTIVE "
            "(its hosts confirmed them)",
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.host_reconcile = Histogram(
            "tenantnet_host_reconcile_seconds",
            "From a host's (re)connection being read back to its switch holding the desired state",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile = ReconcileTimer(self.host_reconcile)
        self._counted: dict[str, Any] = {}  # port -> revision counted ready (ports_settled)
        self.store_commit = Histogram(
            "tenantnet_store_commit_seconds",
            "SQLite COMMIT; durable: API writes (fsync), observed: data-plane write-backs",
            ["kind"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.dataplane_step = Histogram(
            "tenantnet_dataplane_step_seconds",
            "One data-plane step's compile and send (steps that changed something)",
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        self.api_requests = Counter(
            "tenantnet_api_requests",
            "API requests by method, route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "tenantnet_api_request_seconds",
            "API request duration by method and route template",
            ["method", "route"],
            registry=r,
        )

    def add_status(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Export the status document (`StatusCollector`) at every scrape."""
        self.registry.register(StatusCollector(status))

    def ports_settled(
        self,
        started: float,
        statuses: Mapping[str, str | None],
        ports: Mapping[str, Any],
    ) -> None:
        """A batch begun at ``started`` (monotonic) settled these port statuses; ``ports``: the
        data plane's copy of the port records (`dataplane.state.PortRec`).  A port counts when
        it turns ACTIVE, once per revision of its record that is not ACTIVE: a recompile of its
        network that confirms it again before its ACTIVE status came back from the store is
        not a second one."""
        elapsed = time.monotonic() - started
        for pid, status in statuses.items():
            record = ports.get(pid)
            if status != "ACTIVE" or record is None or record.status == "ACTIVE":
                continue
            revision = record.revision
            if self._counted.get(pid) != revision:
                self._counted[pid] = revision
                self.port_ready.observe(elapsed)
        if len(self._counted) > 2 * len(ports) + 64:  # forget deleted ports, now and then
            self._counted = {p: r for p, r in self._counted.items() if p in ports}

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
