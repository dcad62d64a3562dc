"""Parsing and canonical forms of the values the store keys on (MACs, IPs, CIDRs, ids, targets).

Uniqueness is enforced by SQLite on *strings*, so every MAC and IP must be stored in exactly one
spelling (``FA-16-3E-...`` and ``fa:16:3e:...`` are the same MAC; ``2001:DB8::1`` and
``2001:db8:0::1`` the same IP).  Parsing is netaddr's; this module only picks the canonical form
and words the refusal the way Neutron does, naming the attribute.
"""

from __future__ import annotations

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


def as_str_list(value: Any, field: str) -> list[str]:
    """A list of strings (tags, security group ids)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_attr(field, f"'{value}' is not a list of strings")
    return list(value)


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


def parse_ip(value: Any, field: str, version: int | None = None) -> netaddr.IPAddress:
    """An IPv4/IPv6 address (strict syntax: no ``10.1`` shorthand), optionally of one version."""
    reason = f"'{value}' is not a valid IP address"
    if not isinstance(value, str) or "/" in value:
        raise invalid_attr(field, reason)
    try:
        ip = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise invalid_attr(field, reason) from None
    if version is not None and ip.version != version:
        raise invalid_attr(field, f"'{value}' is not an IPv{version} address")
    return ip


def parse_cidr(value: Any, field: str = "cidr") -> netaddr.IPNetwork:
    """A network in CIDR form with no host bits set, like Neutron's ``validate_subnet``."""
    if not isinstance(value, str) or "/" not in value:
        raise invalid_attr(field, f"'{value}' is not a valid IP subnet")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise invalid_attr(field, f"'{value}' is not a valid IP subnet") from None
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
