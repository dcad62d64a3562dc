"""`alternate_target`: the other spelling of a controller target, used by the fast reconnect."""

from __future__ import annotations

import pytest

from controller.southbound.ovsdb_host import alternate_target


@pytest.mark.parametrize(
    ("target", "other"),
    [
        ("tcp:192.0.2.10:6653", "tcp:[192.0.2.10]:6653"),
        ("tcp:[192.0.2.10]:6653", "tcp:192.0.2.10:6653"),
        ("ssl:192.0.2.10:6653", "ssl:[192.0.2.10]:6653"),
        ("tcp:[2001:db8::1]:6653", "tcp:[2001:0db8:0000:0000:0000:0000:0000:0001]:6653"),
        ("ssl:[2001:0db8:0000:0000:0000:0000:0000:0001]:6653", "ssl:[2001:db8::1]:6653"),
    ],
)
def test_other_spelling_round_trips(target: str, other: str) -> None:
    assert alternate_target(target) == other
    assert alternate_target(other) == target


@pytest.mark.parametrize(
    "target", ["unix:/run/openvswitch/ctl.sock", "tcp:controller.example:6653", "tcp:192.0.2.10"]
)
def test_no_other_spelling(target: str) -> None:
    """Names and targets without an explicit port are left alone (no fast reconnect for them)."""
    assert alternate_target(target) is None


def test_an_ipv6_advertise_is_a_local_address_without_brackets() -> None:
    """A switch on this machine connecting over IPv6 comes from ``2001:db8::10``, not from
    ``[2001:db8::10]`` (how the advertised target writes it), which used to be what admission
    was given as this machine's address."""
    from controller.config import Settings
    from controller.service import _own_addresses

    s = Settings(ofp_listen="[::]:6653", advertise="tcp:[2001:db8::10]:6653").validate()
    assert _own_addresses(s) == {"2001:db8::10"}
    s = Settings(ofp_listen="192.0.2.10:6653", advertise="ssl:192.0.2.11:6653")
    assert _own_addresses(s) == {"192.0.2.10", "192.0.2.11"}
