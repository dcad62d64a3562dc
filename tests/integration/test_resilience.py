"""Resilience on real OVS across 3 emulated hypervisors, with pings running throughout.

Each test prints the figures it measured (run pytest with -s to see them) and asserts the ones
the product promises: a controller restart loses no packet and sends no flow-mod when nothing
changed, and a SIGTERM stops it within a couple of seconds; whatever changed while it was away is
corrected on reconnect; a restarted ovs-vswitchd (graceful or killed) gets back exactly the flows
it lost; a host that goes down is seen as down and its ports DOWN within seconds, a partitioned
one as disconnected, and both come back with no manual step; hosts that do not come back after a
controller restart are left alone for ``--startup-grace-s`` and then have their ports DOWN; no
acknowledged write is lost across SIGKILLs; a removed host keeps nothing of tenantnet.

The module-wide cloud is built per *transport* (the ``cloud`` fixture's parameter): plain TCP,
and TLS (issue 10: OpenFlow and OVSDB over mutual TLS with an ``ovs-pki`` PKI, HTTPS API), so
every scenario runs over both unchanged.  Every scenario runs a third time on a TCP cloud
whose controller keeps its store on the suite's 3-member etcd cluster (issue 18: ``--store
etcd://``, a key prefix of its own): its data plane's observations then go through the
replicated store and are written only for the hosts the instance owns (running the host
removal there found an unplugged port left ACTIVE, fixed in the reconciler).
"""

from __future__ import annotations

import functools
import http.client
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.hypervisors import Hypervisor, Lab, Vm
from lab.tenantnet_proc import Api, ApiError, TenantnetProcess

# How long a graceful stop may take (issue 11: "SIGTERM must always stop the process within a
# couple of seconds"); the harness kills it after this and the test fails.
SIGTERM_EXIT_S = 3.0
# README, Resilience: a host whose OVS daemons stop is seen as down and its ports go DOWN
# "within seconds". The bound is generous (measured: well under 1 s); the speed is bench's.
HOST_DOWN_BOUND_S = 5.0
# After wait_reconciled, how long to keep watching for flow-mods a late step might still send.
SETTLE_S = 1.5
# The grace period used by the startup-grace test (short, so the test stays quick).
GRACE_S = 4.0

TRANSPORTS = ["tcp", "tls"]
# The cloud's parameter for the scenarios that also run on the etcd store (TCP transport).
WITH_ETCD = [*TRANSPORTS, pytest.param("etcd", marks=pytest.mark.etcd)]


@dataclass
class Cloud:
    lab: Lab
    ctl: TenantnetProcess
    transport: str
    nets: dict[str, dict[str, Any]] = field(default_factory=dict)
    subnets: dict[str, dict[str, Any]] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return self.ctl.api

    def add_vm(self, net: str, hv: int, name: str, ip: str, plug: bool = True) -> Vm:
        port = self.api.create(
            "port",
            network_id=self.nets[net]["id"],
            name=name,
            fixed_ips=[{"subnet_id": self.subnets[net]["id"], "ip_address": ip}],
        )
        vm = self.lab.add_vm(hv, name, port["mac_address"], f"{ip}/24", port["id"], plug=plug)
        self.vms[name], self.ports[name] = vm, port
        return vm

    def stop(self, sig: int) -> None:
        """SIGTERM must end the process in time (a hang fails the test); SIGKILL always does."""
        if sig == signal.SIGTERM:
            self.ctl.stop(sig, timeout=SIGTERM_EXIT_S, strict=True)
        else:
            self.ctl.stop(sig)

    def restart(self, sig: int) -> dict[str, Any]:
        self.stop(sig)
        self.ctl.start()
        return self.api.wait_reconciled(timeout=30)

    def host_status(self, host: str) -> str:
        """The host's `status` in the API: `connected` once both its OVSDB and its switch were
        read, `disconnected` as soon as either connection is lost."""
        return str(self.api.show("host", host)["status"])


