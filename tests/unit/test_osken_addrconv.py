"""The memo on os-ken's address converters changes no result: every conversion (valid, invalid,
a bytearray slice) gives what os-ken's own gives, or raises the same error, and a DHCP frame
built and parsed through os-ken's packet library is byte for byte the same; repeated addresses
are served from the bounded cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from os_ken.lib import addrconv

from controller.services.dhcp import DISCOVER, DhcpResponder
from controller.southbound import osken_addrconv
from tests.unit.test_dhcp_responder import NETWORK, PORT, SETTINGS, client_frame

TEXTS = ["10.0.0.5", "255.255.255.255", "0.0.0.0", "10.0.0.0/24", "fa:16:3e:00:00:05",
         "FA-16-3E-00-00-06", "", "10.0.0.256", "not an address", "1.2.3", "::1"]  # fmt: skip
BINS: list[Any] = [b"\x0a\x00\x00\x05", b"\xfa\x16\x3e\x00\x00\x05", bytearray(b"\x01\x02\x03\x04"),
                   bytearray(b"\x01\x02\x03\x04\x05\x06"), b"", b"\x01" * 5]  # fmt: skip


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(value)
    except Exception as exc:  # comparing what each raises
        return "raises", type(exc)


def _all_conversions() -> list[tuple[str, Any]]:
    out = []
    for conv in (addrconv.ipv4, addrconv.mac):
        out += [_outcome(conv.text_to_bin, t) for t in TEXTS]
        out += [_outcome(conv.bin_to_text, b) for b in BINS]
    return out


@pytest.fixture
def memo() -> Iterator[None]:
    osken_addrconv.install()
    try:
        yield
    finally:
        osken_addrconv.uninstall()


def test_every_conversion_gives_what_os_ken_gives() -> None:
    plain = _all_conversions()
    osken_addrconv.install()
    try:
        first, again = _all_conversions(), _all_conversions()
    finally:
        osken_addrconv.uninstall()
    assert first == plain and again == plain
    assert not hasattr(addrconv.ipv4.text_to_bin, "uncached")  # uninstalled: os-ken's own


def test_a_dhcp_exchange_is_byte_for_byte_the_same_and_hits_the_cache() -> None:
    frame = client_frame(DISCOVER)
    plain = DhcpResponder(SETTINGS).respond(frame, PORT, NETWORK)
    osken_addrconv.install()
    try:
        osken_addrconv.install()  # idempotent: not wrapped twice
        assert hasattr(addrconv.ipv4.text_to_bin.uncached, "__self__")
        responder = DhcpResponder(SETTINGS)
        replies = [responder.respond(frame, PORT, NETWORK) for _ in range(3)]
        hits = addrconv.ipv4.text_to_bin.cache_info().hits
    finally:
        osken_addrconv.uninstall()
    assert plain is not None and replies == [plain] * 3
    assert hits >= 2 * 5  # every address of the 2nd and 3rd reply came from the cache


def test_the_cache_is_bounded(memo: None) -> None:
    for last in range(2 * osken_addrconv.MAX_ENTRIES // 256 + 1):
        for i in range(256):
            addrconv.ipv4.text_to_bin(f"10.{last}.{i}.1")
    assert addrconv.ipv4.text_to_bin.cache_info().currsize == osken_addrconv.MAX_ENTRIES
