"""Neutron list semantics: filters, ``fields`` projection, sorting and ``limit``/``marker`` pages.

Filters follow Neutron: any attribute of the resource, repeated keys mean OR, booleans in any
of Neutron's spellings, MACs, IPs and CIDRs in any spelling the store accepts (`canonical_filter`),
``fixed_ips=ip_address=...`` for ports, ``tags``/``tags-any``/``not-tags``/``not-tags-any`` with
comma-separated tags; an unknown attribute is a 400 (Neutron's
filter-validation), so a typo does not silently return everything.  Pages are in ``sort_key``
order (default ``id``) with ``id`` as tie-breaker, which makes the ``marker`` position exact even
when the marker object itself no longer matches the filters.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.datastructures import URL, QueryParams

from controller.store import InvalidInput, rule_values
from controller.store.errors import invalid_attr, not_found
from controller.store.values import (
    canonical_mac,
    integer_text,
    parse_cidr,
    parse_ip,
    parse_ovsdb_target,
)

PAGING_KEYS = frozenset({"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"})
TAG_FILTERS = frozenset({"tags", "tags-any", "not-tags", "not-tags-any"})
TRUE_WORDS = {"true": True, "1": True, "false": False, "0": False}
NULL_WORDS = ("", "None", "null")


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the internal ``_`` fields the data plane uses."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def project(obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Only the requested attributes (all public ones when none are requested)."""
    shown = public(obj)
    return {k: shown[k] for k in fields if k in shown} if fields else shown


def requested_fields(params: QueryParams) -> list[str]:
    """``fields=a&fields=b`` or ``fields=a,b``; internal names are never shown."""
    names: list[str] = []
    for value in params.getlist("fields"):
        names.extend(n.strip() for n in value.split(",") if n.strip())
    return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def _matches_scalar(value: Any, wanted: str) -> bool:
    if isinstance(value, bool):
        return TRUE_WORDS.get(wanted.lower()) is value
    if value is None:
        return wanted in NULL_WORDS
    if isinstance(value, int):
        return integer_text(wanted) == value
    return str(value) == wanted


def _ip_text(name: str) -> Callable[[str], str]:
    return lambda text: str(parse_ip(text, name))


def _protocol_text(text: str) -> str:
    protocol = rule_values.protocol(text)
    return "" if protocol is None else protocol  # "any": no protocol, i.e. null


CANONICAL_SPELLING: dict[str, Callable[[str], str]] = {
    "mac_address": canonical_mac,
    "cidr": lambda text: str(parse_cidr(text)),
    "gateway_ip": _ip_text("gateway_ip"),
    "tunnel_ip": _ip_text("tunnel_ip"),
    "mgmt_ip": _ip_text("mgmt_ip"),
    "ovsdb": parse_ovsdb_target,
    "remote_ip_prefix": lambda text: rule_values.ip_prefix(text) or "",
    "protocol": _protocol_text,
    "ethertype": rule_values.ethertype,
}
"""The store keeps one spelling of these values (``FA-16-3E-..`` as ``fa:16:3e:..``,
``2001:DB8:0::1`` as ``2001:db8::1``, a rule's ``10.0.0.5/24`` as ``10.0.0.0/24``, ``TCP`` as
``tcp``), so a filter value is brought to the same spelling before it is compared: a client
filtering by the value it sent finds the object.  Neutron does the same by passing every filter
value through the attribute's ``convert_to`` (``api_common.get_filters``).  A value that does not
parse is compared as sent (it matches nothing), as before."""


def _respelled(spell: Callable[[str], str], wanted: str) -> str:
    if wanted in NULL_WORDS:
        return wanted
    try:
        return spell(wanted)
    except InvalidInput:
        return wanted


def canonical_filter(name: str, wanted: str) -> str:
    """``wanted`` as the store spells a value of attribute ``name`` (see `CANONICAL_SPELLING`);
    for ``fixed_ips=ip_address=...`` the address."""
    if name == "fixed_ips":
        key, sep, value = wanted.partition("=")
        if sep and key == "ip_address":
            return f"{key}={_respelled(_ip_text(name), value)}"
        return wanted
    spell = CANONICAL_SPELLING.get(name)
    return wanted if spell is None else _respelled(spell, wanted)


def _matches_fixed_ip(fixed_ips: list[dict[str, str]], wanted: str) -> bool:
    """``fixed_ips=ip_address=10.0.0.5`` or ``fixed_ips=subnet_id=...``."""
    key, sep, value = wanted.partition("=")
    if not sep:
        return False
    if key == "ip_address_substr":
        return any(value in ip["ip_address"] for ip in fixed_ips)
    return any(ip.get(key) == value for ip in fixed_ips)


def _check_spelling(name: str, wanted: list[str], kind: type | None) -> None:
    """400 for a value a boolean or integer attribute cannot hold ("" or None: null)."""
    for w in wanted:
        if w in NULL_WORDS:
            continue
        if kind is bool and w.lower() not in TRUE_WORDS:
            raise invalid_attr(name, f"'{w}' is not a boolean")
        if kind is int and integer_text(w) is None:
            raise invalid_attr(name, f"'{w}' is not an integer")


def _matches(obj: dict[str, Any], name: str, wanted: list[str]) -> bool:
    """Whether one attribute matches any of the wanted values (repeated keys are ORed)."""
    value = obj.get(name)
    if name == "fixed_ips":
        return any(_matches_fixed_ip(value or [], w) for w in wanted)
    if isinstance(value, list):
        return any(w in value for w in wanted)
    if isinstance(value, dict):
        return False
    return any(_matches_scalar(value, w) for w in wanted)