def _start_controller(lab: Lab, state: Any, store_args: tuple[str, ...] = ()) -> TenantnetProcess:
    """With a TLS lab (``lab.pki``) the controller gets the same PKI: ssl: targets, HTTPS API."""
    return TenantnetProcess(
        state, ofp_listen=f"{lab.mgmt_ip}:6653", pki=lab.pki, extra_args=store_args
    ).start()


def _register_hosts(api: Api, lab: Lab) -> None:
    for hv in lab.hvs:  # ovsdb_target: ssl: on a TLS lab, tcp: otherwise
        api.create(
            "host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_target,
            datapath_type="netdev",
        )


@pytest.fixture(scope="module", params=TRANSPORTS)
def cloud(
    request: pytest.FixtureRequest, make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    transport = request.param
    state = tmp_path_factory.mktemp(f"tenantnet-resilience-{transport}")
    pki = request.getfixturevalue("pki") if transport == "tls" else None
    store_args: tuple[str, ...] = ()
    if transport == "etcd":  # the session's cluster, under a key prefix of this cloud's own
        etcd = request.getfixturevalue("etcd_cluster")
        store_args = ("--store", etcd.url, "--etcd-prefix", f"/resilience-{uuid.uuid4().hex}/")
    lab = make_module_lab(3, pki=pki)
    ctl = _start_controller(lab, state, store_args)
    c = Cloud(lab, ctl, transport)
    try:
        _register_hosts(c.api, lab)
        c.api.wait_hosts_connected([hv.name for hv in lab.hvs])
        for name, kind in (("A", "vxlan"), ("B", "gre")):
            c.nets[name] = c.api.create("network", name=name, **{"provider:network_type": kind})
            c.subnets[name] = c.api.create(
                "subnet", network_id=c.nets[name]["id"], cidr="10.62.0.0/24", ip_version=4
            )
        c.add_vm("A", 1, "a1", "10.62.0.11")
        c.add_vm("A", 2, "a2", "10.62.0.12")
        c.add_vm("A", 3, "a3", "10.62.0.13")
        c.add_vm("B", 1, "b1", "10.62.0.21")
        c.add_vm("B", 2, "b2", "10.62.0.22")
        c.api.wait_ports_active([p["id"] for p in c.ports.values()])
        assert c.vms["a1"].ping("10.62.0.12").received > 0
        yield c
    finally:
        ctl.stop()
        print(f"\nresilience figures ({transport}):", c.figures)


def _ours(hv: Hypervisor) -> list[str]:
    """tenantnet's flows in full (cookie, table, priority, match and actions), sorted."""
    return sorted(f for f in hv.dump_flows() if "cookie=0x7e4e" in f)


def _groups(hv: Hypervisor) -> list[str]:
    return sorted(g for g in hv.ofctl("dump-groups", "br-int").splitlines() if "group_id=" in g)


def _snapshot(cloud: Cloud) -> dict[str, tuple[list[str], list[str]]]:
    return {hv.name: (_ours(hv), _groups(hv)) for hv in cloud.lab.hvs}


def _ping_warm(vm: Vm, ip: str) -> None:
    for _ in range(20):
        if vm.ping(ip, count=1, timeout=1).received:
            return
    raise AssertionError(f"{vm.name} cannot reach {ip}")


def _wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until ``pred()`` is true; AssertionError naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)
    return time.monotonic() - t0


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_controller_restart_is_hitless(cloud: Cloud, sig: int) -> None:
    """Flows stay (fail_mode=secure); on restart state comes back from the store and the
    controller reconciles every switch by reading it back: every flow and group identical
    (actions included), 0 flow-mods also after a settle period, 0 pings lost; SIGTERM ends the
    process within SIGTERM_EXIT_S."""
    a1 = cloud.vms["a1"]
    _ping_warm(a1, "10.62.0.12")
    before = _snapshot(cloud)
    assert all(flows for flows, _ in before.values())
    ping = a1.ping_background("10.62.0.12", interval=0.01)
    time.sleep(0.5)
    t0 = time.monotonic()
    reconciled = cloud.restart(sig)
    restart_s = time.monotonic() - t0
    time.sleep(SETTLE_S)  # flow-mods a later step might send are counted too
    st = cloud.api.status()
    stats = ping.stop()
    name = signal.Signals(sig).name
    cloud.figures[f"restart_{name}"] = {
        "pings_sent": stats.sent, "pings_lost": stats.sent - stats.received,
        "flow_mods": st["flow_mods"], "group_mods": st["group_mods"],
        "reconciled_after_s": reconciled["reconciled_after_s"],
        "restart_to_reconciled_s": round(restart_s, 2),
    }  # fmt: skip
    assert all(h["ready"] for h in reconciled["hosts"].values())
    assert stats.sent > 100
    assert stats.received == stats.sent, f"{stats.sent - stats.received} pings lost"
    assert st["flow_mods"] == 0 and st["group_mods"] == 0, st
    assert st["ct_zones_flushed"] == 0, st  # every filtered port's flows were on its zone
    assert _snapshot(cloud) == before


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_changes_while_controller_down_are_corrected(cloud: Cloud) -> None:
    """Unplug, plug, and hand-made stale flows/groups with our cookie while the controller is
    away: all corrected on reconnect; foreign flows (other cookie, other bridge) untouched."""
    hv1, hv3 = cloud.lab.hv(1), cloud.lab.hv(3)
    late = cloud.add_vm("A", 1, "a4", "10.62.0.14", plug=False)
    cloud.ctl.stop(signal.SIGKILL)
    a3_mac = cloud.ports["a3"]["mac_address"]
    cloud.vms["a3"].unplug()
    late.plug()
    hv1.ofctl(
        "add-flow",
        "br-int",
        "cookie=0x7e4e000000000fff,table=2,priority=100,metadata=0xfff,actions=drop",
    )
    hv1.ofctl("add-group", "br-int", "group_id=5000,type=all,bucket=output:1")
    hv1.ofctl("add-flow", "br-int", "cookie=0x42,table=7,priority=1,actions=drop")
    hv1.ofctl("add-flow", "br-phy", "cookie=0x43,priority=1,udp,tp_dst=9,actions=drop")
    cloud.ctl.start()
    st = cloud.api.wait_reconciled(timeout=30)
    cloud.api.wait_port_status(cloud.ports["a4"]["id"], "ACTIVE", timeout=15)
    cloud.api.wait_port_status(cloud.ports["a3"]["id"], "DOWN", timeout=15)
    flows1 = hv1.dump_flows()
    assert not any("metadata=0xfff" in f for f in flows1), "stale flow with our cookie survived"
    assert not any("group_id=5000" in g for g in _groups(hv1)), "stale group survived"
    assert any("cookie=0x42" in f for f in flows1), "a foreign flow on br-int was touched"
    assert any("cookie=0x43" in f for f in hv1.dump_flows("br-phy")), "br-phy was touched"
    for hv in cloud.lab.hvs[:2]:
        assert not any(a3_mac in f for f in hv.dump_flows()), f"{hv.name} still sends to a3"
    assert not _ours(hv3) or not any(a3_mac in f for f in hv3.dump_flows())
    _ping_warm(late, "10.62.0.12")
    cloud.figures["changes_while_down"] = {
        "flow_mods": st["flow_mods"],
        "group_mods": st["group_mods"],
    }
    hv1.ofctl("del-flows", "br-int", "cookie=0x42/-1")
    hv1.ofctl("del-flows", "br-phy", "cookie=0x43/-1")
    cloud.vms["a3"].plug()
    cloud.api.wait_port_status(cloud.ports["a3"]["id"], "ACTIVE", timeout=15)


