"""os-ken's address converters with a bounded memo: the same conversions, done once per address.

Why: every IPv4 and MAC address that os-ken's packet library (``os_ken.lib.packet``) parses or
serialises, and every address field of an OpenFlow match it encodes, goes through
``os_ken.lib.addrconv`` - a netaddr object built and formatted per call, 7-22 us each here.  A
DHCP exchange does 22 of them (Ethernet, IPv4, the UDP pseudo-header, the DHCP header, the magic
cookie), which was half the cost of answering it (profiled: `controller.services.dhcp` on the
packet-in worker), and a host's flows repeat the same few MACs and addresses in every flow-mod.
The conversions are pure functions of their argument, so remembering the last ``MAX_ENTRIES``
results of each changes no result, only the cost: parsing and building stay os-ken's.

`install` (called by the service before os-ken's apps start, like `ofp_server.install`) wraps
the four methods of the module's ``ipv4`` and ``mac`` converters, which os-ken's code looks up
on the module at every call.  Bounded LRU caches: a flood of distinct addresses (they are
switch and VM input) costs at most ``MAX_ENTRIES`` entries per method and otherwise only the
lookup.  Errors are not remembered: invalid input raises as before, and an argument that cannot
be a cache key (a ``bytearray`` slice of os-ken's receive buffer) is converted uncached.

Upstream, ``addrconv`` could use ``socket.inet_ntoa``/``inet_aton`` and ``bytes.hex`` for the
common cases instead of netaddr objects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from os_ken.lib import addrconv

MAX_ENTRIES = 4096
"""Results remembered per method (about 100 bytes each)."""


def _memo(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    cached = functools.lru_cache(maxsize=MAX_ENTRIES, typed=True)(convert)

    @functools.wraps(convert)
    def memoised(value: Any) -> Any:
        try:
            return cached(value)
        except TypeError:  # unhashable (bytearray): not a key, but maybe an address
            if isinstance(value, bytearray):
                return convert(value)
            raise

    memoised.cache_info = cached.cache_info  # type: ignore[attr-defined]
    memoised.uncached = convert  # type: ignore[attr-defined]
    return memoised


def install() -> None:
    """Memoise ``addrconv.ipv4`` and ``addrconv.mac`` (idempotent)."""
    for conv in (addrconv.ipv4, addrconv.mac):
        for name in ("text_to_bin", "bin_to_text"):
            method = getattr(conv, name)
            if not hasattr(method, "uncached"):
                setattr(conv, name, _memo(method))


def uninstall() -> None:
    """Back to os-ken's own methods (tests)."""
    for conv in (addrconv.ipv4, addrconv.mac):
        for name in ("text_to_bin", "bin_to_text"):
            if hasattr(getattr(conv, name), "uncached"):
                delattr(conv, name)  # the instance attribute; the class's method shows again
