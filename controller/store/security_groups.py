"""Security groups: named sets of rules, the ports they apply to, and each project's ``default``.

A group's ``security_group_rules`` are not stored in its body but read from the rules table (as
a network's ``subnets`` are), so a rule change cannot leave a stale copy behind; a rule change
still bumps its group's revision and publishes the group, as Neutron's revision plugin does, so
the group event always carries the group's complete rule list.

Which ports are in which group is kept twice on purpose: in the port's ``security_groups`` (what
the API shows) and as ``port_security_groups`` rows, which make "is this group in use" and "the
members of this group" (whose addresses a ``remote_group_id`` rule matches) index lookups.

Neutron's rule templates decide the rules of a new group: every group starts with "egress
anywhere" for IPv4 and IPv6; a project's ``default`` group also lets in traffic from its own
members.  The default group is created on first use (a port created without
``security_groups``, or the project's first other group), and at most one per project exists:
the partial unique index of the schema stands behind the lookup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from controller.store import rule_values
from controller.store.attrs import (
    bump,
    check_read_only,
    reject_unknown,
    standard_attrs,
    updated_common,
)
from controller.store.errors import Conflict, not_found
from controller.store.tx import Tx, dumps, loads
from controller.store.values import as_bool, as_str, as_uuid

KIND = "security_group"
RULE_KIND = "security_group_rule"
DEFAULT_NAME = "default"
DEFAULT_DESCRIPTION = "Default security group"

CREATE_ATTRS = frozenset(
    {"id", "name", "description", "project_id", "tenant_id", "stateful", "tags"}
)
READ_ONLY = ("id", "created_at", "updated_at", "revision_number", "security_group_rules", "shared")
UPDATE_ATTRS = CREATE_ATTRS | frozenset(READ_ONLY)

TEMPLATE = (
    # direction, ethertype, from the group's own members, only in a project's default group
    ("egress", "IPv4", False, False),
    ("egress", "IPv6", False, False),
    ("ingress", "IPv4", True, True),
    ("ingress", "IPv6", True, True),
)
"""Neutron's default security group rule templates (``securitygroupdefaultrules``)."""


# -- reads ---------------------------------------------------------------------------------


def load(tx: Tx, group_id: str) -> dict[str, Any] | None:
    """The group with its rules, or None."""
    row = tx.one("SELECT body FROM security_groups WHERE id = ?", (group_id,))
    return None if row is None else with_rules(tx, loads(row[0]))