@pytest.mark.parametrize("kill", [False, True], ids=["graceful", "sigkill"])
@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_vswitchd_restart_reinstalls_flows(cloud: Cloud, kill: bool) -> None:
    """ovs-vswitchd restarted on one host (``ovs-appctl exit``, or SIGKILL as in a crash) comes
    back with no OpenFlow flows; the controller reinstalls exactly what it had: every flow and
    group the same as before, compared in full."""
    hv2, a1 = cloud.lab.hv(2), cloud.vms["a1"]
    before = (_ours(hv2), _groups(hv2))
    pid_before = hv2._pid("ovs-vswitchd")
    st0 = cloud.api.status()
    _ping_warm(a1, "10.62.0.12")
    ping = a1.ping_background("10.62.0.12", interval=0.01)
    time.sleep(0.3)
    t0 = time.monotonic()
    hv2.restart_vswitchd(kill=kill)
    assert hv2._pid("ovs-vswitchd") not in (None, pid_before), "vswitchd was not restarted"
    _wait(lambda: (_ours(hv2), _groups(hv2)) == before, 30, "hv2's flows and groups restored")
    reinstalled_s = time.monotonic() - t0
    _wait(lambda: a1.ping("10.62.0.12", count=1, timeout=1).received, 30, "a1 reaches a2 again",
          interval=0)  # fmt: skip
    first_ping = time.monotonic() - t0
    time.sleep(0.3)
    stats = ping.stop()
    st1 = cloud.api.status()
    # The flows were really lost: the controller only sends what a switch it read back lacks,
    # and it had to send hv2 every one of its flows and groups again.
    sent_flows = st1["flow_mods"] - st0["flow_mods"]
    sent_groups = st1["group_mods"] - st0["group_mods"]
    cloud.figures[f"vswitchd_restart_{'kill' if kill else 'graceful'}"] = {
        "flows_reinstalled_s": round(reinstalled_s, 2), "first_ping_s": round(first_ping, 2),
        "flow_mods": sent_flows, "group_mods": sent_groups,
        "max_gap_ms": stats.max_gap_ms, "pings_lost": stats.sent - stats.received,
    }  # fmt: skip
    assert sent_flows >= len(before[0]) and sent_groups >= len(before[1]), (sent_flows, before)
    assert st1["openflow"]["connects"] > st0["openflow"]["connects"]
    assert stats.lost > 0, "no ping was lost: the datapath never went away"
    cloud.api.wait_port_status(cloud.ports["a2"]["id"], "ACTIVE", timeout=15)
    assert (_ours(hv2), _groups(hv2)) == before


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_host_down_and_back(cloud: Cloud) -> None:
    """Host's OVS daemons stopped: within HOST_DOWN_BOUND_S of the stop the host is
    disconnected and its ports DOWN, the others stay ACTIVE and keep forwarding; back: ACTIVE
    again with no manual step."""
    hv3, a1 = cloud.lab.hv(3), cloud.vms["a1"]
    a3 = cloud.ports["a3"]["id"]
    ping = a1.ping_background("10.62.0.12", interval=0.01)
    t0 = time.monotonic()  # before the daemons go: the clock includes noticing their exit
    hv3.stop_ovs()
    cloud.api.wait_port_status(a3, "DOWN", timeout=20)
    down_s = time.monotonic() - t0
    assert cloud.host_status("hv3") == "disconnected"
    for name in ("a1", "a2", "b1", "b2"):
        assert cloud.api.show("port", cloud.ports[name]["id"])["status"] == "ACTIVE", name
    time.sleep(1)
    hv3.start_ovs()
    t1 = time.monotonic()
    cloud.api.wait_port_status(a3, "ACTIVE", timeout=30)
    back_s = time.monotonic() - t1
    stats = ping.stop()
    _wait(lambda: cloud.host_status("hv3") == "connected", 30, "hv3 connected again")
    _ping_warm(a1, "10.62.0.13")
    cloud.figures["host_down"] = {
        "ports_down_after_s": round(down_s, 2),
        "ports_active_after_s": round(back_s, 2),
        "a1_a2_pings_lost": stats.sent - stats.received,
    }
    assert down_s <= HOST_DOWN_BOUND_S, f"hv3's ports DOWN only {down_s:.1f} s after the stop"
    assert stats.received == stats.sent, "traffic between the healthy hosts was hit"


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_management_partition(cloud: Cloud) -> None:
    """Management link of hv2 cut: the controller sees hv2 disconnected while forwarding
    continues; a port made during the partition reaches hv2 after it heals, and hv2 is
    connected again.

    The port made meanwhile is plugged on hv3, not on hv1 where the ping runs: plugging any
    interface into a userspace-datapath bridge can drop a tunnelled packet of that same host
    in OVS 3.1 (an OVS race, reproduced without tenantnet by `lab/ovs_plug_race.py`: README,
    Resilience), which cost this test 1 echo in ~6 full-suite runs.  The cut itself leaves hv2's
    link up (`Lab.cut_mgmt`): taking it down was such a link event on hv2, and cost 1 echo."""
    a1 = cloud.vms["a1"]
    ping = a1.ping_background("10.62.0.12", interval=0.01)
    cloud.lab.cut_mgmt(2)
    t0 = time.monotonic()
    try:
        seen_s = _wait(
            lambda: cloud.host_status("hv2") == "disconnected",
            30,
            "hv2 seen as disconnected during the partition",
            interval=0.2,
        )
        new = cloud.add_vm("A", 3, "a5", "10.62.0.15")
    finally:
        cloud.lab.heal_mgmt(2)
    t1 = time.monotonic()
    back_s = _wait(
        lambda: cloud.host_status("hv2") == "connected",
        30,
        "hv2 connected again after the heal",
        interval=0.1,
    )
    hv2, mac = cloud.lab.hv(2), cloud.ports["a5"]["mac_address"]
    # Reachability alone would pass through flooding; convergence means hv2 learnt the port.
    converged_s = _wait(
        lambda: any(mac in f for f in hv2.dump_flows()),
        30,
        "hv2 got the port made in the partition",
        interval=0.1,
    )
    _ping_warm(new, "10.62.0.12")
    stats = ping.stop()
    cloud.figures["partition"] = {
        "pings_lost": stats.sent - stats.received,
        "seen_disconnected_after_s": round(seen_s, 2),
        "partition_s": round(t1 - t0, 2),
        "connected_after_heal_s": round(back_s, 2),
        "converged_after_heal_s": round(back_s + converged_s, 2),
    }
    assert stats.received == stats.sent


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_hosts_not_back_after_the_startup_grace_have_their_ports_down(cloud: Cloud) -> None:
    """A host that does not come back after a controller restart is left alone for
    ``--startup-grace-s`` (its ports keep their status: it may just be slow to reconnect), then
    its ports go DOWN; the hosts that did come back are untouched, and the late host is
    reconciled (ports ACTIVE) when it returns."""
    hv3, a3 = cloud.lab.hv(3), cloud.ports["a3"]["id"]
    assert cloud.api.show("port", a3)["status"] == "ACTIVE"
    cloud.stop(signal.SIGKILL)
    hv3.stop_ovs()
    cloud.ctl.startup_grace_s = GRACE_S
    try:
        cloud.ctl.start()
        cloud.api.wait_hosts_connected(["hv1", "hv2"], timeout=20)
        # Left alone during the grace period, which runs from the data plane's start (`uptime_s`,
        # absent until it started; the process may take seconds to come up on a loaded machine).
        looked = 0
        while cloud.api.status().get("uptime_s", 0) < GRACE_S - 0.5:
            assert cloud.api.show("port", a3)["status"] == "ACTIVE", "hv3's port changed early"
            looked += 1
            time.sleep(0.2)
        assert looked, "the grace period was over before the test could look"
        _wait(
            lambda: cloud.api.show("port", a3)["status"] == "DOWN",
            HOST_DOWN_BOUND_S,
            "hv3's port DOWN after the grace period",
        )
        down_s = cloud.api.status()["uptime_s"]
        assert cloud.api.show("host", "hv3")["status"] == "disconnected"
        for name in ("a1", "a2", "b1", "b2"):
            assert cloud.api.show("port", cloud.ports[name]["id"])["status"] == "ACTIVE", name
        hv3.start_ovs()
        cloud.api.wait_port_status(a3, "ACTIVE", timeout=30)
        _ping_warm(cloud.vms["a1"], "10.62.0.13")
    finally:
        hv3.start_ovs()
        cloud.ctl.startup_grace_s = 5
    cloud.figures["startup_grace"] = {"grace_s": GRACE_S, "down_after_start_s": round(down_s, 2)}


