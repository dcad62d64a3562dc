"""The pure parts of the bench's routing scenario (issue 16): its plan and CLI, the per-table
flow count, what OVN gets for a router interface, and the report's rows and targets."""

from __future__ import annotations

import argparse
import contextlib

import pytest

from bench import report, routing, run
from bench.common import flows_by_table, gateway_ip
from bench.sut_ovn import OvnSystem


def _args(**kw: object) -> argparse.Namespace:
    base = {"smoke": False, "quick": False, "no_scaling": False, "no_dhcp": True,
            "no_sg": True, "no_routing": False, "routing_dataplane": False, "no_ha": True,
            "dhcp_window": None, "sg_dataplane": False, "ports": None}
    return argparse.Namespace(**{**base, **kw})


def _routing(args: argparse.Namespace) -> list[dict]:
    return [sc for sc in run.plan(args) if sc["role"] == "routing"]


def test_plan_has_the_issues_sizes_and_a_small_quick_one():
    (full,) = _routing(_args())
    assert (full["name"], full["H"], full["P"], full["N"]) == ("routing-h3-p300", 3, 300, 10)
    assert full["dataplane"] and "runs" not in full  # every run of a full bench
    assert (full["if_adds"], full["if_adds_alternated"]) == (5, 5)
    (quick,) = _routing(_args(quick=True))
    assert (quick["P"], quick["N"], quick["runs"], quick["dataplane"]) == (30, 3, 1, False)
    (quick,) = _routing(_args(quick=True, routing_dataplane=True))
    assert quick["dataplane"]
    (smoke,) = _routing(_args(smoke=True))
    assert (smoke["H"], smoke["N"], smoke["dataplane"]) == (2, 2, False)
    assert not smoke.get("if_adds_alternated")  # the smoke test stays short
    assert _routing(_args(no_routing=True)) == []


def test_pairs_use_two_routed_networks_other_than_the_probes():
    assert routing.pair_networks(10) == (2, 3)
    assert routing.pair_networks(2) == (1, 0)


class _Hv:
    def __init__(self, dump: str) -> None:
        self.dump = dump

    def ofctl(self, *args: str, timeout: float = 10) -> str:
        assert args[:2] == ("dump-flows", "br-int")
        return self.dump


def test_flows_by_table_counts_what_count_flows_counts():
    dump = (" cookie=0x1, duration=1.0s, table=0, n_packets=0, priority=100,in_port=1 "
            "actions=goto_table:1\n"
            " cookie=0x1, duration=1.0s, n_packets=0, priority=0 actions=drop\n"  # table 0
            " cookie=0x1, duration=1.0s, table=4, priority=116,ip actions=dec_ttl\n"
            " cookie=0x1, duration=1.0s, table=45, priority=0 actions=drop\n"
            "NXST_FLOW reply (xid=0x4):\n")
    assert flows_by_table(_Hv(dump)) == {0: 2, 4: 1, 45: 1}


def test_ovn_interface_is_a_router_port_and_its_switch_port_in_one_transaction():
    calls: list[tuple[str, ...]] = []
    ovn = OvnSystem.__new__(OvnSystem)
    ovn.nets = {3: "bls3"}
    ovn.nbctl = lambda *a, **kw: calls.append(a) or ""  # type: ignore[method-assign]
    ovn.add_interface("blr0", 3)
    (txn,) = calls
    assert txn[:5] == ("lrp-add", "blr0", "lrp-bls3", OvnSystem.router_mac(3),
                       f"{gateway_ip(3)}/16")
    cmds = " ".join(txn)
    assert "lsp-add bls3 rp-bls3" in cmds and "lsp-set-type rp-bls3 router" in cmds
    assert "router-port=lrp-bls3" in cmds and "--wait" not in cmds
    ovn.remove_interface("blr0", 3)
    assert calls[1] == ("lrp-del", "lrp-bls3", "--", "lsp-del", "rp-bls3")


def _run(flows, tables, if_ms, pair_ms, dp=None, error=None, fm=None, cpu=(60, 60)):
    r = {"flows": {"flows": flows, "groups": [0]}, "flows_before": {"flows": [100, 100]},
         "flows_by_table": tables,
         "if_add": {"ping_ms": if_ms, "flow_mods": fm, "cpu_ms": list(cpu)},
         "pairs": {"ready_ms": [10.0], "ping_ms": pair_ms}}
    if error:
        r["if_add"]["error"] = error
    if dp:
        r["dataplane"] = {"routed": [dp[0]], "bridged": [dp[1]]}
    return r


