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