@dataclass
class _Ledger:
    """What the API acknowledged during the crash rounds, and what was in flight at a kill.

    Each worker only touches ports it created itself, so every outcome is known exactly: a
    port is either settled (``names``: created or renamed with a 2xx, ``gone``: deleted with a
    204) or was the object of a request in flight at a kill (``maybe``: the acceptable names,
    ``None`` meaning "deleted"), after which nobody touches it again."""

    names: dict[str, str] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    maybe: dict[str, set[str | None]] = field(default_factory=dict)
    maybe_created: set[str] = field(default_factory=set)  # names of creates in flight at a kill
    owner: dict[str, int] = field(default_factory=dict)  # port id -> the worker that made it
    acked: dict[str, int] = field(default_factory=lambda: {"create": 0, "rename": 0, "delete": 0})
    in_flight_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


def _crash_worker(
    api: Api,
    net_id: str,
    wid: int,
    rnd: int,
    ledger: _Ledger,
    killed_at: list[float],
    stop: threading.Event,
    errors: list[str],
) -> None:
    """Creates, renames and deletes its own ports until ``stop``.  A failure (no answer, or a
    5xx) is accepted only for a request still in flight when the kill started
    (``killed_at``); anything else, and any 4xx, is recorded in ``errors``."""
    rng = random.Random(wid * 1000 + rnd)
    n = 0
    while not stop.is_set() and not errors:
        n += 1
        op = rng.random()
        with ledger.lock:
            mine = [pid for pid, w in ledger.owner.items() if w == wid and pid in ledger.names]
        # At most 8 live ports per worker: the /24 must never run out of addresses.
        if not mine or (len(mine) < 8 and op < 0.5):
            kind, pid, name = "create", "", f"crash-{wid}-{rnd}-{n}"
        elif op < 0.75:
            kind, pid, name = "rename", rng.choice(mine), f"renamed-{wid}-{rnd}-{n}"
        else:
            kind, pid, name = "delete", rng.choice(mine), ""
        try:
            if kind == "create":
                port = api.create("port", network_id=net_id, name=name)
                with ledger.lock:
                    ledger.names[port["id"]] = name
                    ledger.owner[port["id"]] = wid
            elif kind == "rename":
                got = api.update("port", pid, name=name)
                assert got["name"] == name, got
                with ledger.lock:
                    ledger.names[pid] = name
            else:
                api.delete("port", pid)
                with ledger.lock:
                    del ledger.names[pid]
                    ledger.gone.add(pid)
            with ledger.lock:
                ledger.acked[kind] += 1
        except (*_TRANSPORT_ERRORS, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status < 500:
                errors.append(f"{kind} {pid or name}: {exc}")
                return
            if not killed_at or time.monotonic() < killed_at[0]:
                errors.append(f"{kind} {pid or name} failed while the process was up: {exc!r}")
                return
            with ledger.lock:
                ledger.in_flight_failures += 1
                if kind == "create":
                    ledger.maybe_created.add(name)
                else:
                    ledger.maybe[pid] = {ledger.names.pop(pid), name if kind == "rename" else None}
            return  # the process is gone: this worker's round is over


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_api_crash_safety(cloud: Cloud) -> None:
    """20 rounds of SIGKILL during concurrent creates, renames and deletes: every acknowledged
    write is there exactly (names included), no acknowledged delete comes back, only requests in
    flight at a kill may fail, nothing is half-written; then some of the surviving ports are
    plugged and the data plane matches the store on every host."""
    rng = random.Random(62)
    net_id = cloud.nets["B"]["id"]
    ledger, errors = _Ledger(), list[str]()
    # On etcd every round also kills the instance between etcd's acknowledgement and its local
    # commit at times; 10 rounds there (each one a controller start) keep the suite's cost down,
    # the API paths themselves are the same as on the other clouds' 20.
    rounds = 10 if cloud.transport == "etcd" else 20
    for rnd in range(rounds):
        stop, killed_at = threading.Event(), list[float]()
        threads = [
            threading.Thread(target=_crash_worker, args=(
                Api(cloud.api.base, timeout=5, ssl_context=cloud.api.ssl_context),
                net_id, w, rnd, ledger, killed_at, stop, errors))
            for w in range(4)
        ]  # fmt: skip
        acked_before = sum(ledger.acked.values())
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 0.6))
        # On a loaded machine the API may have answered little yet: kill only after some
        # acknowledged writes, so that every round puts something at stake.

        def at_stake(n: int = acked_before) -> bool:
            return sum(ledger.acked.values()) - n >= 8 or bool(errors)

        _wait(at_stake, 10, "8 acknowledged writes in the round")
        killed_at.append(time.monotonic())
        cloud.ctl.kill()
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        cloud.ctl.start()
    cloud.api.wait_reconciled(timeout=30)

    stored = {p["id"]: p for p in cloud.api.list("port", f"network_id={net_id}")}
    crash = {pid: p for pid, p in stored.items() if p["name"].startswith(("crash-", "renamed-"))}
    lost = {pid: n for pid, n in ledger.names.items() if pid not in stored}
    assert not lost, f"{len(lost)} acknowledged creates/renames lost: {lost}"
    wrong = {pid: (n, stored[pid]["name"]) for pid, n in ledger.names.items()
             if stored[pid]["name"] != n}  # fmt: skip
    assert not wrong, f"acknowledged names not stored exactly (acked, stored): {wrong}"
    back = ledger.gone & set(stored)
    assert not back, f"acknowledged deletes came back: {back}"
    for pid, names in ledger.maybe.items():
        assert (stored[pid]["name"] if pid in stored else None) in names, (pid, names)
    unknown = {pid: p["name"] for pid, p in crash.items()
               if pid not in ledger.names and pid not in ledger.maybe}  # fmt: skip
    assert set(unknown.values()) <= ledger.maybe_created, f"ports nobody created: {unknown}"
    for p in stored.values():
        assert p["mac_address"] and p["fixed_ips"], f"half-written port {p}"
    macs = [p["mac_address"] for p in stored.values()]
    assert len(macs) == len(set(macs))
    # The rounds did real work: every kind of write was acknowledged many times.
    # (Measured 120-450 creates, 90-690 renames, 60-370 deletes, depending on the load.)
    assert ledger.acked["create"] >= 2 * rounds, ledger.acked
    assert min(ledger.acked["rename"], ledger.acked["delete"]) >= rounds // 2, ledger.acked

    # Plug a few of the surviving crash-made ports: they must be bound and wired like any other.
    survivors = sorted(ledger.names)
    assert len(survivors) >= 4
    plugged = []
    for i, pid in enumerate(rng.sample(survivors, 4)):
        p = stored[pid]
        ip = p["fixed_ips"][0]["ip_address"]
        vm = cloud.lab.add_vm(1 + i % 2, f"cr{i}", p["mac_address"], f"{ip}/24", pid)
        cloud.vms[vm.name], cloud.ports[vm.name] = vm, p
        plugged.append(vm)
    cloud.api.wait_ports_active([vm.iface_id for vm in plugged])
    _ping_warm(plugged[0], plugged[1].ip)
    _ping_warm(plugged[1], "10.62.0.21")
    _assert_dataplane_matches_store(cloud)
    cloud.figures["crash_safety"] = {
        "rounds": rounds,
        **{f"acked_{k}s": v for k, v in ledger.acked.items()},
        "failed_in_flight": ledger.in_flight_failures,
        "in_flight_creates_stored": len(unknown),
    }


