"""tenantnet on a Mininet multi-hypervisor topology.

    /usr/bin/python3 -m mininet_topos.multi_hypervisor [--hosts N] [--tenants M] [--vms K] [--test]

(from the repository root: ``lab/`` and ``mininet_topos/`` are imported from there).

N hypervisors (Mininet switch nodes, each running its own ovsdb-server + ovs-vswitchd with the
userspace datapath in its namespace), joined by an underlay bridge (MTU 9000) and reached by the
controller over a management bridge (10.251.70.0/24).  tenantnet is started as a child process,
the hypervisors are registered through its REST API, M tenants are created (tenant1 VXLAN,
tenant2 GRE, ... alternating; all on the overlapping subnet 10.70.0.0/24) with K VMs per tenant
on every hypervisor; each VM is a Mininet host configured with the MAC/IP its port got from the
API and plugged into br-int with iface-id=<port id>.  Once every port is ACTIVE:

* default: the Mininet CLI (``pingall`` shows exactly the intra-tenant pairs reachable;
  ``matrix``, ``tenants``; ``hv1 ovs-ofctl -O OpenFlow13 dump-flows br-int``);
* ``--test``: a ping matrix of all VM pairs; exit 0 iff exactly the same-tenant pairs answer.

Everything (nodes, links, OVS daemons, the mgmt bridge, the controller, temp dirs) is removed on
exit, on failure and on Ctrl-C / SIGTERM.  Must run as root with Debian's /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: the repository root (lab/, mininet_topos/) is not on the path
    sys.exit("from the repository root: /usr/bin/python3 -m mininet_topos.multi_hypervisor")
try:
    from mininet_topos import hvnet
except ImportError as exc:  # e.g. run with a python that has no mininet
    sys.exit(f"{exc}: run with Debian's /usr/bin/python3 (apt-get install mininet)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=3, help="hypervisors (default 3)")
    ap.add_argument("--tenants", type=int, default=2, help="tenants (default 2)")
    ap.add_argument("--vms", type=int, default=1, help="VMs per tenant per hypervisor (default 1)")
    ap.add_argument("--test", action="store_true",
                    help="run the ping matrix and exit (0 iff exactly intra-tenant pairs reach)")
    ap.add_argument("-v", "--verbose", action="store_true", help="Mininet info logging")
    ap.add_argument("--cleanup", action="store_true",
                    help="only remove what an earlier (killed) run left behind, then exit")
    args = ap.parse_args(argv)
    if args.cleanup:
        return hvnet.cleanup_main()
    if args.hosts < 1 or args.tenants < 1 or args.vms < 1:
        ap.error("--hosts, --tenants and --vms must be >= 1")
    if args.hosts * args.tenants * args.vms < 2:
        ap.error("need at least 2 VMs for a ping matrix")
    pool = hvnet.pool_size_for(args.hosts * args.vms)
    if 10 + args.tenants * pool > 250:
        ap.error(f"{args.tenants} tenants x {args.hosts * args.vms} VMs do not fit 10.70.0.0/24")

    def build(lab: hvnet.TenantLab) -> None:
        for _ in range(args.tenants):
            tenant = lab.add_tenant()
            hvnet.step(f"{tenant.name}: {tenant.net_type} network "
                       f"(segment {tenant.network.get('provider:segmentation_id')}), "
                       f"{len(lab.hvs) * args.vms} VMs")
            for hv in lab.hvs:
                for k in range(1, args.vms + 1):
                    lab.add_vm(tenant, hv, f"t{tenant.index}h{hv.n}v{k}")

    return hvnet.run(build, test=args.test, n_hosts=args.hosts, pool_size=pool,
                     verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
