"""`make demo`: tenantnet doing its job on 3 emulated hypervisors, end to end, in under a minute.

1. bring up 3 hypervisors (own ovsdb-server + ovs-vswitchd each, userspace datapath, underlay);
2. start `tenantnet serve` with its embedded SQLite store;
3. register the hosts through the REST API (OVSDB over TCP, as for a real hypervisor);
4. create two tenants whose subnets overlap (10.0.0.0/24): tenant-a on VXLAN, tenant-b on GRE;
5. create one port per tenant per host through the API and plug a VM with iface-id=<port id>;
6. print the ping matrix (expected vs observed), bindings and flows per host; PASS or FAIL.

Everything is torn down at the end, also on failure and on Ctrl-C.  Run it from the repository
root as ``python -m scripts.demo`` (what `make demo` does): the ``lab`` package it uses is test
tooling, not installed with tenantnet.

`make demo-tls` (``--tls``) does the same with TLS everywhere: a PKI made with ``ovs-pki`` as the
README describes, hypervisors whose ovsdb-server listens on ``pssl:`` with their ovs-pki switch
certificate, the controller with mutual TLS on OpenFlow and OVSDB (``ssl:`` targets) and an
HTTPS API.
"""

from __future__ import annotations

import itertools
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import plans
from lab.hypervisors import Lab
from lab.pki import Pki
from lab.report import step, table
from lab.tenantnet_proc import TenantnetProcess

TENANTS = [("tenant-a", "vxlan", 11), ("tenant-b", "gre", 21)]
HOSTS = 3


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(workdir: Path, tls: bool = False) -> bool:
    t_start = time.monotonic()
    pki = None
    if tls:
        step(f"creating the PKI with ovs-pki in {workdir}/pki (CAs, controller, one cert per host)")
        pki = Pki.create(workdir / "pki", hosts=[f"hv{n}" for n in range(1, HOSTS + 1)])
    step(f"bringing up {HOSTS} emulated hypervisors (userspace OVS, one ovs-vswitchd each)"
         + (", ovsdb-server on pssl: with each host's certificate" if tls else ""))
    with Lab(HOSTS, **plans.DEMO.lab_kwargs(), pki=pki) as lab:
        step(f"starting tenantnet (store {workdir}/tenantnet.sqlite, OpenFlow on {lab.mgmt_ip}"
             + (", mutual TLS on OpenFlow and OVSDB, HTTPS API)" if tls else ")"))
        with TenantnetProcess(workdir, ofp_listen=f"{lab.mgmt_ip}:6653", pki=pki) as ctl:
            api = ctl.api
            step(f"live topology page: {api.base}/tenantnet/ui (while the demo runs)")
            try:
                return _scenario(lab, api, t_start)
            except BaseException:
                print("\n--- controller log (tail) ---\n" + ctl.log_tail(), flush=True)
                raise


def _scenario(lab: Lab, api, t_start: float) -> bool:
    scheme = "ssl" if lab.pki is not None else "tcp"
    step(f"registering hosts via POST /v2.0/hosts (OVSDB {scheme}:<mgmt ip>:6640)")
    for hv in lab.hvs:
        api.create(
            "host", id=hv.name, tunnel_ip=hv.tunnel_ip, ovsdb=hv.ovsdb_target,
            datapath_type="netdev",
        )
    api.wait_hosts_connected([hv.name for hv in lab.hvs])

    vms = []  # (tenant, vm, port)
    for tenant, net_type, first_ip in TENANTS:
        step(f"{tenant}: network ({net_type}), subnet 10.0.0.0/24, {HOSTS} ports")
        net = api.create("network", name=f"{tenant}-net", project_id=tenant,
                         **{"provider:network_type": net_type})
        sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4,
                         name=f"{tenant}-subnet", project_id=tenant)
        for i, hv in enumerate(lab.hvs):
            ip = f"10.0.0.{first_ip + i}"
            port = api.create("port", network_id=net["id"], name=f"{tenant[-1]}{i + 1}",
                              project_id=tenant,
                              fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}])
            vm = lab.add_vm(hv, f"{tenant[-1]}{i + 1}", port["mac_address"], f"{ip}/24",
                            port["id"])
            vms.append((tenant, vm, port))
    t0 = time.monotonic()
    api.wait_ports_active([p["id"] for _, _, p in vms])
    step(f"all {len(vms)} ports ACTIVE {time.monotonic() - t0:.2f} s after the last VM plugged")

    step(f"ping matrix ({len(vms) * (len(vms) - 1)} pairs, in parallel)")
    pairs = [(a, b) for a, b in itertools.permutations(vms, 2)]

    def probe(pair):
        (ta, va, _), (tb, vb, _) = pair
        res = va.ping(vb.ip, count=2, interval=0.2, timeout=1)
        return (va.name, vb.name), ta == tb, res.received > 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = {k: (exp, obs) for k, exp, obs in pool.map(probe, pairs)}
    names = [vm.name for _, vm, _ in vms]
    rows, wrong = [], 0
    for src in names:
        row = [src]
        for dst in names:
            if src == dst:
                row.append("")
                continue
            exp, obs = results[(src, dst)]
            wrong += exp != obs
            cell = f"{'Y' if exp else 'N'}/{'Y' if obs else 'N'}"
            row.append(cell if exp == obs else cell + "!!")
        rows.append(row)
    print("cell = expected/observed reachability (Y = ping answered); !! marks a mismatch")
    print(table(["from \\ to", *names], rows))

    print()
    hosts = {h["id"]: h for h in api.list("host")}
    brows = []
    for tenant, vm, port in vms:
        p = api.show("port", port["id"])
        brows.append([vm.name, tenant, p["binding:host_id"], vm.ofport(), p["mac_address"],
                      p["fixed_ips"][0]["ip_address"], p["status"]])
    print(table(["vm", "tenant", "bound to", "ofport", "mac", "ip", "status"], brows))

    print()
    frows = []
    for hv in lab.hvs:
        flows = [f for f in hv.dump_flows() if "cookie=" in f]
        groups = [g for g in hv.ofctl("dump-groups", "br-int").splitlines() if "group_id" in g]
        target = hv.vsctl("get", "controller", "br-int", "target").strip('"')
        frows.append([hv.name, hv.tunnel_ip, hosts[hv.name]["ovsdb"], target,
                      hosts[hv.name]["status"], len(flows), len(groups)])
    print(table(["host", "tunnel ip", "OVSDB", "OpenFlow", "status", "flows", "groups"], frows))
    st = api.status()
    print(f"\ncontroller: {st['flow_mods']} flow-mods, {st['group_mods']} group-mods sent; "
          f"demo took {time.monotonic() - t_start:.1f} s")
    ok = wrong == 0
    print(f"\n{'PASS' if ok else 'FAIL'}: {len(pairs) - wrong}/{len(pairs)} pairs as expected "
          "(same tenant reachable across hosts, other tenant isolated)")
    return ok


def main_of(run_in: Callable[[Path], bool], prefix: str) -> int:
    """Run a demo in a fresh temporary directory, torn down on failure and on Ctrl-C/SIGTERM;
    the exit status (0 PASS, 1 FAIL, 130 interrupted).  `make demo-ha` runs through it too."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            ok = run_in(Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted: torn down", flush=True)
            return 130
        except Exception as exc:
            print(f"\nFAIL: {exc}", flush=True)
            return 1
    return 0 if ok else 1


def main() -> int:
    tls = "--tls" in sys.argv[1:]
    return main_of(lambda workdir: run(workdir, tls=tls), "tenantnet-demo-")


if __name__ == "__main__":
    sys.exit(main())
