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

The operations are OVSDB's own transact format (RFC 7047, 5.2): python-ovs builds them only
inside its IDL, which is exactly the wait this avoids.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from ovs import jsonrpc, poller, stream

DB = "Open_vSwitch"


class PokeError(Exception):
    """The poke could not be done (unreachable, refused, timed out, unexpected answer)."""


def _transact(conn: jsonrpc.Connection, ops: list[dict[str, Any]], deadline: float) -> list[Any]:
    """One ``transact`` request, its reply's results (one dict per operation, ``error`` in the
    one that failed); bounded by ``deadline`` (monotonic)."""
    request = jsonrpc.Message.create_request("transact", [DB, *ops])
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
            if msg.type != jsonrpc.Message.T_REPLY or not isinstance(msg.result, list):
                raise PokeError(f"transaction refused: {msg.error}")
            results: list[Any] = msg.result
            if not all(isinstance(r, dict) for r in results):
                raise PokeError("malformed answer")
            return results
    raise PokeError(os.strerror(err) if err > 0 else "connection closed")


def _uuid(value: Any) -> str | None:
    """The uuid of an OVSDB ``["uuid", "..."]`` atom, or None."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "uuid":
        return str(value[1])
    return None


def _controllers(value: Any) -> list[str] | None:
    """The uuids of a Bridge's ``controller`` column (an atom or a ``["set", [...]]``)."""
    one = _uuid(value)
    if one is not None:
        return [one]
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        uuids = [_uuid(v) for v in value[1]]
        return None if None in uuids else [u for u in uuids if u is not None]
    return None


def poke(
    ovsdb_target: str, bridge: str, ours: dict[str, str], timeout_s: float
) -> str | None:
    """Rewrite ``bridge``'s controller target ``t`` as ``ours[t]`` if the bridge has exactly
    one controller and its target is a key of ``ours``; the target written, or None if the
    bridge is not in that shape (nothing written).  PokeError if OVSDB could not be asked."""
    deadline = time.monotonic() + timeout_s
    err, strm = stream.Stream.open_block(
        stream.Stream.open(ovsdb_target), int(timeout_s * 1000)
    )
    if err:
        raise PokeError(os.strerror(err) if err > 0 else "cannot connect")
    conn = jsonrpc.Connection(strm)
    try:
        found = _transact(
            conn,
            [
                {"op": "select", "table": "Bridge", "where": [["name", "==", bridge]],
                 "columns": ["controller"]},
                {"op": "select", "table": "Controller", "where": [],
                 "columns": ["_uuid", "target"]},
            ],
            deadline,
        )  # fmt: skip
        if any("error" in r for r in found):
            raise PokeError(f"select failed: {found}")
        bridges = found[0].get("rows", [])
        if len(bridges) != 1:
            return None
        uuids = _controllers(bridges[0].get("controller"))
        if uuids is None or len(uuids) != 1:
            return None
        row = next(
            (r for r in found[1].get("rows", []) if _uuid(r.get("_uuid")) == uuids[0]), None
        )
        current = row.get("target") if row is not None else None
        if not isinstance(current, str) or current not in ours:
            return None
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
            return None
        if len(done) < 2 or "error" in done[1]:
            raise PokeError(f"update failed: {done}")
        return other if done[1].get("count") == 1 else None
    finally:
        conn.close()
