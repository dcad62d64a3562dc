"""Observations held while the etcd cluster has no quorum (`controller.store.pending`): the
latest value per object wins, and a port's refused claims are merged per host (each host's
claim is observed on its own, and several instances each speak for their own hosts)."""

from __future__ import annotations

from controller.store.pending import Observations, PendingObservations


def test_newer_refused_claims_replace_per_host_not_per_port() -> None:
    held = Observations(refused={"p": {"hv1": True, "hv2": True}})
    held.newer(Observations(refused={"p": {"hv2": False}, "q": {"hv3": True}}))
    assert held.refused == {"p": {"hv1": True, "hv2": False}, "q": {"hv3": True}}


def test_a_failed_write_given_back_stays_older_than_what_came_meanwhile() -> None:
    pending = PendingObservations()
    pending.hold(Observations(statuses={"p": "DOWN"}, refused={"p": {"hv1": True, "hv2": True}}))
    taken = pending.take()
    assert taken is not None
    assert pending.add_if_holding(
        Observations(statuses={"p": "ACTIVE"}, refused={"p": {"hv1": False}})
    )
    pending.give_back(taken)  # the write failed: what was observed meanwhile stays newer
    again = pending.take()
    assert again is not None
    assert again.statuses == {"p": "ACTIVE"}
    assert again.refused == {"p": {"hv1": False, "hv2": True}}


def test_a_virtual_ip_holds_one_slot_its_latest_holder() -> None:
    """A VIP's holder (`Store.set_ports_observed`'s ``vips``) is kept per (network, VIP): a
    newer claim replaces an older one, a failed write given back does not undo it."""
    pending = PendingObservations()
    pending.hold(Observations(vips={("n1", "10.0.0.9"): "a", ("n2", "10.0.0.9"): "x"}))
    taken = pending.take()
    assert taken is not None and taken.of_ports and len(taken) == 2
    assert pending.add_if_holding(Observations(vips={("n1", "10.0.0.9"): "b"}))
    pending.give_back(taken)
    again = pending.take()
    assert again is not None
    assert again.vips == {("n1", "10.0.0.9"): "b", ("n2", "10.0.0.9"): "x"}
    assert not Observations(hosts={"hv1": ("connected", None)}).of_ports