def _tags(values: Iterable[str]) -> set[str]:
    return {t for v in values for t in v.split(",") if t}


def _matches_tags(obj: dict[str, Any], params: QueryParams) -> bool:
    have = set(obj.get("tags") or [])
    if "tags" in params and not _tags(params.getlist("tags")) <= have:
        return False
    if "tags-any" in params and not _tags(params.getlist("tags-any")) & have:
        return False
    if "not-tags" in params and _tags(params.getlist("not-tags")) <= have:
        return False
    return not ("not-tags-any" in params and _tags(params.getlist("not-tags-any")) & have)


def matcher(
    params: QueryParams, attributes: frozenset[str], types: Mapping[str, type] | None = None
) -> Callable[[dict[str, Any]], bool]:
    """Whether an object matches every filter of the query string (unknown attributes: 400).

    A value a ``bool`` or ``int`` attribute (``types``) cannot hold is a 400 naming it, judged
    on the query alone: the same query never gets a 200 or a 400 depending on what is stored
    (as when only stored integers were checked), nor a next link that leads to a 400."""
    filters: dict[str, list[str]] = {}
    for key in params:
        if key in PAGING_KEYS or key in TAG_FILTERS:
            continue
        if key not in attributes:
            raise InvalidInput(f"{key} is an invalid attribute for filtering", "HTTPBadRequest")
        filters[key] = [canonical_filter(key, w) for w in params.getlist(key)]
        _check_spelling(key, filters[key], (types or {}).get(key))
    use_tags = any(k in params for k in TAG_FILTERS)

    def matches(o: dict[str, Any]) -> bool:
        return all(_matches(o, k, w) for k, w in filters.items()) and (
            not use_tags or _matches_tags(o, params)
        )

    return matches


def filtered(
    objs: list[dict[str, Any]],
    params: QueryParams,
    attributes: frozenset[str],
    types: Mapping[str, type] | None = None,
) -> list[dict[str, Any]]:
    """The objects matching every filter of the query string."""
    matches = matcher(params, attributes, types)
    return [o for o in objs if matches(o)]


def exact_filters(params: QueryParams, names: Iterable[str]) -> dict[str, list[str]]:
    """The filters on ``names`` (columns the store indexes) the store may apply first: each
    value is compared as plain text there, which is exactly what `matcher` does for these
    string attributes (an empty value means "unbound" for a host and stays with `matcher`)."""
    return {
        name: params.getlist(name) for name in names if name in params and all(params.getlist(name))
    }


def _sort_value(value: Any) -> tuple[int, Any]:
    """A comparable key for any attribute value (None first, then numbers, then text)."""
    if value is None:
        return (0, 0)
    if isinstance(value, (bool, int, float)):
        return (1, value)
    return (2, str(value))


def ordering(params: QueryParams, attributes: frozenset[str]) -> tuple[str, bool, int]:
    """``(sort_key, descending, limit)`` of a list request, validated (limit 0: no limit)."""
    sort_key = params.get("sort_key", "id")
    if sort_key not in attributes:
        raise InvalidInput(f"{sort_key} is an invalid attribute for sorting", "HTTPBadRequest")
    if params.get("page_reverse", "false").lower() not in ("false", "0"):
        raise InvalidInput("page_reverse is not supported; use sort_dir", "HTTPBadRequest")
    if params.get("sort_dir", "asc").lower() not in ("asc", "desc"):
        raise InvalidInput("sort_dir must be 'asc' or 'desc'", "HTTPBadRequest")
    descending = params.get("sort_dir", "asc").lower() == "desc"
    return sort_key, descending, _limit(params.get("limit"))


def page(
    objs: list[dict[str, Any]],
    params: QueryParams,
    attributes: frozenset[str],
    lookup_marker: Any,
    singular: str,
) -> tuple[list[dict[str, Any]], bool]:
    """Sort and cut one page; returns (page, more_remain).

    ``lookup_marker(id)`` returns the marker object (or None: Neutron answers 404), whose sort
    position is used, so a marker that was filtered out still places the page correctly.
    (Pages in ``id`` order are cut by the store instead, without loading the rest.)
    """
    sort_key, descending, limit = ordering(params, attributes)

    def key(o: dict[str, Any]) -> tuple[tuple[int, Any], str]:
        return (_sort_value(o.get(sort_key)), str(o.get("id")))

    ordered = sorted(objs, key=key, reverse=descending)
    marker_id = params.get("marker")
    if marker_id:
        marker = lookup_marker(marker_id)
        if marker is None:
            raise not_found(singular, marker_id)
        mark = key(marker)
        ordered = [o for o in ordered if (key(o) < mark if descending else key(o) > mark)]
    if limit and len(ordered) > limit:
        return ordered[:limit], True
    return ordered, False


def _limit(raw: str | None) -> int:
    """``limit``: a non-negative integer; 0 or absent means no limit."""
    if raw is None or raw == "":
        return 0
    limit = integer_text(raw)
    if limit is None or limit < 0:
        raise InvalidInput(
            f"Bad limit request: Limit must be an integer 0 or greater and not '{raw}'",
            "HTTPBadRequest",
        )
    return limit


def next_link(url: URL, last: dict[str, Any], limit: str | None) -> dict[str, str]:
    """The ``rel=next`` link: the same query with the marker moved to the page's last object."""
    return {"rel": "next", "href": str(url.include_query_params(limit=limit, marker=last["id"]))}
