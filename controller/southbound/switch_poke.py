"""Make a host's switch reconnect at once, before its OVSDB agent has its IDL: the poke.

After a controller restart every switch sits in its reconnect backoff (at least 1 s), and the
fast reconnect (`OvsdbHost._controller_target`) rewrites the bridge's controller target in its
other spelling so that vswitchd connects at once.  Done inside the agent's `ensure_config`, the
rewrite waits for the IDL: a schema fetch, the IDL's own round trips and the initial dump
(106-133 ms at H=3, measured), and only then does the switch start its OpenFlow handshake and
the read-back of its flows, which take longer still.  The poke does the same rewrite first, on
its own short OVSDB connection (python-ovs's stream and JSON-RPC, which the IDL uses too: same
``tcp:``/``ssl:``/``unix:`` targets, same process-wide TLS settings), in one select and one
guarded update; the switch then reconnects while the IDL is still loading.

The rewrite is the fast reconnect's, under the same conditions, checked by the server inside
the update's transaction (a ``wait`` operation): the bridge has exactly one controller, that
controller is ours (its target is ours in either spelling) and its target is still the one read.
Anything else (no such bridge yet, another controller beside ours, a change in between) and the
poke does nothing; the agent's `ensure_config` then writes what it must, as before.

The same first select also reads the bridge's interfaces (name, ofport, ``iface-id``): what
the data plane needs from OVSDB to reconcile the host (its bindings and tunnel ofports), so the
agent can report them at once (`OvsdbHost._early_read`) instead of after the IDL's load, which
then no longer stands between a restart and "reconciled".

The operations are OVSDB's own transact format (RFC 7047, 5.2): python-ovs builds them only
inside its IDL, which is exactly the wait this avoids.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Any

from ovs import jsonrpc, poller, stream

from controller import tls

DB = "Open_vSwitch"


class PokeError(Exception):
    """The poke could not be done (unreachable, refused, timed out, unexpected answer)."""


@dataclass(frozen=True)
class Iface:
    """One interface of the bridge as the poke's select saw it."""

    name: str
    ofport: int | None  # None: vswitchd has not assigned one (yet)
    iface_id: str | None  # external_ids:iface-id


@dataclass(frozen=True)
class Poked:
    """What `read_and_poke` found and did."""

    written: str | None  # the target written, None if nothing was
    interfaces: tuple[Iface, ...] | None  # the bridge's interfaces; None: no such bridge


def _call(conn: jsonrpc.Connection, method: str, params: list[Any], deadline: float) -> Any:
    """One JSON-RPC request and its reply's result; bounded by ``deadline`` (monotonic)."""
    request = jsonrpc.Message.create_request(method, params)
    err = conn.send(request)
    while not err:
        err, msg = conn.recv()
        if err == errno.EAGAIN:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise PokeError("no answer in time")
            conn.run()
            p = poller.Poller()
            conn.wait(p)
            conn.recv_wait(p)
            p.timer_wait(left_ms)
            p.block()
            err = 0
            continue
        if err:
            break
        if msg is not None and msg.id == request.id:
            if msg.type != jsonrpc.Message.T_REPLY:
                raise PokeError(f"{method} refused: {msg.error}")
            return msg.result
    raise PokeError(os.strerror(err) if err > 0 else "connection closed")


def _transact(conn: jsonrpc.Connection, ops: list[dict[str, Any]], deadline: float) -> list[Any]:
    """One ``transact`` request, its reply's results (one dict per operation, ``error`` in the
    one that failed); bounded by ``deadline`` (monotonic)."""
    results = _call(conn, "transact", [DB, *ops], deadline)
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise PokeError("malformed answer")
    return results


def _open(ovsdb_target: str, timeout_s: float, host_id: str | None) -> jsonrpc.Connection:
    """A connection to ``ovsdb_target``; with ``host_id``, over ``ssl:`` only to a server
    whose certificate names that host (`tls.ovsdb_peer_mismatch`)."""
    err, strm = stream.Stream.open_block(stream.Stream.open(ovsdb_target), int(timeout_s * 1000))
    if err:
        raise PokeError(os.strerror(err) if err > 0 else "cannot connect")
    if host_id is not None:
        wrong = tls.ovsdb_peer_mismatch(ovsdb_target, getattr(strm, "socket", None), host_id)
        if wrong is not None:
            strm.close()
            raise PokeError(wrong)
    return jsonrpc.Connection(strm)


def fetch_schema(ovsdb_target: str, timeout_s: float, host_id: str | None = None) -> dict[str, Any]:
    """The server's ``Open_vSwitch`` schema (JSON), within ``timeout_s``: what ovsdbapp's
    ``get_schema_helper`` fetches with no bound at all, so that a server that accepts the
    connection and never answers (hung, stopped, or hostile) held the host's agent for good."""
    deadline = time.monotonic() + timeout_s
    conn = _open(ovsdb_target, timeout_s, host_id)
    try:
        schema = _call(conn, "get_schema", [DB], deadline)
    finally:
        conn.close()
    if not isinstance(schema, dict):
        raise PokeError("malformed schema")
    return schema


