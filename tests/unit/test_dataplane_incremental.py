"""The per-port path must leave every switch exactly where a whole recompile would.

Random sequences of port operations (create, plug, unplug, move, update MAC pairs, admin state,
port security, delete), sometimes several per step so that both paths run, against the data
plane with faked switches and OVSDB.  After every step each host's flows and groups must equal a
from-scratch compile of the store and the observed bindings; and the per-port path must have
carried most of the work, or this test would prove nothing about it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from controller.dataplane.views import (
    LocatedPort,
    host_context,
    local_port_of,
    remote_port_of,
    segment_of,
)
from controller.southbound.ovsdb_host import datapath_id_for
from controller.store.errors import StoreError
from flows.compiler import compile_base, compile_network
from flows.diff import merge
from flows.model import LocalPort, NetworkView, RemotePort, Slice
from tests.unit.test_dataplane import TUNNELS, Cloud, FakeAgent

pytest_plugins = ["tests.unit.test_dataplane"]  # the `cloud` fixture

HOSTS = ("hv1", "hv2", "hv3")
MACS = [f"fa:16:3e:00:00:{i:02x}" for i in range(1, 13)]


def reference_view(
    network: dict[str, Any],
    located: list[LocatedPort],
    host_id: str,
    host_ofports: Mapping[str, int],
    tunnel_ips: Mapping[str, str],
) -> NetworkView:
    """What `host_id` should compile for `network`, built straight from the port records: the
    data plane builds it from its per-port compile record instead, and must agree."""
    local: list[LocalPort] = []
    remote: list[RemotePort] = []
    peers: set[str] = set()
    for lp in located:
        if lp.host_id is None:
            continue
        p = lp.port
        if lp.host_id == host_id:
            ofport = host_ofports.get(p["id"])
            if ofport is not None:
                local.append(local_port_of(p, ofport))
        else:
            ip = tunnel_ips.get(lp.host_id)
            if ip is None:
                continue
            remote.append(remote_port_of(p, ip))
            peers.add(ip)
    seg = segment_of(network)
    return NetworkView(
        key=seg.key,
        seg_type=seg.seg_type,
        seg_id=seg.seg_id,
        local_ports=tuple(local),
        remote_ports=tuple(remote),
        peer_ips=tuple(sorted(peers)),
    )


def expected(cloud: Cloud, host: str) -> Slice:
    """What `host` should hold: base + every network it has a located port of, compiled whole."""
    where = {pid: h for h, a in FakeAgent.instances.items() for pid in a.bindings}
    tunnel_ips = {h: f"10.9.0.{n}" for n, h in enumerate(HOSTS, 1)}
    ctx = host_context(tunnel_ips[host], TUNNELS)
    slices = [compile_base(ctx)]
    for net in cloud.store.list_networks():
        located = [
            LocatedPort(p, where.get(p["id"])) for p in cloud.store.list_ports(network_id=net["id"])
        ]
        if any(lp.host_id == host for lp in located):
            ofports = FakeAgent.instances[host].bindings
            view = reference_view(net, located, host, ofports, tunnel_ips)
            slices.append(compile_network(ctx, view))
    return merge(slices)


def _step(cloud: Cloud, rnd: random.Random, nets: list[dict[str, Any]]) -> None:
    ports = cloud.store.list_ports()
    plugged = {pid: h for h, a in FakeAgent.instances.items() for pid in a.bindings}
    op = rnd.choice(["create", "create", "plug", "plug", "unplug", "move", "pairs", "admin",
                     "security", "delete"])  # fmt: skip
    port = rnd.choice(ports) if ports else None
    try:
        if op == "create" or port is None:
            cloud.store.create_port(
                {"network_id": rnd.choice(nets)["id"], "mac_address": rnd.choice(MACS)}
            )
        elif op == "plug" and port["id"] not in plugged:
            agent = FakeAgent.instances[rnd.choice(HOSTS)]
            used = set(agent.bindings.values())
            agent.plug(port["id"], min(set(range(1, 40)) - used))
        elif op == "unplug" and port["id"] in plugged:
            FakeAgent.instances[plugged[port["id"]]].unplug(port["id"])
        elif op == "move" and port["id"] in plugged:
            FakeAgent.instances[plugged[port["id"]]].unplug(port["id"])
            agent = FakeAgent.instances[rnd.choice(HOSTS)]
            agent.plug(port["id"], min(set(range(1, 40)) - set(agent.bindings.values())))
        elif op == "pairs":
            pairs = [{"ip_address": f"10.1.9.{rnd.randint(1, 9)}", "mac_address": rnd.choice(MACS)}]
            cloud.store.update(
                "port", port["id"], {"allowed_address_pairs": pairs[: rnd.randint(0, 1)]}
            )
        elif op == "admin":
            cloud.store.update("port", port["id"], {"admin_state_up": not port["admin_state_up"]})
        elif op == "security":
            cloud.store.update(
                "port", port["id"],
                {"port_security_enabled": not port["port_security_enabled"],
                 "allowed_address_pairs": []},
            )  # fmt: skip
        elif op == "delete":
            if port["id"] in plugged:
                FakeAgent.instances[plugged[port["id"]]].unplug(port["id"])
            cloud.store.delete("port", port["id"])
    except StoreError:
        pass  # e.g. a MAC already used in that network: the API would answer 409


@pytest.mark.parametrize("seed", range(6))
def test_random_port_operations_match_a_full_recompile(cloud: Cloud, seed: int) -> None:
    rnd = random.Random(seed)
    cloud.start(hosts=len(HOSTS))
    nets = [cloud.network(), cloud.network("gre"), cloud.network()]
    for step in range(80):
        for _ in range(1 if rnd.random() < 0.8 else rnd.randint(2, 4)):
            _step(cloud, rnd, nets)
        cloud.idle()
        for host in HOSTS:
            got = cloud.switches.installed(datapath_id_for(host))
            want = expected(cloud, host)
            assert got.rules == want.rules, (seed, step, host)
            assert got.groups == want.groups, (seed, step, host)
    assert cloud.dp.stats.ports_patched > 40
