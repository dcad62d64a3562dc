"""Listing in id order is cut by SQLite: a small page reads a small number of rows, and every
filter/marker/direction gives exactly what sorting everything in Python gives."""

from __future__ import annotations

import random
from typing import Any

import pytest
from starlette.datastructures import QueryParams

from controller.api.listing import filtered, page
from controller.api.resources import PORTS
from controller.store import Store
from controller.store import scan as scan_module
from tests.unit.conftest import TestClient


def _ports(store: Store, count: int) -> list[str]:
    nets = [store.create_network({})["id"] for _ in range(3)]
    ids = []
    for i in range(count):
        body: dict[str, Any] = {
            "network_id": nets[i % 3],
            "name": f"p{i % 7}",
            "tags": [f"t{i % 4}"],
        }
        if i % 5:
            body["binding:host_id"] = f"hv{i % 2}"
        ids.append(store.create_port(body)["id"])
    return ids


def test_a_small_page_reads_a_small_number_of_rows(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ports(store, 150)
    decoded = 0
    real_loads = scan_module.loads

    def counting(text: str) -> dict[str, Any]:
        nonlocal decoded
        decoded += 1
        return real_loads(text)

    monkeypatch.setattr(scan_module, "loads", counting)
    r = client.get("/v2.0/ports?limit=10")
    assert r.status_code == 200 and len(r.json()["ports"]) == 10
    assert "ports_links" in r.json()
    assert decoded <= 11, decoded  # the page and one more to know that more remain
    decoded = 0
    net = r.json()["ports"][0]["network_id"]
    r = client.get(f"/v2.0/ports?network_id={net}&limit=5")
    assert len(r.json()["ports"]) == 5 and decoded <= 6, decoded


def test_sql_pages_equal_python_pages(client: TestClient, store: Store) -> None:
    ids = _ports(store, 60)
    ports = store.list_all("port")
    nets = sorted({p["network_id"] for p in ports})
    rng = random.Random(11)
    for _ in range(150):
        query: list[tuple[str, str]] = []
        if rng.random() < 0.4:
            query += [("network_id", n) for n in rng.sample(nets, rng.randint(1, 2))]
        if rng.random() < 0.4:
            query.append(("binding:host_id", rng.choice(["hv0", "hv1", ""])))
        if rng.random() < 0.3:
            query.append(("name", f"p{rng.randint(0, 6)}"))
        if rng.random() < 0.3:
            query.append(("tags-any", f"t{rng.randint(0, 3)},t{rng.randint(0, 3)}"))
        if rng.random() < 0.5:
            query.append(("sort_dir", rng.choice(["asc", "desc"])))
        if rng.random() < 0.7:
            query.append(("limit", str(rng.randint(0, 12))))
        if rng.random() < 0.5:
            query.append(("marker", rng.choice(ids)))
        params = QueryParams(query)
        expected, more = page(
            filtered(ports, params, PORTS.attributes),
            params,
            PORTS.attributes,
            lambda i: store.get("port", i),
            "port",
        )
        r = client.get("/v2.0/ports", params=query)
        assert r.status_code == 200, (query, r.text)
        assert [p["id"] for p in r.json()["ports"]] == [p["id"] for p in expected], query
        assert ("ports_links" in r.json()) == more, query
