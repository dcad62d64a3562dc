"""The clustered systems of the HA scenario (`bench.ha`, issue 18): tenantnet as 3 instances on a
3-member etcd cluster, and OVN with clustered NB and SB databases (OVSDB Raft, 3 members each)
and an active + a standby ovn-northd.  Both on loopback, next to the same kind of Lab as the
single-node systems they extend, so that every other measure of the bench runs on them as is.

What each offers the scenario besides the single-node interface: ``kill_control(host)``
(kill -9 of what computes and sends a host's state: the instance owning it / the active
northd) and ``kill_store_leader()`` (the etcd leader / the NB and SB Raft leaders), each
returning a ``recovered()`` check the scenario polls until it holds.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import HA_OVN_LAB, HA_TN_LAB, cpu_seconds, log, rss_kb
from bench.sut_ovn import NB_SCHEMA, SB_SCHEMA, OvnSystem
from bench.sut_tenantnet import TenantnetSystem, _KeepAlive
from lab.etcd_cluster import EtcdCluster, Member
from lab.proc import CommandError, pid_alive, run
from lab.tenantnet_proc import TenantnetProcess, free_port

MEMBERS = 3
Recovered = Callable[[], bool]


def _kill9(pid: int | None) -> None:
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.005)


class EtcdTenantnetSystem(TenantnetSystem):
    """``instances`` `tenantnet serve` processes on one etcd cluster of 3 members (lease TTL
    ``ttl_s``, as `scripts/demo_ha.py`); the bench's API calls go to one live instance."""

    def __init__(self, n_hosts: int, instances: int = 3, ttl_s: float = 2,
                 bulk_chunk: int = 1000) -> None:
        super().__init__(n_hosts, bulk_chunk=bulk_chunk, lab_kwargs=HA_TN_LAB)
        self.instances, self.ttl_s = instances, ttl_s
        self.procs: list[TenantnetProcess] = []
        self.etcd: EtcdCluster | None = None

    def start(self) -> None:
        t0 = time.monotonic()
        self.lab.start()
        self._tmp = tempfile.TemporaryDirectory(prefix="tnbench-ha-")
        root = Path(self._tmp.name)
        self.etcd = EtcdCluster(root / "etcd", size=MEMBERS)
        self.etcd.start()
        for i in range(self.instances):
            name = f"ctl-{i + 1}"
            args = ("--store", self.etcd.url, "--etcd-prefix", "/bench/",
                    "--etcd-member-id", name, "--etcd-member-ttl-s", f"{self.ttl_s:g}")
            self.procs.append(TenantnetProcess(root / name, f"{self.lab.mgmt_ip}:{6653 + i}",
                                               extra_args=args))
        for p in self.procs:
            p.start(timeout=60)
        self._use(self.procs[0])
        deadline = time.monotonic() + 60
        while len(self.ctl.api.status()["cluster"]["members"]) < self.instances:
            if time.monotonic() > deadline:
                raise RuntimeError("tenantnet instances did not all join the members")
            time.sleep(0.1)
        self._register_hosts()
        log(f"tenantnet-etcd: {self.instances} instances, {self.n_hosts} hosts up in "
            f"{time.monotonic() - t0:.1f} s")

    def _use(self, proc: TenantnetProcess) -> None:
        """Send the bench's API calls to ``proc`` from now on."""
        if self.http is not None:
            self.http.close()
        self.ctl = proc
        self.http = _KeepAlive(proc.api_port)

    def live(self) -> list[TenantnetProcess]:
        return [p for p in self.procs if p.proc is not None and p.proc.poll() is None]

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        try:
            for p in self.procs:
                p.stop(timeout=2)
            if self.etcd is not None:
                self.etcd.stop()
        finally:
            self.ctl = None  # stopped above; the base class would stop it again
            super().stop()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.state_dir.name}\n{p.log_tail(15)}" for p in self.procs)

    # ------------------------------------------------------------------ measurements
    def _pids(self) -> list[int | None]:
        pids: list[int | None] = [p.proc.pid if p.proc else None for p in self.live()]
        if self.etcd is not None:
            pids += [m.proc.pid if m.proc else None for m in self.etcd.members]
        return pids

    def control_plane_cpu(self) -> float:
        """Every live instance and every etcd member (OVN's figure counts its databases)."""
        return sum(cpu_seconds(pid) for pid in self._pids())

    def control_plane_rss(self) -> dict[str, int]:
        out = {p.state_dir.name: rss_kb(p.proc.pid if p.proc else None) for p in self.live()}
        if self.etcd is not None:
            out.update({f"etcd-{m.name}": rss_kb(m.proc.pid if m.proc else None)
                        for m in self.etcd.members})
        return out

    def flow_mods_total(self) -> int:
        total = 0
        for p in self.live():
            st = p.api.status()
            total += int(st["flow_mods"]) + int(st["group_mods"])
        return total

    # ------------------------------------------------------------------ failover
    def kill_control(self, host: str) -> tuple[dict[str, Any], Recovered]:
        """kill -9 the instance owning ``host``; recovered once a survivor owns and has read
        and reconciled every host the victim owned, and its data plane is idle.  The bench's
        API calls go to a survivor from before the kill."""
        owner = self.ctl.api.status()["cluster"]["host_owner"]
        victim_id = owner[host]
        victim = next(p for p in self.procs if p.state_dir.name == victim_id)
        moved = sorted(h for h, m in owner.items() if m == victim_id)
        survivors = [p for p in self.live() if p is not victim]
        self._use(survivors[0])
        victim.kill()

        def recovered() -> bool:
            statuses = [p.api.status() for p in survivors]
            for h in moved:
                if not any(st["hosts"][h]["owned"] and st["hosts"][h]["ready"]
                           for st in statuses):
                    return False
            return all(st["idle"] for st in statuses)

        return {"killed": victim_id, "moved_hosts": moved}, recovered

    def _leader(self) -> Member:
        """The etcd member that is the Raft leader (maintenance/status of each member)."""
        assert self.etcd is not None
        return self.etcd.leader()

    def kill_store_leader(self) -> tuple[dict[str, Any], Recovered]:
        """kill -9 the etcd leader; recovered once the others elected one and a write through
        the bench's instance succeeds (`recovered` writes nothing itself: the scenario's port
        create is that write)."""
        assert self.etcd is not None
        leader = self._leader()
        pid = leader.proc.pid if leader.proc else None
        _kill9(pid)
        leader.proc = None

        def recovered() -> bool:
            try:
                return self._leader() is not None
            except (OSError, RuntimeError, ValueError):
                return False

        return {"killed": f"etcd {leader.name} (leader)"}, recovered


