"""Security group rules as values: Neutron's rules for what a rule may say, and its canonical form.

Pure (no SQL): the store applies it to every rule it writes, and the data plane can use
`protocol_number` to read a stored rule.  The checks and their order, names and messages are
Neutron's (``neutron/extensions/securitygroup.py`` converters, ``securitygroups_db.py``
``_validate_base_security_group_rule_attributes``), so clients that switch on the error type
keep working.  Where Neutron keeps a spelling the client chose, tenantnet keeps one canonical
form: ``remote_ip_prefix`` is the normalised network (``10.0.0.5/24`` is stored as
``10.0.0.0/24``, which is also what Neutron's ``normalized_cidr`` shows) and a protocol number
is stored in plain decimal (``"06"`` as ``"6"``).
"""

from __future__ import annotations

from typing import Any

import netaddr

from controller.store.errors import InvalidInput
from controller.store.values import choice, parse_ip

DIRECTIONS = ("ingress", "egress")
ETHERTYPES = ("IPv4", "IPv6")

IP_PROTOCOLS: dict[str, int] = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
"""neutron_lib's ``IP_PROTOCOL_MAP``: the protocol names a rule may use."""

ANY = "any"
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
"""Protocols whose rules may name a port range in Neutron: tcp, udp, dccp, sctp, udplite."""
UNMATCHABLE_PORT_PROTOCOLS = frozenset({33, 136})
"""Of those, dccp and udplite: Open vSwitch cannot match their ports, so a range is refused."""
ICMP_PROTOCOLS = frozenset({1, 58})
"""Protocols whose port range means ICMP type (min) and code (max)."""
IPV6_ONLY = frozenset(
    {"ipv6-encap", "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route"}
    | {"41", "44", "58", "59", "60", "43"}
)
"""Protocols that an IPv4 rule may not name (``SecurityGroupEthertypeConflictWithProtocol``)."""
PORT_MIN, PORT_MAX = 1, 65535


def _bad(type_: str, message: str) -> InvalidInput:
    return InvalidInput(message, type_)


def _decimal(text: str) -> int | None:
    """A number written in ASCII decimal digits (leading zeros allowed), or None.

    Python's ``int()`` refuses strings of more than 4300 digits with a ValueError, which here
    was a 500; every number a rule holds is far smaller, so such a string is just not one of
    them (None), refused by the caller like any other bad spelling."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else None


def protocol(value: Any) -> str | None:
    """``convert_protocol``: None or ``any`` (any protocol), a name (case-insensitive) or a
    number 0-255, which is kept as a decimal string like Neutron keeps it.  ``any`` is matched
    case-insensitively like the names: Neutron lowers the value before looking it up among
    ``sg_supported_protocols`` (which hold ``any``), so ``ANY`` is "any protocol" there too."""
    if value is None or (isinstance(value, str) and value.lower() == ANY):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return str(value)
    if isinstance(value, str):
        number = _decimal(value)
        if number is not None and number <= 255:
            return str(number)
        if value.lower() in IP_PROTOCOLS:
            return value.lower()
    shown = str(value)[:40]
    raise _bad(
        "SecurityGroupRuleInvalidProtocol",
        f"Security group rule protocol {shown} not supported. Only protocol values "
        f"{[None, ANY, *IP_PROTOCOLS]} and integer representations [0 to 255] are supported.",
    )


def protocol_number(value: str | None) -> int | None:
    """The IP protocol number a stored rule's ``protocol`` means (None: any protocol)."""
    if value is None:
        return None
    return IP_PROTOCOLS[value] if value in IP_PROTOCOLS else int(value)


def ethertype(value: Any) -> str:
    """``IPv4`` or ``IPv6``, matched case-insensitively."""
    for known in ETHERTYPES:
        if isinstance(value, str) and value.lower() == known.lower():
            return known
    raise _bad(
        "SecurityGroupRuleInvalidEtherType",
        f"Security group rule for ethertype '{str(value)[:40]}' not supported. "
        f"Allowed values are {list(ETHERTYPES)}.",
    )


def port_value(value: Any, field: str) -> int | None:
    """``convert_validate_port_value``: None, or an integer 0-65535 (numeric strings too)."""
    if value is None:
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        number = _decimal(value)
    if number is None or not 0 <= number <= PORT_MAX:
        raise _bad(
            "SecurityGroupInvalidPortValue",
            f"Invalid value for port {str(value)[:40]} ({field}).",
        )
    return number


def ip_prefix(value: Any) -> str | None:
    """``remote_ip_prefix``: an address (a /32 or /128) or a network, as its normalised CIDR;
    empty means none."""
    if value is None or value == "":
        return None
    reason = f"Invalid CIDR {str(value)[:60]} given as IP prefix (remote_ip_prefix)."
    if not isinstance(value, str):
        raise _bad("InvalidCIDR", reason)
    address, sep, length = value.partition("/")
    try:
        ip = parse_ip(address, "remote_ip_prefix")
    except InvalidInput:
        raise _bad("InvalidCIDR", reason) from None
    if not sep:
        return str(netaddr.IPNetwork(ip))
    bits = _decimal(length)
    if bits is None or bits > (32 if ip.version == 4 else 128):
        raise _bad("InvalidCIDR", reason)
    return str(netaddr.IPNetwork(f"{ip}/{bits}").cidr)


