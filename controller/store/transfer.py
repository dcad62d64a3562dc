"""Moving a store between backends: a single node's SQLite file into an etcd cluster, and back.

SQLite -> etcd writes the file (brought to the current schema first) as the log's snapshot at
entry 0 under a new epoch; every instance that starts on the cluster loads it into its replica
and follows the log from there.  etcd -> SQLite rebuilds a replica from the cluster (snapshot +
every entry), drops its replica bookkeeping and copies it into a plain store file.

Both refuse to overwrite (an existing log, an existing file) unless told to: a migration is
done with every tenantnet instance stopped, and a mistaken one must not destroy state.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
import zlib
from pathlib import Path

from controller.events import EventBus
from controller.store.etcd_log import EtcdLog
from controller.store.etcd_settings import EtcdSettings
from controller.store.replicated import APPLIED_IDS_TABLE, POSITION_TABLE, EtcdStore
from controller.store.schema import LATEST
from controller.store.store import Store


def sqlite_to_etcd(path: str, etcd: EtcdSettings, *, replace: bool = False) -> int:
    """Copy the store file at ``path`` into the cluster; returns the image's size in bytes."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such store file")
    log = EtcdLog(etcd)
    if log.meta() is not None and not replace:
        raise ValueError(
            f"etcd prefix {log.prefix} already holds a tenantnet store (replace it explicitly)"
        )
    Store(path, EventBus()).close()  # the current schema: what the instances will run
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as src:
        memory = sqlite3.connect(":memory:")
        src.backup(memory)
    image = zlib.compress(memory.serialize(), 6)
    memory.close()
    log.wipe()
    log.put_snapshot(0, image)
    if not log.create({"epoch": uuid.uuid4().hex, "schema": LATEST}):
        raise RuntimeError(f"etcd prefix {log.prefix} was written to during the migration")
    return len(image)


def etcd_to_sqlite(etcd: EtcdSettings, path: str, *, replace: bool = False) -> None:
    """Write the cluster's current state as a plain (single-node) store file at ``path``."""
    if os.path.exists(path) and not replace:
        raise ValueError(f"{path} exists (replace it explicitly)")
    if EtcdLog(etcd).meta() is None:
        raise ValueError(f"etcd prefix {etcd.prefix} holds no tenantnet store")
    with tempfile.TemporaryDirectory(prefix="tenantnet-export-") as tmp:
        replica = str(Path(tmp) / "replica.db")
        EtcdStore(replica, EventBus(), etcd).close()
        conn = sqlite3.connect(replica, isolation_level=None)
        conn.execute(f"DROP TABLE {POSITION_TABLE}")
        conn.execute(f"DROP TABLE {APPLIED_IDS_TABLE}")
        with sqlite3.connect(path) as dst:
            conn.backup(dst)
        conn.close()
    os.chmod(path, 0o600)
