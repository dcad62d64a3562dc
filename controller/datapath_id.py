"""A host's datapath id, derived from its host id.

Its own module, without dependencies, because two layers need the same function: the OVSDB
agent writes it into the bridge (southbound/ovsdb_host) and the data plane recognises the
host's switch by it, while the store refuses a host whose id maps to another host's datapath
id (store/hosts), and the store must not import the southbound.
"""

from __future__ import annotations

import hashlib


def datapath_id_for(host_id: str) -> int:
    """A stable 48-bit datapath id for a host (16 hex digits in OVSDB, low bit set)."""
    digest = hashlib.sha256(host_id.encode()).digest()
    return (int.from_bytes(digest[:6], "big") | 1) & 0xFFFFFFFFFFFF
