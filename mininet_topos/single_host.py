"""The smallest tenantnet Mininet demo: one hypervisor, two tenants, two VMs each.

    /usr/bin/python3 -m mininet_topos.single_host [--test]      # from the repository root

hv1 is a Mininet node running its own ovsdb-server + ovs-vswitchd (userspace datapath).
tenantnet is started as a child process and told, through its REST API, about the host, two
tenant networks (tenant1 VXLAN, tenant2 GRE, both on the overlapping subnet 10.70.0.0/24) and four
ports; the VMs a1, a2 (tenant1) and b1, b2 (tenant2) are Mininet hosts with the ports' MACs/IPs,
plugged into br-int with iface-id=<port id>.  Everything stays on one br-int, so only the
controller's flows keep the tenants apart: a1<->a2 and b1<->b2 answer, nothing across.

Default: the Mininet CLI (try ``pingall``, ``matrix``, ``tenants``,
``hv1 ovs-ofctl -O OpenFlow13 dump-flows br-int``).  ``--test``: ping matrix, exit 0 iff exactly
the intra-tenant pairs answer.  Everything is torn down on exit, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: the repository root (lab/, mininet_topos/) is not on the path
    sys.exit("from the repository root: /usr/bin/python3 -m mininet_topos.single_host")
try:
    from mininet_topos import hvnet
except ImportError as exc:  # e.g. run with a python that has no mininet
    sys.exit(f"{exc}: run with Debian's /usr/bin/python3 (apt-get install mininet)")


def build(lab: hvnet.TenantLab) -> None:
    hv1 = lab.hvs[0]
    for prefix, net_type in (("a", "vxlan"), ("b", "gre")):
        tenant = lab.add_tenant(net_type)
        hvnet.step(f"{tenant.name}: {net_type} network, VMs {prefix}1 {prefix}2 on {hv1.name}")
        for k in (1, 2):
            lab.add_vm(tenant, hv1, f"{prefix}{k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test", action="store_true",
                    help="run the ping matrix and exit (0 iff exactly intra-tenant pairs reach)")
    ap.add_argument("-v", "--verbose", action="store_true", help="Mininet info logging")
    ap.add_argument("--cleanup", action="store_true",
                    help="only remove what an earlier (killed) run left behind, then exit")
    args = ap.parse_args(argv)
    if args.cleanup:
        return hvnet.cleanup_main()
    return hvnet.run(build, test=args.test, n_hosts=1, pool_size=10, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