def with_rules(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """A stored group body with its ``security_group_rules`` (read from the rules table)."""
    body["security_group_rules"] = rules_of(tx, body["id"])
    return body


def keyed_rule(seq: int, text: str) -> dict[str, Any]:
    """A stored rule with its ``_key``: the row's never reused ``seq`` (AUTOINCREMENT), a
    stable integer id for the data plane (the rule's conjunction id in
    ``flows.security_groups``).  Rule reads and rule events carry it; the rules embedded in a
    group (`rules_of`) do not, since the API shows those as they are."""
    rule = loads(text)
    rule["_key"] = int(seq)
    return rule


def rules_of(tx: Tx, group_id: str) -> list[dict[str, Any]]:
    """A group's rules in creation order, as the API embeds them (without ``_key``)."""
    rows = tx.all(
        "SELECT body FROM security_group_rules WHERE security_group_id = ? ORDER BY seq",
        (group_id,),
    )
    return [loads(r[0]) for r in rows]


def load_all(tx: Tx) -> list[dict[str, Any]]:
    """Every group, sorted by id, with their rules in two queries."""
    return tx.bodies_with_children(
        "SELECT body FROM security_groups ORDER BY id",
        "SELECT security_group_id, body FROM security_group_rules ORDER BY seq",
        "security_group_rules",
        loads,
    )


def must_load(tx: Tx, group_id: str) -> dict[str, Any]:
    """The group, or Neutron's 404 ``SecurityGroupNotFound``."""
    body = load(tx, group_id)
    if body is None:
        raise not_found(KIND, group_id)
    return body


def is_default(tx: Tx, group_id: str) -> bool:
    """Whether the group is its project's ``default`` group."""
    row = tx.one("SELECT is_default FROM security_groups WHERE id = ?", (group_id,))
    return bool(row and row[0])


def count(tx: Tx, project_id: str) -> int:
    """How many groups a project has (its default group included, as Neutron's quota counts)."""
    row = tx.one("SELECT COUNT(*) FROM security_groups WHERE project_id = ?", (project_id,))
    return int(row[0]) if row else 0


def count_rules(tx: Tx, project_id: str) -> int:
    """How many security group rules a project has."""
    row = tx.one("SELECT COUNT(*) FROM security_group_rules WHERE project_id = ?", (project_id,))
    return int(row[0]) if row else 0


# -- groups ----------------------------------------------------------------------------------


def _name(value: Any) -> str:
    """A group name other than ``default`` (in any case), which only the project's own default
    group has (Neutron's ``name_not_default``)."""
    name = as_str(value, "name")
    if name.lower() == DEFAULT_NAME:
        raise Conflict(
            "Default security group already exists.", "SecurityGroupDefaultAlreadyExists"
        )
    return name


def default_id(tx: Tx, project_id: str) -> str | None:
    """The id of the project's default group, if it has one."""
    row = tx.one(
        "SELECT id FROM security_groups WHERE project_id = ? AND is_default", (project_id,)
    )
    return None if row is None else str(row[0])


def ensure_default(tx: Tx, project_id: str) -> str:
    """The id of the project's default group, created (with Neutron's rules) if it has none."""
    found = default_id(tx, project_id)
    if found is not None:
        return found
    body = {"name": DEFAULT_NAME, "description": DEFAULT_DESCRIPTION, "project_id": project_id}
    return str(_insert(tx, body, str(uuid.uuid4()), default=True)["id"])


def create(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """Insert one group with the template's rules; its project's default group comes first."""
    reject_unknown(body, CREATE_ATTRS)
    name = _name(body.get("name", ""))
    group_id = as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4())
    if tx.exists("SELECT 1 FROM security_groups WHERE id = ?", (group_id,)):
        raise Conflict(f"Security group {group_id} already exists.", "SecurityGroupExists")
    attrs = standard_attrs(body)
    ensure_default(tx, attrs["project_id"])
    return _insert(tx, {**body, "name": name}, group_id, default=False)


def _insert(tx: Tx, body: dict[str, Any], group_id: str, *, default: bool) -> dict[str, Any]:
    new: dict[str, Any] = {
        "id": group_id,
        "name": body["name"],
        "stateful": as_bool(body.get("stateful", True), "stateful"),
        "shared": False,
        **standard_attrs(body),
    }
    tx.conn.execute(
        "INSERT INTO security_groups (id, project_id, is_default, body) VALUES (?, ?, ?, ?)",
        (group_id, new["project_id"], int(default), dumps(new)),
    )
    rules = []
    for direction, ethertype, from_members, default_only in TEMPLATE:
        if default_only and not default:
            continue
        fields = {
            "direction": direction,
            "ethertype": ethertype,
            "remote_group_id": group_id if from_members else None,
        }
        owner = {"project_id": new["project_id"]}
        rules.append(new_rule(group_id, default, rule_values.canonical(fields), owner))
    new["security_group_rules"] = [dict(rule) for rule in rules]
    for rule in rules:
        insert_rule(tx, rule)
    tx.emit(KIND, None, new)
    for rule in rules:
        tx.emit(RULE_KIND, None, rule)
    return new


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Rename, re-describe, re-tag, or (while no port uses it) make stateful or stateless."""
    reject_unknown(changes, UPDATE_ATTRS)
    check_read_only(current, changes, READ_ONLY)
    if "name" in changes:
        if is_default(tx, current["id"]):
            raise Conflict(
                "Updating default security group not allowed.", "SecurityGroupCannotUpdateDefault"
            )
        changes = {**changes, "name": _name(changes["name"])}
    new = updated_common(current, changes)
    if "stateful" in changes:
        new["stateful"] = as_bool(changes["stateful"], "stateful")
        if new["stateful"] != current["stateful"] and in_use(tx, current["id"]):
            raise in_use_error(current["id"])
    return _save(tx, current, new)


def _save(tx: Tx, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    new = bump(current, new)
    if new is not current:
        stored = {k: v for k, v in new.items() if k != "security_group_rules"}
        tx.conn.execute(
            "UPDATE security_groups SET body = ? WHERE id = ?", (dumps(stored), current["id"])
        )
        tx.emit(KIND, current, new)
    return new


def touch(tx: Tx, group_id: str, current: dict[str, Any]) -> None:
    """A rule of the group was added or removed: a new revision and an event for the group
    (``current`` is the group as it was before)."""
    new = dict(current)
    new["security_group_rules"] = rules_of(tx, group_id)
    _save(tx, current, new)


def in_use(tx: Tx, group_id: str) -> bool:
    """Whether any port is in the group."""
    return tx.exists("SELECT 1 FROM port_security_groups WHERE security_group_id = ?", (group_id,))


def in_use_error(group_id: str) -> Conflict:
    return Conflict(f"Security Group {group_id} in use.", "SecurityGroupInUse")


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete a group no port is in, with its rules and, like Neutron, the rules of other
    groups that name it as their ``remote_group_id``."""
    group_id = current["id"]
    if in_use(tx, group_id):
        raise in_use_error(group_id)
    others: dict[str, dict[str, Any]] = {}
    rows = tx.all(
        "SELECT seq, body FROM security_group_rules"
        " WHERE security_group_id = ? OR remote_group_id = ? ORDER BY seq",
        (group_id, group_id),
    )
    for seq, text in rows:
        rule = keyed_rule(seq, text)
        owner = rule["security_group_id"]
        if owner != group_id and owner not in others:
            others[owner] = must_load(tx, owner)
        tx.emit(RULE_KIND, rule, None)
    tx.conn.execute(
        "DELETE FROM security_group_rules WHERE security_group_id = ? OR remote_group_id = ?",
        (group_id, group_id),
    )
    tx.conn.execute("DELETE FROM security_groups WHERE id = ?", (group_id,))
    tx.emit(KIND, current, None)
    for owner, before in others.items():
        touch(tx, owner, before)


# -- rules (rows; the API's rule operations are in security_group_rules) -----------------------


def new_rule(
    group_id: str, group_is_default: bool, fields: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    """A rule record of a group from its canonical match ``fields`` (see
    `rule_values.canonical`) and the standard attributes in ``body``."""
    attrs = standard_attrs(body)
    del attrs["tags"]  # Neutron does not tag rules
    return {
        "id": as_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4()),
        "security_group_id": group_id,
        **fields,
        "remote_address_group_id": None,
        "normalized_cidr": fields["remote_ip_prefix"],
        "belongs_to_default_sg": group_is_default,
        **attrs,
    }


def insert_rule(tx: Tx, rule: dict[str, Any]) -> None:
    """Store a new rule and give it its ``_key`` (see `keyed_rule`)."""
    cursor = tx.conn.execute(
        "INSERT INTO security_group_rules (id, security_group_id, remote_group_id, project_id, "
        "body) VALUES (?, ?, ?, ?, ?)",
        (
            rule["id"],
            rule["security_group_id"],
            rule["remote_group_id"],
            rule["project_id"],
            dumps(rule),
        ),
    )
    rule["_key"] = int(cursor.lastrowid or 0)


# -- ports -----------------------------------------------------------------------------------


def for_port(tx: Tx, requested: Iterable[str]) -> list[str]:
    """The groups a port asks for, as canonical ids without repeats: each must exist (404
    ``SecurityGroupNotFound`` naming the missing ones), and stateful and stateless groups do
    not mix on one port (409 ``SecurityGroupConflict``), as in Neutron."""
    ids = list(dict.fromkeys(as_uuid(g, "security_groups") for g in requested))
    stateful: set[bool] = set()
    missing = []
    for group_id in ids:
        row = tx.one(
            "SELECT json_extract(body, '$.stateful') FROM security_groups WHERE id = ?", (group_id,)
        )
        if row is None:
            missing.append(group_id)
        else:
            stateful.add(bool(row[0]))
    if missing:
        raise not_found(KIND, ", ".join(missing))
    if len(stateful) > 1:
        raise Conflict(
            "Error Cannot apply both stateful and stateless security groups on the same port at "
            "the same time while attempting the operation.",
            "SecurityGroupConflict",
        )
    return ids


def bind_port(tx: Tx, port_id: str, group_ids: list[str]) -> None:
    """Record the port's groups as rows (replacing what it had)."""
    tx.conn.execute("DELETE FROM port_security_groups WHERE port_id = ?", (port_id,))
    tx.conn.executemany(
        "INSERT INTO port_security_groups (port_id, security_group_id) VALUES (?, ?)",
        [(port_id, g) for g in group_ids],
    )
