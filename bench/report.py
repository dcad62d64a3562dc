"""Turn raw bench results into ONE comparison table (text + Markdown) and the results files.

Raw results (``results["raw"]``) hold, per scenario and system, one dict of metrics per run
(see `bench.scenario`).  Every figure of the table is the median over the runs that produced it,
with min..max when there was more than one run; the run count is in the row label.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.secgroups import PROBE_EVERY_S
from bench.stats import across_runs, median, percentile, ratio
from bench.sut_ovn import OvnSystem
from flows.tables import L3_NEIGHBOURS, L3_ROUTING

SYSTEMS = ("tenantnet", "ovn")


@dataclass
class Target:
    """A goal for tenantnet: ``value`` (a ratio or a number) compared with ``limit``."""

    text: str  # e.g. "<= 0.5x OVN"
    value: float | None
    limit: float
    op: str  # "<=", ">=", "=="

    @property
    def result(self) -> str:
        if self.value is None:
            return "n/a"
        ok = {
            "<=": self.value <= self.limit,
            ">=": self.value >= self.limit,
            "==": self.value == self.limit,
        }[self.op]
        return "PASS" if ok else "MISS"


@dataclass
class Row:
    section: str
    label: str
    unit: str
    tenantnet: dict[str, Any] | None = None  # across_runs() of tenantnet's per-run values
    ovn: dict[str, Any] | None = None
    digits: int = 1
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        tn = self.tenantnet["median"] if self.tenantnet else None
        ov = self.ovn["median"] if self.ovn else None
        return ratio(tn, ov)


# ---------------------------------------------------------------------------- formatting


def fmt_num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if digits == 0 or (abs(v) >= 1000 and float(v).is_integer()):
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_fig(agg: dict[str, Any] | None, digits: int = 1) -> str:
    """``median [min..max]`` (just the median for a single run, n/a when missing)."""
    if not agg or agg.get("median") is None:
        return "n/a"
    s = fmt_num(agg["median"], digits)
    if agg.get("runs", 1) > 1 and agg["min"] != agg["max"]:
        s += f" [{fmt_num(agg['min'], digits)}..{fmt_num(agg['max'], digits)}]"
    return s


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _cells(row: Row) -> list[str]:
    unit = f" ({row.unit})" if row.unit else ""
    tgt = row.target.text if row.target else ""
    if row.target and row.target.value is not None and "OVN" not in row.target.text:
        tgt += f" [{fmt_num(row.target.value, 2)}]"
    return [
        row.label + unit,
        fmt_fig(row.tenantnet, row.digits),
        fmt_fig(row.ovn, row.digits),
        fmt_ratio(row.ratio),
        tgt,
        row.target.result if row.target else "",
    ]


HEADERS = ["measure", "tenantnet", "OVN", "tn/OVN", "target", "result"]


def render_text(rows: list[Row]) -> str:
    body = [_cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(HEADERS, *body, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*HEADERS).rstrip(), line.format(*("-" * w for w in widths))]
    section = None
    for r, cells in zip(rows, body, strict=True):
        if r.section != section:
            section = r.section
            out.append(f"[{section}]")
        out.append(line.format(*cells).rstrip())
        if r.note:
            out.append(" " * 2 + "- " + r.note)
    return "\n".join(out)


def render_markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            out.append(f"| **{section}** |" + " |" * (len(HEADERS) - 1))
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        if r.note:
            cells[0] += f" <br><sub>{r.note}</sub>"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------- rows


def _runs(raw: dict[str, Any], scen: str, system: str) -> list[dict[str, Any]]:
    return [r for r in raw.get(scen, {}).get(system, []) if r is not None]


def _agg(raw: dict[str, Any], scen: str, system: str, fn) -> dict[str, Any] | None:
    vals = []
    for run in _runs(raw, scen, system):
        try:
            vals.append(fn(run))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            vals.append(None)
    agg = across_runs(vals)
    return agg if agg["runs"] else None


def _pair(raw, scen, fn) -> dict[str, dict[str, Any] | None]:
    return {s: _agg(raw, scen, s, fn) for s in SYSTEMS}


def _med(key: str, sub: str):
    return lambda run: median(run[key][sub])


def _p90(key: str, sub: str):
    return lambda run: percentile(run[key][sub], 90)


def _nruns(raw, scen) -> int:
    return max([len(_runs(raw, scen, s)) for s in SYSTEMS] + [0])


def _ovn_ratio_target(row: Row, text: str, limit: float, op: str) -> Target:
    return Target(text, row.ratio, limit, op)


def build_rows(results: dict[str, Any]) -> list[Row]:
    raw = results["raw"]
    plan = results["params"]["scenarios"]
    rows: list[Row] = []

    # 1. port-ready latency on an (almost) empty system
    for sc in plan:
        if not sc.get("lat_before"):
            continue
        name, n = sc["name"], sc["lat_before"]
        sec = (f"1. port-ready latency: H={sc['H']}, {n} new ports, VM pre-plugged, "
               f"{_nruns(raw, name)} runs")
        for key, what in (("ready_ms", "(a) flows confirmed on host"),
                          ("ping_ms", "(b) first ping reply to VM on other host")):
            for stat, fn in (("median", _med), ("p90", _p90)):
                row = Row(sec, f"{what}, {stat}", "ms", **_pair(raw, name, fn("lat_before", key)))
                if key == "ready_ms" and stat == "median":
                    row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
                    row.note = ("tenantnet: POST port, then POST /tenantnet/wait until ACTIVE; "
                                "OVN: ovn-nbctl --wait=hv lsp-add + set-addresses/port-security")
                rows.append(row)
        break

    # 2.-5. per bulk scenario
    for sc in plan:
        if sc.get("role") != "main":
            continue
        name = sc["name"]
        runs = _nruns(raw, name)
        tag = f"H={sc['H']} P={sc['P']} N={sc['N']}"
        sec = f"2. bulk provisioning {tag}, {runs} runs"
        row = Row(sec, "ports/s until all ready", "ports/s", digits=0,
                  **_pair(raw, name, lambda r: r["bulk"]["ports_per_s"]))
        row.target = _ovn_ratio_target(row, ">= 2x OVN", 2.0, ">=")
        row.note = (f"tenantnet: API bulk create (<= {results['params'].get('bulk_chunk', 1000)} "
                    "ports/request) until every port ACTIVE; OVN: ovn-nbctl transactions of "
                    f"<= {OvnSystem.TXN_PORTS} ports, the last with --wait=hv")
        rows.append(row)
        rows.append(Row(sec, "time until all ready", "s", digits=2,
                        **_pair(raw, name, lambda r: r["bulk"]["seconds"])))
        rows.append(Row(sec, "control-plane CPU used meanwhile", "s", digits=2,
                        **_pair(raw, name, lambda r: r["bulk"]["control_plane_cpu_s"])))
        sec = f"3. OpenFlow state per host after bulk {tag}"
        row = Row(sec, "flows per host (median of hosts)", "flows", digits=0,
                  **_pair(raw, name, lambda r: median(r["flows"]["flows"])))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        rows.append(row)
        rows.append(Row(sec, "flows per host (max of hosts)", "flows", digits=0,
                        **_pair(raw, name, lambda r: max(r["flows"]["flows"]))))
        rows.append(Row(sec, "groups per host (median)", "groups", digits=0,
                        **_pair(raw, name, lambda r: median(r["flows"]["groups"]))))
        sec = f"4. control-plane memory after bulk {tag}"
        row = Row(sec, "RSS, whole control plane", "MiB", digits=1,
                  **_pair(raw, name, lambda r: sum(r["rss_kb"].values()) / 1024))
        row.note = ("tenantnet: the controller process; OVN: northd + NB + SB ovsdb-server + "
                    f"{sc['H']} ovn-controllers")
        rows.append(row)
        if sc.get("restart"):
            sec = f"5. controller kill -9 + restart, 10 ms ping across hosts, {tag}"
            row = Row(sec, "pings lost", "pings", digits=0,
                      **_pair(raw, name, lambda r: r["restart"]["lost"]))
            tn = row.tenantnet["median"] if row.tenantnet else None
            lost_max = row.tenantnet["max"] if row.tenantnet else None
            row.target = Target("tenantnet == 0", lost_max if tn is not None else None, 0, "==")
            rows.append(row)
            rows.append(Row(sec, "longest ping gap", "ms", digits=0,
                            **_pair(raw, name, lambda r: r["restart"]["max_gap_ms"])))
            row = Row(sec, "flow-mods sent after restart", "msgs", digits=0,
                      **_pair(raw, name, lambda r: r["restart"]["flow_mods"]))
            fm = row.tenantnet["max"] if row.tenantnet else None
            row.target = Target("tenantnet == 0", fm, 0, "==")
            row.note = ("tenantnet: /tenantnet/status flow_mods+group_mods; OVN: "
                        + results.get("ovn_flow_mods_source", "see JSON"))
            rows.append(row)
            rows.append(Row(sec, "flows (re)installed on the host (switch-observed)", "flows",
                            digits=0,
                            **_pair(raw, name, lambda r: r["restart"]["fresh_flows"])))
            row = Row(sec, "restart -> reconciled", "s", digits=2,
                      **_pair(raw, name, lambda r: r["restart"]["reconcile_s"]))
            row.note = ("tenantnet: reconciled_after_s, from the data plane's start (API "
                        "already serving; the OpenFlow listener was up and the switches poked "
                        "before the API was built, so their reconnect and the read-back of "
                        "their flows overlap start-up: see the next row); OVN: ovn-controller "
                        "start -> --wait=hv sync returned and hv2's table rewritten")
            rows.append(row)
            row = Row(sec, "restart -> reconciled, from the process's start", "s", digits=2,
                      **_pair(raw, name, lambda r: r["restart"]["wall_s"]))
            row.note = ("tenantnet: exec of the controller -> all hosts reconciled (Python "
                        "start-up, imports, store, API build, switches' reconnect and read-back, "
                        "data plane); OVN: as the row above")
            rows.append(row)

    # 6. data plane
    dp = raw.get("dataplane")
    if dp:
        n = max(len(v) for v in dp.values())
        sec = f"6. data plane: iperf3 TCP {results['params'].get('iperf_seconds')} s, {n} runs"
        base = across_runs(dp.get("baseline", []))
        tn = across_runs(dp.get("tenantnet", []))
        ov = across_runs(dp.get("ovn", []))
        row = Row(sec, "throughput across hosts", "Mbit/s", tenantnet=tn, ovn=ov, digits=0)
        row.target = Target(">= 0.97x baseline", ratio(tn["median"], base["median"]), 0.97, ">=")
        row.note = (f"baseline (hand-written 2 flows/host + flow-based VXLAN port): "
                    f"{fmt_fig(base, 0)} Mbit/s; OVN encap "
                    f"{results['params'].get('ovn_encap', 'geneve')}, tenantnet VXLAN")
        rows.append(row)

    # 7. scaling curve
    scale = [sc for sc in plan if sc.get("lat_after")]
    if scale:
        hs = sorted({sc["H"] for sc in scale})
        sec = (f"7. scaling on H={'/'.join(map(str, hs))}: new port in a network of the bulk "
               f"after P ports, {_nruns(raw, scale[0]['name'])} runs")
        lat_rows: list[Row] = []
        cpu_rows: list[Row] = []
        for sc in sorted(scale, key=lambda s: s["P"]):
            name = sc["name"]
            row = Row(sec, f"P={sc['P']}: port-ready median", "ms",
                      **_pair(raw, name, _med("lat_after", "ready_ms")))
            lat_rows.append(row)
            rows.append(row)
            rows.append(Row(sec, f"P={sc['P']}: first ping reply median", "ms",
                            **_pair(raw, name, _med("lat_after", "ping_ms"))))
            rows.append(Row(sec, f"P={sc['P']}: bulk ports/s", "ports/s", digits=0,
                            **_pair(raw, name, lambda r: r["bulk"]["ports_per_s"])))
            rows.append(Row(sec, f"P={sc['P']}: flow-mods per port add (tenantnet)", "msgs",
                            digits=1,
                            **_pair(raw, name, lambda r: median(r["lat_after"]["flow_mods"]))))
            cpu_row = Row(sec, f"P={sc['P']}: control-plane CPU per port add (mean)", "ms",
                          digits=1, **_pair(raw, name, _mean_cpu))
            cpu_rows.append(cpu_row)
            rows.append(cpu_row)
        if len(lat_rows) >= 2:
            lo, hi = lat_rows[0], lat_rows[-1]
            tn_lo = lo.tenantnet["median"] if lo.tenantnet else None
            tn_hi = hi.tenantnet["median"] if hi.tenantnet else None
            r = ratio(tn_hi, tn_lo)
            row = Row(sec, f"port-ready median P={max(s['P'] for s in scale)} / "
                      f"P={min(s['P'] for s in scale)}", "",
                      tenantnet={"median": r, "min": r, "max": r, "runs": 1} if r else None,
                      ovn=None, digits=2)
            ov_lo = lo.ovn["median"] if lo.ovn else None
            ov_hi = hi.ovn["median"] if hi.ovn else None
            ro = ratio(ov_hi, ov_lo)
            row.ovn = {"median": ro, "min": ro, "max": ro, "runs": 1} if ro else None
            row.target = Target("tenantnet <= 1.5 (one port's cost flat)", r, 1.5, "<=")
            rows.append(row)
            lo, hi = cpu_rows[0], cpu_rows[-1]
            rt = ratio(hi.tenantnet["median"] if hi.tenantnet else None,
                       lo.tenantnet["median"] if lo.tenantnet else None)
            ro = ratio(hi.ovn["median"] if hi.ovn else None, lo.ovn["median"] if lo.ovn else None)
            row = Row(sec, f"control-plane CPU per port add P={max(s['P'] for s in scale)} / "
                      f"P={min(s['P'] for s in scale)}", "",
                      tenantnet={"median": rt, "min": rt, "max": rt, "runs": 1} if rt else None,
                      ovn={"median": ro, "min": ro, "max": ro, "runs": 1} if ro else None,
                      digits=2)
            row.note = ("the controller's own cost; port-ready also includes the switches' "
                        "(see bench/README.md, Caveats)")
            rows.append(row)
    rows += dhcp_rows(results)
    rows += sg_rows(results)
    rows += routing_rows(results)
    rows += ha_rows(results)
    return rows


def _stat(key: str, sub: str, fn):
    """A per-run statistic ``fn`` of the list ``run[key][sub]``."""
    return lambda run: fn(run[key][sub])


def _pct90(values: Any) -> float | None:
    return percentile(values, 90)


def _of_role(results: dict[str, Any], role: str) -> list[tuple[dict[str, Any], str, int]]:
    """(scenario, name, runs) of the planned scenarios of ``role``."""
    return [(sc, sc["name"], _nruns(results["raw"], sc["name"]))
            for sc in results["params"]["scenarios"] if sc.get("role") == role]


def dhcp_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 15 (bench/dhcp_arp.py): DHCP lease latency, renewal load, ARP first ping."""
    raw, rows = results["raw"], []
    for sc, name, runs in _of_role(results, "dhcp"):
        sec = f"8. native DHCP and ARP responder, H={sc['H']}, {runs} runs"
        leases = sc["dhcp_vms"] * sc["leases_per_vm"]
        row = Row(sec, "DISCOVER -> ACK, median", "ms", digits=2,
                  **_pair(raw, name, _stat("lease", "total", median)))
        row.target = _ovn_ratio_target(row, "<= 1.0x OVN", 1.0, "<=")
        row.note = (f"busybox udhcpc, {leases} leases per run ({sc['dhcp_vms']} VMs on every "
                    "host), timed on the VM's eth0 (tcpdump); tenantnet: packet-in to the "
                    "controller; OVN: ovn-controller on the VM's host")
        rows.append(row)
        rows.append(Row(sec, "DISCOVER -> ACK, p90", "ms", digits=2,
                        **_pair(raw, name, _stat("lease", "total", _pct90))))
        row = Row(sec, "server's share (DISCOVER -> OFFER + REQUEST -> ACK), median", "ms",
                  digits=2, **_pair(raw, name, _stat("lease", "server", median)))
        row.target = _ovn_ratio_target(row, "<= 1.0x OVN", 1.0, "<=")
        row.note = ("busybox's own OFFER -> REQUEST turnaround (15-40 ms, timer steps) "
                    "dominates DISCOVER -> ACK for both systems")
        rows.append(row)
        rows.append(Row(sec, "server's share, p90", "ms", digits=2,
                        **_pair(raw, name, _stat("lease", "server", _pct90))))
        for part, what in (("offer", "DISCOVER -> OFFER (server)"),
                           ("client", "OFFER -> REQUEST (the client itself)"),
                           ("ack", "REQUEST -> ACK (server)")):
            rows.append(Row(sec, f"  of which {what}, median", "ms", digits=2,
                            **_pair(raw, name, _stat("lease", part, median))))
        row = Row(sec, "DISCOVER -> ACK with ISC dhclient, median", "ms", digits=2,
                  **_pair(raw, name, _stat("lease_dhclient", "total", median)))
        row.target = _ovn_ratio_target(row, "<= 1.0x OVN", 1.0, "<=")
        row.note = (f"{leases} leases per run, the same VMs; dhclient keeps its socket and "
                    "requests at once, so this is nearly all the servers' work")
        rows.append(row)
        rows.append(Row(sec, "DISCOVER -> ACK with ISC dhclient, p90", "ms", digits=2,
                        **_pair(raw, name, _stat("lease_dhclient", "total", _pct90))))
        rows.append(Row(sec, "  of which OFFER -> REQUEST (dhclient itself), median", "ms",
                        digits=2, **_pair(raw, name, _stat("lease_dhclient", "client", median))))
        row = Row(sec, "renewals answered (sustained)", "ACKs/s", digits=0,
                  **_pair(raw, name, lambda r: r["load"]["acks_per_s"]))
        meter = results["params"].get("dhcp_meter_pps")
        row.note = (f"{sc['dhcp_vms']} VMs renewing at once (unicast DHCPREQUEST, "
                    f"{sc['window']} in flight each, bench/dhcp_load.py); tenantnet's "
                    "packet-in meter " + (f"raised to {meter} pps/host" if meter else
                                          "at its default"))
        rows.append(row)
        rows.append(Row(sec, "renewals unanswered within 1 s", "requests", digits=0,
                        **_pair(raw, name, lambda r: r["load"]["lost"])))
        rows.append(Row(sec, "control-plane CPU during the load", "cores", digits=2,
                        **_pair(raw, name, lambda r: r["load"]["control_plane_cores"])))
        for stat, fn in (("median", median), ("p90", _pct90)):
            rows.append(Row(sec, f"port-ready during the load, {stat}", "ms",
                            **_pair(raw, name, _stat("load", "ready_ms", fn))))
        row = Row(sec, "first ping across hosts, empty neighbour caches, median", "ms",
                  digits=2, **_pair(raw, name, _stat("arp", "arp_ms", median)))
        row.note = ("two new VMs on hv1/hv2; both systems answer the ARP request with flows "
                    "on the asker's host (ping's time of its first echo includes the wait)")
        rows.append(row)
        row = Row(sec, "first ping across hosts, neighbours pre-seeded, median", "ms",
                  digits=2, **_pair(raw, name, _stat("arp", "static_ms", median)))
        row.note = "no ARP at all"
        rows.append(row)
        row = Row(sec, "first ping across hosts, address not answered by flows, median", "ms",
                  digits=2, **_pair(raw, name, _stat("arp", "flood_ms", median)))
        row.note = ("without the responder: an allowed-address-pair address of the target; "
                    "the request crosses the tunnel and the VM answers (neither system can "
                    "switch its responder off for fixed IPs)")
        rows.append(row)
    return rows


