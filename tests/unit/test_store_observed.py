"""Store.set_ports_observed: the data plane's batched write of bindings and statuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.events import ChangeEvent, EventBus
from controller.store import Store
from controller.store import ports as store_ports


def test_bindings_and_statuses_in_one_commit(tmp_path: Path) -> None:
    bus = EventBus()
    batches: list[list[ChangeEvent]] = []
    store = Store(str(tmp_path / "db.sqlite"), bus)
    net = store.create_network({})
    a, b = (store.create_port({"network_id": net["id"]}) for _ in range(2))
    bus.subscribe(batches.append)
    store.set_ports_observed(
        statuses={a["id"]: "ACTIVE", b["id"]: "DOWN", "no-such-port": "ACTIVE"},
        bindings={a["id"]: "hv1", "no-such-port": "hv2"},
    )
    assert len(batches) == 1, "one transaction publishes one batch"
    kinds = [(e.kind, e.new["id"]) for e in batches[0]]
    assert kinds == [("port", a["id"])]  # one event with both; b was DOWN already: none
    assert batches[0][0].new["status"] == "ACTIVE"
    assert batches[0][0].new["binding:host_id"] == "hv1"
    got = store.get_port(a["id"])
    assert got["status"] == "ACTIVE" and got["binding:host_id"] == "hv1"
    assert got["revision_number"] == a["revision_number"] + 1
    store.set_ports_observed(statuses={a["id"]: "ACTIVE"})
    assert len(batches) == 1, "unchanged values are not written"


def test_only_changed_statuses_are_written_across_query_chunks(tmp_path: Path) -> None:
    bus = EventBus()
    batches: list[list[ChangeEvent]] = []
    store = Store(str(tmp_path / "db.sqlite"), bus)
    net = store.create_network({})
    store.create_subnet({"network_id": net["id"], "cidr": "10.0.0.0/20", "ip_version": 4})
    ids = [p["id"] for p in store.create("port", [{"network_id": net["id"]}] * 1100)]
    bus.subscribe(batches.append)
    # most are DOWN already; every 7th becomes ACTIVE, spread over the 500-id chunks
    store.set_ports_observed(statuses={pid: "ACTIVE" if i % 7 == 0 else "DOWN"
                                       for i, pid in enumerate(ids)})  # fmt: skip
    changed = {e.new["id"] for e in batches[0]}
    assert changed == {pid for i, pid in enumerate(ids) if i % 7 == 0}
    assert all(store.get_port(pid)["status"] == "ACTIVE" for pid in changed)


def test_observed_writes_skip_fsync_and_api_writes_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statuses/bindings commit with synchronous=NORMAL; the setting is back to FULL after
    them, also when the transaction fails, so API writes stay durable."""
    store = Store(str(tmp_path / "db.sqlite"), EventBus())
    net = store.create_network({})
    port = store.create_port({"network_id": net["id"]})
    seen: list[int] = []

    def failing_set_observed(tx: Any, current: Any, changes: Any) -> None:
        seen.append(tx.conn.execute("PRAGMA synchronous").fetchone()[0])
        raise RuntimeError("boom")

    monkeypatch.setattr(store_ports, "set_observed", failing_set_observed)
    with pytest.raises(RuntimeError):
        store.set_ports_observed(bindings={port["id"]: "hv1"})
    monkeypatch.undo()
    assert seen == [1]  # NORMAL inside the observed write
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    assert not store.get_port(port["id"])["binding:host_id"]  # rolled back
    store.set_ports_observed(statuses={port["id"]: "ACTIVE"})
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
