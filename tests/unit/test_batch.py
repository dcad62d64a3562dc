"""Batch: which port statuses a step's barrier replies allow, and when."""

from __future__ import annotations

from controller.dataplane.batch import Batch

NONE: frozenset[str] = frozenset()


def test_statuses_follow_the_hosts_each_port_waits_for() -> None:
    b = Batch(waiting={"hv1", "hv2", "hv3"})
    b.active = {
        "own-hv2": ("hv2", NONE),
        "own-hv3": ("hv3", NONE),
        "joined-hv2": ("hv2", frozenset({"hv1", "hv3"})),
    }
    b.down = {"unbound": None, "admin-down-hv2": "hv2"}
    assert b.settle() == {}
    b.confirmed("hv2", ok=True)
    # its own host answered: no need to wait for peers it does not depend on
    assert b.settle() == {"own-hv2": "ACTIVE", "admin-down-hv2": "DOWN"}
    b.confirmed("hv3", ok=False)
    assert b.settle() == {"own-hv3": None}  # hv3 failed: its port stays as it was
    b.confirmed("hv1", ok=True)
    # every host replied: the unbound port now; the joined port although its peer hv3 failed
    assert b.settle() == {"joined-hv2": "ACTIVE", "unbound": "DOWN"}
    assert b.settle() == {} and not b.active and not b.down


def test_a_failed_peer_does_not_hold_a_port_of_a_healthy_host() -> None:
    """A peer that times out, rejects, or disconnects mid-step: the port on the healthy host
    still becomes ACTIVE once the failure is known."""
    b = Batch(waiting={"hv1", "hv2"}, active={"p": ("hv2", frozenset({"hv1"}))})
    b.confirmed("hv2", ok=True)
    assert b.settle() == {}  # hv2 just joined: hv1's answer is needed
    b.confirmed("hv1", ok=False)
    assert b.settle() == {"p": "ACTIVE"}


def test_a_port_whose_own_host_fails_is_left_as_it_was() -> None:
    b = Batch(waiting={"hv1", "hv2"}, active={"p": ("hv2", frozenset({"hv1"}))})
    b.confirmed("hv1", ok=True)
    b.confirmed("hv2", ok=False)
    assert b.settle() == {"p": None}


def test_a_step_that_sent_nothing_settles_at_once() -> None:
    b = Batch(active={"p": ("hv1", frozenset({"hv2"})), "q": ("hv1", NONE)}, down={"r": None})
    assert b.settle() == {"p": "ACTIVE", "q": "ACTIVE", "r": "DOWN"}