def _filtering(fn):
    """``fn`` of a run whose system filtered (its probe found a rule needed), else None: a
    system that does not enforce security groups has no security-group figures."""
    return lambda run: None if run["rule"].get("error") else fn(run)


def sg_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 14 (bench/secgroups.py): flows, rule -> enforced, join a group, data plane."""
    raw, rows = results["raw"], []
    pair = lambda fn: _pair(raw, name, _filtering(fn))  # noqa: E731
    for sc, name, runs in _of_role(results, "sg"):
        sec = f"9. security groups, H={sc['H']} P={sc['P']} N={sc['N']}, {runs} runs"
        row = Row(sec, "flows per host (median of hosts)", "flows", digits=0,
                  **pair(lambda r: median(r["flows"]["flows"])))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = ("every port in its project's default group + 5 rules (2 with remote "
                    "groups); OVN: port groups, ACLs allow-related, neutron_pg_drop, as "
                    "Neutron's OVN driver writes them; n/a in every row but 'port security "
                    "off': the system did not filter (the JSON's rule.error)")
        rows.append(row)
        rows.append(Row(sec, "flows per host (max of hosts)", "flows", digits=0,
                        **pair(lambda r: max(r["flows"]["flows"]))))
        row = Row(sec, "rule create -> enforced on all hosts, median", "ms", digits=1,
                  **pair(lambda r: _ms(median(r["rule"]["enforced_s"]))))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = (f"{sc['rule_probes']} rules per run, one target VM per host, vm1 connects "
                    f"every {PROBE_EVERY_S * 1000:g} ms (n/a: a connection passed before any "
                    "rule: not filtering)")
        rows.append(row)
        rows.append(Row(sec, "rule create -> enforced on all hosts, max", "ms", digits=1,
                        **pair(lambda r: _ms(max(r["rule"]["enforced_s"])))))
        g = sc["group_size"]
        row = Row(sec, f"port create -> ACTIVE in a group of {g}, median", "ms",
                  **pair(_stat("join", "ready_ms", median)))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        rows.append(row)
        rows.append(Row(sec, f"port create -> ACTIVE in a group of {g}, p90", "ms",
                        **pair(_stat("join", "ready_ms", _pct90))))
        rows.append(Row(sec, "port create -> first ping to a member on another host, median",
                        "ms", **pair(_stat("join", "ping_ms", median))))
        if not sc.get("dataplane"):
            continue
        def dp(kind: str, which: str):
            # "filtered" figures of a run whose probe found no filtering are not filtered ones
            def get(r: dict[str, Any]) -> float | None:
                v = r["dataplane"][kind][which]
                return v["per_s"] if kind == "conn" else median(v)
            return _filtering(get) if which == "filtered" else get
        row = Row(sec, "TCP throughput across hosts, filtered ports", "Mbit/s", digits=0,
                  **_pair(raw, name, dp("iperf", "filtered")))
        row.target = _ovn_ratio_target(row, ">= 1.0x OVN", 1.0, ">=")
        rows.append(row)
        unf = Row(sec, "TCP throughput across hosts, port security off", "Mbit/s", digits=0,
                  **_pair(raw, name, dp("iperf", "unfiltered")))
        tn_f = row.tenantnet["median"] if row.tenantnet else None
        tn_u = unf.tenantnet["median"] if unf.tenantnet else None
        unf.target = Target(">= 0.9 (tn filtered/unfiltered)", ratio(tn_f, tn_u), 0.9, ">=")
        rows.append(unf)
        row = Row(sec, "new TCP connections/s across hosts, filtered ports", "conn/s",
                  digits=0, **_pair(raw, name, dp("conn", "filtered")))
        row.target = _ovn_ratio_target(row, ">= 1.0x OVN", 1.0, ">=")
        row.note = "bench/tcp_probe.py rate: 4 threads connect + close, Python in the VM"
        rows.append(row)
        rows.append(Row(sec, "new TCP connections/s across hosts, port security off",
                        "conn/s", digits=0,
                        **_pair(raw, name, dp("conn", "unfiltered"))))
    return rows


def _every(values: list[Any], fn) -> float | None:
    """``fn`` of the values, None when one of them is None (a ping never answered)."""
    return None if not values or any(v is None for v in values) else fn(values)


def _first_add(run: dict[str, Any]) -> float | None:
    """The run's first add_router_interface -> ping (None where the run measured nothing)."""
    adds = run["if_add"]
    return None if adds.get("error") or not adds["ping_ms"] else adds["ping_ms"][0]


