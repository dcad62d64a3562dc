"""Parsing and canonical forms of the values the store keys on (MACs, IPs, CIDRs, ids, targets).

Uniqueness is enforced by SQLite on *strings*, so every MAC and IP must be stored in exactly one
spelling (``FA-16-3E-...`` and ``fa:16:3e:...`` are the same MAC; ``2001:DB8::1`` and
``2001:db8:0::1`` the same IP).  Parsing is netaddr's; this module only picks the canonical form
and words the refusal the way Neutron does, naming the attribute.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import netaddr

from controller.store.errors import invalid_attr

SEGMENT_RANGES: dict[str, tuple[int, int]] = {
    "vxlan": (1, 2**24 - 1),
    "gre": (1, 2**32 - 1),
}
"""Valid segmentation ids per overlay type: a VXLAN VNI is 24 bits, a GRE key 32 bits."""

ENCAP_OVERHEAD: dict[str, int] = {"vxlan": 50, "gre": 42}
"""Bytes the overlay adds on an IPv4 underlay; a network's MTU is the underlay's minus this."""

_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}", re.ASCII)
HOST_ID_MAX = 255
HOST_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,{HOST_ID_MAX - 1}}}$"
_HOST_ID = re.compile(HOST_ID_PATTERN, re.ASCII)
"""Host ids are the orchestrator's host names (DNS names, Nova's ``host``): letters, digits and
``_.:@-``, starting with a letter or digit.  No spaces or control characters: a host id ends up
in log lines, OVSDB ``external_ids`` and the datapath id, and a newline in it would forge logs."""


def integer_text(text: str) -> int | None:
    """An integer written in ASCII digits (optional sign), or None.

    ``str.isdigit`` accepts characters such as ``²`` that ``int()`` refuses, and ``--1`` passes
    a naive sign strip; every integer that arrives as text (query strings, headers, settings)
    goes through here instead.
    """
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def host_id(value: Any, field: str = "id") -> str:
    """A host id (see ``_HOST_ID``); the refusal names the attribute."""
    if not isinstance(value, str) or not _HOST_ID.fullmatch(value):
        shown = repr(value)[:60] if isinstance(value, str) else value
        raise invalid_attr(
            field,
            f"{shown} is not a valid host id (1-{HOST_ID_MAX} characters: letters, digits and "
            "'_.:@-', starting with a letter or digit)",
        )
    return value


def as_bool(value: Any, field: str) -> bool:
    """Neutron's ``convert_to_boolean``: real booleans plus their usual string spellings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise invalid_attr(field, f"'{value}' cannot be converted to boolean")