def _assert_dataplane_matches_store(cloud: Cloud) -> None:
    """Per host, from what the lab has plugged (not from what the controller reports): every
    plugged port is ACTIVE and bound where it is plugged, and the unicast MACs in table 2 are
    exactly the plugged ports of the networks the host has a plugged port in."""
    ports = {p["id"]: p for p in cloud.api.list("port")}
    plugged = {vm.iface_id: vm.hv.name for vm in cloud.lab.vms.values() if vm.plugged}
    for pid, host in plugged.items():
        p = ports[pid]
        assert (p["status"], p["binding:host_id"]) == ("ACTIVE", host), p
    for hv in cloud.lab.hvs:
        mine = {ports[pid]["network_id"] for pid, h in plugged.items() if h == hv.name}
        expected = {
            ports[pid]["mac_address"] for pid in plugged if ports[pid]["network_id"] in mine
        }
        seen = set()
        for f in hv.dump_flows():
            if (
                "table=2" in f
                and "cookie=0x7e4e" in f
                and (m := re.search(r"dl_dst=([0-9a-f:]{17})", f))
            ):
                seen.add(m.group(1))
        assert seen == expected, f"{hv.name}: flows {sorted(seen)} != store {sorted(expected)}"


def _tenantnet_left_on(hv: Hypervisor) -> dict[str, Any]:
    """What tenantnet may have put on a host, as the host's own OVS reports it."""
    if not hv.has_bridge("br-int"):
        return {"br-int": False}
    ports = hv.vsctl("list-ports", "br-int").split()
    return {
        "br-int": True,
        "flows": _ours(hv),
        "groups": _groups(hv),
        "controller": hv.vsctl("get-controller", "br-int"),
        "tunnel ports": [p for p in ports if p.startswith("tn-")],
    }


