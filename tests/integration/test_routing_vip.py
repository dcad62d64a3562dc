"""Routed traffic to an allowed-address-pair virtual IP (VRRP, keepalived, load balancers) on
real OVS: the holder learnt from its gratuitous ARP (controller/dataplane/vips.py), followed
when the VIP moves.  Same lab and router set-up as tests/integration/test_routing.py."""

from __future__ import annotations

import time

import pytest

from lab.hypervisors import Vm
from tests.integration import dataplane_fixtures
from tests.integration.dataplane_fixtures import (
    DataplaneEnv,
    Tenancy,
    arp_frame,
    send_frames,
    wait_for,
)
from tests.integration.sg_probes import settle
from tests.integration.test_routing import groups as _groups
from tests.integration.test_routing import project

pytestmark = pytest.mark.ovs

dp_env = dataplane_fixtures.dp_env
tenancy = dataplane_fixtures.tenancy
groups = _groups

BROADCAST = "ff:ff:ff:ff:ff:ff"


def garp(vm: Vm, vip: str) -> None:
    """One gratuitous ARP request for ``vip`` from ``vm`` (what keepalived sends on taking it)."""
    frame = arp_frame(vm.mac, BROADCAST, 1, vm.mac, vip, "00:00:00:00:00:00", vip)
    send_frames(vm, [frame], repeat=1)


def test_routed_traffic_to_a_vip_reaches_its_holder_and_follows_it(
    tenancy: Tenancy, groups: list[dict[str, object]], dp_env: DataplaneEnv
) -> None:
    """A (hv1) and B (hv2) in subnet 1 share VIP V as an address pair; C (hv3) is in subnet 2
    behind the router.  Nothing routes V until someone announces it; A's GARP makes C's pings
    reach A; B taking V (A drops it, B adds it: C's pings fail until B announces it) moves the
    route to B within 2 s of B's GARP."""
    proj = project(tenancy, groups, "tenant-vip", cidrs=("10.0.41.0/24", "10.0.42.0/24"))
    n1, n2 = proj.nets
    vip = "10.0.41.100"
    pairs = [{"ip_address": vip}]
    a = proj.vm(1, "vipa", n1, "10.0.41.11", allowed_address_pairs=pairs)
    b = proj.vm(2, "vipb", n1, "10.0.41.12", allowed_address_pairs=pairs)
    c = proj.vm(3, "vipc", n2, "10.0.42.13")
    tenancy.wait_active([a, b, c])
    settle(dp_env)
    api = dp_env.api

    def holder() -> list[str]:
        return [vm.name for vm in (a, b)
                if vip in api.show("port", vm.iface_id)["binding:vif_details"].get(
                    "tenantnet_vips", ())]  # fmt: skip

    a.exec("ip", "addr", "add", f"{vip}/32", "dev", "eth0")
    assert c.ping(vip, count=1, timeout=0.5).received == 0  # not announced: not routed
    garp(a, vip)
    t_a = c.wait_reachable(vip, timeout=2)
    assert holder() == ["vipa"]
    # A answers: the echo replies come from A's MAC through the router
    assert c.ping(vip, count=3, interval=0.1).received == 3  # only A has V: A answers

    # B takes V
    a.exec("ip", "addr", "del", f"{vip}/32", "dev", "eth0")
    b.exec("ip", "addr", "add", f"{vip}/32", "dev", "eth0")
    assert c.ping(vip, count=1, timeout=0.5).received == 0  # still routed to A, which dropped it
    t0 = time.monotonic()
    garp(b, vip)
    t_b = c.wait_reachable(vip, timeout=2)
    moved = round(time.monotonic() - t0, 3)
    wait_for(lambda: holder() == ["vipb"], timeout=2, what="the store showing B as the holder")
    assert c.ping(vip, count=3, interval=0.1).received == 3
    print(f"\nVIP first announced -> reachable {t_a:.3f} s; moved to B -> reachable {t_b:.3f} s "
          f"({moved:.3f} s from B's GARP)")  # fmt: skip
