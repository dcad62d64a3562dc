"""Batch: which port statuses a step's barrier replies allow, and when."""

from __future__ import annotations

from controller.dataplane.batch import Batch


def test_statuses_follow_the_hosts_each_port_waits_for() -> None:
    b = Batch(waiting={"hv1", "hv2", "hv3"})
    b.active = {"own-hv2": "hv2", "own-hv3": "hv3", "whole-net": None}
    b.down = ["gone"]
    assert b.settle() == {}
    b.confirmed("hv2", ok=True)
    assert b.settle() == {"own-hv2": "ACTIVE"}  # its own host answered: no need to wait
    b.confirmed("hv3", ok=False)
    assert b.settle() == {}  # hv3 failed: its port stays as it was
    b.confirmed("hv1", ok=True)
    # every host replied: DOWN ones now; the whole-network port not, since hv3 failed
    assert b.settle() == {"gone": "DOWN"}
    assert b.settle() == {} and not b.active


def test_a_step_that_sent_nothing_settles_at_once() -> None:
    b = Batch(active={"p": None, "q": "hv1"}, down=["r"])
    assert b.settle() == {"p": "ACTIVE", "q": "ACTIVE", "r": "DOWN"}
