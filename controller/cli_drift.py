"""What `tenantnet drift HOST` prints, from ``GET /tenantnet/hosts/{id}/drift`` (pure: no I/O,
so the tests feed it documents)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.cli_views import table

_SECTIONS = (
    ("missing_flows", "missing"),
    ("extra_flows", "extra"),
    ("modified_flows", "modified"),
    ("missing_groups", "missing group"),
    ("extra_groups", "extra group"),
    ("modified_groups", "modified group"),
)


def drift_view(doc: Mapping[str, Any]) -> str:
    """A summary line, one table row per owner that differs, then each differing flow or group
    (a modified one as its installed and its desired form) and the foreign flows."""
    counts = doc.get("counts") or {}
    host = doc.get("host", "?")
    foreign = doc.get("foreign_flows") or []
    if doc.get("in_sync"):
        head = f"host {host}: in sync with the desired state"
    else:
        head = (
            f"host {host}: drift: {counts.get('missing', 0)} missing, "
            f"{counts.get('extra', 0)} extra, {counts.get('modified', 0)} modified"
        )
    lines = [head + f"; {len(foreign)} foreign flows (never touched)"]
    owners = doc.get("owners") or []
    if owners:
        lines.append(
            table(
                ("OWNER", "PORT", "NETWORK", "MISSING", "EXTRA", "MODIFIED"),
                [
                    (
                        o.get("owner"),
                        o.get("port_id"),
                        o.get("network_id"),
                        len(o.get("missing_flows") or ()) + len(o.get("missing_groups") or ()),
                        len(o.get("extra_flows") or ()) + len(o.get("extra_groups") or ()),
                        len(o.get("modified_flows") or ()) + len(o.get("modified_groups") or ()),
                    )
                    for o in owners
                ],
            )
        )
    for o in owners:
        for key, label in _SECTIONS:
            for item in o.get(key) or ():
                if isinstance(item, Mapping):
                    owner = str(o.get("owner"))
                    lines.append(f"{owner}: {label}: {item.get('installed')}")
                    lines.append(f"{' ' * len(owner)}  desired: {item.get('desired')}")
                else:
                    lines.append(f"{o.get('owner')}: {label}: {item}")
    for flow in foreign:
        lines.append(f"foreign: {flow}")
    not_compared = doc.get("not_compared") or []
    if not_compared:
        lines.append(f"not compared (could not be compiled): {', '.join(not_compared)}")
    return "\n".join(lines)
