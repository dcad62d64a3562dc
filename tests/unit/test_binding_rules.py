"""The binding rules of controller/dataplane/bindings.py on their own (no data plane, no switch).

tests/unit/test_dataplane_bindings.py drives the same rules through the data plane with faked
switches; these pin the cases it does not reach: a router interface that names a host, and
claims by hosts that are not registered.
"""

from __future__ import annotations

import pytest

from controller.dataplane.bindings import Bindings
from controller.dataplane.state import ROUTER_INTERFACE_OWNERS, PortRec

KNOWN = {"hv1", "hv2", "hv3"}


def _port(host: str | None = None, requested: bool = False, **kw: str) -> PortRec:
    return PortRec(id="p1", num=1, network_id="n1", mac="02:00:00:00:00:01", host=host,
                   host_requested=requested, **kw)  # fmt: skip


@pytest.mark.parametrize("owner", sorted(ROUTER_INTERFACE_OWNERS))
@pytest.mark.parametrize("requested", [True, False], ids=["requested", "recorded"])
def test_a_router_interface_is_held_by_no_host_even_one_it_names(
    owner: str, requested: bool
) -> None:
    """Rule 4: a router's interface is distributed, so no claim holds it, not even one from
    the host its ``binding:host_id`` names (Neutron fills that field for router ports; a
    store written by an older release may have recorded a holder).  Held, the claiming host
    would become a member of the interface's network."""
    b = Bindings()
    b.set_claims("hv2", ["p1"])
    b.set_claims("hv3", ["p1"])
    gw = _port("hv2", requested, device_owner=owner, device_id="r1")
    assert b.resolve(gw, unsynced=set(), known=KNOWN) is None
    assert b.holder("p1") is None
    assert b.refused("p1", unsynced=set()) == ["hv2", "hv3"]
    assert not b.hosts_holding("n1") and not b.networks_held("hv2")
    # not yet read since start: still no holder
    assert b.resolve(gw, unsynced={"hv2"}, known=KNOWN) is None


def test_the_same_port_without_a_router_is_held_by_the_host_it_names() -> None:
    """The contrast to the test above: what makes the difference is the router."""
    b = Bindings()
    b.set_claims("hv2", ["p1"])
    b.set_claims("hv3", ["p1"])
    assert b.resolve(_port("hv2", True), unsynced=set(), known=KNOWN) == "hv2"
    assert b.resolve(_port("hv2", False), unsynced=set(), known=KNOWN) == "hv2"
    assert set(b.hosts_holding("n1")) == {"hv2"}


def test_a_claim_by_a_host_that_is_not_registered_never_holds_the_port() -> None:
    """A claim is only an OVSDB row; an unregistered host (deleted, or never registered)
    holds nothing, even as the earliest claim.  Once a registered host claims, it holds."""
    b = Bindings()
    b.set_claims("rogue", ["p1"])
    assert b.resolve(_port(), unsynced=set(), known=KNOWN) is None
    b.set_claims("hv3", ["p1"])
    assert b.resolve(_port(), unsynced=set(), known=KNOWN) == "hv3"  # not "rogue", earlier
    b.set_claims("hv3", [])
    assert b.resolve(_port(), unsynced=set(), known=KNOWN) is None
    # a recorded holder that is no longer registered does not keep the port either
    b.set_claims("hv1", ["p1"])
    assert b.resolve(_port("gone"), unsynced={"gone"}, known=KNOWN) == "hv1"
