"""Schemathesis fuzzes every operation of the app's own ``/openapi.json``: no input may cause a
5xx, and every refusal must be a Neutron error body.

The schema is loaded from the running app (ASGI, in-process), so this also proves the published
document is valid OpenAPI that describes bodies a generator can build.  Examples are capped so
the whole module stays well under a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from controller.api import ApiSettings, create_app
from controller.events import EventBus
from controller.store import Store

MAX_EXAMPLES = 12

_TMP = tempfile.TemporaryDirectory(prefix="tenantnet-fuzz-")
STORE = Store(str(Path(_TMP.name) / "fuzz.db"), EventBus())
# Something to find, so that show/update/delete of real ids are exercised too.
_NET = STORE.create_network({"id": "55555555-5555-4555-8555-555555555555", "name": "seed"})
STORE.create_subnet({"network_id": _NET["id"], "cidr": "10.77.0.0/24"})
STORE.create_host({"id": "seed-host", "tunnel_ip": "192.0.2.77"})
APP = create_app(STORE, ApiSettings(max_body_bytes=64 * 1024))

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def _check(response: Any) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    if status >= 400:
        content_type = response.headers.get("content-type") or [""]
        if isinstance(content_type, list):  # schemathesis keeps every value of a header
            content_type = content_type[0]
        assert content_type.startswith("application/json"), (status, response.text[:200])
        body = response.json()
        assert set(body) == {"NeutronError"}, body
        assert body["NeutronError"]["message"], body


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_and_neutron_error_bodies(case: Any) -> None:
    _check(case.call())


def test_fuzzing_left_the_seed_network_consistent() -> None:
    """Whatever the fuzzer did, the store still answers and its invariants hold."""
    nets = STORE.list_networks()
    seg = [(n["provider:network_type"], n["provider:segmentation_id"]) for n in nets]
    assert len(seg) == len(set(seg))
    assert len({n["_key"] for n in nets}) == len(nets)
    for port in STORE.list_ports():
        assert STORE.get_network(port["network_id"]) is not None
