"""`make demo-ha`: 3 tenantnet instances on a 3-member etcd cluster, 3 emulated hypervisors,
and the failover of a host's OpenFlow master while its VM pings another host's.

1. start a 3-member etcd cluster on loopback (Debian's etcd-server) and 3 hypervisors;
2. start 3 `tenantnet serve --store etcd://...` instances (their OpenFlow on 3 ports);
3. register the hosts and one VM per host through the first instance's API;
4. show who owns each host and the roles each bridge reports (owner MASTER, others SLAVE);
5. ping from the first host's VM to the second's, send API requests to a surviving instance,
   and `kill -9` the first host's owner: print how long until a survivor was its master and
   had reconciled it, the pings lost, the flow-mods the new owner sent and the API errors;
6. show the owners and roles again; PASS if no ping and no API request was lost.

Everything is torn down at the end, also on failure and on Ctrl-C.  Run from the repository
root as ``python -m scripts.demo_ha`` (what `make demo-ha` does).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import plans
from lab.etcd_cluster import EtcdCluster
from lab.hypervisors import Lab
from lab.report import step, table
from lab.tenantnet_proc import ApiProbe, TenantnetProcess
from scripts import demo

HOSTS = 3
INSTANCES = 3
TTL_S = 2  # etcd_member_ttl_s: a killed instance's hosts move when its lease expires
PING_INTERVAL_S = 0.02


def _wait(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def run(workdir: Path) -> bool:
    step(f"starting a {3}-member etcd cluster on loopback")
    with EtcdCluster(workdir / "etcd") as etcd:
        step(f"bringing up {HOSTS} emulated hypervisors (userspace OVS, one ovs-vswitchd each)")
        with Lab(HOSTS, **plans.DEMO.lab_kwargs()) as lab:
            procs = []
            for i in range(INSTANCES):
                name = f"ctl-{i + 1}"
                args = ("--store", etcd.url, "--etcd-prefix", "/demo-ha/",
                        "--etcd-member-id", name, "--etcd-member-ttl-s", str(TTL_S))  # fmt: skip
                procs.append(TenantnetProcess(workdir / name, f"{lab.mgmt_ip}:{6653 + i}",
                                              extra_args=args))  # fmt: skip
            try:
                step(f"starting {INSTANCES} tenantnet instances on {etcd.url} "
                     f"(lease TTL {TTL_S} s)")  # fmt: skip
                for p in procs:
                    p.start(timeout=60)
                return _scenario(lab, procs)
            except BaseException:
                for p in procs:
                    print(f"\n--- {p.state_dir.name} log (tail) ---\n{p.log_tail(30)}", flush=True)
                raise
            finally:
                for p in procs:
                    p.stop()


def _owners_table(lab: Lab, procs: list[TenantnetProcess], targets: dict[str, str]) -> None:
    alive = next(p for p in procs if p.proc is not None and p.proc.poll() is None)
    owner = alive.api.status()["cluster"]["host_owner"]
    by_target = {t: m for m, t in targets.items()}
    rows = []
    for hv in lab.hvs:
        roles = hv.controller_roles()
        rows.append([hv.name, owner.get(hv.name),
                     ", ".join(f"{by_target.get(t, t)} {r}" for t, r in sorted(roles.items()))])
    print(table(["host", "owner", "controllers (vswitchd's view)"], rows))


def _scenario(lab: Lab, procs: list[TenantnetProcess]) -> bool:
    api = procs[0].api
    names = [f"ctl-{i + 1}" for i in range(INSTANCES)]
    targets = {n: f"tcp:{lab.mgmt_ip}:{6653 + i}" for i, n in enumerate(names)}
    _wait(lambda: all(len(p.api.status()["cluster"]["members"]) == INSTANCES for p in procs),
          "every instance a member")  # fmt: skip
    step("registering hosts via POST /v2.0/hosts on ctl-1 (each host's owner prepares it)")
    for hv in lab.hvs:
        api.create("host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_target,
                   datapath_type="netdev")  # fmt: skip
    api.wait_hosts_connected([hv.name for hv in lab.hvs])
    step("one network, one VM per host")
    net = api.create("network", name="ha-net")
    sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    vms = []
    for i, hv in enumerate(lab.hvs):
        ip = f"10.0.0.{11 + i}"
        port = api.create("port", network_id=net["id"], name=f"vm{i + 1}",
                          fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}])  # fmt: skip
        vms.append(lab.add_vm(hv, f"vm{i + 1}", port["mac_address"], f"{ip}/24", port["id"]))
        api.wait_port_status(port["id"], "ACTIVE", timeout=60)
    vms[0].wait_reachable(vms[1].ip, timeout=20)
    owner_of = api.status()["cluster"]["host_owner"]
    for hv in lab.hvs:  # vswitchd refreshes Controller.role every few seconds
        want = {t: "master" if m == owner_of[hv.name] else "slave" for m, t in targets.items()}
        _wait(lambda hv=hv, want=want: hv.controller_roles() == want, f"{hv.name}'s roles")
    print()
    _owners_table(lab, procs, targets)

    victim_name = owner_of[lab.hvs[0].name]
    victim = procs[names.index(victim_name)]
    survivors = [p for p in procs if p is not victim]
    moved = sorted(h for h, m in owner_of.items() if m == victim_name)
    sent_before = {p.state_dir.name: p.api.status()["flow_mods"] for p in survivors}
    asked = survivors[0]
    print()
    step(f"{vms[0].name} ({lab.hvs[0].name}) pings {vms[1].name} ({lab.hvs[1].name}) every "
         f"{PING_INTERVAL_S * 1000:.0f} ms; API requests go to {asked.state_dir.name}")  # fmt: skip
    ping = vms[0].ping_background(vms[1].ip, interval=PING_INTERVAL_S)
    probe = ApiProbe(asked.api).start()
    time.sleep(1.0)
    step(f"kill -9 {victim_name}, master of {', '.join(moved)}")
    victim.kill()
    killed = time.monotonic()

    def new_master(host: str) -> str | None:
        """The survivor that owns the host and has read and reconciled it, if any yet."""
        for p in survivors:
            h = p.api.status()["hosts"][host]
            if h["owned"] and h["ready"]:
                return p.state_dir.name
        return None

    owners = {h: _wait(lambda h=h: new_master(h), f"a new master for {h}") for h in moved}
    _wait(lambda: all(p.api.status()["idle"] for p in survivors), "survivors idle")
    failover_s = time.monotonic() - killed
    time.sleep(1.0)
    probe.stop()
    stats = ping.stop()
    lost = stats.sent - stats.received
    sent = {p.state_dir.name: p.api.status()["flow_mods"] - sent_before[p.state_dir.name]
            for p in survivors}  # fmt: skip
    owner_now = asked.api.status()["cluster"]["host_owner"]
    for hv in lab.hvs:  # vswitchd refreshes Controller.role every few seconds
        want = {targets[m]: "master" if m == owner_now[hv.name] else "slave"
                for m in names if m != victim_name}  # fmt: skip
        _wait(lambda hv=hv, want=want: hv.controller_roles() == want, f"{hv.name}'s roles")
    print()
    _owners_table(lab, procs, targets)
    print(f"\nfailover: {', '.join(f'{h} -> {o}' for h, o in owners.items())} master and "
          f"reconciled {failover_s:.2f} s after kill -9 (lease TTL {TTL_S} s)")
    print(f"pings: {stats.sent} sent, {lost} lost, longest gap {stats.max_gap_ms:.0f} ms")
    print(f"flow-mods sent by the survivors during the failover: {sent} (nothing had changed)")
    print(f"API: {probe.calls} create+delete pairs to {asked.state_dir.name}, "
          f"{len(probe.errors)} failed")
    ok = lost == 0 and not probe.errors and probe.calls > 0
    print(f"\n{'PASS' if ok else 'FAIL'}: "
          f"{'no ping and no API request lost' if ok else 'pings or API requests lost'}")
    return ok


def main() -> int:
    return demo.main_of(run, "tenantnet-demo-ha-")


if __name__ == "__main__":
    sys.exit(main())