class OvnClusteredSystem(OvnSystem):
    """OVN with NB and SB each a 3-member OVSDB Raft cluster (``ovsdb-tool create-cluster`` /
    ``join-cluster``, Raft on loopback ports) and two ovn-northd on them (one active, holding
    the SB lock, one standby).  ovn-nbctl and northd reach every member by its unix socket;
    ovn-controllers every SB member over the management network (ports 6642..6644)."""

    def __init__(self, n_hosts: int, encap: str = "geneve", security_groups: bool = False
                 ) -> None:
        super().__init__(n_hosts, encap, security_groups, lab_kwargs=HA_OVN_LAB)

    central_procs = ("northd0", "northd1", *(f"{d}{i}" for d in ("nb", "sb")
                                             for i in range(MEMBERS)))
    election_timer_ms = 500  # as the lab's etcd (--election-timeout 500); OVSDB's default 1000

    def _dbs(self, db: str) -> str:
        return ",".join(f"unix:{self.central}/{db}{i}.sock" for i in range(MEMBERS))

    @property
    def nb_db(self) -> str:
        return self._dbs("nb")

    @property
    def sb_db(self) -> str:
        return self._dbs("sb")

    @property
    def sb_remote(self) -> str:
        return ",".join(f"tcp:{self.lab.mgmt_ip}:{6642 + i}" for i in range(MEMBERS))

    @staticmethod
    def _schema_name(db: str) -> str:
        return "OVN_Northbound" if db == "nb" else "OVN_Southbound"

    def _start_central(self) -> None:
        c = self.central
        for db, schema in (("nb", NB_SCHEMA), ("sb", SB_SCHEMA)):
            raft: list[int] = []
            while len(raft) < MEMBERS:
                if (port := free_port()) not in raft:
                    raft.append(port)
            for i in range(MEMBERS):
                local = f"tcp:127.0.0.1:{raft[i]}"
                if i == 0:
                    run("ovsdb-tool", "create-cluster", f"{c}/{db}{i}.db", schema, local)
                else:
                    run("ovsdb-tool", "join-cluster", f"{c}/{db}{i}.db", self._schema_name(db),
                        local, f"tcp:127.0.0.1:{raft[0]}")
                remotes = [f"--remote=punix:{c}/{db}{i}.sock"]
                if db == "sb":
                    remotes.append(f"--remote=ptcp:{6642 + i}:{self.lab.mgmt_ip}")
                run("ovsdb-server", f"{c}/{db}{i}.db", "-vconsole:off", "-vfile:info",
                    *remotes, f"--pidfile={c}/{db}{i}.pid", f"--unixctl={c}/{db}{i}.ctl",
                    f"--log-file={c}/{db}{i}.log", "--detach", "--no-chdir")
            self._wait_members(db)
            leader = self._leader(db)
            run("ovs-appctl", "-t", f"{c}/{db}{leader}.ctl", "cluster/change-election-timer",
                self._schema_name(db), str(self.election_timer_ms))
        self._start_northd("northd0")
        self._start_northd("northd1")

    def _cluster_status(self, db: str, i: int) -> str:
        try:
            return run("ovs-appctl", "-t", f"{self.central}/{db}{i}.ctl", "cluster/status",
                       self._schema_name(db), timeout=5).stdout
        except CommandError:
            return ""

    def _wait_members(self, db: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not all("Status: cluster member" in self._cluster_status(db, i)
                      for i in range(MEMBERS)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"OVN {db} cluster not formed in {timeout} s")
            time.sleep(0.1)

    def _leader(self, db: str) -> int | None:
        for i in range(MEMBERS):
            if self._central_pid(f"{db}{i}") and "Role: leader" in self._cluster_status(db, i):
                return i
        return None

    def _active_northd(self) -> str | None:
        for name in ("northd0", "northd1"):
            if not self._central_pid(name):
                continue
            status = run("ovn-appctl", "-t", f"{self.central}/{name}.ctl", "status",
                         timeout=5, check=False).stdout
            if "active" in status and "standby" not in status:
                return name
        return None

    def kill_control(self, host: str) -> tuple[dict[str, Any], Recovered]:
        """kill -9 the active ovn-northd (``host`` is unused: northd computes every host's
        state); recovered once the standby reports itself active."""
        del host
        victim = self._active_northd()
        if victim is None:
            raise RuntimeError("no active ovn-northd")
        _kill9(self._central_pid(victim))
        return {"killed": victim}, lambda: self._active_northd() not in (None, victim)

    def kill_store_leader(self) -> tuple[dict[str, Any], Recovered]:
        """kill -9 the NB and the SB Raft leaders at once (the state tenantnet keeps in etcd
        is split over both); recovered once each cluster has a leader again."""
        killed = {}
        for db in ("nb", "sb"):
            i = self._leader(db)
            if i is None:
                raise RuntimeError(f"OVN {db}: no Raft leader")
            _kill9(self._central_pid(f"{db}{i}"))
            killed[db] = f"{db}{i}"
        return ({"killed": f"{killed['nb']} + {killed['sb']} (leaders)"},
                lambda: all(self._leader(db) is not None for db in ("nb", "sb")))

