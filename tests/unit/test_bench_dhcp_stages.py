"""`bench.dhcp_stages.stages`: a round trip is split only when its four frames follow each
other (client message, packet-in, packet-out, reply); anything in between leaves it out."""

from __future__ import annotations

import pytest

from bench.dhcp_stages import stages


def test_each_round_trip_is_split_into_its_three_parts() -> None:
    events = [(1.000, "discover"), (1.0002, "packet_in"), (1.0008, "packet_out"),
              (1.0010, "offer"), (1.030, "request"), (1.0303, "packet_in"),
              (1.0307, "packet_out"), (1.0309, "ack")]  # fmt: skip
    parts = stages(events)
    assert parts["ovs_in"] == pytest.approx([0.2, 0.3])
    assert parts["controller"] == pytest.approx([0.6, 0.4])
    assert parts["ovs_out"] == pytest.approx([0.2, 0.2])
    assert parts["total"] == pytest.approx([1.0, 0.9])


def test_a_retransmission_or_another_packet_in_in_between_is_left_out() -> None:
    events = [(1.000, "discover"), (1.001, "discover"), (1.0012, "packet_in"),
              (1.0018, "packet_out"), (1.0020, "offer"),  # only the second DISCOVER counts
              (1.030, "request"), (1.0302, "packet_in"), (1.0303, "packet_in"),
              (1.0307, "packet_out"), (1.0309, "ack")]  # fmt: skip
    parts = stages(events)
    assert parts["total"] == pytest.approx([1.0])
    assert parts["controller"] == pytest.approx([0.6])
