"""A port's ``extra_dhcp_opts`` (Neutron's ``extra_dhcp_opt`` extension), checked as Neutron does.

Each entry is ``{"opt_name", "opt_value", "ip_version"}``; ``(opt_name, ip_version)`` is unique
per port (Neutron's ``uniq_extradhcpopts0portid0optname0ipversion``).  The rules follow
neutron-lib's ``EXTRA_DHCP_OPT_KEY_SPECS`` and neutron's ``ExtraDhcpOptMixin``:

* ``opt_name``: a one-line, non-empty string of at most 64 characters (a name such as
  ``domain-search``, or a number such as ``66``; the DHCP responder resolves both).
* ``opt_value``: required key; a one-line string of at most 255 characters, non-empty except for
  ``router`` and ``classless-static-route`` (an empty value there means "send none"), or
  ``null``.  On create a ``null`` entry is dropped; on update it deletes that option.
* ``ip_version``: 4 or 6 (numeric strings too), default 4.

An update *merges* into the existing list by ``(opt_name, ip_version)`` (Neutron's semantics:
clients such as ``openstack port set --extra-dhcp-option`` send only the option they change);
``[]`` or ``null`` changes nothing.  A request naming one option twice is refused rather than
resolved by position, because the two entries contradict each other.
"""

from __future__ import annotations

from typing import Any

from controller.store.errors import invalid_attr
from controller.store.values import MAX_LIST_ITEMS, as_int

FIELD = "extra_dhcp_opts"
NAME_MAX_LEN = 64
VALUE_MAX_LEN = 255
BLANKABLE = frozenset({"router", "classless-static-route"})
KEYS = frozenset({"opt_name", "opt_value", "ip_version"})

Opt = dict[str, Any]


def _one_line(value: str) -> bool:
    return "\n" not in value and "\r" not in value


def _entry(raw: Any) -> Opt:
    """One entry, canonical (``ip_version`` an int); ``opt_value`` may still be None."""
    if not isinstance(raw, dict):
        raise invalid_attr(FIELD, f"'{str(raw)[:80]}' is not a dictionary")
    unknown = set(raw) - KEYS
    if unknown:
        raise invalid_attr(FIELD, f"unexpected keys {sorted(unknown)} (allowed: {sorted(KEYS)})")
    if "opt_name" not in raw or "opt_value" not in raw:
        raise invalid_attr(FIELD, "every entry needs opt_name and opt_value")
    name = raw["opt_name"]
    if not isinstance(name, str) or not name.strip() or not _one_line(name):
        raise invalid_attr(FIELD, f"opt_name '{str(name)[:80]}' is not a non-empty one-line string")
    if len(name) > NAME_MAX_LEN:
        raise invalid_attr(FIELD, f"opt_name '{name[:40]}...' exceeds {NAME_MAX_LEN} characters")
    value = raw["opt_value"]
    if value is not None:
        if not isinstance(value, str) or not _one_line(value):
            raise invalid_attr(FIELD, f"opt_value of {name} is not a one-line string")
        if len(value) > VALUE_MAX_LEN:
            raise invalid_attr(FIELD, f"opt_value of {name} exceeds {VALUE_MAX_LEN} characters")
        if not value.strip() and name not in BLANKABLE:
            raise invalid_attr(FIELD, f"opt_value of {name} may not be empty")
    version = raw.get("ip_version", 4)
    if version is None:
        version = 4
    if as_int(version, FIELD, 4, 6) not in (4, 6):
        raise invalid_attr(FIELD, f"ip_version '{version}' is not 4 or 6")
    return {"opt_name": name, "opt_value": value, "ip_version": int(version)}


def _entries(value: Any) -> list[Opt]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_attr(FIELD, f"'{str(value)[:80]}' is not a list")
    if len(value) > MAX_LIST_ITEMS:
        raise invalid_attr(FIELD, f"{len(value)} entries exceed the maximum of {MAX_LIST_ITEMS}")
    entries = [_entry(raw) for raw in value]
    seen: set[tuple[str, int]] = set()
    for opt in entries:
        key = (opt["opt_name"], opt["ip_version"])
        if key in seen:
            raise invalid_attr(FIELD, f"option {key[0]} for IPv{key[1]} is given twice")
        seen.add(key)
    return entries


def for_create(value: Any) -> list[Opt]:
    """The options a new port stores (entries with a null value are dropped, as Neutron does)."""
    return [opt for opt in _entries(value) if opt["opt_value"] is not None]


def merged(current: list[Opt], value: Any) -> list[Opt]:
    """``current`` with an update applied: same (name, version) replaced, null deletes, new
    ones appended in request order."""
    result = [dict(opt) for opt in current]
    for opt in _entries(value):
        key = (opt["opt_name"], opt["ip_version"])
        index = next(
            (i for i, o in enumerate(result) if (o["opt_name"], o["ip_version"]) == key), None
        )
        if opt["opt_value"] is None:
            if index is not None:
                del result[index]
        elif index is None:
            result.append(opt)
        else:
            result[index] = opt
    if len(result) > MAX_LIST_ITEMS:
        raise invalid_attr(FIELD, f"{len(result)} options exceed the maximum of {MAX_LIST_ITEMS}")
    return result
