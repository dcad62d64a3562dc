"""The drift audit on real Open vSwitch (2 emulated hypervisors, a real controller process).

Behind the controller's back, with ``ovs-ofctl -O OpenFlow13`` on hv1: one of tenantnet's flows
is deleted (the VM's classification: its packets are dropped), another is modified (its actions
replaced by a drop) and a foreign flow (another cookie) is added.  Then:

* ``GET /tenantnet/hosts/hv1/drift`` shows exactly those, under the VM's port, and the foreign
  flow apart; hv2 shows none; the VM cannot reach its peer;
* the periodic audit (a short interval) repairs them: hv1's flows are again what they were,
  plus the foreign flow, untouched; the VM reaches its peer; the repair counters moved by one
  missing and one modified port flow;
* a controller restart with nothing changed reports no drift anywhere and sends nothing;
* ``tenantnet drift`` prints the answer, and exits 1 for an unknown host.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from lab.hypervisors import Hypervisor, Lab, Vm
from lab.tenantnet_proc import TenantnetProcess
from tests.integration.controller_env import start_registered
from tests.integration.dataplane_fixtures import wait_for
from tests.integration.test_metrics import metric, scrape

INTERVAL_S = 8  # every host is audited every 8 s (its slot: a hash of its id)
FOREIGN = "cookie=0x1234,table=0,priority=5,udp,tp_dst=9999,actions=drop"


@dataclass
class Env:
    lab: Lab
    ctl: TenantnetProcess
    vms: list[Vm]


@pytest.fixture(scope="module")
def env(make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lab = make_module_lab(2)
    ctl = start_registered(
        lab, tmp_path_factory.mktemp("tenantnet-drift"),
        extra_args=("--drift-audit-interval-s", str(INTERVAL_S)),
    )  # fmt: skip
    try:
        api = ctl.api
        net = api.create("network", name="drift")
        sub = api.create("subnet", network_id=net["id"], cidr="10.77.0.0/24", ip_version=4)
        vms = []
        for n, hv in enumerate(lab.hvs, start=1):
            ip = f"10.77.0.{10 + n}"
            port = api.create(
                "port", network_id=net["id"], fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}]
            )
            vms.append(lab.add_vm(hv, f"dr{n}", port["mac_address"], f"{ip}/24", port["id"]))
        api.wait_ports_active([vm.iface_id for vm in vms])
        vms[0].wait_reachable("10.77.0.12")
        yield Env(lab, ctl, vms)
    finally:
        ctl.stop()


def drift(ctl: TenantnetProcess, host: str) -> dict[str, Any]:
    r = httpx.get(f"{ctl.api.base}/tenantnet/hosts/{host}/drift", timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _split(line: str) -> tuple[str, str, str]:
    """A ``dump-flows --no-stats`` line -> (cookie, ``table=..,priority=..,match``, actions)."""
    head, _, actions = line.partition(" actions=")
    cookie, _, rest = head.partition(", ")
    key = rest.replace(" ", "")
    return cookie.removeprefix("cookie="), key if "table=" in key else f"table=0,{key}", actions


def _tamper(hv: Hypervisor, vm: Vm) -> tuple[str, str]:
    """Delete the VM's classification flow, turn another flow of its port into a drop, add a
    foreign flow.  Returns the port's cookie and the foreign flow's line as OVS prints it."""
    lines, ofport = hv.dump_flows(), vm.ofport()
    (classify,) = [  # OVS leaves table=0 out of what it prints
        ln for ln in lines
        if "table=" not in ln and re.search(f"in_port={ofport}[ ,]", ln) and "cookie=0x7e4e" in ln
    ]  # fmt: skip
    cookie, key, _ = _split(classify)
    other = next(
        ln for ln in lines
        if ln != classify and _split(ln)[0] == cookie and _split(ln)[2] != "drop"
    )  # fmt: skip
    hv.ofctl("--strict", "del-flows", "br-int", f"cookie={cookie}/-1,{key}")
    _, other_key, _ = _split(other)
    hv.ofctl("add-flow", "br-int", f"cookie={cookie},{other_key},actions=drop")
    hv.ofctl("add-flow", "br-int", FOREIGN)
    (foreign,) = [ln for ln in hv.dump_flows() if ln.startswith("cookie=0x1234")]
    return cookie, foreign


def test_drift_is_shown_repaired_counted_and_foreign_flows_left_alone(env: Env) -> None:
    lab, ctl = env.lab, env.ctl
    hv1 = lab.hvs[0]
    vm1 = env.vms[0]
    assert drift(ctl, "hv1")["in_sync"] and drift(ctl, "hv2")["in_sync"]
    # Tamper right after hv1's audit slot, so that the audit does not repair it before it is
    # looked at (the answer says when the host's next audit is).
    wait_for(lambda: drift(ctl, "hv1")["next_audit_s"] > INTERVAL_S / 2, 2 * INTERVAL_S, 0.2,
             "hv1's audit slot to pass")  # fmt: skip
    before = set(hv1.dump_flows())
    counted = scrape(ctl)
    cookie, foreign = _tamper(hv1, vm1)

    doc = drift(ctl, "hv1")
    assert not doc["in_sync"]
    assert doc["counts"] == {"missing": 1, "extra": 0, "modified": 1, "foreign": 1}, doc
    (owner,) = doc["owners"]
    assert owner["kind"] == "port" and owner["port_id"] == vm1.iface_id
    assert int(owner["cookie"], 16) == int(cookie, 16)
    assert len(owner["missing_flows"]) == 1 and owner["missing_flows"][0].startswith("table=0 ")
    ((modified),) = owner["modified_flows"]
    assert modified["installed"].endswith("actions=drop")
    assert not modified["desired"].endswith("actions=drop")
    assert len(doc["foreign_flows"]) == 1 and "cookie=0x1234" in doc["foreign_flows"][0]
    assert drift(ctl, "hv2")["in_sync"]
    assert vm1.ping("10.77.0.12", count=1, timeout=1).received == 0  # the drift broke it

    # The periodic audit repairs it: what hv1 held before, plus the foreign flow.
    wait_for(lambda: set(hv1.dump_flows()) == before | {foreign}, 3 * INTERVAL_S, 0.2,
             "hv1 repaired by the audit")  # fmt: skip
    vm1.wait_reachable("10.77.0.12")
    now = scrape(ctl)
    for change, n in (("missing", 1), ("modified", 1), ("extra", 0)):
        moved = metric(now, "tenantnet_drift_repairs_total", kind="port", change=change) - metric(
            counted, "tenantnet_drift_repairs_total", kind="port", change=change
        )
        assert moved == n, change
    assert metric(now, "tenantnet_foreign_flows", host="hv1") == 1
    assert "host hv1: drift found and repaired: port: 1 missing, 1 modified" in ctl.log_tail(200)
    after = drift(ctl, "hv1")
    assert after["in_sync"] and len(after["foreign_flows"]) == 1


def test_a_restart_with_nothing_changed_reports_no_drift(env: Env) -> None:
    ctl = env.ctl
    ctl.restart()
    ctl.api.wait_reconciled()
    for hv in env.lab.hvs:
        assert drift(ctl, hv.name)["in_sync"], hv.name
    status = ctl.api.status()
    assert status["flow_mods"] == 0 and status["group_mods"] == 0


def test_the_drift_command(env: Env) -> None:
    cli = [sys.executable, "-m", "controller.cli", "drift"]
    ok = subprocess.run([*cli, "hv2", "--url", env.ctl.api.base], capture_output=True, text=True,
                        timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("host hv2: in sync with the desired state")
    bad = subprocess.run([*cli, "hv9", "--url", env.ctl.api.base], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "404" in bad.stderr and "hv9" in bad.stderr
    assert bad.stdout == ""