def _tables_median(tables: tuple[int, ...]):
    """Median over the hosts of their flows in ``tables`` (a run's ``flows_by_table``; the
    JSON's keys are strings)."""
    return lambda run: median([sum(int(t.get(str(n), t.get(n, 0))) for n in tables)
                               for t in run["flows_by_table"]])


def _datapath(kind: str, key: str):
    """Median over a run's data-plane runs of ``kind`` of one `bench.routing.per_packet` figure
    (None for results files from before it was recorded)."""
    return lambda run: median([d.get(key) for d in run["dataplane"].get("datapath", [])
                               if d.get("kind") == kind])


def routing_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 16 (bench/routing.py): flows with N subnets on a router, add_router_interface ->
    first routed ping, a new pair's first routed ping, routed vs bridged throughput."""
    raw, rows = results["raw"], []
    for sc, name, runs in _of_role(results, "routing"):
        n = sc["N"]
        sec = f"10. distributed routing, H={sc['H']} P={sc['P']} N={n}, {runs} runs"
        row = Row(sec, f"flows per host, {n} subnets on one router (median of hosts)", "flows",
                  digits=0, **_pair(raw, name, lambda r: median(r["flows"]["flows"])))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = (f"{sc['P']} ports over {n} subnets of one project (default group as in "
                    "measures 1-7); OVN: Logical_Router + a router port per subnet, as "
                    "Neutron's OVN driver writes them; per table in the JSON's flows_by_table")
        rows.append(row)
        rows.append(Row(sec, "flows per host (max of hosts)", "flows", digits=0,
                        **_pair(raw, name, lambda r: max(r["flows"]["flows"]))))
        rows.append(Row(sec, "flows per host before the router (median of hosts)", "flows",
                        digits=0,
                        **_pair(raw, name, lambda r: median(r["flows_before"]["flows"]))))
        row = Row(sec, f"  of which tenantnet's tables {L3_ROUTING}+{L3_NEIGHBOURS} "
                  "(L3_ROUTING, L3_NEIGHBOURS)", "flows", digits=0,
                  tenantnet=_agg(raw, name, "tenantnet",
                                 _tables_median((L3_ROUTING, L3_NEIGHBOURS))))
        rows.append(row)
        row = Row(sec, "add_router_interface -> first routed ping reply, median", "ms",
                  **_pair(raw, name, lambda r: None if r["if_add"].get("error") else
                          _every(r["if_add"]["ping_ms"], median)))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = (f"{sc['if_adds']} adds per run (removed in between): vm1 (hv1) pings a VM "
                    "of a routed subnet on hv2 every 2 ms, its gateway resolved by ARP; "
                    "tenantnet: PUT add_router_interface; OVN: lrp-add + router-type "
                    "lsp-add, no --wait (n/a: a ping never answered)")
        rows.append(row)
        row = Row(sec, "add_router_interface -> first routed ping reply, each run's first add",
                  "ms", **_pair(raw, name, _first_add))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = ("network 0's first time on the router: the later adds re-add the same "
                    "network, whose facts a system may still hold compiled (tenantnet's "
                    "compilers cache their rules by those facts), while a cloud's adds are "
                    "mostly of networks new to the router")
        rows.append(row)
        row = Row(sec, "add_router_interface -> first routed ping reply, adds alternated with "
                  "the other system's, median", "ms",
                  **_pair(raw, name, _alternated("if_add_alternated", "ping_ms")))
        row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
        row.note = (f"{sc.get('if_adds_alternated', 0)} rounds per run after both systems' "
                    "measures above, both labs up: in each round one add per system, the "
                    "system going first alternating (ABBA), so both meet the same minute")
        rows.append(row)
        rows.append(Row(sec, "add_router_interface -> first routed ping reply, max", "ms",
                        **_pair(raw, name, lambda r: _every(r["if_add"]["ping_ms"], max))))
        row = Row(sec, "control-plane CPU per add_router_interface, until applied", "ms",
                  digits=0, **_pair(raw, name, _stat("if_add", "cpu_ms", median)))
        row.note = ("tenantnet: its process; OVN: northd + NB + SB + every ovn-controller; "
                    "until tenantnet's data plane is idle / OVN's --wait=hv sync returned")
        rows.append(row)
        row = Row(sec, "flow-mods per add_router_interface, all hosts (tenantnet)", "msgs",
                  digits=0, **_pair(raw, name, _stat("if_add", "flow_mods", median)))
        row.note = "its phases (API, commit, data-plane steps, barrier) in the JSON's phases_ms"
        rows.append(row)
        rows.append(Row(sec, "new VM pair on hv1/hv2 across the router: ports ready, median",
                        "ms", **_pair(raw, name, _stat("pairs", "ready_ms", median))))
        row = Row(sec, "new VM pair on hv1/hv2 across the router: first routed ping, median",
                  "ms", **_pair(raw, name, lambda r: _every(r["pairs"]["ping_ms"], median)))
        row.note = (f"{sc['new_pairs']} pairs per run, plugged first, both ports created in "
                    "one call while the first pings the second every 2 ms")
        rows.append(row)
        if not sc.get("dataplane"):
            continue
        dp = lambda which: lambda r: median(r["dataplane"][which])  # noqa: E731
        row = Row(sec, "routed TCP throughput across hosts", "Mbit/s", digits=0,
                  **_pair(raw, name, dp("routed")))
        row.target = _ovn_ratio_target(row, ">= 1.0x OVN", 1.0, ">=")
        row.note = ("iperf3 vm1 (hv1, subnet 0) -> rb (hv2, subnet 1); both systems' labs up, "
                    "their runs alternated (ABBA)")
        rows.append(row)
        bridged = Row(sec, "bridged TCP throughput, the same hosts", "Mbit/s", digits=0,
                      **_pair(raw, name, dp("bridged")))
        tn_r = row.tenantnet["median"] if row.tenantnet else None
        tn_b = bridged.tenantnet["median"] if bridged.tenantnet else None
        bridged.target = Target(">= 0.95 (tn routed/bridged)", ratio(tn_r, tn_b), 0.95, ">=")
        bridged.note = "iperf3 vm1 -> vm2 (hv2, subnet 0), interleaved with the routed runs"
        rows.append(bridged)
        for kind in ("routed", "bridged"):
            for key, label, unit in (
                    ("passes_per_packet", "datapath passes per packet", "passes"),
                    ("upcalls_per_packet", "upcalls per packet", "upcalls"),
                    ("switch_cpu_ms_per_mb", "hv1 + hv2 switch CPU per MB", "ms/MB")):
                digits = {"passes_per_packet": 3, "upcalls_per_packet": 5}.get(key, 1)
                row = Row(sec, f"  {kind} TCP: {label}", unit, digits=digits,
                          **_pair(raw, name, _datapath(kind, key)))
                if key == "switch_cpu_ms_per_mb":
                    row.note = ("what the throughput costs, less bound to the machine's load "
                                "than Mbit/s (dpif-netdev/pmd-stats-show, /proc)")
                rows.append(row)
    return rows