FIRST_ADD = "add_router_interface -> first routed ping reply, each run's first add"


def test_routing_rows_targets_and_unanswered_pings():
    sc = {"name": "r", "role": "routing", "H": 3, "P": 30, "N": 3, "if_adds": 2,
          "new_pairs": 1, "dataplane": True}
    tn_tables = [{"4": 20, "5": 30, "0": 7}, {"4": 22, "5": 30}]  # JSON keys: strings
    results = {"params": {"scenarios": [sc]}, "raw": {"r": {
        "tenantnet": [_run([300, 320], tn_tables, [10.0, 30.0], [5.0], dp=(900, 1000),
                            fm=[30, 50], cpu=(200, 400))],
        "ovn": [_run([1000, 1000], [{"20": 1}], [40.0, None], [6.0], dp=(800, 1000))],
    }}}
    rows = {r.label: r for r in report.routing_rows(results)}
    flows = rows["flows per host, 3 subnets on one router (median of hosts)"]
    assert flows.ratio == pytest.approx(0.31) and flows.target.result == "PASS"
    split = rows["  of which tenantnet's tables 4+5 (L3_ROUTING, L3_NEIGHBOURS)"]
    assert split.tenantnet["median"] == 51 and split.ovn is None
    add = rows["add_router_interface -> first routed ping reply, median"]
    assert add.tenantnet["median"] == 20
    assert add.ovn is None and add.target.result == "n/a"  # one of OVN's pings never answered
    first = rows[FIRST_ADD]
    assert first.tenantnet["median"] == 10.0 and first.ovn["median"] == 40.0
    assert first.ratio == pytest.approx(0.25) and first.target.result == "PASS"
    cpu = rows["control-plane CPU per add_router_interface, until applied"]
    assert cpu.ratio == pytest.approx(300 / 60)
    fm = rows["flow-mods per add_router_interface, all hosts (tenantnet)"]
    assert fm.tenantnet["median"] == 40 and fm.ovn is None
    routed = rows["routed TCP throughput across hosts"]
    assert routed.ratio == pytest.approx(900 / 800) and routed.target.result == "PASS"
    bridged = rows["bridged TCP throughput, the same hosts"]
    assert bridged.target.value == 0.9 and bridged.target.result == "MISS"
    # a run that routed before the interface existed measured nothing
    results["raw"]["r"]["tenantnet"][0]["if_add"]["error"] = "routed before"
    rows = {r.label: r for r in report.routing_rows(results)}
    assert rows["add_router_interface -> first routed ping reply, median"].tenantnet is None
    assert rows[FIRST_ADD].tenantnet is None
    # quick without --routing-dataplane: no throughput rows
    sc["dataplane"] = False
    assert not [r for r in report.routing_rows(results) if "throughput" in r.label]


def test_interface_phases_read_the_interface_put_not_the_rule_post():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from bench.sut_tenantnet import INTERFACE_ROUTE, phase_totals

    reg = CollectorRegistry()
    api = Histogram("tenantnet_api_request_seconds", "", ["method", "route"], registry=reg)
    api.labels("POST", "/v2.0/security-group-rules").observe(5)
    api.labels("PUT", "/v2.0/routers/{obj_id}/remove_router_interface").observe(7)
    api.labels("PUT", INTERFACE_ROUTE).observe(0.02)
    text = generate_latest(reg).decode()
    assert phase_totals(text, INTERFACE_ROUTE)["api"] == (1.0, pytest.approx(0.02))
    assert phase_totals(text)["api"] == (1.0, 5.0)  # the rule POST, as before


# ---------------------------------------------------------------- data plane, both systems at once
PMD_STATS = """main thread:
  packets received: 56500
  packet recirculations: 66589
  avg. datapath passes per packet: 2.18
  phwol hits: 0
  emc hits: 121759
  smc hits: 0
  megaflow hits: 1325
  avg. subtable lookups per megaflow hit: 2.19
  miss with success upcall: 5
  miss with failed upcall: 0
  avg. packets per output batch: 19.34
"""


