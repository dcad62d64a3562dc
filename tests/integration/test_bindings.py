"""Bindings that cannot be stolen (controller/dataplane/bindings.py), on real OVS with real
packets.

Issue 10's attack: anyone who reaches a hypervisor's OVSDB can plug an interface with
``external_ids:iface-id=<victim port>``.  It used to move the victim's port to that host (last
claim wins), and after the thief left the victim stayed bound there, DOWN, with no flows,
although still plugged on its own host.  Now the first claim holds (or the host the
orchestrator requested in ``binding:host_id``), the thief's host gets no flows for the port,
and the conflict is visible through the API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.hypervisors import Hypervisor, Lab, Vm
from lab.tenantnet_proc import Api, TenantnetProcess
from tests.integration.controller_env import start_registered

REFUSED = "tenantnet_refused_hosts"  # controller/store/ports.py REFUSED_HOSTS


@dataclass
class Env:
    lab: Lab
    ctl: TenantnetProcess
    net: dict[str, Any]
    subnet: dict[str, Any]

    @property
    def api(self) -> Api:
        return self.ctl.api

    def port(self, ip: str, **fields: Any) -> dict[str, Any]:
        return self.api.create(
            "port",
            network_id=self.net["id"],
            fixed_ips=[{"subnet_id": self.subnet["id"], "ip_address": ip}],
            **fields,
        )

    def vm(self, hv: int, name: str, port: dict[str, Any], ip: str) -> Vm:
        return self.lab.add_vm(hv, name, port["mac_address"], f"{ip}/24", port["id"])


@pytest.fixture(scope="module", params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def env(
    request: pytest.FixtureRequest, make_module_lab: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The controller on the embedded store, and again on the suite's etcd cluster (one
    instance owning every host: its observations go through the replicated store)."""
    store_args: tuple[str, ...] = ()
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd_cluster")
        store_args = ("--store", etcd.url, "--etcd-prefix", f"/bindings-{uuid.uuid4().hex}/")
    lab = make_module_lab(3)
    ctl = start_registered(lab, tmp_path_factory.mktemp("tenantnet-bindings"), store_args)
    try:
        net = ctl.api.create("network", name="bind")
        sub = ctl.api.create("subnet", network_id=net["id"], cidr="10.65.0.0/24", ip_version=4)
        yield Env(lab, ctl, net, sub)
    finally:
        ctl.stop()


@pytest.fixture
def peer(env: Env) -> Iterator[Vm]:
    """A VM on hv3 that talks to the port under test."""
    port = env.port("10.65.0.30")
    vm = env.vm(3, "peer", port, "10.65.0.30")
    env.api.wait_port_status(port["id"], "ACTIVE")
    yield vm
    env.lab.remove_vm(vm)
    env.api.delete("port", port["id"])


def _in_port_flows(hv: Hypervisor, vm: Vm) -> list[str]:
    """tenantnet's flows on ``hv`` matching traffic from ``vm``'s interface."""
    ofport = vm.ofport()
    return [f for f in hv.dump_flows() if "cookie=0x7e4e" in f and f"in_port={ofport}," in f]