def ha_rows(results: dict[str, Any]) -> list[Row]:
    """Issue 18 (bench/ha.py): port-ready, API and bulk on tenantnet's etcd cluster (and on its
    SQLite store) vs OVN's clustered NB/SB; failover of a controller and of the store's leader.
    The tenantnet column is tenantnet on etcd unless the label says SQLite."""
    raw, rows = results["raw"], []
    for sc, name, runs in _of_role(results, "ha"):
        sec = (f"11. clustered: 3 tenantnet instances on 3 etcd members vs OVN NB/SB Raft x 3 "
               f"+ 2 northd, H={sc['H']}, {runs} runs")

        def sqlite(fn):
            return lambda r: fn(r["sqlite"])

        for label, fn, unit, digits, target in (
                ("port create -> ready, median", _med("lat", "ready_ms"), "ms", 1, True),
                ("port create -> ready, p90", _p90("lat", "ready_ms"), "ms", 1, False),
                ("port create -> first ping reply, median", _med("lat", "ping_ms"), "ms", 1,
                 False),
                ("API create (POST answered), median", _med("lat", "api_ms"), "ms", 1, False),
                (f"bulk {sc['P']} ports", lambda r: r["bulk"]["ports_per_s"], "ports/s", 0,
                 False),
                ("control-plane CPU per port add (mean)",
                 lambda r: _mean(r["lat"]["cpu_ms"]), "ms", 1, False)):
            row = Row(sec, label, unit, digits=digits, **_pair(raw, name, fn))
            if target:
                row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
                row.note = (f"{sc['lat']} ports one after the other, VM pre-plugged; API calls "
                            "to one instance; OVN: --wait=hv through a clustered NB")
            if label.startswith("control-plane"):
                row.note = ("tenantnet: its instances + etcd members; OVN: both northd, the "
                            "6 database members and every ovn-controller")
            rows.append(row)
            rows.append(Row(sec, "  the same on tenantnet's SQLite store (1 instance)", unit,
                            digits=digits, tenantnet=_agg(raw, name, "tenantnet", sqlite(fn)),
                            ovn=_agg(raw, name, "ovn", fn)))
            if label.startswith("port create -> ready, median"):
                rows.append(_alternated_ready_row(sec, raw, name, sc))
        for kind, what in (("control", "kill -9 of hv1's controller (tenantnet: its owning "
                                       "instance; OVN: the active northd)"),
                           ("store", "kill -9 of the store's leader (etcd; OVN: NB + SB)")):
            key = f"failover_{kind}"
            row = Row(sec, f"{what}: recovered", "s", digits=2,
                      **_pair(raw, name, lambda r, k=key: r[k]["recovered_s"]))
            row.note = ("tenantnet: survivors own, have read and reconciled the victim's "
                        "hosts and are idle; OVN: the standby northd is active"
                        if kind == "control" else
                        "a new leader: etcd's / both NB and SB clusters'")
            rows.append(row)
            row = Row(sec, "  a port created on hv1 right after the kill: ready", "s", digits=2,
                      **_pair(raw, name, lambda r, k=key: r[k]["port_ready_s"]))
            row.note = "from the kill; through a surviving instance / the NB cluster"
            rows.append(row)
            rows.append(Row(sec, "  pings lost, vm1 (hv1) -> vm2 (hv2) every 10 ms", "pings",
                            digits=0, **_pair(raw, name, lambda r, k=key: r[k]["lost"])))
            rows.append(Row(sec, "  longest ping gap", "ms", digits=0,
                            **_pair(raw, name, lambda r, k=key: r[k]["max_gap_ms"])))
    return rows