def test_pmd_stats_give_passes_misses_and_upcalls_per_packet():
    c = routing.pmd_counts(PMD_STATS + PMD_STATS.replace("main thread", "pmd thread numa_id 0"))
    assert (c["packets"], c["recirculations"], c["emc_hits"], c["upcalls"]) == (
        113000, 133178, 243518, 10)
    pp = routing.per_packet(c, cpu_s=1.5, mbytes=100)
    assert pp["passes_per_packet"] == 2.179  # what pmd-stats-show prints
    assert pp["emc_miss_per_packet"] == round((113000 + 133178 - 243518) / 113000, 4)
    assert pp["upcalls_per_packet"] == round(10 / 113000, 5)
    assert pp["switch_cpu_ms_per_mb"] == 15.0
    assert routing.per_packet(dict.fromkeys(c, 0), 0.0, 0) == {"packets": 0}


class _Vm:
    def __init__(self, system: str, name: str, calls: list) -> None:
        self.system, self.name, self.calls = system, name, calls
        self.ip = f"{system}-{name}"
        self.lab = system

    def wait_reachable(self, ip: str, timeout: float) -> None:
        self.calls.append(("reachable", self.system))

    def iperf(self, server: _Vm, seconds: float) -> float:
        self.calls.append(("iperf", self.system, server.name))
        return 100.0 if self.system == "tenantnet" else 200.0


class _Probe:
    def __init__(self, lab: str) -> None:
        self.lab = lab

    def start(self) -> None:
        pass

    def stop(self, mbit_s: float, seconds: float) -> dict:
        return {"lab": self.lab, "mbit": mbit_s}


def test_data_plane_alternates_the_systems_run_by_run():
    """Both systems' labs are up and their iperf runs alternate, the first system alternating
    too (ABBA): measured one after the other, the same system's throughput swung ~2x between
    stretches of time on the 2-core machine, which read as a difference between systems."""
    calls: list = []
    vms = {s: (_Vm(s, "vm1", calls), _Vm(s, "vm2", calls), _Vm(s, "rb", calls))
           for s in ("tenantnet", "ovn")}
    out = routing.dataplane(vms, runs=2, seconds=1, probe=_Probe)
    iperfs = [c[1:] for c in calls if c[0] == "iperf"]
    assert iperfs == [("tenantnet", "rb"), ("ovn", "rb"), ("tenantnet", "vm2"), ("ovn", "vm2"),
                      ("ovn", "rb"), ("tenantnet", "rb"), ("ovn", "vm2"), ("tenantnet", "vm2")]
    assert calls.index(("reachable", "ovn")) < calls.index(("iperf", "tenantnet", "rb"))
    assert out["tenantnet"]["routed"] == [100.0, 100.0] and out["ovn"]["bridged"] == [200.0] * 2
    assert out["ovn"]["datapath"][0] == {"kind": "routed", "lab": "ovn", "mbit": 200.0}
    assert [d["kind"] for d in out["tenantnet"]["datapath"]] == [
        "routed", "bridged", "routed", "bridged"]


def test_run_routing_systems_keeps_every_lab_up_until_the_data_plane_ran(monkeypatch):
    """Measures 1-3 one system after the other, each lab still up for the data plane; a
    system that fails is reported alone and the others are measured."""
    events: list = []

    @contextlib.contextmanager
    def session(system, sc):
        events.append(("up", system))
        if system == "broken":
            events.append(("down", system))
            raise RuntimeError("lab did not start")
        try:
            yield {"hosts": 3}, (system, "vm2", "rb")
        finally:
            events.append(("down", system))

    def dataplane(vms, runs, seconds):
        events.append(("dataplane", tuple(vms)))
        return {s: {"routed": [1.0], "bridged": [2.0], "datapath": []} for s in vms}

    monkeypatch.setattr(routing, "routing_session", session)
    monkeypatch.setattr(routing, "dataplane", dataplane)
    sc = {"dataplane": True, "iperf_runs": 1, "iperf_seconds": 1}
    out = routing.run_routing_systems({"tenantnet": "tenantnet", "broken": "broken",
                                       "ovn": "ovn"}, sc)
    assert events == [("up", "tenantnet"), ("up", "broken"), ("down", "broken"), ("up", "ovn"),
                      ("dataplane", ("tenantnet", "ovn")), ("down", "ovn"),
                      ("down", "tenantnet")]
    assert out["tenantnet"]["dataplane"]["routed"] == [1.0]
    assert isinstance(out["broken"], RuntimeError)


class _System:
    """A system whose interface 0 is removed before each alternated add (recorded)."""

    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def remove_interface(self, router: str, k: int) -> None:
        self.calls.append(("remove", self.name, router, k))


