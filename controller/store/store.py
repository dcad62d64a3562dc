"""The durable store: one SQLite file, one connection, one lock, events after commit.

Why this shape:

* **One connection behind a lock.**  The API serves requests from a thread pool and the data plane
  writes statuses from its own threads; serialising them on one connection is simple and, at the
  sizes a controller handles, fast.  ``BEGIN IMMEDIATE`` additionally takes SQLite's write lock up
  front, so a second process on the same file waits (``busy_timeout``) instead of failing mid-way.
* **WAL + synchronous=FULL.**  A write method returns only after its COMMIT is on disk, so an id
  the API has returned survives a crash or a SIGKILL of the controller.
* **Events after commit, in commit order.**  Each write method collects `ChangeEvent`s while it
  works and publishes them after COMMIT while still holding the lock, so subscribers see changes
  exactly in the order they were committed and never see a rolled-back one.  The lock is
  re-entrant, so a subscriber may call back into the store (e.g. set a port's status); the
  events of such a nested write are queued and published once the current batch has reached
  every subscriber, so no subscriber sees a later change before an earlier one.
* **All or nothing.**  Any error inside a write (validation, conflict, a bug) rolls the whole
  transaction back; bulk creates are a single transaction.

Reads return plain dicts with Neutron's field names; internal fields start with ``_`` (e.g. a
network's ``_key``) and are for the data plane only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from controller.events import KINDS, ChangeEvent, EventBus
from controller.metrics import Metrics
from controller.store import (
    availability,
    hosts,
    networks,
    ports,
    quotas,
    replay,
    routers,
    scan,
    security_group_rules,
    security_groups,
    subnets,
)
from controller.store.attrs import check_revision
from controller.store.errors import Conflict, InvalidInput
from controller.store.schema import migrate
from controller.store.tx import Tx
from controller.store.values import as_uuid

T = TypeVar("T")
__all__ = ["KINDS", "Store"]
MODULES: dict[str, Any] = {
    "network": networks,
    "subnet": subnets,
    "port": ports,
    "host": hosts,
    "security_group": security_groups,
    "security_group_rule": security_group_rules,
    "router": routers,
}
COMPLETE = {"network": networks.with_subnets, "security_group": security_groups.with_rules}
"""What a kind's stored body lacks and a read adds (a network's subnets, a group's rules)."""
BUSY_TIMEOUT_MS = 30_000


