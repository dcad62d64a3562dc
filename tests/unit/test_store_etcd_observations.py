"""The data plane's observations (port statuses, bindings, host states) while the etcd cluster
has no quorum: held, latest value per object, never raising and never trying a cluster known
to be down, and written once it is back (issue 18, second step); and a virtual IP's holder
learnt on one instance, as every replica sees it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from controller.events import EventBus
from controller.store.etcd_log import EtcdLog, EtcdUnavailable
from controller.store.etcd_settings import EtcdSettings
from controller.store.pending import Observations, PendingObservations
from controller.store.replicated import EtcdStore
from tests.unit.test_store import make_net_with_subnet
from tests.unit.test_store_etcd import (  # noqa: F401  (a fixture)
    hold_appends,
    restore_members,
    wait_for,
)


def test_held_observations_keep_the_latest_value_and_queue_while_written() -> None:
    pending = PendingObservations()
    assert not pending.add_if_holding(Observations(statuses={"p": "DOWN"}))  # write it now
    pending.hold(Observations(statuses={"p": "DOWN"}, hosts={"h": ("connected", "1")}))
    assert pending.add_if_holding(Observations(statuses={"p": "ACTIVE"}, bindings={"p": "h"}))
    taken = pending.take()
    assert taken == Observations(
        statuses={"p": "ACTIVE"}, bindings={"p": "h"}, hosts={"h": ("connected", "1")}
    )
    # observed while that write ran: queued (not written before it), and newer than it
    assert pending.add_if_holding(Observations(statuses={"p": "DOWN"}))
    pending.give_back(taken)  # the write failed
    again = pending.take()
    assert again is not None and again.statuses == {"p": "DOWN"} and again.bindings == {"p": "h"}
    assert pending.take() is None  # nothing left: holding ends
    assert not pending.holding and not pending.add_if_holding(Observations(statuses={"p": "x"}))


def hold_a_status(store: EtcdStore, port_id: str, monkeypatch: Any) -> None:
    """An ACTIVE status observed while every append fails as never sent: held, not written."""
    real_append = EtcdLog.append

    def unavailable(log: EtcdLog, *args: Any) -> bool:
        raise EtcdUnavailable("injected", maybe_sent=False)

    monkeypatch.setattr(EtcdLog, "append", unavailable)
    store.set_ports_observed(statuses={port_id: "ACTIVE"})
    assert store._pending.holding
    monkeypatch.setattr(EtcdLog, "append", real_append)


@pytest.mark.etcd
def test_observations_during_quorum_loss_are_held_then_written(
    tmp_path: Path,
    etcd_settings: EtcdSettings,
    restore_members: Any,  # noqa: F811  (the fixture imported above)
    monkeypatch: Any,
) -> None:
    cluster = restore_members
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=0.2)
    other = EtcdStore(str(tmp_path / "b.db"), EventBus(), etcd_settings, poll_s=0.2)
    try:
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        store.create_host({"id": "hv1", "tunnel_ip": "192.0.2.10"})
        appends: list[int] = []
        real_append = EtcdLog.append
        monkeypatch.setattr(
            EtcdLog, "append", lambda log, *a: appends.append(1) or real_append(log, *a)
        )
        cluster.stop_member(cluster.members[0])
        cluster.stop_member(cluster.members[1])
        wait_for(lambda: store.down, "the follower noticing the lost quorum", timeout=60)
        # known down: held at once, the cluster is not even tried (a timeout per member)
        store.set_ports_observed(statuses={port["id"]: "DOWN"}, bindings={port["id"]: "hv1"})
        store.set_ports_observed(statuses={port["id"]: "ACTIVE"})
        assert store.set_host_state("hv1", "connected", "00000000000000aa") is None
        assert appends == []
        assert store.get_port(port["id"])["binding:host_id"] == ""  # not written yet
        for m in cluster.members[:2]:
            cluster.start_member(m)
        cluster.wait_healthy(60)

        def written() -> bool:
            seen = other.get_port(port["id"])
            host = other.get_host("hv1")
            return (
                seen is not None
                and seen["status"] == "ACTIVE"  # the latest, not the first one held
                and seen["binding:host_id"] == "hv1"
                and host is not None
                and host["status"] == "connected"
            )

        wait_for(written, "the held observations written once quorum is back", timeout=60)
        # the writer ends the holding when it next finds nothing left, just after the write
        # that `other` already sees (CI once asserted in between)
        wait_for(lambda: not store._pending.holding, "the holding ended", timeout=10)
        # and observations go straight to the cluster again
        store.set_ports_observed(statuses={port["id"]: "DOWN"})
        assert appends and other.get("port", port["id"])["status"] == "DOWN"
    finally:
        store.close()
        other.close()


@pytest.mark.etcd
def test_an_observation_the_cluster_fails_is_held_then_written(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: Any
) -> None:
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=0.2)
    try:
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        hold_a_status(store, port["id"], monkeypatch)  # raises nothing
        assert store.get_port(port["id"])["status"] == "DOWN"
        wait_for(lambda: not store._pending.holding, "the follower writing what was held")
        assert store.get("port", port["id"])["status"] == "ACTIVE"
    finally:
        store.close()


@pytest.mark.etcd
def test_an_observation_never_waits_behind_a_write_waiting_for_etcd(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API write held by a slow cluster holds the writer lock; the data plane's actor
    writing a port status or host state meanwhile returns at once (held), and the follower
    writes it once the write is through."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=0.2)
    try:
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        store.create_host({"id": "hv1", "tunnel_ip": "192.0.2.10"})
        before = store.get_port(port["id"])
        entered, release = hold_appends(store, monkeypatch)
        writer = threading.Thread(target=lambda: store.create_network({}))

        def observe() -> None:
            store.set_ports_observed(statuses={port["id"]: "ACTIVE"}, bindings={port["id"]: "hv1"})
            store.set_host_state("hv1", "connected", "00000000000000aa")

        observer = threading.Thread(target=observe)
        try:
            writer.start()
            assert entered.wait(20), "the write never reached etcd"
            observer.start()
            observer.join(20)  # a bound on the old code's wait for the lock
            assert not observer.is_alive(), "the data plane waited behind an API write"
            assert store.get_port(port["id"]) == before  # held, not written yet
        finally:
            release.set()
            writer.join(60)

        def written() -> bool:
            seen, host = store.get_port(port["id"]), store.get_host("hv1")
            return (
                seen is not None
                and seen["status"] == "ACTIVE"
                and seen["binding:host_id"] == "hv1"
                and host is not None
                and host["status"] == "connected"
            )

        wait_for(written, "the held observations written by the follower")
    finally:
        store.close()


@pytest.mark.etcd
def test_an_observation_is_not_committed_once_the_members_lease_ended(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """The data plane checks ownership before it reports, but its write may reach etcd after
    the instance's lease ended (a stall, a slow cluster) and another instance took the host:
    the append carries a compare on the member's own key under its lease, so such a write
    fails at etcd and is dropped, never overwriting the new owner's report.  While live, the
    fence costs nothing but that compare."""
    from controller.store.etcd_members import EtcdMembership

    member = EtcdMembership(etcd_settings, "a", 30)
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=0.2)
    try:
        member._step()  # joined (no renewal thread: the stall)
        store.fence = member.fence
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        store.set_ports_observed(statuses={port["id"]: "ACTIVE"})
        assert store.get("port", port["id"])["status"] == "ACTIVE"  # live: written
        assert member.lease_id is not None
        member._log.revoke(member.lease_id)  # the lease ends; this instance does not know yet
        assert member.fence() is not None
        head = store.applied
        store.set_ports_observed(statuses={port["id"]: "DOWN"})  # raises nothing
        assert store.applied == head and not store._pending.holding
        assert store.get("port", port["id"])["status"] == "ACTIVE"
        member._renewed_at -= 60  # now it knows: nothing is even tried
        assert member.fence() is None
        store.set_host_state("hv1", "connected", "00000000000000aa")
        assert store.applied == head
        # an API write is not fenced (any instance serves the API)
        store.update("port", port["id"], {"name": "still served"})
        assert store.applied == head + 1
    finally:
        store.close()
        member.stop()


@pytest.mark.etcd
def test_observations_held_under_a_lease_that_ended_are_dropped_not_written(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: Any
) -> None:
    """Held during an outage under one lease, written after this instance joined again under
    another: meanwhile its hosts were another instance's, whose reports they would overwrite."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=60)
    lease: list[tuple[str, int] | None] = [("members/a", 1)]
    live = [True]
    try:
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        store.lease_key = lambda: lease[0]
        store.fence = lambda: lease[0] if live[0] else None
        hold_a_status(store, port["id"], monkeypatch)
        live[0] = False  # etcd answers again, the membership has not renewed yet: kept
        assert not store.write_held_observations() and store._pending.holding
        live[0], lease[0] = True, ("members/a", 2)  # joined again under a new lease
        head = store.applied
        assert store.write_held_observations()
        assert store.applied == head and not store._pending.holding
        assert store.get("port", port["id"])["status"] == "DOWN"
    finally:
        store.close()