def _alternated(key: str, sub: str):
    """A run's median of ``run[key][sub]`` from its alternated phase; None (n/a) in results
    from before that phase, where a system failed in it, or a ping never answered."""
    return lambda r: (None if key not in r or r[key].get("error") else
                      _every(r[key][sub], median))


def _alternated_ready_row(sec: str, raw: dict[str, Any], name: str, sc: dict[str, Any]) -> Row:
    """Port-ready with both clustered systems up, creates alternated (`bench.ha`
    `alternated_latency`); n/a in results from before it or where a system failed."""
    row = Row(sec, "port create -> ready, creates alternated with the other system's, median",
              "ms", digits=1,
              **_pair(raw, name, _alternated("lat_alternated", "ready_ms")))
    row.target = _ovn_ratio_target(row, "<= 0.5x OVN", 0.5, "<=")
    row.note = (f"{sc.get('lat_alternated', 0)} ports per system and run after both systems' "
                "measures, both labs up: one create per system per round, the system going "
                "first alternating (ABBA), so both meet the same moment of the machine")
    return row


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _mean_cpu(run: dict[str, Any]) -> float | None:
    """Mean control-plane CPU per port add (older results files have no cpu_ms)."""
    cpu = run["lat_after"].get("cpu_ms")
    return sum(cpu) / len(cpu) if cpu else None