def _uuid(value: Any) -> str | None:
    """The uuid of an OVSDB ``["uuid", "..."]`` atom, or None."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "uuid":
        return str(value[1])
    return None


def _uuids(value: Any) -> list[str] | None:
    """The uuids of a set-of-references column such as a Bridge's ``controller`` or ``ports``
    (an atom or a ``["set", [...]]``); None if it is not one."""
    one = _uuid(value)
    if one is not None:
        return [one]
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        uuids = [_uuid(v) for v in value[1]]
        return None if None in uuids else [u for u in uuids if u is not None]
    return None


def _ofport(value: Any) -> int | None:
    """An Interface's ``ofport`` (an optional integer: the integer or ``["set", [n]]``)."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        value = value[1][0] if isinstance(value[1], list) and len(value[1]) == 1 else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map_get(value: Any, key: str) -> str | None:
    """``value[key]`` of a string-to-string map column (``["map", [[k, v], ...]]``)."""
    if not (isinstance(value, list) and len(value) == 2 and value[0] == "map"):
        return None
    for pair in value[1] if isinstance(value[1], list) else ():
        if isinstance(pair, list) and len(pair) == 2 and pair[0] == key:
            return pair[1] if isinstance(pair[1], str) else None
    return None


def _bridge_interfaces(
    bridge: dict[str, Any], ports: list[Any], interfaces: list[Any]
) -> tuple[Iface, ...]:
    """The interfaces of ``bridge``'s ports, from the rows of the Port and Interface selects."""
    port_uuids = set(_uuids(bridge.get("ports")) or ())
    wanted: set[str] = set()
    for row in ports:
        if isinstance(row, dict) and _uuid(row.get("_uuid")) in port_uuids:
            wanted.update(_uuids(row.get("interfaces")) or ())
    found = []
    for row in interfaces:
        if not isinstance(row, dict) or _uuid(row.get("_uuid")) not in wanted:
            continue
        name = row.get("name")
        if isinstance(name, str):
            found.append(
                Iface(
                    name, _ofport(row.get("ofport")), _map_get(row.get("external_ids"), "iface-id")
                )
            )
    return tuple(found)


def poke(ovsdb_target: str, bridge: str, ours: dict[str, str], timeout_s: float) -> str | None:
    """Rewrite ``bridge``'s controller target ``t`` as ``ours[t]`` if the bridge has exactly
    one controller and its target is a key of ``ours``; the target written, or None if the
    bridge is not in that shape (nothing written).  PokeError if OVSDB could not be asked."""
    return read_and_poke(ovsdb_target, bridge, ours, timeout_s).written


def read_and_poke(
    ovsdb_target: str,
    bridge: str,
    ours: dict[str, str],
    timeout_s: float,
    host_id: str | None = None,
) -> Poked:
    """Read ``bridge``'s interfaces and, as `poke` says, rewrite its controller target (never
    with an empty ``ours``: a read alone).  PokeError if OVSDB could not be asked."""
    deadline = time.monotonic() + timeout_s
    conn = _open(ovsdb_target, timeout_s, host_id)
    try:
        found = _transact(
            conn,
            [
                {"op": "select", "table": "Bridge", "where": [["name", "==", bridge]],
                 "columns": ["controller", "ports"]},
                {"op": "select", "table": "Controller", "where": [],
                 "columns": ["_uuid", "target"]},
                {"op": "select", "table": "Port", "where": [],
                 "columns": ["_uuid", "interfaces"]},
                {"op": "select", "table": "Interface", "where": [],
                 "columns": ["_uuid", "name", "ofport", "external_ids"]},
            ],
            deadline,
        )  # fmt: skip
        if len(found) < 4 or any("error" in r for r in found):
            raise PokeError(f"select failed: {found}")
        bridges = found[0].get("rows", [])
        if len(bridges) != 1 or not isinstance(bridges[0], dict):
            return Poked(None, None)
        read = Poked(
            None,
            _bridge_interfaces(bridges[0], found[2].get("rows", []), found[3].get("rows", [])),
        )
        uuids = _uuids(bridges[0].get("controller"))
        if uuids is None or len(uuids) != 1:
            return read
        row = next((r for r in found[1].get("rows", []) if _uuid(r.get("_uuid")) == uuids[0]), None)
        current = row.get("target") if row is not None else None
        if not isinstance(current, str) or current not in ours:
            return read
        other = ours[current]
        done = _transact(
            conn,
            [
                # Still exactly that one controller on the bridge, with that target.
                {"op": "wait", "timeout": 0, "table": "Bridge",
                 "where": [["name", "==", bridge]], "columns": ["controller"], "until": "==",
                 "rows": [{"controller": ["uuid", uuids[0]]}]},
                {"op": "update", "table": "Controller",
                 "where": [["_uuid", "==", ["uuid", uuids[0]]], ["target", "==", current]],
                 "row": {"target": other}},
            ],
            deadline,
        )  # fmt: skip
        if "error" in done[0]:  # the wait: the bridge changed since the select
            return read
        if len(done) < 2 or "error" in done[1]:
            raise PokeError(f"update failed: {done}")
        return Poked(other if done[1].get("count") == 1 else None, read.interfaces)
    finally:
        conn.close()