@pytest.mark.etcd
def test_observations_held_under_the_lease_still_held_are_written(
    tmp_path: Path, etcd_settings: EtcdSettings, monkeypatch: Any
) -> None:
    """The same lease across the outage (etcd keeps leases while it has no leader): nobody
    took the hosts, the held observations are written as before."""
    from controller.store.etcd_members import EtcdMembership

    member = EtcdMembership(etcd_settings, "a", 30)
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=60)
    try:
        member._step()
        store.lease_key, store.fence = member.lease_key, member.fence
        net_id, _ = make_net_with_subnet(store)
        port = store.create_port({"network_id": net_id})
        hold_a_status(store, port["id"], monkeypatch)
        assert store.write_held_observations()
        assert store.get("port", port["id"])["status"] == "ACTIVE"
    finally:
        store.close()
        member.stop()


@pytest.mark.etcd
def test_a_virtual_ip_claim_moves_the_holder_on_every_instance(
    tmp_path: Path, etcd_settings: EtcdSettings
) -> None:
    """A VIP learnt on one instance (`ports.claim_vip` through the log) is what every replica
    routes by: the holder moves, the previous one lets go, in one entry."""
    store = EtcdStore(str(tmp_path / "a.db"), EventBus(), etcd_settings, poll_s=0.2)
    other = EtcdStore(str(tmp_path / "b.db"), EventBus(), etcd_settings, poll_s=0.2)
    try:
        net_id, _ = make_net_with_subnet(store)
        pairs = [{"ip_address": "10.0.0.200"}]
        a = store.create_port({"network_id": net_id, "allowed_address_pairs": pairs})
        b = store.create_port({"network_id": net_id, "allowed_address_pairs": pairs})

        def held(s: EtcdStore, port_id: str) -> list[str]:
            port = s.get("port", port_id)
            return list(port["binding:vif_details"].get("tenantnet_vips", ()))

        store.set_ports_observed(vips={(net_id, "10.0.0.200"): a["id"]})
        wait_for(lambda: held(other, a["id"]) == ["10.0.0.200"], "the claim on the replica")
        store.set_ports_observed(vips={(net_id, "10.0.0.200"): b["id"]})
        wait_for(
            lambda: held(other, b["id"]) == ["10.0.0.200"] and held(other, a["id"]) == [],
            "the move on the replica",
        )
        # a VIP that is not the port's pair is refused, on every replica alike
        store.set_ports_observed(vips={(net_id, "10.0.0.201"): a["id"]})
        other.sync()
        assert held(other, a["id"]) == [] and held(store, a["id"]) == []
    finally:
        store.close()
        other.close()
