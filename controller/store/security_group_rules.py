"""Security group rules as the API creates, reads and deletes them (rules are never updated:
Neutron has no update for them either; a changed rule is a delete and a create).

What a rule may say is `rule_values`; which group it belongs to, which group it names as
``remote_group_id`` and whether the group already has the same rule is checked here, inside
the write transaction.  Adding or removing a rule gives its group a new revision and event
(see `security_groups`).
"""

from __future__ import annotations

from typing import Any

from controller.store import rule_values
from controller.store import security_groups as groups
from controller.store.attrs import null_only, project_of, reject_unknown, require
from controller.store.errors import Conflict, InvalidInput, not_found
from controller.store.tx import Tx
from controller.store.values import as_uuid

KIND = "security_group_rule"
CREATE_ATTRS = frozenset(
    {
        "id",
        "description",
        "project_id",
        "tenant_id",
        "security_group_id",
        "direction",
        "ethertype",
        "protocol",
        "port_range_min",
        "port_range_max",
        "remote_ip_prefix",
        "remote_group_id",
        "remote_address_group_id",
    }
)


def load(tx: Tx, rule_id: str) -> dict[str, Any] | None:
    """The rule (with its ``_key``), or None."""
    row = tx.one("SELECT seq, body FROM security_group_rules WHERE id = ?", (rule_id,))
    return None if row is None else groups.keyed_rule(*row)


def load_all(tx: Tx, group_id: str | None = None) -> list[dict[str, Any]]:
    """Rules (with their ``_key``) sorted by id, optionally of one group."""
    if group_id is None:
        rows = tx.all("SELECT seq, body FROM security_group_rules ORDER BY id")
    else:
        rows = tx.all(
            "SELECT seq, body FROM security_group_rules WHERE security_group_id = ? ORDER BY id",
            (group_id,),
        )
    return [groups.keyed_rule(*r) for r in rows]


def must_load(tx: Tx, rule_id: str) -> dict[str, Any]:
    """The rule, or Neutron's 404 ``SecurityGroupRuleNotFound``."""
    body = load(tx, rule_id)
    if body is None:
        raise not_found(KIND, rule_id)
    return body


def create(tx: Tx, body: dict[str, Any]) -> dict[str, Any]:
    """Insert one rule into an existing group (409 ``SecurityGroupRuleExists`` if the group
    already has the same rule) and queue its event and its group's."""
    reject_unknown(body, CREATE_ATTRS)
    null_only(body, ("remote_address_group_id",))
    group_id = as_uuid(require(body, "security_group_id"), "security_group_id")
    require(body, "direction")
    fields = rule_values.canonical(body)
    if fields["remote_group_id"] is not None:
        fields["remote_group_id"] = as_uuid(fields["remote_group_id"], "remote_group_id")
        if not tx.exists(
            "SELECT 1 FROM security_groups WHERE id = ?", (fields["remote_group_id"],)
        ):
            raise not_found(groups.KIND, fields["remote_group_id"])
    group = groups.must_load(tx, group_id)
    owner = {**body, "project_id": project_of(body, group["project_id"]), "tenant_id": None}
    rule = groups.new_rule(group_id, groups.is_default(tx, group_id), fields, owner)
    if tx.exists("SELECT 1 FROM security_group_rules WHERE id = ?", (rule["id"],)):
        raise Conflict(
            f"Security group rule {rule['id']} already exists.", "SecurityGroupRuleExists"
        )
    wanted = rule_values.key(rule)
    for other in group["security_group_rules"]:
        if rule_values.key(other) == wanted:
            raise Conflict(
                f"Security group rule already exists. Rule id is {other['id']}.",
                "SecurityGroupRuleExists",
            )
    groups.insert_rule(tx, rule)
    tx.emit(KIND, None, rule)
    groups.touch(tx, group_id, group)
    return rule


def update(tx: Tx, current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Rules cannot be changed (the API has no route for it; this is for direct callers)."""
    del current, changes
    raise InvalidInput("Security group rules cannot be updated.", "HTTPBadRequest")


def delete(tx: Tx, current: dict[str, Any]) -> None:
    """Delete the rule; its group gets a new revision."""
    group = groups.must_load(tx, current["security_group_id"])
    tx.conn.execute("DELETE FROM security_group_rules WHERE id = ?", (current["id"],))
    tx.emit(KIND, current, None)
    groups.touch(tx, group["id"], group)
