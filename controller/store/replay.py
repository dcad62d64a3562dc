"""Is a create with a client-chosen id a replay of the one that made the existing object?

CloudStack's OpenDaylight plugin chooses the ids of what it creates and, when an earlier call
looked lost (a delete that never arrived, a timeout), sends the same create again; a 409 then
fails the VM start.  Where the caller allows it (the CloudStack paths), a create whose every
attribute already holds (after the same canonicalisation the create applies) is answered with
the existing object, and nothing is written.  Any real difference is still a 409, worded to
name the attributes that differ.

``ignoring`` names the attributes the caller knows to be hints, not facts (CloudStack's
``status``, its per-call random ``device_id``, its fixed ``provider:segmentation_id``).
"""

from __future__ import annotations

from typing import Any

from controller.store import dhcp_opts
from controller.store.attrs import as_tags
from controller.store.errors import StoreError
from controller.store.values import as_bool, canonical_mac, parse_cidr, parse_ip

BOOLEANS = frozenset(
    {"admin_state_up", "shared", "port_security_enabled", "enable_dhcp", "router:external"}
)


def _fixed_ips_hold(existing: list[dict[str, str]], wanted: Any) -> bool:
    """Every requested address (or subnet) is one the port has, and no more of them."""
    if not isinstance(wanted, list) or len(wanted) != len(existing):
        return False
    remaining = list(existing)
    for entry in wanted:
        if not isinstance(entry, dict):
            return False
        ip = entry.get("ip_address")
        ip = None if ip is None else str(parse_ip(ip, "fixed_ips"))
        match = next(
            (
                e
                for e in remaining
                if (ip is None or e["ip_address"] == ip)
                and entry.get("subnet_id") in (None, e["subnet_id"])
            ),
            None,
        )
        if match is None:
            return False
        remaining.remove(match)
    return True


def _holds(existing: dict[str, Any], name: str, wanted: Any) -> bool:
    current = existing.get(name)
    if name in BOOLEANS:
        return as_bool(wanted, name) == current
    if name == "mac_address":
        return canonical_mac(wanted) == current
    if name == "fixed_ips":
        return _fixed_ips_hold(current or [], wanted)
    if name == "cidr":
        return str(parse_cidr(wanted)) == current
    if name == "gateway_ip" and wanted is not None:
        return str(parse_ip(wanted, name)) == current
    if name in ("tenant_id", "project_id"):
        return wanted == existing.get("project_id")
    if name == "tags":
        return as_tags(wanted) == current
    if name == "extra_dhcp_opts":
        return dhcp_opts.for_create(wanted) == (current or [])
    if name == "binding:host_id" and wanted is None:
        return current == ""
    return bool(wanted == current)


def differences(
    existing: dict[str, Any], body: dict[str, Any], ignoring: frozenset[str]
) -> list[str]:
    """The attributes of ``body`` that ``existing`` does not hold (``id`` and ``ignoring``
    aside); a value the create would refuse counts as a difference."""
    differ = []
    for name, wanted in body.items():
        if name == "id" or name in ignoring:
            continue
        try:
            same = _holds(existing, name, wanted)
        except StoreError:
            same = False
        if not same:
            differ.append(name)
    return sorted(differ)
