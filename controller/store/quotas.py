"""Per-project quotas: a registry of countable resources, limits, and enforcement inside the
create transaction.

A project that can create without bound can exhaust the controller for every other tenant
(segment ids, flows on every host of its networks, the store itself), so every create of a
quota resource is checked in the very ``BEGIN IMMEDIATE`` transaction that inserts it: the
objects are inserted, the project's objects are counted, and a count above the limit rolls the
whole request back.  Concurrent creates are serialised by SQLite's write lock, so no
interleaving lets a project end above its limit, and a bulk create counts as a whole (all of it
fits, or none of it is created; `Tally` stops it at the first object too many).  There are
no reservations: ``reserved`` is always 0.

Like Neutron ("no project_id - no quota check"), objects without a project (``project_id`` is
``""``: an operator's or orchestrator's own objects, or CloudStack's if it sends no tenant) are
neither checked nor counted.  Limits: ``-1`` is unlimited; a project's own limit (a row of the
``quotas`` table) wins over the default, which comes from the settings (``quota_<resource>``)
or else Neutron's default.

**Registering a resource** is one line at the bottom of this module: its name (the store kind
and the quota key), Neutron's default, and how to count a project's objects inside a
transaction (`owned_rows` for a table whose JSON body carries ``project_id``; give the table an
index on ``json_extract(body, '$.project_id')`` in its migration so the count stays cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.store import routers, security_groups
from controller.store.errors import Conflict, InvalidInput, NotFound
from controller.store.tx import Tx
from controller.store.values import as_int

UNLIMITED = -1
MAX_LIMIT = 2**31 - 1  # Neutron's DB_INTEGER_MAX_VALUE
MAX_PROJECT_ID_LEN = 255  # Neutron's PROJECT_ID_FIELD_SIZE


@dataclass(frozen=True)
class QuotaResource:
    """One resource with a per-project quota."""

    name: str
    default: int  # Neutron's default
    count: Callable[[Tx, str], int]  # a project's objects, inside a transaction


RESOURCES: dict[str, QuotaResource] = {}
"""The registered resources, in registration order (the order of every quota document)."""


def register(name: str, default: int, count: Callable[[Tx, str], int]) -> None:
    """Put ``name`` under quota: its creates are enforced and it appears in the quota API."""
    RESOURCES[name] = QuotaResource(name, default, count)


def owned_rows(table: str) -> Callable[[Tx, str], int]:
    """Count a project's rows of ``table`` (a constant of the code, never client input)."""
    sql = f"SELECT count(*) FROM {table} WHERE json_extract(body, '$.project_id') = ?"

    def count(tx: Tx, project_id: str) -> int:
        row = tx.one(sql, (project_id,))
        return int(row[0]) if row else 0

    return count


def project_id(value: str) -> str:
    """A project id from a URL: non-empty, at most 255 characters, as Neutron stores them."""
    if not value or len(value) > MAX_PROJECT_ID_LEN:
        raise InvalidInput(
            f"Invalid input for project_id. Reason: '{value[:40]}' is not a project id "
            f"(1-{MAX_PROJECT_ID_LEN} characters).",
            "HTTPBadRequest",
        )
    return value


def limit_value(value: Any, field: str) -> int:
    """A quota limit: an integer from -1 (unlimited) to 2**31-1, as Neutron accepts them."""
    return as_int(value, field, UNLIMITED, MAX_LIMIT)


def check_defaults(defaults: Mapping[str, int]) -> dict[str, int]:
    """The configured defaults of the registered resources, validated (others are ignored:
    a setting may name a resource that is not registered yet)."""
    result = {name: res.default for name, res in RESOURCES.items()}
    for name, value in defaults.items():
        if name in RESOURCES:
            result[name] = limit_value(value, f"quota_{name}")
    return result


def _stored(tx: Tx, project: str) -> dict[str, int]:
    rows = tx.all("SELECT resource, quota_limit FROM quotas WHERE project_id = ?", (project,))
    return {r: int(v) for r, v in rows if r in RESOURCES}


def limits(tx: Tx, project: str, defaults: Mapping[str, int]) -> dict[str, int]:
    """A project's limits: its own where set, else the defaults."""
    return {**defaults, **_stored(tx, project)}


