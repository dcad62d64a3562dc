"""GET /metrics against reality, on 3 emulated hypervisors with a real controller process.

* Flows and groups per host: what ``ovs-ofctl dump-flows`` / ``dump-groups`` show on each
  br-int (tenantnet's cookie) equals ``tenantnet_host_flows{host}`` / ``tenantnet_host_groups``.
* Barriers: ``ovs-ofctl snoop`` on every br-int prints each OpenFlow message between the switch
  and the controller; the barrier requests and replies it sees while ports are created, plugged
  and unplugged equal the growth of ``tenantnet_openflow_barriers_total`` and of the barrier
  round-trip histogram's count.
* Port ready: one observation per port that turned ACTIVE.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.hypervisors import Hypervisor, Lab
from lab.proc import base_env
from lab.tenantnet_proc import TenantnetProcess
from tests.integration.controller_env import start_registered
from tests.integration.dataplane_fixtures import wait_for

OUR_COOKIE = "cookie=0x7e4e"  # flows/tables.py COOKIE_BASE: high bits of every tenantnet cookie


def scrape(ctl: TenantnetProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(ctl.api.base + "/metrics", timeout=10)
    r.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def our_flows(hv: Hypervisor) -> int:
    return sum(1 for f in hv.dump_flows() if f.startswith(OUR_COOKIE))


def our_groups(hv: Hypervisor) -> int:
    return sum(1 for g in hv.ofctl("dump-groups", "br-int").splitlines() if "group_id=" in g)


@dataclass
class Snoop:
    """``ovs-ofctl snoop br-int``: every message on the switch's controller connection."""

    hv: Hypervisor
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Snoop:
        self.proc = subprocess.Popen(  # line-buffered: a pipe would hold lines back by 4 KiB
            ["stdbuf", "-oL", "ovs-ofctl", "-O", "OpenFlow13", "snoop", "br-int"],
            env=base_env(self.hv.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def count(self, message: str) -> int:
        return sum(1 for line in list(self.lines) if line.startswith(message))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


@dataclass
class Env:
    lab: Lab
    ctl: TenantnetProcess


@pytest.fixture(scope="module")
def env(make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lab = make_module_lab(3)
    ctl = start_registered(lab, tmp_path_factory.mktemp("tenantnet-metrics"))
    try:
        ctl.api.wait_reconciled()
        yield Env(lab, ctl)
    finally:
        ctl.stop()


def test_flow_and_barrier_metrics_match_the_switches(env: Env) -> None:
    lab, api = env.lab, env.ctl.api
    before = scrape(env.ctl)
    assert metric(before, "tenantnet_host_reconcile_seconds_count") >= 3  # each host once
    snoops = [Snoop(hv).start() for hv in lab.hvs]
    try:
        # Attached once it shows the controller's echo (sent to a switch silent for 1 s).
        for s in snoops:
            wait_for(lambda s=s: s.count("OFPT_ECHO"), 15, 0.1,
                     f"snoop on {s.hv.name} ({s.lines[-5:]})")  # fmt: skip
        start = scrape(env.ctl)
        net = api.create("network", name="metrics")
        sub = api.create("subnet", network_id=net["id"], cidr="10.66.0.0/24", ip_version=4)
        vms = []
        for n, hv in enumerate([*lab.hvs, lab.hvs[0]], start=1):  # two ports on the first host
            ip = f"10.66.0.{10 + n}"
            port = api.create(
                "port", network_id=net["id"],
                fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}],
            )  # fmt: skip
            vms.append(lab.add_vm(hv, f"met{n}", port["mac_address"], f"{ip}/24", port["id"]))
        api.wait_ports_active([vm.iface_id for vm in vms])
        lab.remove_vm(vms.pop())  # an unplug: the first host's flows shrink again

        def settled() -> dict[Any, float] | None:
            now = scrape(env.ctl)
            requests = sum(s.count("OFPT_BARRIER_REQUEST") for s in snoops)
            replies = sum(s.count("OFPT_BARRIER_REPLY") for s in snoops)
            sent = metric(now, "tenantnet_openflow_barriers_total") - metric(
                start, "tenantnet_openflow_barriers_total"
            )
            timed = metric(now, "tenantnet_openflow_barrier_rtt_seconds_count") - metric(
                start, "tenantnet_openflow_barrier_rtt_seconds_count"
            )
            real = [(our_flows(hv), our_groups(hv)) for hv in lab.hvs]
            seen = [
                (metric(now, "tenantnet_host_flows", host=hv.name),
                 metric(now, "tenantnet_host_groups", host=hv.name))
                for hv in lab.hvs
            ]  # fmt: skip
            ok = requests > 0 and sent == requests and timed == replies == requests
            return now if ok and real == seen else None

        now = wait_for(settled, 20, 0.2, "metrics equal to what the switches show")
    finally:
        for s in snoops:
            s.stop()
    flows = [metric(now, "tenantnet_host_flows", host=hv.name) for hv in lab.hvs]
    assert all(f > 4 for f in flows)  # more than the base pipeline: the network is there
    assert metric(now, "tenantnet_hosts", state="connected") == 3
    ready = metric(now, "tenantnet_port_ready_seconds_count") - metric(
        start, "tenantnet_port_ready_seconds_count"
    )
    assert ready == 4  # each port once, when it turned ACTIVE
    errors = sum(v for (name, _), v in now.items() if name == "tenantnet_openflow_errors_total")
    assert errors == 0
