"""The registry of lab address plans (lab/plans.py): no two users of this machine collide."""

from __future__ import annotations

import ipaddress

import pytest

from lab import plans


def test_registered_plans_share_no_prefix_and_no_subnet() -> None:
    assert plans.collisions(plans.PLANS) == []
    nets = [n for p in plans.PLANS for n in (p.mgmt_net, p.underlay_net)]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert len({p.prefix for p in plans.PLANS}) == len(plans.PLANS)


def test_a_second_user_of_a_number_or_prefix_is_reported() -> None:
    taken = plans.AddressPlan(plans.DEMO.number, "tnx", "newcomer")
    renamed = plans.AddressPlan(99, plans.BENCH_OVN.prefix, "newcomer")
    found = plans.collisions((*plans.PLANS, taken, renamed))
    assert len(found) == 2
    assert "make demo" in found[0] and "bench: OVN" in found[1]


def test_plan_addresses_and_lab_kwargs() -> None:
    plan = plans.FAULT_TESTS
    assert plan.mgmt_ip == "10.251.65.254/24" and plan.mgmt_gw == "10.251.65.254"
    assert plan.lab_kwargs() == {"prefix": "tnf", "mgmt_ip": "10.251.65.254/24",
                                 "underlay_net": "10.252.65.0/24"}
    assert ipaddress.ip_interface(plan.mgmt_ip).network == plan.mgmt_net
    assert plans.slot(0) == plans.DEFAULT and plans.slot(3, "ci").prefix == "ci3"


@pytest.mark.parametrize("prefix, number", [("Tn", 1), ("tn-1", 1), ("toolongname", 1),
                                            ("tn", 256), ("tn", -1)])
def test_invalid_plans_are_refused(prefix: str, number: int) -> None:
    with pytest.raises(ValueError):
        plans.AddressPlan(number, prefix, "bad")