def canonical(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule's match fields, converted, canonicalised and checked together.

    ``rule`` holds the client's ``direction``, ``ethertype``, ``protocol``,
    ``port_range_min``/``port_range_max``, ``remote_ip_prefix`` and ``remote_group_id``
    (absent means Neutron's default); the result holds the same keys, canonical.  Order and
    errors follow Neutron's: converters first, then legacy ICMPv6 names, the whole port range
    as "no range", the port range for the protocol, the prefix's family against the
    ethertype, the protocol against the ethertype, and at most one remote.
    """
    direction = choice(rule.get("direction"), "direction", DIRECTIONS)
    ether = ethertype(rule.get("ethertype", "IPv4"))
    proto = protocol(rule.get("protocol"))
    low = port_value(rule.get("port_range_min"), "port_range_min")
    high = port_value(rule.get("port_range_max"), "port_range_max")
    prefix = ip_prefix(rule.get("remote_ip_prefix"))
    if ether == "IPv6" and proto in ("icmp", "icmpv6"):
        proto = "ipv6-icmp"
    elif ether == "IPv6" and proto == "1":
        proto = "58"
    if low == PORT_MIN and high == PORT_MAX:
        low = high = None
    _check_port_range(proto, low, high)
    if prefix is not None and ether != f"IPv{netaddr.IPNetwork(prefix).version}":
        raise _bad(
            "SecurityGroupRuleParameterConflict",
            f"Conflicting value ethertype {ether} for CIDR {rule.get('remote_ip_prefix')}",
        )
    if ether == "IPv4" and proto in IPV6_ONLY:
        raise _bad(
            "SecurityGroupEthertypeConflictWithProtocol",
            f"Invalid ethertype {ether} for protocol {proto}.",
        )
    if prefix is not None and rule.get("remote_group_id"):
        raise _bad(
            "SecurityGroupMultipleRemoteEntites",
            "Only one of remote_ip_prefix or remote_group_id or remote_address_group_id "
            "may be provided.",
        )
    return {
        "direction": direction,
        "ethertype": ether,
        "protocol": proto,
        "port_range_min": low,
        "port_range_max": high,
        "remote_ip_prefix": prefix,
        "remote_group_id": rule.get("remote_group_id"),
    }


def _check_port_range(proto: str | None, low: int | None, high: int | None) -> None:
    """``_validate_port_range``: ports only for protocols with ports, ICMP type/code 0-255."""
    if low is None and high is None:
        return
    if proto is None:
        raise _bad(
            "SecurityGroupProtocolRequiredWithPorts",
            "Must also specify protocol if port range is given.",
        )
    number = protocol_number(proto)
    if number in UNMATCHABLE_PORT_PROTOCOLS:
        # Neutron takes these; compiled without the range, a rule for one port allowed them
        # all (flows.security_groups.PORTS_UNMATCHABLE).  Refused, so no rule means more
        # than it says.
        raise _bad(
            "SecurityGroupInvalidPortRange",
            f"Port ranges cannot be enforced for protocol {proto}: Open vSwitch has no match "
            "field for its ports. Leave port_range_min and port_range_max out to allow all of "
            "the protocol.",
        )
    if number in PORT_PROTOCOLS:
        if low == 0 or high == 0:
            raise _bad("SecurityGroupInvalidPortValue", "Invalid value for port 0.")
        if low is None or high is None or low > high:
            raise _bad(
                "SecurityGroupInvalidPortRange",
                "For TCP/UDP protocols, port_range_min must be <= port_range_max",
            )
    elif number in ICMP_PROTOCOLS:
        for value, field, attr in (
            (low, "type", "port_range_min"),
            (high, "code", "port_range_max"),
        ):
            if value is not None and not 0 <= value <= 255:
                raise _bad(
                    "SecurityGroupInvalidIcmpValue",
                    f"Invalid value for ICMP {field} ({attr}) {value}. It must be 0 to 255.",
                )
        if low is None:
            raise _bad(
                "SecurityGroupMissingIcmpType",
                f"ICMP code (port_range_max) {high} is provided but ICMP type (port_range_min) "
                "is missing.",
            )
    else:
        raise _bad(
            "SecurityGroupInvalidProtocolForPort",
            f"Ports cannot be specified for protocol {proto}. Ports are only supported for "
            "DCCP, SCTP, TCP, UDP, UDPLITE.",
        )


def key(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rules of a group the same rule (``_rule_to_key``): a protocol name and
    its number are one protocol, and a prefix of every address is no prefix."""
    prefix = rule.get("remote_ip_prefix")
    return (
        rule["security_group_id"],
        rule["direction"],
        rule["ethertype"],
        protocol_number(rule.get("protocol")),
        rule.get("port_range_min"),
        rule.get("port_range_max"),
        rule.get("remote_group_id"),
        None if prefix in ("0.0.0.0/0", "::/0") else prefix,
    )