def as_int(value: Any, field: str, low: int, high: int) -> int:
    """An integer in ``[low, high]``; numeric strings are accepted because clients send them."""
    if isinstance(value, bool):
        raise invalid_attr(field, f"'{value}' is not an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid_attr(field, f"'{value}' is not an integer") from None
    if isinstance(value, float) and number != value:
        raise invalid_attr(field, f"'{value}' is not an integer")
    if not low <= number <= high:
        raise invalid_attr(field, f"'{value}' is not in range {low} through {high}")
    return number


def as_str(value: Any, field: str, max_len: int = 255) -> str:
    """A string of bounded length (names and descriptions are free text, but not unbounded)."""
    if not isinstance(value, str):
        raise invalid_attr(field, f"'{value}' is not a valid string")
    if len(value) > max_len:
        raise invalid_attr(field, f"'{value[:40]}...' exceeds maximum length of {max_len}")
    return value


MAX_LIST_ITEMS = 100
"""The most entries a free-form list attribute (tags, security groups, zone hints) may have."""


def as_str_list(
    value: Any, field: str, max_items: int = MAX_LIST_ITEMS, max_len: int = 255
) -> list[str]:
    """A bounded list of bounded strings (tags, security group ids)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_attr(field, f"'{str(value)[:80]}' is not a list of strings")
    if len(value) > max_items:
        raise invalid_attr(field, f"{len(value)} entries exceed the maximum of {max_items}")
    for item in value:
        if len(item) > max_len:
            raise invalid_attr(field, f"'{item[:40]}...' exceeds maximum length of {max_len}")
    return list(value)


MAX_DOCUMENT_BYTES = 4096
MAX_DOCUMENT_DEPTH = 8


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def as_document(value: Any, field: str) -> dict[str, Any]:
    """A free-form JSON object (``binding:profile``), bounded in size and depth.

    Neutron passes such dictionaries through to drivers without looking; here they are stored
    and shown with every port, so an unbounded one would make every listing pay for it.
    """
    if not isinstance(value, dict):
        raise invalid_attr(field, f"'{str(value)[:80]}' is not a dictionary")
    if _depth(value) > MAX_DOCUMENT_DEPTH:
        raise invalid_attr(field, f"nested deeper than {MAX_DOCUMENT_DEPTH} levels")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_DOCUMENT_BYTES:
        raise invalid_attr(
            field, f"{size} bytes of JSON exceed the maximum of {MAX_DOCUMENT_BYTES}"
        )
    return value


def as_uuid(value: Any, field: str) -> str:
    """A UUID in its canonical lower-case hyphenated spelling."""
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise invalid_attr(field, f"'{value}' is not a valid UUID")


def canonical_mac(value: Any, field: str = "mac_address") -> str:
    """A unicast, non-zero Ethernet MAC as ``aa:bb:cc:dd:ee:ff`` (lower case)."""
    reason = f"'{value}' is not a valid MAC address"
    if not isinstance(value, str):
        raise invalid_attr(field, reason)
    try:
        mac = netaddr.EUI(value, version=48, dialect=netaddr.mac_unix_expanded)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise invalid_attr(field, reason) from None
    if int(mac) == 0 or mac.words[0] & 1:
        raise invalid_attr(field, reason)
    return str(mac).lower()


SHOWN_MAX = 60


def _shown(value: Any) -> str:
    """A refused value as a message quotes it: cut short, so that a refusal never echoes
    megabytes back (an address or CIDR is far shorter than this)."""
    text = str(value)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX] + "..."


def parse_ip(value: Any, field: str, version: int | None = None) -> netaddr.IPAddress:
    """An IPv4/IPv6 address (strict syntax: no ``10.1`` shorthand), optionally of one version."""
    reason = f"'{_shown(value)}' is not a valid IP address"
    if not isinstance(value, str) or "/" in value:
        raise invalid_attr(field, reason)
    try:
        ip = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise invalid_attr(field, reason) from None
    if version is not None and ip.version != version:
        raise invalid_attr(field, f"'{_shown(value)}' is not an IPv{version} address")
    return ip


def parse_cidr(value: Any, field: str = "cidr") -> netaddr.IPNetwork:
    """A network in CIDR form with no host bits set, like Neutron's ``validate_subnet``."""
    if not isinstance(value, str) or "/" not in value:
        raise invalid_attr(field, f"'{_shown(value)}' is not a valid IP subnet")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise invalid_attr(field, f"'{_shown(value)}' is not a valid IP subnet") from None
    if net.ip != net.network:
        raise invalid_attr(
            field, f"'{value}' isn't a recognized IP subnet cidr, '{net.cidr}' is recommended"
        )
    return net


def parse_ovsdb_target(value: Any, field: str = "ovsdb") -> str:
    """An OVSDB connection target the data plane can dial: ``tcp:IP:PORT``, ``ssl:IP:PORT``
    (TLS, see controller/tls.py) or ``unix:/PATH``.

    IPv6 addresses are written in brackets (``tcp:[2001:db8::1]:6640``), as ovs-vsctl expects.
    """
    reason = f"'{value}' is not a valid OVSDB target (tcp:IP:PORT, ssl:IP:PORT or unix:/PATH)"
    if not isinstance(value, str):
        raise invalid_attr(field, reason)
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/") or "\x00" in path or len(path) > 107:
            raise invalid_attr(field, reason)
        return value
    scheme = value[:4]
    if scheme not in ("tcp:", "ssl:"):
        raise invalid_attr(field, reason)
    host, sep, port = value[4:].rpartition(":")
    if not sep:
        raise invalid_attr(field, reason)
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = netaddr.IPAddress(host[1:-1] if bracketed else host)
        port_number = int(port) if port.isdigit() else -1
    except (netaddr.AddrFormatError, ValueError):
        raise invalid_attr(field, reason) from None
    if ip.version != (6 if bracketed else 4) or not 1 <= port_number <= 65535:
        raise invalid_attr(field, reason)
    return f"{scheme}[{ip}]:{port_number}" if bracketed else f"{scheme}{ip}:{port_number}"


def bridge_name(value: Any, field: str = "integration_bridge") -> str:
    """An OVS bridge name that is also a valid Linux interface name (at most 15 characters)."""
    if not isinstance(value, str) or not _BRIDGE_NAME.match(value):
        raise invalid_attr(field, f"'{value}' is not a valid bridge name")
    return value


def choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in allowed:
        raise invalid_attr(field, f"'{value}' is not in {list(allowed)}")
    return str(value)


def network_mtu(underlay_mtu: int, network_type: str) -> int:
    """The largest tenant frame payload that fits the underlay once encapsulated."""
    return underlay_mtu - ENCAP_OVERHEAD[network_type]
