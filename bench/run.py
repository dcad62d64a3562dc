"""tenantnet vs OVN on identical work: ``python -m bench.run [--quick] [--runs N] [--out DIR]``.

Sets everything up (emulated hypervisors, tenantnet / OVN central + ovn-controllers), runs both
systems one after the other on the same scenarios, tears down, prints ONE table (tenantnet, OVN,
ratio, target, PASS/MISS) and writes it as JSON + Markdown to ``bench/results/`` (see README).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from typing import Any

from bench import report
from bench.common import REPO, loadavg, log, machine_info, versions
from bench.dhcp_arp import run_dhcp_arp
from bench.ha import alternated_latency, run_ha
from bench.routing import run_routing_systems
from bench.scenario import dataplane, run_scenario
from bench.secgroups import run_secgroups
from bench.sut_ha import EtcdTenantnetSystem, OvnClusteredSystem
from bench.sut_ovn import OvnSystem, ovn_installed
from bench.sut_tenantnet import TenantnetSystem

DEFAULT_OUT = str(REPO / "bench" / "results")


def dhcp_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Issue 15's scenario (`bench.dhcp_arp`): leases, renewal load, ARP first ping."""
    if args.no_dhcp:
        return []
    if args.smoke:
        size = {"H": 2, "dhcp_vms": 2, "leases_per_vm": 2, "window": 2, "load_ports": 2,
                "arp_pairs": 1}
    elif args.quick:
        # one run only: the scenario takes ~40 s per system and --quick stays ~5 minutes
        size = {"H": 3, "dhcp_vms": 6, "leases_per_vm": 5, "window": 16, "load_ports": 10,
                "arp_pairs": 5, "runs": 1}
    else:
        size = {"H": 3, "dhcp_vms": 12, "leases_per_vm": 5, "window": 16, "load_ports": 30,
                "arp_pairs": 10}
    if args.dhcp_window:
        size["window"] = args.dhcp_window
    return [{"name": f"dhcp-arp-h{size['H']}", "role": "dhcp", "P": 0, "N": 1, **size}]


def sg_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Issue 14's scenario (`bench.secgroups`).  Quick: small sizes, one run, and its data-plane
    rows (iperf3, connections/s) only with --sg-dataplane, so --quick stays short; smoke: tiny,
    no data-plane rows."""
    if args.no_sg:
        return []
    if args.smoke:
        size = {"H": 2, "P": 4, "N": 2, "group_size": 6, "rule_probes": 1, "join_ports": 1,
                "dataplane": False}
    elif args.quick:
        size = {"H": 3, "P": 30, "N": 3, "group_size": 20, "rule_probes": 3, "join_ports": 5,
                "runs": 1, "dataplane": args.sg_dataplane}
    else:
        size = {"H": 3, "P": 300, "N": 10, "group_size": 100, "rule_probes": 5,
                "join_ports": 30, "dataplane": True}
    return [{"name": f"sg-h{size['H']}-p{size['P']}", "role": "sg", **size}]


def routing_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Issue 16's scenario (`bench.routing`).  Full: the issue's 10 subnets x 30 ports on H=3;
    quick: 3 subnets x 10 ports, one run, its data-plane rows only with --routing-dataplane;
    smoke: tiny, no data-plane rows, no adds alternated between the systems."""
    if args.no_routing:
        return []
    if args.smoke:
        size = {"H": 2, "P": 4, "N": 2, "if_adds": 1, "new_pairs": 1, "dataplane": False}
    elif args.quick:
        size = {"H": 3, "P": 30, "N": 3, "if_adds": 3, "if_adds_alternated": 3,
                "new_pairs": 3, "runs": 1, "dataplane": args.routing_dataplane}
    else:
        size = {"H": 3, "P": 300, "N": 10, "if_adds": 5, "if_adds_alternated": 5,
                "new_pairs": 5, "dataplane": True}
    return [{"name": f"routing-h{size['H']}-p{size['P']}", "role": "routing", **size}]


