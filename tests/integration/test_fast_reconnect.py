"""Fast reconnect after a controller restart (controller/southbound/ovsdb_host.py,
``OvsdbHost._controller_target``), on real OVS.

After a restart every switch sits in its reconnect backoff (at least 1 s).  The controller makes
each one that has no OpenFlow session with it reconnect at once by rewriting its controller
target in the other spelling (``tcp:IP:PORT`` <-> ``tcp:[IP]:PORT``).  These tests pin what
that must and must not do; how fast it is belongs to bench/ (the ``restart -> reconciled`` row).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.hypervisors import Hypervisor, Lab, Vm
from lab.tenantnet_proc import Api, TenantnetProcess
from tests.integration.controller_env import start_registered

_DURATION = re.compile(r"duration=([0-9.]+)s")


@dataclass
class Env:
    lab: Lab
    ctl: TenantnetProcess
    vms: list[Vm] = field(default_factory=list)

    @property
    def api(self) -> Api:
        return self.ctl.api


@pytest.fixture(scope="module")
def env(make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lab = make_module_lab(3)
    ctl = start_registered(lab, tmp_path_factory.mktemp("tenantnet-fast-reconnect"))
    try:
        e = Env(lab, ctl)
        net = e.api.create("network", name="fr")
        sub = e.api.create("subnet", network_id=net["id"], cidr="10.64.0.0/24", ip_version=4)
        for n, hv in enumerate(lab.hvs, start=1):
            ip = f"10.64.0.{10 + n}"
            port = e.api.create(
                "port", network_id=net["id"], fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}]
            )
            e.vms.append(lab.add_vm(hv, f"fr{n}", port["mac_address"], f"{ip}/24", port["id"]))
            e.api.wait_port_status(port["id"], "ACTIVE")
        yield e
    finally:
        ctl.stop()


def _target(hv: Hypervisor) -> str:
    return hv.vsctl("get", "Controller", "br-int", "target").strip('"')


def _ours(hv: Hypervisor) -> list[str]:
    return [f for f in hv.dump_flows() if "cookie=0x7e4e" in f]


def _ages(hv: Hypervisor) -> list[float]:
    """Seconds since each of our flows was installed (``duration=`` of ``dump-flows``)."""
    out = hv.ofctl("dump-flows", "br-int")
    return [float(m.group(1)) for f in out.splitlines() if "cookie=0x7e4e" in f
            for m in [_DURATION.search(f)] if m]  # fmt: skip


def _spellings(lab: Lab) -> set[str]:
    ip, port = lab.mgmt_ip, 6653
    return {f"tcp:{ip}:{port}", f"tcp:[{ip}]:{port}"}


def _restart(env: Env) -> tuple[dict[str, str], dict[str, str], dict[str, Any], float]:
    """kill -9 + start; (targets before, targets after, status, monotonic time of the kill)."""
    before = {hv.name: _target(hv) for hv in env.lab.hvs}
    env.ctl.stop(signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(0.5)
    env.ctl.start()
    env.api.wait_reconciled(timeout=30)
    time.sleep(0.3)
    after = {hv.name: _target(hv) for hv in env.lab.hvs}
    return before, after, env.api.status(), killed


def test_restart_makes_switches_reconnect_at_once_without_touching_flows(env: Env) -> None:
    """A switch that has no session when its host's OVSDB agent comes up gets its target
    rewritten in the other spelling and connects through that new target; a switch that
    reconnected on its own before that (its 1 s retry can fall between the OpenFlow listener
    starting and the agent's check) is left alone.  Either way every flow stays where it was
    (no flush: vswitchd flushes when a bridge is left without a controller even for one
    transaction), and the restart stays hitless: 0 pings lost, 0 flow-mods.

    Restarted until at least one switch was poked (each one is, unless its own retry won the
    race), so the rewrite path is always exercised."""
    lab = env.lab
    flows_before = {hv.name: sorted(_ours(hv)) for hv in lab.hvs}
    assert all(flows_before.values())
    ping = env.vms[0].ping_background(env.vms[1].ip, interval=0.01)
    time.sleep(0.3)
    poked: set[str] = set()
    for _ in range(5):
        marks = {hv.name: len(hv.log_tail(lines=100_000).splitlines()) for hv in lab.hvs}
        log_mark = len(env.ctl.log_path.read_text().splitlines())
        before, after, st, killed = _restart(env)
        ctl_log = env.ctl.log_path.read_text().splitlines()[log_mark:]
        for hv in lab.hvs:
            assert after[hv.name] in _spellings(lab), after
            assert hv.vsctl("get", "Controller", "br-int", "max_backoff") == "1000"
            assert sorted(_ours(hv)) == flows_before[hv.name]
            fresh = [a for a in _ages(hv) if a < time.monotonic() - killed]
            assert not fresh, f"{hv.name}: {len(fresh)} flows re-installed after the restart"
            vswitchd_log = "\n".join(hv.log_tail(lines=100_000).splitlines()[marks[hv.name] :])
            if after[hv.name] != before[hv.name]:
                poked.add(hv.name)
                assert f"br-int<->{after[hv.name]}: connected" in vswitchd_log
            else:  # its own retry came first: its session predates the agent's check
                session = _first(ctl_log, f"switch {datapath_id(hv)} connected")
                agent = _first(ctl_log, f"host {hv.name}: OVSDB connected")
                assert session is not None and agent is not None and session < agent, ctl_log
        # (``connects`` may exceed the number of hosts: a switch whose own retry lands in the
        # milliseconds between the session check and vswitchd applying the rewrite connects
        # twice; the next test pins that a switch with a session is left alone.)
        assert st["flow_mods"] == 0 and st["group_mods"] == 0, st
        if poked:
            break
    stats = ping.stop()
    assert poked, "no switch was ever reconnected by the controller"
    assert stats.sent > 100 and stats.received == stats.sent, stats


def datapath_id(hv: Hypervisor) -> str:
    return hv.vsctl("get", "Bridge", "br-int", "other_config:datapath-id").strip('"')


def _first(lines: list[str], text: str) -> int | None:
    return next((i for i, line in enumerate(lines) if text in line), None)


def test_a_connected_switch_is_never_disturbed(env: Env) -> None:
    """An OVSDB reconnect while the switch is connected (here: the host's OVSDB address is
    changed, which restarts its OVSDB agent) leaves the target and the OpenFlow session alone."""
    hv = env.lab.hv(2)
    env.api.wait_reconciled(timeout=30)
    target = _target(hv)
    connects = env.api.status()["openflow"]["connects"]
    mark = len(env.ctl.log_path.read_text().splitlines())
    env.api.update("host", hv.name, ovsdb=hv.ovsdb_unix)
    try:
        deadline = time.monotonic() + 15
        while True:  # the agent reconnected over the unix socket and ran ensure_config
            new = "\n".join(env.ctl.log_path.read_text().splitlines()[mark:])
            if f"host {hv.name}: OVSDB connected ({hv.ovsdb_unix})" in new and (
                f"host {hv.name}: br-int ready" in new
            ):
                break
            assert time.monotonic() < deadline, "the host's OVSDB agent did not reconnect"
            time.sleep(0.05)
        assert _target(hv) == target
        assert env.api.status()["openflow"]["connects"] == connects
    finally:
        env.api.update("host", hv.name, ovsdb=hv.ovsdb_tcp)
