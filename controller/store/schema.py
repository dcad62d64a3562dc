"""The SQLite schema as an ordered list of migration steps.

``PRAGMA user_version`` records how many steps a database file has had; opening it runs the
missing ones inside one ``BEGIN IMMEDIATE`` transaction, so an upgrade either happens completely
or not at all, and two processes opening the same old file cannot both migrate it.  Steps are only
ever appended: editing a released step would leave existing files with a schema no code describes.

Objects are stored as JSON bodies (the full Neutron dict, internal ``_`` fields included) next to
the few columns SQLite must index or keep unique, because those constraints are what make
concurrent allocation safe: the database refuses a duplicate even if the code had a bug.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Step = Callable[[sqlite3.Connection], None]


def _v1_core(conn: sqlite3.Connection) -> None:
    """Networks, subnets, ports and their IP allocations."""
    _run_script(
        conn,
        """
        CREATE TABLE networks (
            id       TEXT PRIMARY KEY,
            key      INTEGER NOT NULL UNIQUE,
            seg_type TEXT NOT NULL,
            seg_id   INTEGER NOT NULL,
            body     TEXT NOT NULL,
            UNIQUE (seg_type, seg_id)
        );
        CREATE TABLE subnets (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            id         TEXT NOT NULL UNIQUE,
            network_id TEXT NOT NULL REFERENCES networks (id),
            body       TEXT NOT NULL
        );
        CREATE INDEX subnets_by_network ON subnets (network_id);
        CREATE TABLE ports (
            id         TEXT PRIMARY KEY,
            network_id TEXT NOT NULL REFERENCES networks (id),
            mac        TEXT NOT NULL,
            body       TEXT NOT NULL,
            UNIQUE (network_id, mac)
        );
        CREATE TABLE ip_allocations (
            subnet_id TEXT NOT NULL REFERENCES subnets (id),
            ip        TEXT NOT NULL,
            port_id   TEXT NOT NULL REFERENCES ports (id),
            UNIQUE (subnet_id, ip)
        );
        CREATE INDEX ip_allocations_by_port ON ip_allocations (port_id);
        CREATE TABLE counters (
            name  TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        """,
    )


def _v2_hosts(conn: sqlite3.Connection) -> None:
    """Hypervisor hosts, and an indexed copy of each port's binding so the data plane can ask
    "which ports are on host H" without reading every port (existing bindings are back-filled)."""
    _run_script(
        conn,
        """
        CREATE TABLE hosts (
            id   TEXT PRIMARY KEY,
            body TEXT NOT NULL
        );
        ALTER TABLE ports ADD COLUMN host_id TEXT;
        UPDATE ports SET host_id = NULLIF(json_extract(body, '$."binding:host_id"'), '');
        CREATE INDEX ports_by_host ON ports (host_id);
        CREATE INDEX ports_by_network ON ports (network_id);
        """,
    )


def _v3_requested_host(conn: sqlite3.Connection) -> None:
    """Ports record whether ``binding:host_id`` is the orchestrator's request
    (``_host_requested``) or the host the data plane found the port on and wrote back.  Before
    this step the two were not told apart; existing values are taken as written back, so that
    an upgrade pins no port to a host: a request the orchestrator made before the upgrade holds
    again once it sets ``binding:host_id`` again (Nova does at every move)."""
    conn.execute("UPDATE ports SET body = json_set(body, '$._host_requested', json('false'))")


def _v4_quotas(conn: sqlite3.Connection) -> None:
    """Per-project quota limits (one row per project and resource: a resource without a row
    follows the configured default, also after the default changes), and an index on each
    quota resource's ``project_id`` so that counting a project's objects inside every create
    transaction reads only that project's rows (see `controller.store.quotas`)."""
    _run_script(
        conn,
        """
        CREATE TABLE quotas (
            project_id  TEXT NOT NULL,
            resource    TEXT NOT NULL,
            quota_limit INTEGER NOT NULL,
            PRIMARY KEY (project_id, resource)
        );
        CREATE INDEX networks_by_project ON networks (json_extract(body, '$.project_id'));
        CREATE INDEX subnets_by_project ON subnets (json_extract(body, '$.project_id'));
        CREATE INDEX ports_by_project ON ports (json_extract(body, '$.project_id'))
        """,
    )


def _v5_extra_dhcp_opts(conn: sqlite3.Connection) -> None:
    """Ports carry Neutron's ``extra_dhcp_opts`` (`controller.store.dhcp_opts`) in their body;
    existing ports get the empty list, so every stored port has the attribute the API shows."""
    conn.execute(
        "UPDATE ports SET body = json_set(body, '$.extra_dhcp_opts', json('[]')) "
        "WHERE json_extract(body, '$.extra_dhcp_opts') IS NULL"
    )


def _v6_port_numbers(conn: sqlite3.Connection) -> None:
    """Every port gets a number (``num`` column, ``_num`` in its body), allocated at create time
    from a counter that is never reset, so a number is never reused: it names the port's flows
    on every switch (their cookie, ``flows.tables.port_cookie``), and a flow left behind by a
    deleted port must never be taken for a new port's.  Existing ports are numbered in the
    order they were inserted; the switches' flows of the old layout are rewritten once at the
    next start (in place, without a gap: see docs/architecture.md)."""
    _run_script(
        conn,
        """
        ALTER TABLE ports ADD COLUMN num INTEGER;
        UPDATE ports SET num = n.r, body = json_set(body, '$._num', n.r)
            FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY rowid) AS r FROM ports) AS n
            WHERE ports.id = n.id;
        CREATE UNIQUE INDEX ports_by_num ON ports (num);
        INSERT INTO counters (name, value)
            SELECT 'port_num', COALESCE(MAX(num), 0) + 1 FROM ports
        """,
    )


def _v7_security_groups(conn: sqlite3.Connection) -> None:
    """Security groups, their rules, and which ports are in which group.

    ``is_default`` with its partial unique index is what makes "one ``default`` group per
    project, created on first use" safe against two first uses at once.  ``port_security_groups``
    repeats a port's ``security_groups`` list as rows, so that "which ports does this group hold"
    (deleting a group in use, the members a ``remote_group_id`` rule expands to) is an index
    lookup.  Ports stored before this step name groups that cannot exist (the ids were
    accepted and ignored); they are cleared, and such ports stay without groups, so an upgrade
    does not start filtering traffic that flowed before it.
    """
    _run_script(
        conn,
        """
        CREATE TABLE security_groups (
            id         TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            is_default INTEGER NOT NULL,
            body       TEXT NOT NULL
        );
        CREATE UNIQUE INDEX one_default_group_per_project
            ON security_groups (project_id) WHERE is_default;
        CREATE INDEX security_groups_by_project ON security_groups (project_id);
        CREATE TABLE security_group_rules (
            seq               INTEGER PRIMARY KEY AUTOINCREMENT,
            id                TEXT NOT NULL UNIQUE,
            security_group_id TEXT NOT NULL REFERENCES security_groups (id),
            remote_group_id   TEXT REFERENCES security_groups (id),
            project_id        TEXT NOT NULL,
            body              TEXT NOT NULL
        );
        CREATE INDEX rules_by_group ON security_group_rules (security_group_id);
        CREATE INDEX rules_by_remote_group ON security_group_rules (remote_group_id);
        CREATE INDEX rules_by_project ON security_group_rules (project_id);
        CREATE TABLE port_security_groups (
            port_id           TEXT NOT NULL REFERENCES ports (id),
            security_group_id TEXT NOT NULL REFERENCES security_groups (id),
            PRIMARY KEY (port_id, security_group_id)
        );
        CREATE INDEX ports_by_security_group ON port_security_groups (security_group_id);
        UPDATE ports SET body = json_set(body, '$.security_groups', json('[]'))
        """,
    )


def _v8_routers(conn: sqlite3.Connection) -> None:
    """Neutron routers and their interfaces.

    ``router_ports`` holds one row per interface: the port (a normal port of its network, with
    ``device_owner`` ``network:router_interface_distributed`` and ``device_id`` the router) and
    the one subnet it has its address on.  The unique ``subnet_id`` is what keeps a subnet on
    at most one router even when two requests race, and the rows make "does this router still
    have interfaces", "which subnets does it connect" and "is this port an interface" index
    lookups.  Nothing existing changes: no router existed before this step.
    """
    _run_script(
        conn,
        """
        CREATE TABLE routers (
            id         TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            body       TEXT NOT NULL
        );
        CREATE INDEX routers_by_project ON routers (project_id);
        CREATE TABLE router_ports (
            port_id   TEXT PRIMARY KEY REFERENCES ports (id),
            router_id TEXT NOT NULL REFERENCES routers (id),
            subnet_id TEXT NOT NULL UNIQUE REFERENCES subnets (id)
        );
        CREATE INDEX router_ports_by_router ON router_ports (router_id)
        """,
    )


def _v9_interface_statuses(conn: sqlite3.Connection) -> None:
    """Each router interface port gets its router's status (`controller.store.routers.
    interface_status`: ACTIVE while the router is admin up, DOWN while it is down).

    Files written before that rule hold their interfaces as created, DOWN (bound to no host),
    and nothing writes an interface's status again until its router's admin state changes:
    the data plane's reports for interfaces are dropped (`Store.set_ports_observed`).  Only
    ports whose status differs change, each with its revision advanced (a client's If-Match
    sees the change).  ``updated_at`` stays: on an etcd cluster every instance migrates its
    own replica, and a clock read here would make their copies of the port differ."""
    conn.execute(
        """
        UPDATE ports SET body = json_set(
                body,
                '$.status', w.status,
                '$.revision_number', json_extract(body, '$.revision_number') + 1)
            FROM (SELECT rp.port_id AS id,
                         CASE WHEN json_extract(r.body, '$.admin_state_up')
                              THEN 'ACTIVE' ELSE 'DOWN' END AS status
                    FROM router_ports rp JOIN routers r ON r.id = rp.router_id) AS w
            WHERE ports.id = w.id AND json_extract(ports.body, '$.status') IS NOT w.status
        """
    )


MIGRATIONS: list[Step] = [
    _v1_core,
    _v2_hosts,
    _v3_requested_host,
    _v4_quotas,
    _v5_extra_dhcp_opts,
    _v6_port_numbers,
    _v7_security_groups,
    _v8_routers,
    _v9_interface_statuses,
]
LATEST = len(MIGRATIONS)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL statement by statement.

    ``Connection.executescript`` would COMMIT the migration transaction first, which would make a
    half-applied upgrade possible; the statements here contain no ``;`` inside literals.
    """
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def schema_version(conn: sqlite3.Connection) -> int:
    """How many migration steps this database has had."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, upto: int = LATEST) -> None:
    """Bring the database to version ``upto`` in one transaction (no-op when already there).

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the explicit transaction
    here is the only one.  A file newer than this code is refused rather than guessed at.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > LATEST:
            raise RuntimeError(
                f"database schema version {current} is newer than this tenantnet ({LATEST})"
            )
        for version in range(current, upto):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