def _wait_for(pred: Any, what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _refused(env: Env, port: dict[str, Any]) -> list[str]:
    return env.api.show("port", port["id"])["binding:vif_details"].get(REFUSED, [])


def test_port_theft_is_refused_and_the_victim_keeps_its_host(env: Env, peer: Vm) -> None:
    lab = env.lab
    victim_port = env.port("10.65.0.11")
    victim = env.vm(1, "victim", victim_port, "10.65.0.11")
    env.api.wait_port_status(victim_port["id"], "ACTIVE")
    peer.wait_reachable(victim.ip)
    conflicts = env.api.status()["binding_conflicts"]

    # the attack: an interface on hv2 claiming the victim's port (and its MAC and IP)
    thief = env.vm(2, "thief", victim_port, "10.65.0.11")
    _wait_for(lambda: _refused(env, victim_port) == ["hv2"], "the conflict to be shown")
    shown = env.api.show("port", victim_port["id"])
    assert shown["binding:host_id"] == "hv1" and shown["status"] == "ACTIVE"
    assert env.api.status()["binding_conflicts"] == conflicts + 1
    assert _in_port_flows(lab.hv(1), victim), "the victim lost its flows"
    assert not _in_port_flows(lab.hv(2), thief), "the thief's host got flows for the port"
    assert peer.ping(victim.ip, count=3).received == 3  # still delivered to hv1
    assert thief.ping(peer.ip, count=3).received == 0  # the thief's traffic is dropped

    # the thief leaves: nothing moves, the conflict clears
    lab.remove_vm(thief)
    _wait_for(lambda: _refused(env, victim_port) == [], "the conflict to clear")
    shown = env.api.show("port", victim_port["id"])
    assert shown["binding:host_id"] == "hv1" and shown["status"] == "ACTIVE"
    assert _in_port_flows(lab.hv(1), victim)
    assert peer.ping(victim.ip, count=3).received == 3
    lab.remove_vm(victim)
    env.api.delete("port", victim_port["id"])


def test_the_port_is_rebound_where_it_is_still_plugged_when_the_holder_unplugs(
    env: Env, peer: Vm
) -> None:
    lab = env.lab
    port = env.port("10.65.0.12")
    first = env.vm(1, "first", port, "10.65.0.12")
    env.api.wait_port_status(port["id"], "ACTIVE")
    second = env.vm(2, "second", port, "10.65.0.12")
    _wait_for(lambda: _refused(env, port) == ["hv2"], "the second claim to be refused")
    assert not _in_port_flows(lab.hv(2), second)

    first.unplug()  # the holder's interface goes: the host that still has it plugged takes over
    _wait_for(
        lambda: env.api.show("port", port["id"])["binding:host_id"] == "hv2",
        "the port to be rebound to hv2",
    )
    env.api.wait_port_status(port["id"], "ACTIVE")
    assert _refused(env, port) == []
    assert _in_port_flows(lab.hv(2), second)
    peer.wait_reachable(second.ip)
    lab.remove_vm(first)
    lab.remove_vm(second)
    env.api.delete("port", port["id"])


def test_live_migration_moves_the_binding_with_binding_host_id(env: Env, peer: Vm) -> None:
    """The orchestrator requested hv1; the VM is plugged on hv2 too for a moment (refused),
    then binding:host_id is updated to hv2, then the VM is unplugged from hv1."""
    lab = env.lab
    port = env.port("10.65.0.13", **{"binding:host_id": "hv1"})
    src = env.vm(1, "src", port, "10.65.0.13")
    env.api.wait_port_status(port["id"], "ACTIVE")
    dst = env.vm(2, "dst", port, "10.65.0.13")
    _wait_for(lambda: _refused(env, port) == ["hv2"], "the destination to be refused for now")
    assert not _in_port_flows(lab.hv(2), dst)

    env.api.update("port", port["id"], **{"binding:host_id": "hv2"})
    _wait_for(lambda: _in_port_flows(lab.hv(2), dst), "flows on the destination")
    _wait_for(lambda: _refused(env, port) == ["hv1"], "the source to be refused")
    assert not _in_port_flows(lab.hv(1), src)
    shown = env.api.show("port", port["id"])
    assert shown["binding:host_id"] == "hv2" and shown["status"] == "ACTIVE"

    src.unplug()
    _wait_for(lambda: _refused(env, port) == [], "the source's claim to go")
    assert env.api.show("port", port["id"])["status"] == "ACTIVE"
    peer.wait_reachable(dst.ip)
    lab.remove_vm(src)
    lab.remove_vm(dst)
    env.api.delete("port", port["id"])


def test_a_requested_host_refuses_every_other_host(env: Env) -> None:
    """binding:host_id names hv3 but the port is plugged on hv1 only: not bound, no flows,
    DOWN, the conflict shown (issue 12: a conflicting binding:host_id)."""
    lab = env.lab
    port = env.port("10.65.0.14", **{"binding:host_id": "hv3"})
    vm = env.vm(1, "elsewhere", port, "10.65.0.14")
    _wait_for(lambda: _refused(env, port) == ["hv1"], "the claim on hv1 to be refused")
    shown = env.api.show("port", port["id"])
    assert shown["binding:host_id"] == "hv3" and shown["status"] == "DOWN"
    assert not _in_port_flows(lab.hv(1), vm)
    lab.remove_vm(vm)
    env.api.delete("port", port["id"])