def details(tx: Tx, project: str, defaults: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Neutron's ``quota_details``: used, limit and reserved (always 0) per resource."""
    return {
        name: {"used": RESOURCES[name].count(tx, project), "limit": limit, "reserved": 0}
        for name, limit in limits(tx, project, defaults).items()
    }


def all_set(tx: Tx, defaults: Mapping[str, int]) -> list[dict[str, Any]]:
    """Every project with a limit of its own, with all its limits (Neutron's quota list)."""
    projects = [r[0] for r in tx.all("SELECT DISTINCT project_id FROM quotas ORDER BY 1")]
    return [
        {**limits(tx, p, defaults), "project_id": p, "tenant_id": p}
        for p in projects
        if _stored(tx, p)
    ]


def parse_limits(changes: Mapping[str, Any]) -> dict[str, int]:
    """The limits of an update, all valid or refused as a whole, naming the attribute."""
    unknown = sorted(set(changes) - set(RESOURCES))
    if unknown:
        raise InvalidInput(f"Unrecognized attribute(s) '{', '.join(unknown)}'", "HTTPBadRequest")
    return {name: limit_value(value, name) for name, value in changes.items()}


def update(
    tx: Tx, project: str, changes: Mapping[str, Any], defaults: Mapping[str, int], force: bool
) -> dict[str, int]:
    """Set some of a project's limits.  Like Neutron since 2025.1, a limit below what the
    project already uses is refused (400) unless ``force``."""
    wanted = parse_limits(changes)
    if not force:
        for name, limit in wanted.items():
            used = RESOURCES[name].count(tx, project)
            if limit >= 0 and used > limit:
                raise InvalidInput(
                    f"Quota limit {limit} for {name} must be greater than or equal to "
                    f"already used {used}",
                    "HTTPBadRequest",
                )
    for name, limit in wanted.items():
        tx.conn.execute(
            "INSERT INTO quotas (project_id, resource, quota_limit) VALUES (?, ?, ?) "
            "ON CONFLICT (project_id, resource) DO UPDATE SET quota_limit = excluded.quota_limit",
            (project, name, limit),
        )
    return limits(tx, project, defaults)


def delete(tx: Tx, project: str) -> None:
    """Back to the defaults; Neutron's 404 when the project had no limit of its own."""
    if tx.conn.execute("DELETE FROM quotas WHERE project_id = ?", (project,)).rowcount < 1:
        raise NotFound(f"Quota for project {project} could not be found.", "TenantQuotaNotFound")


def enforce(
    tx: Tx, kind: str, created: Iterable[dict[str, Any]], defaults: Mapping[str, int]
) -> None:
    """After inserting ``created`` (objects of ``kind``) in ``tx``: 409 ``OverQuota`` if any of
    their projects now has more than its limit, which rolls the whole create back."""
    resource = RESOURCES.get(kind)
    if resource is None:
        return
    for project in sorted({o.get("project_id") or "" for o in created} - {""}):
        limit = limits(tx, project, defaults)[kind]
        if limit >= 0 and resource.count(tx, project) > limit:
            raise Conflict(f"Quota exceeded for resources: ['{kind}'].", "OverQuota")


class Tally:
    """`enforce` as a bulk goes: 409 ``OverQuota`` at the first object that takes its project
    over the limit, so an over-quota bulk stops there instead of inserting every object first
    (3,000 networks held the write lock 9 s before their 409).

    A project is counted once, at its first created object; each later one adds one.  Every
    created object is a row its project's count includes, so the tally never exceeds the real
    count: it refuses only what `enforce`, which still runs after the loop, would refuse."""

    def __init__(self, tx: Tx, kind: str, defaults: Mapping[str, int]) -> None:
        self._tx = tx
        self._kind = kind
        self._resource = RESOURCES.get(kind)
        self._defaults = defaults
        self._used: dict[str, int] = {}
        self._limit: dict[str, int] = {}

    def add(self, created: dict[str, Any]) -> None:
        """Count ``created`` (just inserted in the transaction); raise if over the quota."""
        project = created.get("project_id") or ""
        if self._resource is None or not project:
            return
        if project not in self._limit:
            self._limit[project] = limits(self._tx, project, self._defaults)[self._kind]
            if self._limit[project] < 0:
                return
            self._used[project] = self._resource.count(self._tx, project)  # ``created`` too
        elif self._limit[project] < 0:
            return
        else:
            self._used[project] += 1
        if self._used[project] > self._limit[project]:
            raise Conflict(f"Quota exceeded for resources: ['{self._kind}'].", "OverQuota")


register("network", 100, owned_rows("networks"))
register("subnet", 100, owned_rows("subnets"))
register("port", 500, owned_rows("ports"))
# Counted on their indexed project_id columns; a project's default group (made on its first
# use) counts, as in Neutron, but is never refused for quota.
register("security_group", 10, security_groups.count)
register("security_group_rule", 100, security_groups.count_rules)
register("router", 10, routers.count)