class Store:
    """Durable tenant-network state; see the module docstring for the guarantees."""

    # The etcd backend (`replicated.EtcdStore`) records the statements of a write through its own
    # connection class; this one is SQLite's, untouched.
    connection_factory: type[sqlite3.Connection] = sqlite3.Connection

    def __init__(
        self,
        path: str,
        bus: EventBus,
        underlay_mtu: int = 1500,
        quota_defaults: Mapping[str, int] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self.metrics = metrics or Metrics()
        self.closed = False
        self.underlay_mtu = underlay_mtu
        self.ovsdb_scheme = "tcp"  # "ssl" with TLS to the hypervisors (set by the service)
        # Default limit per quota resource (see `quotas`): the settings' over Neutron's.
        self.quota_defaults = quotas.check_defaults(quota_defaults or {})
        self._bus = bus
        self._lock = threading.RLock()
        self._unpublished: deque[list[ChangeEvent]] = deque()
        self._ip_hints: dict[str, int] = {}
        self._publishing = False
        _create_private(path)
        self._conn = self._connect()
        migrate(self._conn)

    def _connect(self) -> sqlite3.Connection:
        """A connection to the database file with the store's settings (WAL, FULL sync,
        foreign keys), shareable between threads (callers serialise their use of it)."""
        conn = sqlite3.connect(
            self.path,
            check_same_thread=False,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            factory=self.connection_factory,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock:
            self.closed = True
            self._conn.close()

    # -- transaction plumbing -------------------------------------------------------------------

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[Tx]:
        """A write transaction: committed and published on success, rolled back on any error.

        ``durable=False`` is for what the data plane observes (statuses, bindings, host
        state): it is derived from the switches and re-derived after a restart, so its commit
        skips the fsync (WAL, synchronous=NORMAL: still atomic and crash-consistent, only the
        last such commits may be lost with the machine's power).  API writes always fsync.
        """
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                tx = Tx(self._conn, self.underlay_mtu, self.ovsdb_scheme, ip_hints=self._ip_hints)
                try:
                    yield tx
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                t0 = time.perf_counter()
                self._conn.execute("COMMIT")
                commit_s = time.perf_counter() - t0
                tx.commit_ip_hints(self._ip_hints)
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous = FULL")
            self.metrics.store_commit.labels("durable" if durable else "observed").observe(commit_s)
            self._publish(tx.events)

    def _publish(self, events: list[ChangeEvent]) -> None:
        """Publish committed events in commit order, also when a subscriber writes back."""
        if not events:
            return
        self._unpublished.append(events)
        if self._publishing:  # a subscriber's own write: the outer loop below publishes it
            return
        self._publishing = True
        try:
            while self._unpublished:
                self._bus.publish(self._unpublished.popleft())
        finally:
            self._publishing = False

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read in one snapshot, so e.g. a network and its subnet list agree."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                tx = Tx(self._conn, self.underlay_mtu, self.ovsdb_scheme, ip_hints=self._ip_hints)
                return fn(tx)
            finally:
                self._conn.execute("COMMIT")

    # -- generic CRUD (what the API uses) -------------------------------------------------------

    def create(
        self,
        kind: str,
        bodies: list[dict[str, Any]],
        *,
        seg_id_is_hint: bool = False,
        replay_ignoring: frozenset[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Create objects of one kind in one transaction: all of them, or none, and only if
        their projects stay within their quotas (checked in the same transaction as each
        object is inserted, and again after the inserts, so a bulk counts as a whole, stops at
        the first object over the quota, and concurrent creates cannot overtake each other).

        ``seg_id_is_hint`` (networks only) turns a taken ``provider:segmentation_id`` into a
        request for a free one instead of a 409.  With ``replay_ignoring`` (a set of attribute
        names that are only hints), a create naming the id of an existing object that already
        holds every other attribute returns that object unchanged (see `replay`).
        """
        module = _module(kind)
        with self._write() as tx:
            created, new = [], []
            tally = quotas.Tally(tx, kind, self.quota_defaults)
            for body in bodies:
                existing = self._replayed(tx, module, kind, body, replay_ignoring)
                if existing is not None:
                    created.append(existing)
                    continue
                if kind == "network":
                    new.append(networks.create(tx, body, seg_id_is_hint=seg_id_is_hint))
                else:
                    new.append(module.create(tx, body))
                tally.add(new[-1])
                created.append(new[-1])
            quotas.enforce(tx, kind, new, self.quota_defaults)
            return created

    @staticmethod
    def _replayed(
        tx: Tx, module: Any, kind: str, body: dict[str, Any], ignoring: frozenset[str] | None
    ) -> dict[str, Any] | None:
        """The existing object a replayed create names, or None (not a replay: create it)."""
        if ignoring is None or not isinstance(body.get("id"), str):
            return None
        try:
            obj_id = as_uuid(body["id"], "id")
        except InvalidInput:
            return None
        existing: dict[str, Any] | None = module.load(tx, obj_id)
        if existing is None:
            return None
        differ = replay.differences(existing, body, ignoring)
        if differ:
            raise Conflict(
                f"{kind.capitalize()} {obj_id} already exists with a different "
                f"{', '.join(differ)}.",
                f"{kind.capitalize()}Exists",
            )
        return existing

    def update(
        self,
        kind: str,
        obj_id: str,
        changes: dict[str, Any],
        *,
        expected_revision: int | None = None,
        seg_id_is_hint: bool = False,
    ) -> dict[str, Any]:
        """Partially update one object; ``expected_revision`` implements ``If-Match``;
        ``seg_id_is_hint`` as for `create` (a network keeps its segment)."""
        module = _module(kind)
        with self._write() as tx:
            current = module.must_load(tx, obj_id)
            check_revision(current, expected_revision)
            if kind == "network":
                return networks.update(tx, current, changes, seg_id_is_hint=seg_id_is_hint)
            return module.update(tx, current, changes)

    def delete(self, kind: str, obj_id: str, *, expected_revision: int | None = None) -> None:
        """Delete one object (404 if it does not exist, 409 if something still uses it)."""
        module = _module(kind)
        with self._write() as tx:
            current = module.must_load(tx, obj_id)
            check_revision(current, expected_revision)
            module.delete(tx, current)

    def get(self, kind: str, obj_id: str) -> dict[str, Any] | None:
        """One object, or None."""
        module = _module(kind)
        return self._read(lambda tx: module.load(tx, obj_id))

    def list_all(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind, sorted by id."""
        module = _module(kind)
        return self._read(module.load_all)

    def page(
        self,
        kind: str,
        matches: Callable[[dict[str, Any]], bool],
        *,
        limit: int = 0,
        after: str | None = None,
        descending: bool = False,
        exact: dict[str, list[str]] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of a kind in id order, cut in SQL (see `scan`); (page, more remain)."""
        _module(kind)
        complete = COMPLETE.get(kind)
        return self._read(
            lambda tx: scan.page(
                tx,
                kind,
                matches,
                limit=limit,
                after=after,
                descending=descending,
                exact=exact,
                complete=complete,
            )
        )

    def ip_availability(self, network_id: str | None = None) -> list[dict[str, Any]]:
        """Total and used addresses per network and subnet (all networks, or one)."""
        return self._read(lambda tx: availability.load_all(tx, network_id))

    # -- router operations (see `routers`) -------------------------------------------------------

    def router_interface(
        self, router_id: str, body: Any, *, add: bool, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """``add_router_interface`` / ``remove_router_interface``: the interface port, the
        router's new revision and their events in one transaction; Neutron's answer body."""
        with self._write() as tx:
            current = routers.must_load(tx, router_id)
            check_revision(current, expected_revision)
            if not add:
                return routers.remove_interface(tx, current, body)
            answer = routers.add_interface(tx, current, body)
            if isinstance(body, dict) and body.get("subnet_id") is not None:
                # The port made for the subnet counts against the project's port quota.
                quotas.enforce(tx, "port", [answer], self.quota_defaults)
            return answer

    def router_routes(
        self, router_id: str, body: Any, *, add: bool, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """``add_extraroutes`` / ``remove_extraroutes`` (extraroute-atomic): the router after."""
        with self._write() as tx:
            current = routers.must_load(tx, router_id)
            check_revision(current, expected_revision)
            if add:
                return routers.add_routes(tx, current, body)
            return routers.remove_routes(tx, current, body)

    # -- quotas (see `quotas`) -------------------------------------------------------------------

    def quota_limits(self, project_id: str) -> dict[str, int]:
        """A project's limit per quota resource (its own, else the default)."""
        project = quotas.project_id(project_id)
        return self._read(lambda tx: quotas.limits(tx, project, self.quota_defaults))

    def quota_details(self, project_id: str) -> dict[str, dict[str, int]]:
        """Used, limit and reserved per quota resource of a project."""
        project = quotas.project_id(project_id)
        return self._read(lambda tx: quotas.details(tx, project, self.quota_defaults))

    def quota_list(self) -> list[dict[str, Any]]:
        """The limits of every project that has a limit of its own."""
        return self._read(lambda tx: quotas.all_set(tx, self.quota_defaults))

    def update_quota(
        self, project_id: str, changes: dict[str, Any], *, force: bool = False
    ) -> dict[str, int]:
        """Set some of a project's limits (all or none); see `quotas.update`."""
        project = quotas.project_id(project_id)
        with self._write() as tx:
            return quotas.update(tx, project, changes, self.quota_defaults, force)

    def delete_quota(self, project_id: str) -> None:
        """A project's limits back to the defaults (404 if it had none of its own)."""
        project = quotas.project_id(project_id)
        with self._write() as tx:
            quotas.delete(tx, project)

    # -- named reads (what the data plane uses) -------------------------------------------------

    def get_network(self, network_id: str) -> dict[str, Any] | None:
        """A network (with ``_key`` and its ``subnets`` ids), or None."""
        return self._read(lambda tx: networks.load(tx, network_id))

    def list_networks(self) -> list[dict[str, Any]]:
        """Every network, sorted by id."""
        return self._read(networks.load_all)

    def get_port(self, port_id: str) -> dict[str, Any] | None:
        """A port, or None."""
        return self._read(lambda tx: ports.load(tx, port_id))

    def port_statuses(self, port_ids: list[str]) -> dict[str, str]:
        """``{id: status}`` of those of the given ports that exist (one cheap query per 500)."""
        return self._read(lambda tx: ports.statuses(tx, port_ids))

    def list_ports(
        self,
        network_id: str | None = None,
        host_id: str | None = None,
        security_group_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Ports sorted by id, optionally of one network, bound to one host and/or in one
        security group (its members: their ``fixed_ips`` and ``allowed_address_pairs`` are
        the addresses a ``remote_group_id`` rule naming the group matches)."""
        return self._read(lambda tx: ports.load_all(tx, network_id, host_id, security_group_id))

    def get_security_group(self, group_id: str) -> dict[str, Any] | None:
        """A security group with its ``security_group_rules``, or None."""
        return self._read(lambda tx: security_groups.load(tx, group_id))

    def list_security_groups(self) -> list[dict[str, Any]]:
        """Every security group (with its rules), sorted by id."""
        return self._read(security_groups.load_all)

    def list_security_group_rules(self, group_id: str | None = None) -> list[dict[str, Any]]:
        """Security group rules sorted by id, optionally of one group."""
        return self._read(lambda tx: security_group_rules.load_all(tx, group_id))

    def list_routers(self) -> list[dict[str, Any]]:
        """Every router, sorted by id."""
        return self._read(routers.load_all)

    def get_host(self, host_id: str) -> dict[str, Any] | None:
        """A host, or None."""
        return self._read(lambda tx: hosts.load(tx, host_id))

    def list_hosts(self) -> list[dict[str, Any]]:
        """Every host, sorted by id."""
        return self._read(hosts.load_all)

    # -- named writes -----------------------------------------------------------------------------

    def create_network(
        self, body: dict[str, Any], *, seg_id_is_hint: bool = False
    ) -> dict[str, Any]:
        """Create one network (see `create`)."""
        return self.create("network", [body], seg_id_is_hint=seg_id_is_hint)[0]

    def create_subnet(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create one subnet."""
        return self.create("subnet", [body])[0]

    def create_port(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create one port."""
        return self.create("port", [body])[0]

    def create_host(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register one host."""
        return self.create("host", [body])[0]

    def upsert_host(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Register a host, or update it if its id is known; returns (host, created).

        The CloudStack connection-manager call means "this hypervisor is at this address",
        whether or not it was known before, so it must be idempotent.
        """
        with self._write() as tx:
            current = hosts.load(tx, str(body.get("id")))
            if current is None:
                return hosts.create(tx, body), True
            changes = {k: v for k, v in body.items() if k != "id"}
            return hosts.update(tx, current, changes), False

    def set_ports_observed(
        self,
        statuses: dict[str, str] | None = None,
        bindings: dict[str, str | None] | None = None,
        refused: dict[str, dict[str, bool]] | None = None,
        vips: dict[tuple[str, str], str] | None = None,
    ) -> None:
        """Data plane: many bindings, statuses and refused claims (``{port: {host:
        refused?}}``, the hosts the writer speaks for: see `ports.set_observed`)
        in one transaction (one commit, not one per port: a bulk create of 1,000 ports would
        otherwise pay 2,000), and one revision and one event per port that changed; unknown
        ids and unchanged values are skipped.  A router interface's status is its router's
        (`routers.interface_status`): a status the data plane reports for one is dropped.
        ``vips`` is ``{(network id, virtual IP): the port that announced it}``
        (`ports.claim_vip`: the holder moves, a claim the port may not make is dropped)."""
        if not statuses and not bindings and not refused and not vips:
            return
        with self._write(durable=False) as tx:
            changes: dict[str, dict[str, Any]] = {}
            for port_id, host_id in (bindings or {}).items():
                changes.setdefault(port_id, {})["binding:host_id"] = host_id
            for port_id, hosts in (refused or {}).items():
                changes.setdefault(port_id, {})["refused_hosts"] = hosts
            for port_id, status in ports.differing_statuses(tx, statuses or {}).items():
                if ports.router_of(tx, port_id) is None:
                    changes.setdefault(port_id, {})["status"] = status
            for port_id, change in changes.items():
                current = ports.load(tx, port_id)
                if current is not None:
                    ports.set_observed(tx, current, change)
            for (network_id, vip), port_id in (vips or {}).items():
                ports.claim_vip(tx, port_id, network_id, vip)

    def set_host_state(
        self, host_id: str, status: str, datapath_id: str | None
    ) -> dict[str, Any] | None:
        """Data plane: the host is 'connected'/'disconnected', with this datapath id."""
        return self._observe(
            hosts, host_id, lambda tx, cur: hosts.set_state(tx, cur, status, datapath_id)
        )

    def _observe(
        self,
        module: Any,
        obj_id: str,
        change: Callable[[Tx, dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any] | None:
        """Apply a data-plane observation; an object deleted meanwhile is simply skipped, since
        the data plane races the API by nature."""
        with self._write(durable=False) as tx:
            current = module.load(tx, obj_id)
            return None if current is None else change(tx, current)


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600), or tighten an existing one.

    It holds every tenant's addresses and the hosts' OVSDB targets.  SQLite gives the ``-wal``
    and ``-shm`` files the database file's permissions, so they follow.  (``:memory:`` and
    SQLite URIs are left to SQLite.)
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for companion in (path + "-wal", path + "-shm"):  # left by an older, laxer version
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, 0o600)


def _module(kind: str) -> Any:
    """The resource module implementing a kind."""
    try:
        return MODULES[kind]
    except KeyError:
        raise InvalidInput(f"Unknown resource kind {kind!r}") from None
