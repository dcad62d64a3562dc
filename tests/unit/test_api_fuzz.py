"""Schemathesis fuzzes the app's own ``/openapi.json``: no input may cause a 5xx, every refusal
is a Neutron error body, and nothing any request managed to create can break a later read.

Two runs, each on its own fresh store (the tests do not depend on each other or on order):

* every operation on its own (stateless), a few examples each;
* stateful: schemathesis chains operations along the OpenAPI links the API publishes (create ->
  show / update / delete of the created id), so updates and deletes hit real objects.  Then
  every object left in the store - whatever the fuzzer managed to create - must be listed,
  shown, updated and deleted through the API, also after the store is reopened (a restart).

The schema is loaded from the running app (ASGI, in-process), so this also proves the published
document is valid OpenAPI that describes bodies a generator can build.  Example counts are
capped so the module stays around a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from controller.api import ApiSettings, create_app
from controller.events import EventBus
from controller.store import Store
from tests.unit.conftest import TestClient

MAX_EXAMPLES = 12
STATEFUL_SCENARIOS = 40
STATEFUL_STEPS = 8
KINDS = (
    ("router", "routers"),
    ("port", "ports"),
    ("subnet", "subnets"),
    ("network", "networks"),
    ("security_group_rule", "security-group-rules"),
    ("security_group", "security-groups"),
    ("host", "hosts"),
)
"""In the order they can be deleted in (routers, once their interfaces are removed, before
ports before subnets before networks, rules before groups)."""
UPDATES: dict[str, dict[str, Any] | None] = {
    "security_group_rule": None,  # rules cannot be updated (Neutron's API has no PUT for them)
    "security_group": {"description": "roundtrip"},  # a default group keeps its name
}


def _key(plural: str) -> str:
    """The JSON key of a collection (``security_groups`` for ``/security-groups``)."""
    return plural.replace("-", "_")


def _seeded(store: Store) -> Store:
    """Something to find, so show/update/delete of real ids are exercised from the start."""
    net = store.create_network({"id": "55555555-5555-4555-8555-555555555555", "name": "seed"})
    store.create_subnet({"network_id": net["id"], "cidr": "10.77.0.0/24"})
    store.create_host({"id": "seed-host", "tunnel_ip": "192.0.2.77"})
    return store


def _seeded_app(path: str) -> tuple[Store, FastAPI]:
    store = _seeded(Store(path, EventBus()))
    return store, create_app(store, ApiSettings(max_body_bytes=64 * 1024))


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


_TMP = tempfile.TemporaryDirectory(prefix="tenantnet-fuzz-")
_STORE, _APP = _seeded_app(str(Path(_TMP.name) / "stateless.db"))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)

FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "derandomize": True,
}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, **FUZZ_SETTINGS)  # type: ignore[arg-type]
def test_no_server_errors_and_neutron_error_bodies(case: Any) -> None:
    _check(case.call())


# -- stateful ------------------------------------------------------------------------------


class _CurrentStore:
    """The store the app talks to, replaced at the start of every scenario: each scenario
    starts from the same seeded state, so Hypothesis can replay (and shrink) one exactly."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _everything(client: TestClient) -> dict[str, list[dict[str, Any]]]:
    """Every object, by collection, listed and shown one by one through the API."""
    found = {}
    for singular, plural in KINDS:
        r = client.get(f"/v2.0/{plural}")
        assert r.status_code == 200, r.text
        objs = r.json()[_key(plural)]
        for obj in objs:
            shown = client.get(f"/v2.0/{plural}/{obj['id']}")
            assert shown.status_code == 200, shown.text
            assert shown.json()[singular] == obj
        found[_key(plural)] = objs
    for derived in ("quotas", "network-ip-availabilities"):  # whatever the fuzzer set or made
        r = client.get(f"/v2.0/{derived}")
        assert r.status_code == 200, (derived, r.text)
        found[derived] = r.json()[derived.replace("-", "_")]
    for quota in found["quotas"]:
        shown = client.get(f"/v2.0/quotas/{quote(quota['project_id'], safe='')}/details")
        assert shown.status_code == 200, shown.text
    return found


SEED_IDS = {"55555555-5555-4555-8555-555555555555", "seed-host"}


def _roundtrip(current: _CurrentStore, path: str, client: TestClient) -> int:
    """List and show everything, restart (reopen the file), list and show again, then update
    and delete every object through the API; returns how many objects the fuzzer had made.
    ``client`` talks to the app over ``current`` (building an app costs a second)."""
    before = _everything(client)
    current.list_networks()  # the data plane's own reads too
    current.list_ports()
    current.list_hosts()
    current.store.close()
    current.store = Store(path, EventBus())  # the restart
    assert _everything(client) == before
    for singular, plural in KINDS:
        change = UPDATES.get(singular, {"name": "roundtrip"})
        if change is None:
            continue
        for obj in before[_key(plural)]:
            url = f"/v2.0/{plural}/{obj['id']}"
            r = client.put(url, json={singular: change})
            assert r.status_code == 200, (url, r.text)
            assert change.items() <= r.json()[singular].items()
    for router in before["routers"]:  # routes first: a route's nexthop keeps its interface
        url = f"/v2.0/routers/{router['id']}"
        assert client.put(url, json={"router": {"routes": []}}).status_code == 200
        for port in client.get(f"/v2.0/ports?device_id={router['id']}").json()["ports"]:
            r = client.put(f"{url}/remove_router_interface", json={"port_id": port["id"]})
            assert r.status_code == 200, r.text
    for _, plural in KINDS:
        for obj in client.get(f"/v2.0/{plural}").json()[_key(plural)]:
            r = client.delete(f"/v2.0/{plural}/{obj['id']}")
            assert r.status_code == 204, (plural, obj["id"], r.text)
    for quota in before["quotas"]:
        r = client.delete(f"/v2.0/quotas/{quote(quota['project_id'], safe='')}")
        assert r.status_code == 204, r.text
    assert all(not objs for objs in _everything(client).values())
    subnets_of_seed = {s["id"] for s in before["subnets"] if s["network_id"] in SEED_IDS}
    return sum(
        1
        for plural, objs in before.items()
        if plural != "network-ip-availabilities"
        for o in objs
        if plural == "quotas" or (o["id"] not in SEED_IDS and o["id"] not in subnets_of_seed)
    )


def test_stateful_fuzz_and_everything_created_roundtrips(tmp_path: Path) -> None:
    paths = (str(tmp_path / f"scenario-{i}.db") for i in range(10**6))
    current = _CurrentStore(_seeded_app(next(paths))[0])
    app = create_app(current, ApiSettings(max_body_bytes=64 * 1024))  # type: ignore[arg-type]
    machine = schemathesis.openapi.from_asgi("/openapi.json", app).as_state_machine()
    created = [0]
    client = TestClient(app)

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            self.path = next(paths)
            current.store.close()
            current.store = _seeded(Store(self.path, EventBus()))

        def teardown(self) -> None:
            created[0] += _roundtrip(current, self.path, client)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            _check(response)

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            **FUZZ_SETTINGS,  # type: ignore[arg-type]
        )
    )
    client.close()
    current.store.close()
    assert created[0] > 0, "the fuzzer never managed to create anything"
    print(f"stateful fuzz: {created[0]} objects created and round-tripped")
