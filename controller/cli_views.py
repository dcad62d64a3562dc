"""The tables `tenantnet status`, `hosts` and `ports` print, from the API's documents (pure:
no I/O, so the tests feed them documents)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from controller.metrics import host_state

# C0 and C1 controls, DEL, line and paragraph separators and the bidi overrides/isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(value: object) -> str:
    """``value`` as text that shows on a terminal as what it is: every control character as
    ``\\xNN``/``\\uNNNN``.  Names (ports, networks, security groups) are whatever a
    tenant typed: an escape sequence in one would otherwise reach the operator's terminal (clear
    it, retitle it, recolour or hide lines) and a newline would forge a line of the answer."""
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", str(value)
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``-`` for a missing value.  Cells are
    `visible`: names and descriptions are whatever a tenant typed."""
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None or v == "" else visible(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def status_view(status: Mapping[str, Any], ready: Mapping[str, Any] | None) -> str:
    """``GET /tenantnet/status`` (and ``/readyz`` when the server has it)."""
    lines = []
    if ready is not None:
        reason = ready.get("reason")
        lines.append(f"controller: {ready.get('status', '?')}" + (f" ({reason})" if reason else ""))
    hosts: Mapping[str, Mapping[str, Any]] = status.get("hosts") or {}
    rows = [
        (
            h,
            host_state(host),
            "up" if host.get("ovsdb") else "down",
            "read back" if host.get("openflow") else "no",
            host.get("flows"),
            host.get("groups"),
            len(host.get("networks") or ()),
            host.get("degraded"),
        )
        for h, host in sorted(hosts.items())
    ]
    lines.append(
        table(
            ("HOST", "STATE", "OVSDB", "FLOWS READ", "FLOWS", "GROUPS", "NETWORKS", "DEGRADED"),
            rows,
        )
        if rows
        else "no hosts registered"
    )
    reconciled = status.get("reconciled_after_s")
    lines.append(
        f"flow-mods {status.get('flow_mods', 0)}, group-mods {status.get('group_mods', 0)}, "
        f"batches {status.get('batches', 0)}, binding conflicts "
        f"{status.get('binding_conflicts', 0)}; "
        + (
            f"all hosts reconciled {reconciled:g} s after start"
            if reconciled is not None
            else "not all hosts reconciled yet"
        )
        + f"; up {status.get('uptime_s', 0):.0f} s"
    )
    return "\n".join(lines)


def hosts_view(hosts: Sequence[Mapping[str, Any]], status: Mapping[str, Any]) -> str:
    """``GET /v2.0/hosts`` with each host's flows and groups from the status document."""
    live: Mapping[str, Mapping[str, Any]] = status.get("hosts") or {}
    rows = [
        (
            h["id"],
            h.get("status"),
            h.get("tunnel_ip"),
            h.get("ovsdb"),
            h.get("datapath_type"),
            live.get(h["id"], {}).get("flows"),
            live.get(h["id"], {}).get("groups"),
            h.get("datapath_id"),
        )
        for h in sorted(hosts, key=lambda h: str(h["id"]))
    ]
    if not rows:
        return "no hosts registered"
    return table(
        ("ID", "STATUS", "TUNNEL IP", "OVSDB", "DATAPATH", "FLOWS", "GROUPS", "DATAPATH ID"), rows
    )


def ports_view(ports: Sequence[Mapping[str, Any]], networks: Mapping[str, str]) -> str:
    """``GET /v2.0/ports``; ``networks``: id -> name, to show names where there are some."""
    rows = [
        (
            p["id"],
            p.get("name"),
            networks.get(p.get("network_id", "")) or p.get("network_id"),
            p.get("mac_address"),
            ",".join(ip.get("ip_address", "") for ip in p.get("fixed_ips") or ()),
            p.get("binding:host_id"),
            p.get("status"),
        )
        for p in sorted(ports, key=lambda p: (str(p.get("binding:host_id")), str(p["id"])))
    ]
    if not rows:
        return "no ports"
    return table(("ID", "NAME", "NETWORK", "MAC", "FIXED IPS", "HOST", "STATUS"), rows)
