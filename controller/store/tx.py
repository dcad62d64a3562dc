"""One write transaction as the resource modules see it: the connection plus the events to publish.

Resource modules (networks, subnets, ports, hosts) append a `ChangeEvent` for every object they
touch; the `Store` publishes the list only after COMMIT, so a subscriber never sees a change that
was rolled back, and a bulk request that fails half-way publishes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.events import ChangeEvent
from controller.store.errors import InvalidInput


@dataclass
class Tx:
    """An open ``BEGIN IMMEDIATE`` transaction (or a read under the store lock)."""

    conn: sqlite3.Connection
    underlay_mtu: int = 1500
    # "ssl" while the controller speaks TLS to the hypervisors: a host's OVSDB target is then
    # ssl: by default and never plain tcp: (`hosts`)
    ovsdb_scheme: str = "tcp"
    events: list[ChangeEvent] = field(default_factory=list)
    # subnet id -> where the next IP allocation starts looking (only a hint, see
    # allocation.ip_address): the Store's committed hints, and this transaction's new ones,
    # which the Store adopts on COMMIT only, so a rolled-back allocation frees its addresses
    # for the very next request.
    ip_hints: dict[str, int] = field(default_factory=dict)
    new_ip_hints: dict[str, int] = field(default_factory=dict)
    # (segment type, low end of its range) -> the lowest id that may still be free: every id
    # from ``low`` up to it was allocated in this transaction or before.  So a bulk of N
    # networks walks the used ids once, not N times.  This transaction's only: a network
    # updated or deleted in it (which may free an id below) drops the hints.
    seg_hints: dict[tuple[str, int], int] = field(default_factory=dict)

    def ip_hint(self, subnet_id: str) -> int | None:
        return self.new_ip_hints.get(subnet_id, self.ip_hints.get(subnet_id))

    def commit_ip_hints(self, hints: dict[str, int]) -> None:
        """Adopt this transaction's hints into the store's committed ``hints`` (after its
        COMMIT), and drop those of the subnets it deleted: subnet ids are never reused, so
        a deleted subnet's hint was kept, never read again, for the life of the process."""
        hints.update(self.new_ip_hints)
        for ev in self.events:
            if ev.kind == "subnet" and ev.new is None and ev.old is not None:
                hints.pop(str(ev.old.get("id")), None)

    def emit(self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Queue one change for publication after commit."""
        if kind == "network" and old is not None:
            self.seg_hints.clear()
        self.events.append(ChangeEvent(kind, old, new))

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None."""
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""
        return list(self.conn.execute(sql, params).fetchall())

    def exists(self, sql: str, params: tuple[Any, ...] = ()) -> bool:
        """Whether a query returns any row."""
        return self.one(sql, params) is not None

    def bodies_with_children(
        self,
        parents: str,
        children: str,
        attr: str,
        child: Callable[[Any], Any] = lambda value: value,
    ) -> list[dict[str, Any]]:
        """Every body ``parents`` selects, with ``attr`` set to its children, in two queries:
        ``children`` selects (parent id, value) rows in the children's order, ``child`` turns a
        value into what the list holds (a network's subnet ids, a group's rules)."""
        found: dict[str, list[Any]] = {}
        for parent_id, value in self.all(children):
            found.setdefault(parent_id, []).append(child(value))
        result = []
        for (text,) in self.all(parents):
            body = loads(text)
            body[attr] = found.get(body["id"], [])
            result.append(body)
        return result


def dumps(body: dict[str, Any]) -> str:
    """The stored JSON form of an object (compact; key order kept for readable dumps).

    Strict, so nothing is stored that could not be read back and rendered: ``NaN``/``Infinity``
    and lone surrogates are refused (the API refuses them earlier, naming the attribute; this
    is the last line, and it fails the write inside its transaction, so nothing is kept).
    """
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidInput(
            f"Invalid input: the {body.get('id', 'object')} cannot be stored as JSON ({exc})",
            "HTTPBadRequest",
        ) from None
    return text


def loads(text: str) -> dict[str, Any]:
    """An object back from its stored JSON form."""
    body: dict[str, Any] = json.loads(text)
    return body
