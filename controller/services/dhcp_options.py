"""DHCPv4 option names, types and value encodings (RFC 2132, RFC 3442).

Neutron's ``extra_dhcp_opts`` name options the way dnsmasq does (``mtu``, ``dns-server``,
``domain-search``, ``tftp-server``...) or by number (``26``); what type an option's value has
decides how its text (``"10.0.0.1,10.0.0.2"``, ``"1400"``) becomes option bytes.  This table is
that knowledge for the options instances actually use; an option number outside it is sent as
its text (what dnsmasq does for an untyped option), an unknown *name* is ignored (it cannot be
given a number).

The byte encodings here are the option *payloads* only (an address's four bytes, a big-endian
integer); framing, lengths, the magic cookie and the packet around them are os-ken's
(`os_ken.lib.packet.dhcp`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import netaddr


class Kind(enum.Enum):
    """How an option's text value becomes bytes."""

    IP = "ip"  # one IPv4 address
    IPS = "ips"  # comma-separated IPv4 addresses
    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    TEXT = "text"
    ROUTES = "routes"  # classless static routes: "cidr,nexthop,cidr,nexthop..."
    DOMAINS = "domains"  # domain search list (RFC 3397), comma separated


SUBNET_MASK = 1
ROUTER = 3
DNS_SERVERS = 6
HOST_NAME = 12
DOMAIN_NAME = 15
BROADCAST = 28
MTU = 26
REQUESTED_IP = 50
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
RENEWAL_T1 = 58
REBINDING_T2 = 59
CLASSLESS_ROUTES = 121

# number -> (kind, dnsmasq-style names)
OPTIONS: dict[int, tuple[Kind, tuple[str, ...]]] = {
    1: (Kind.IP, ("netmask", "subnet-mask")),
    2: (Kind.U32, ("time-offset",)),
    3: (Kind.IPS, ("router",)),
    4: (Kind.IPS, ("time-server",)),
    6: (Kind.IPS, ("dns-server", "domain-name-servers")),
    7: (Kind.IPS, ("log-server",)),
    12: (Kind.TEXT, ("hostname", "host-name")),
    13: (Kind.U16, ("boot-file-size",)),
    15: (Kind.TEXT, ("domain-name",)),
    19: (Kind.U8, ("ip-forward-enable",)),
    23: (Kind.U8, ("default-ttl",)),
    26: (Kind.U16, ("mtu", "interface-mtu")),
    28: (Kind.IP, ("broadcast",)),
    42: (Kind.IPS, ("ntp-server",)),
    44: (Kind.IPS, ("netbios-ns",)),
    51: (Kind.U32, ("lease-time",)),
    58: (Kind.U32, ("T1",)),
    59: (Kind.U32, ("T2",)),
    66: (Kind.TEXT, ("tftp-server", "tftp-server-name")),
    67: (Kind.TEXT, ("bootfile-name",)),
    119: (Kind.DOMAINS, ("domain-search",)),
    121: (Kind.ROUTES, ("classless-static-route",)),
    150: (Kind.IPS, ("tftp-server-address",)),
    252: (Kind.TEXT, ("wpad",)),
}
BY_NAME: dict[str, int] = {name: num for num, (_, names) in OPTIONS.items() for name in names}
SERVER_IP_ADDRESS = "server-ip-address"
"""Not an option: dnsmasq's name for the ``siaddr`` header field (next server, PXE)."""


class BadValue(ValueError):
    """An option value that cannot be encoded as its option's type."""


def option_number(name: str) -> int | None:
    """The option an ``opt_name`` means (``"mtu"``, ``"26"``, ``"option:mtu"``), or None."""
    name = name.strip().removeprefix("option:")
    if name.isascii() and name.isdigit():
        number = int(name)
        return number if 1 <= number <= 254 else None
    return BY_NAME.get(name)


def ipv4(text: str) -> bytes:
    """The four bytes of a dotted-quad IPv4 address."""
    try:
        return netaddr.IPAddress(text.strip(), version=4, flags=netaddr.INET_PTON).packed
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise BadValue(f"'{text}' is not an IPv4 address") from None


def classless_routes(routes: Iterable[tuple[str, str]]) -> bytes:
    """RFC 3442: per route the prefix length, the significant octets of the destination, the
    router."""
    out = bytearray()
    for destination, nexthop in routes:
        try:
            net = netaddr.IPNetwork(destination.strip(), version=4)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise BadValue(f"'{destination}' is not an IPv4 CIDR") from None
        out.append(net.prefixlen)
        out += net.network.packed[: (net.prefixlen + 7) // 8]
        out += ipv4(nexthop)
    return bytes(out)


def _domain_search(text: str) -> bytes:
    """RFC 3397 without compression: each name as length-prefixed labels ending in a zero."""
    out = bytearray()
    for name in filter(None, (n.strip().rstrip(".") for n in text.split(","))):
        for label in name.split("."):
            raw = label.encode("ascii", "strict") if label.isascii() else b""
            if not raw or len(raw) > 63:
                raise BadValue(f"'{name}' is not a domain name")
            out.append(len(raw))
            out += raw
        out.append(0)
    return bytes(out)


def _unsigned(text: str, size: int) -> bytes:
    try:
        value = int(text.strip(), 10)
        return value.to_bytes(size, "big")
    except (ValueError, OverflowError):
        raise BadValue(f"'{text}' is not an unsigned {size * 8}-bit integer") from None


def encode(number: int, text: str) -> bytes:
    """The payload of option ``number`` for the text value an operator wrote."""
    kind = OPTIONS.get(number, (Kind.TEXT, ()))[0]
    if kind is Kind.IP:
        return ipv4(text)
    if kind is Kind.IPS:
        return b"".join(ipv4(part) for part in text.split(",") if part.strip())
    if kind is Kind.U8:
        return _unsigned(text, 1)
    if kind is Kind.U16:
        return _unsigned(text, 2)
    if kind is Kind.U32:
        return _unsigned(text, 4)
    if kind is Kind.ROUTES:
        parts = [p for p in text.strip().strip("{}").split(",") if p.strip()]
        if len(parts) % 2:
            raise BadValue(f"'{text}' is not a list of cidr,nexthop pairs")
        return classless_routes(zip(parts[::2], parts[1::2], strict=True))
    if kind is Kind.DOMAINS:
        return _domain_search(text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadValue("not encodable text") from None