# ---------------------------------------------------------------------------- files


def run_kind(results: dict[str, Any]) -> str:
    p = results["params"]
    return "smoke" if p.get("smoke") else "quick" if p.get("quick") else "full"


def header_text(results: dict[str, Any]) -> str:
    m, v = results["machine"], results["versions"]
    return (
        f"tenantnet vs OVN bench ({run_kind(results)}), "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(results['started']))}\n"
        f"machine: {m.get('nproc')} CPUs, {m.get('mem_gib')} GiB, kernel {m.get('kernel')}, "
        f"load avg {m.get('loadavg_start')} -> {m.get('loadavg_end')}\n"
        f"versions: tenantnet {v.get('tenantnet')}, OVS {v.get('ovs')}, OVN {v.get('ovn')}, "
        f"Python {v.get('python')}, os-ken {v.get('os_ken')}\n"
        f"userspace datapath (netdev), emulated hypervisors in network namespaces; figures are "
        f"median [min..max] over runs"
    )


def write_results(results: dict[str, Any], out_dir: str) -> tuple[str, str, str]:
    """Write ``<stamp>.json`` and ``<stamp>.md`` (and ``latest.*``); return (json, md, table)."""
    rows = build_rows(results)
    table = render_text(rows)
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(results["started"]))
    kind = run_kind(results)
    merged = "-merged" if results["params"].get("merged_from") else ""
    base = os.path.join(out_dir, f"bench-{kind}-{stamp}{merged}")
    doc = dict(results)
    doc["rows"] = [
        {**asdict(r), "ratio": r.ratio, "result": r.target.result if r.target else None}
        for r in rows
    ]
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    md = (
        "# tenantnet vs OVN\n\n```\n" + header_text(results) + "\n```\n\n"
        + render_markdown(rows) + "\n\n<details><summary>parameters</summary>\n\n```json\n"
        + json.dumps(results["params"], indent=1) + "\n```\n</details>\n"
    )
    with open(base + ".md", "w") as f:
        f.write(md)
    return base + ".json", base + ".md", table


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine result files (e.g. a run interrupted in one scenario + that scenario alone): the
    first file's metadata; per scenario and system, the runs of every file that has them."""
    out = {k: v for k, v in docs[0].items() if k != "rows"}
    out["raw"] = {}
    out["errors"] = []
    scenarios: dict[str, Any] = {}
    for d in docs:
        for sc in d["params"]["scenarios"]:
            scenarios.setdefault(sc["name"], sc)
        out["errors"] += d.get("errors", [])
        for name, per in d["raw"].items():
            dst = out["raw"].setdefault(name, {})
            for system, runs in per.items():
                if runs:
                    dst.setdefault(system, []).extend(runs)
    out["params"] = {**docs[0]["params"], "scenarios": list(scenarios.values()),
                     "merged_from": [time.strftime("%Y%m%d-%H%M%S", time.localtime(d["started"]))
                                     for d in docs]}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report FILE.json [FILE.json ...] [--out DIR]``: print (and with --out
    write) the table of one results file or of several merged."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    docs = []
    for path in args.files:
        with open(path) as f:
            docs.append(json.load(f))
    res = merge(docs) if len(docs) > 1 else docs[0]
    print(header_text(res))
    if args.out:
        j, m, table = write_results(res, args.out)
        print(table + f"\n\nresults: {j}\n         {m}")
    else:
        print(render_text(build_rows(res)))
    for e in res.get("errors", []):
        print(f"error: {e.get('scenario')} {e.get('system', '')} run {e.get('run', '')}: "
              f"{e['error'][:300]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