def _is_empty_of_tenantnet(hv: Hypervisor) -> bool:
    """br-int is there (VMs are on it) but nothing of tenantnet is."""
    empty = {"br-int": True, "flows": [], "groups": [], "controller": "", "tunnel ports": []}
    return _tenantnet_left_on(hv) == empty


@pytest.mark.parametrize("cloud", WITH_ETCD, indirect=True)
def test_host_removal(cloud: Cloud) -> None:
    """DELETE of hosts (one, then a group of two as when a cluster goes): their flows, groups,
    tunnel ports and controller target vanish, br-int too when nothing else is on it (and stays
    with the VMs' interfaces otherwise); every flow pointing at them vanishes from the other
    hosts; their ports are unbound and DOWN."""
    lab = cloud.lab
    hv1, hv2, hv3 = lab.hv(1), lab.hv(2), lab.hv(3)
    assert _tenantnet_left_on(hv3)["groups"] and _tenantnet_left_on(hv3)["controller"]
    # hv3's br-int then carries nothing but tenantnet's own ports (a3, and a5 when the
    # partition test ran before)
    on_hv3 = sorted(n for n, vm in cloud.vms.items() if vm.hv.name == hv3.name and vm.plugged)
    assert "a3" in on_hv3
    for name in on_hv3:
        cloud.vms[name].unplug()
    for name in on_hv3:
        cloud.api.wait_port_status(cloud.ports[name]["id"], "DOWN", timeout=15)
    cloud.api.delete("host", "hv3")
    ip3 = hv3.tunnel_ip

    def mentions(hv: Any, ip: str) -> bool:
        return any(ip in line for line in hv.dump_flows() + _groups(hv))

    _wait(lambda: not mentions(hv1, ip3) and not mentions(hv2, ip3), 15,
          "hv1 and hv2 forget hv3")  # fmt: skip
    _wait(lambda: not hv3.has_bridge("br-int"), 15, "hv3's empty br-int removed")
    for name in on_hv3:
        port = cloud.api.show("port", cloud.ports[name]["id"])
        assert not port["binding:host_id"] and port["status"] == "DOWN", port
    _ping_warm(cloud.vms["a1"], "10.62.0.12")
    # a group of hosts at once; their br-int keeps the VMs' interfaces, so it stays
    bound = [p["id"] for p in cloud.api.list("port") if p["binding:host_id"] in ("hv1", "hv2")]
    assert bound
    cloud.api.delete("host", "hv1")
    cloud.api.delete("host", "hv2")
    for hv in (hv1, hv2):
        _wait(functools.partial(_is_empty_of_tenantnet, hv), 15, f"{hv.name} emptied of tenantnet")
        assert hv.vsctl("list-ports", "br-int").split(), "the VMs' interfaces were removed"
    ports = {p["id"]: p for p in cloud.api.list("port")}
    assert all((ports[pid]["binding:host_id"], ports[pid]["status"]) == ("", "DOWN")
               for pid in bound), [ports[pid] for pid in bound]  # fmt: skip
    assert cloud.api.list("host") == []