def test_alternated_adds_take_turns_abba_each_from_a_removed_interface():
    """One add per system and round, the first system alternating (ABBA): measured one
    session after the other, the systems' adds were ~30 s apart and the machine's pace moved
    both by up to 2x between such stretches; each add starts with network 0's interface
    removed, and an error (a reply before the add) is kept for the report."""
    calls: list = []

    def measure(system, router, src, dst, n):
        assert n == 1 and (src, dst) == (f"{system.name}-vm1", f"{system.name}-rb")
        calls.append(("add", system.name, router))
        ms = 10.0 if system.name == "tenantnet" else 30.0
        out = {"ping_ms": [ms + len(calls)], "api_ms": [1.0]}
        if system.name == "ovn" and len(calls) > 10:
            out["error"] = "a reply came before the interface was added"
        return out

    sessions = {name: (_System(name, calls), f"r-{name}", f"{name}-vm1", f"{name}-rb")
                for name in ("tenantnet", "ovn")}
    out = routing.alternated_adds(sessions, 3, measure=measure)
    adds = [c[1] for c in calls if c[0] == "add"]
    assert adds == ["tenantnet", "ovn", "ovn", "tenantnet", "tenantnet", "ovn"]
    assert calls[:2] == [("remove", "tenantnet", "r-tenantnet", 0),
                         ("add", "tenantnet", "r-tenantnet")]
    assert [c[0] for c in calls] == ["remove", "add"] * 6
    assert len(out["tenantnet"]["ping_ms"]) == 3 and "error" not in out["tenantnet"]
    assert out["ovn"]["error"].startswith("a reply came before")


def test_run_routing_systems_alternates_the_adds_once_both_labs_are_up(monkeypatch):
    """With two systems up the alternated adds run after both sessions and before the data
    plane, each system's own router and probe VMs; their result lands in each system's run."""
    events: list = []

    @contextlib.contextmanager
    def session(system, sc):
        events.append(("up", system))
        yield {"router": f"r-{system}"}, (f"{system}-vm1", f"{system}-vm2", f"{system}-rb")
        events.append(("down", system))

    def alternated(sessions, rounds):
        events.append(("alternated", rounds, tuple(sorted(sessions.items()))))
        return {name: {"ping_ms": [1.0] * rounds, "api_ms": []} for name in sessions}

    monkeypatch.setattr(routing, "routing_session", session)
    monkeypatch.setattr(routing, "alternated_adds", alternated)
    sc = {"dataplane": False, "if_adds_alternated": 2}
    out = routing.run_routing_systems({"tenantnet": "tn", "ovn": "ov"}, sc)
    assert events[:3] == [("up", "tn"), ("up", "ov"), ("alternated", 2, (
        ("ovn", ("ov", "r-ov", "ov-vm1", "ov-rb")),
        ("tenantnet", ("tn", "r-tn", "tn-vm1", "tn-rb"))))]
    assert out["tenantnet"]["if_add_alternated"]["ping_ms"] == [1.0, 1.0]
    # one system alone: nothing to alternate with
    events.clear()
    routing.run_routing_systems({"tenantnet": "tn"}, sc)
    assert [e[0] for e in events] == ["up", "down"]


def test_the_alternated_row_carries_the_target_and_reads_old_results_as_missing():
    sc = {"name": "r", "role": "routing", "H": 3, "P": 30, "N": 3, "if_adds": 2,
          "if_adds_alternated": 2, "new_pairs": 1, "dataplane": False}
    tn, ovn = _run([300], [{}], [10.0], [5.0]), _run([1000], [{}], [40.0], [6.0])
    tn["if_add_alternated"] = {"ping_ms": [20.0, 24.0], "api_ms": []}
    ovn["if_add_alternated"] = {"ping_ms": [50.0, 40.0], "api_ms": []}
    results = {"params": {"scenarios": [sc]}, "raw": {"r": {"tenantnet": [tn], "ovn": [ovn]}}}
    label = ("add_router_interface -> first routed ping reply, adds alternated with the other "
             "system's, median")
    row = {r.label: r for r in report.routing_rows(results)}[label]
    assert row.ratio == pytest.approx(22 / 45) and row.target.result == "PASS"
    ovn["if_add_alternated"]["error"] = "a reply came before the interface was added"
    row = {r.label: r for r in report.routing_rows(results)}[label]
    assert row.ovn is None and row.target.result == "n/a"
    del tn["if_add_alternated"], ovn["if_add_alternated"]  # a results file from before
    row = {r.label: r for r in report.routing_rows(results)}[label]
    assert row.tenantnet is None and row.ovn is None