def ha_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Issue 18's scenario (`bench.ha`): latency, bulk and failovers of the clustered systems
    (tenantnet on etcd and on SQLite, OVN on clustered NB/SB).  Not in --smoke (it starts
    three clusters); quick: one run."""
    if args.no_ha or args.smoke:
        return []
    size: dict[str, Any] = {"H": 3, "P": 150, "N": 3, "lat": 10, "lat_alternated": 10}
    if args.quick:
        size.update(P=60, lat=5, lat_alternated=5, runs=1)
    if args.ha_latency_only:
        size["latency_only"] = True
    return [{"name": f"ha-h{size['H']}", "role": "ha", **size}]


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The scenarios: 'main' ones feed measures 1-5, those with lat_after the scaling curve,
    'dhcp' issue 15's measures."""
    if args.smoke:
        return [{"name": "main-smoke", "role": "main", "H": 2, "P": args.ports or 10,
                 "N": 2, "lat_before": 3, "restart": True}, *dhcp_plan(args), *sg_plan(args),
                *routing_plan(args)]
    if args.quick:
        sc = [{"name": "h3-p60", "role": "main", "H": 3, "P": 60, "N": 4, "lat_before": 10,
               "restart": True}]
        if not args.no_scaling:
            sc += [{"name": f"scale-h3-p{p}", "role": "scale", "H": 3, "P": p, "N": 4,
                    "lat_after": 10} for p in (50, 200)]
        return sc + dhcp_plan(args) + sg_plan(args) + routing_plan(args) + ha_plan(args)
    sc = [
        {"name": "h3-p300", "role": "main", "H": 3, "P": 300, "N": 10, "lat_before": 30,
         "restart": True},
        {"name": "h10-p1000", "role": "main", "H": 10, "P": 1000, "N": 10, "lat_after": 30,
         "restart": True},
    ]
    if not args.no_scaling:
        sc += [{"name": f"scale-h10-p{p}", "role": "scale", "H": 10, "P": p, "N": 10,
                "lat_after": 30} for p in (100, 5000)]
    return sc + dhcp_plan(args) + sg_plan(args) + routing_plan(args) + ha_plan(args)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per scenario and system (default: 3 full, 2 quick, 1 smoke)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"results dir (default {DEFAULT_OUT})")
    ap.add_argument("--ports", type=int, default=None, help="smoke only: bulk ports")
    ap.add_argument("--iperf-seconds", type=float, default=None,
                    help="iperf3 duration (default 10 full, 5 quick, 1 smoke)")
    ap.add_argument("--iperf-runs", type=int, default=3)
    ap.add_argument("--ovn-encap", default="geneve", choices=("geneve", "vxlan"))
    ap.add_argument("--bulk-chunk", type=int, default=1000,
                    help="tenantnet: ports per bulk create request (the API takes at most "
                         "1,000: MAX_BULK)")
    ap.add_argument("--only", action="append", default=[],
                    help="run only these scenarios (by name; 'dataplane' for measure 6)")
    ap.add_argument("--systems", default="tenantnet,ovn")
    ap.add_argument("--no-dataplane", action="store_true")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-dhcp", action="store_true", help="skip issue 15's DHCP/ARP scenario")
    ap.add_argument("--no-sg", action="store_true",
                    help="skip issue 14's security-group scenario")
    ap.add_argument("--no-main-sg", dest="main_sg", action="store_false",
                    help="measures 1-7: OVN ports get no security group (by default they get "
                         "what Neutron writes for their project's default group: port group, "
                         "ACLs, neutron_pg_drop, as tenantnet's ports are in that group)")
    ap.add_argument("--sg-dataplane", action="store_true",
                    help="quick: also the security-group data-plane rows (always in full)")
    ap.add_argument("--no-routing", action="store_true",
                    help="skip issue 16's routing scenario")
    ap.add_argument("--ha-latency-only", action="store_true",
                    help="issue 18's scenario: only the port-ready latency (no bulk, no "
                         "failovers; about a third of the time), for A/B runs of that row")
    ap.add_argument("--no-ha", action="store_true",
                    help="skip issue 18's clustered scenario (etcd / SQLite / OVN Raft)")
    ap.add_argument("--routing-dataplane", action="store_true",
                    help="quick: also the routed data-plane rows (always in full)")
    ap.add_argument("--dhcp-window", type=int, default=None,
                    help="DHCP renewal load: requests in flight per VM (default 16, smoke 2; "
                         "with 4 tenantnet's rate was bound by its latency, not its CPU)")
    ap.add_argument("--dhcp-meter-pps", type=int, default=20000,
                    help="tenantnet's per-host packet-in meter in the DHCP scenario (default "
                         "20000, so that the renewal load measures the controller, not the "
                         "meter; 0 = the controller's default of 200)")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("bench: must run as root (network namespaces, OVS daemons)", file=sys.stderr)
        return 2
    if not ovn_installed():
        print("bench: OVN is not installed (bash scripts/bootstrap.sh)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    runs = args.runs or (1 if args.smoke else 2 if args.quick else 3)
    iperf_s = args.iperf_seconds or (1 if args.smoke else 5 if args.quick else 10)
    iperf_runs = 1 if args.smoke else args.iperf_runs
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [s for s in plan(args) if not args.only or s["name"] in args.only]
    for sc in scenarios:
        if sc["role"] in ("sg", "routing"):
            sc.update(iperf_runs=iperf_runs, iperf_seconds=iperf_s)
    do_dp = not args.no_dataplane and (not args.only or "dataplane" in args.only)

    results: dict[str, Any] = {
        "started": time.time(),
        "machine": machine_info(),
        "versions": versions(),
        "params": {"quick": args.quick, "smoke": args.smoke, "runs": runs,
                   "iperf_seconds": iperf_s, "iperf_runs": iperf_runs,
                   "ovn_encap": args.ovn_encap, "bulk_chunk": args.bulk_chunk,
                   "dhcp_meter_pps": args.dhcp_meter_pps, "main_sg": args.main_sg,
                   "systems": systems, "scenarios": scenarios, "dataplane": do_dp},
        "ovn_flow_mods_source": OvnSystem.flow_mods_source,
        "raw": {},
        "errors": [],
    }
    make = {"tenantnet": lambda h: TenantnetSystem(h, bulk_chunk=args.bulk_chunk),
            "ovn": lambda h: OvnSystem(h, encap=args.ovn_encap,
                                       security_groups=args.main_sg)}
    # With the meter raised, the per-port DHCP flood guard is too: each VM's closed-loop
    # renewals are the load being measured, not a flood to drop (its default is 20/s a port).
    meter = (("--packet-in-rate-pps", str(args.dhcp_meter_pps), "--packet-in-burst",
              str(max(100, args.dhcp_meter_pps // 10)), "--dhcp-port-max-pps",
              str(args.dhcp_meter_pps)) if args.dhcp_meter_pps else ())
    # the DHCP scenario's OVN side has no security groups (neutron_pg_drop would drop DHCP
    # without the allow ACLs Neutron adds for it)
    make_for = {"dhcp": {"tenantnet": lambda h: TenantnetSystem(
        h, bulk_chunk=args.bulk_chunk, extra_args=meter),
        "ovn": lambda h: OvnSystem(h, encap=args.ovn_encap)}}
    make_for["ha"] = {"tenantnet": lambda h: EtcdTenantnetSystem(h, bulk_chunk=args.bulk_chunk),
                      "ovn": lambda h: OvnClusteredSystem(h, encap=args.ovn_encap,
                                                          security_groups=args.main_sg)}
    runners = {"dhcp": run_dhcp_arp, "sg": run_secgroups, "ha": run_ha}
    t_start = time.monotonic()
    interrupted = False
    try:
        if do_dp:
            log(f"=== data plane: iperf3 {iperf_runs} x {iperf_s:g} s, tenantnet / OVN / baseline")
            try:
                results["raw"]["dataplane"] = dataplane(make["tenantnet"](2), make["ovn"](2),
                                                        iperf_runs, iperf_s)
            except Exception as exc:
                log(f"data plane failed: {exc}")
                results["errors"].append({"scenario": "dataplane", "error": repr(exc),
                                          "trace": traceback.format_exc()})
        for sc in scenarios:
            raw = results["raw"].setdefault(sc["name"], {s: [] for s in systems})
            sc_runs = args.runs or sc.get("runs", runs)
            for r in range(sc_runs):
                if sc["role"] == "routing":  # both labs up, data-plane runs interleaved
                    log(f"=== {sc['name']} (H={sc['H']} P={sc['P']} N={sc['N']}) run "
                        f"{r + 1}/{sc_runs}: {', '.join(systems)}")
                    done = run_routing_systems({s: make[s](sc["H"]) for s in systems}, sc)
                    for s, m in done.items():
                        if isinstance(m, BaseException):
                            log(f"{s} {sc['name']} run {r + 1} failed: {m!r}")
                            results["errors"].append({
                                "scenario": sc["name"], "system": s, "run": r + 1,
                                "error": repr(m), "trace": "".join(
                                    traceback.format_exception(m))})
                        else:
                            raw[s].append(m)
                    continue
                this_run: dict[str, dict[str, Any]] = {}
                for s in systems:
                    log(f"=== {sc['name']} (H={sc['H']} P={sc['P']} N={sc['N']}) run "
                        f"{r + 1}/{sc_runs}: {s}")
                    try:
                        runner = runners.get(sc["role"], run_scenario)
                        m = runner(make_for.get(sc["role"], make)[s](sc["H"]), sc)
                        raw[s].append(m)
                        this_run[s] = m
                        if m.get("bulk", {}).get("error"):
                            results["errors"].append({"scenario": sc["name"], "system": s,
                                                      "run": r + 1,
                                                      "error": m["bulk"]["error"]})
                    except Exception as exc:
                        log(f"{s} {sc['name']} run {r + 1} failed: {exc!r}")
                        results["errors"].append({"scenario": sc["name"], "system": s,
                                                  "run": r + 1, "error": repr(exc),
                                                  "trace": traceback.format_exc()})
                if sc["role"] == "ha" and sc.get("lat_alternated") and len(this_run) > 1:
                    log(f"=== {sc['name']} run {r + 1}/{sc_runs}: port creates alternated "
                        f"between {', '.join(this_run)}")
                    alt = alternated_latency({s: make_for["ha"][s](sc["H"]) for s in this_run},
                                             sc)
                    for s, res in alt.items():
                        this_run[s]["lat_alternated"] = res
                        if res.get("error"):
                            results["errors"].append({"scenario": sc["name"], "system": s,
                                                      "run": r + 1, "error": res["error"]})
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing what was measured so far")
    results["machine"]["loadavg_end"] = loadavg()
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    json_path, md_path, table = report.write_results(results, args.out)
    print(report.header_text(results))
    print(f"elapsed {results['elapsed_s']:.0f} s; runs per figure in each section title\n")
    print(table)
    if results["errors"]:
        print(f"\n{len(results['errors'])} errors (details in the JSON):")
        for e in results["errors"]:
            print(f"  {e.get('scenario')} {e.get('system', '')} run {e.get('run', '')}: "
                  f"{e['error'][:300]}")
    print(f"\nresults: {json_path}\n         {md_path}")
    return 130 if interrupted else (1 if results["errors"] else 0)


if __name__ == "__main__":
    sys.exit(main())
