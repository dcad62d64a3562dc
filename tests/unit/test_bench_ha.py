"""The pure parts of the bench's clustered scenario (issue 18, bench/ha.py): its plan and the
report's rows (the tenantnet column on etcd, the SQLite rows from the same runs, the target on
port-ready vs OVN clustered, failover figures per kind)."""

from __future__ import annotations

import argparse
import contextlib

from bench import ha, report, run
from bench.sut_ha import OvnClusteredSystem


def _args(**kw: object) -> argparse.Namespace:
    base = {"smoke": False, "quick": False, "no_scaling": True, "no_dhcp": True,
            "no_sg": True, "no_routing": True, "no_ha": False, "routing_dataplane": False,
            "dhcp_window": None, "sg_dataplane": False, "ports": None,
            "ha_latency_only": False}
    return argparse.Namespace(**{**base, **kw})


def _ha(args: argparse.Namespace) -> list[dict]:
    return [sc for sc in run.plan(args) if sc["role"] == "ha"]


def test_plan_full_and_quick_not_smoke():
    (full,) = _ha(_args())
    assert (full["name"], full["H"], full["P"], full["lat"]) == ("ha-h3", 3, 150, 10)
    assert full["lat_alternated"] == 10
    assert "runs" not in full and "lat_before" not in full and "lat_after" not in full
    (quick,) = _ha(_args(quick=True))
    assert (quick["P"], quick["runs"], quick["lat_alternated"]) == (60, 1, 5)
    assert _ha(_args(smoke=True)) == []  # the smoke bench stays short
    assert _ha(_args(no_ha=True)) == []
    (lat_only,) = _ha(_args(ha_latency_only=True))  # --ha-latency-only: the A/B of port-ready
    assert lat_only["latency_only"] and "latency_only" not in full


def _run(ready, api, pps, recovered, port_s, lost, sqlite_ready=None):
    r = {"lat": {"ready_ms": ready, "ping_ms": ready, "api_ms": api, "cpu_ms": [10, 20]},
         "bulk": {"ports_per_s": pps}}
    for kind in ("control", "store"):
        r[f"failover_{kind}"] = {"recovered_s": recovered, "port_ready_s": port_s,
                                 "lost": lost, "max_gap_ms": 50}
    if sqlite_ready:
        r["sqlite"] = {"lat": {"ready_ms": sqlite_ready, "ping_ms": sqlite_ready,
                               "api_ms": [1.0], "cpu_ms": [5]}, "bulk": {"ports_per_s": 900}}
    return r


def test_rows_compare_etcd_and_sqlite_with_ovn_clustered():
    sc = {"name": "ha-h3", "role": "ha", "H": 3, "P": 150, "N": 3, "lat": 10}
    results = {"params": {"scenarios": [sc]}, "raw": {"ha-h3": {
        "tenantnet": [_run([30, 40], [20], 300, 2.5, 2.6, 0, sqlite_ready=[10, 12])],
        "ovn": [_run([100, 120], [], 200, 0.1, None, 2)],
    }}}
    rows = report.ha_rows(results)
    by = {}
    for i, r in enumerate(rows):  # a SQLite row follows the etcd row it repeats
        by[r.label if not r.label.startswith("  the same") else rows[i - 1].label + " sqlite"] = r
    ready = by["port create -> ready, median"]
    assert ready.tenantnet["median"] == 35 and ready.ovn["median"] == 110
    assert ready.target.result == "PASS"  # 35 / 110 <= 0.5
    assert by["port create -> ready, median sqlite"].tenantnet["median"] == 11
    assert by["port create -> ready, median sqlite"].ovn["median"] == 110
    assert by["API create (POST answered), median"].ovn is None  # OVN has no POST
    assert by["bulk 150 ports sqlite"].tenantnet["median"] == 900
    recovered = [r for r in rows if r.label.endswith(": recovered")]
    assert len(recovered) == 2 and recovered[0].ratio == 25
    ready_after = [r for r in rows if "right after the kill" in r.label]
    assert ready_after[0].ovn is None  # a port that never became ready is n/a, not 0


def test_ovn_clustered_names_every_member():
    ovn = OvnClusteredSystem.__new__(OvnClusteredSystem)
    ovn.central = "/c"
    assert ovn.nb_db == "unix:/c/nb0.sock,unix:/c/nb1.sock,unix:/c/nb2.sock"
    assert ovn.sb_db.count("unix:/c/sb") == 3
    assert len(OvnClusteredSystem.central_procs) == 8  # 2 northd + 2 x 3 members


class _Up:
    """A clustered system for `ha.alternated_latency`: its start and stop recorded."""

    def __init__(self, name: str, events: list, fail: bool = False) -> None:
        self.name, self.events, self.fail = name, events, fail


def test_alternated_latency_takes_turns_abba_with_both_systems_up(monkeypatch):
    """Both systems are up (and their VMs plugged) before the first create; then one create
    per system and round, the first system alternating (ABBA), each on the system's next
    plugged VM; both are torn down at the end.  A system that fails to start gets its error
    and the other's figures stand; one failing mid-way keeps what it measured."""
    events: list = []

    @contextlib.contextmanager
    def fresh(system, sc):
        if system.fail:
            raise RuntimeError(f"{system.name} did not start")
        events.append(("up", system.name))
        yield {}
        events.append(("down", system.name))

    def plug(system, vms, n):
        events.append(("plugged", system.name, n))
        return [f"{system.name}-lat{i}" for i in range(1, n + 1)]

    monkeypatch.setattr(ha, "fresh_system", fresh)
    monkeypatch.setattr(ha, "setup_base", lambda system, n: [f"{system.name}-vm1"])
    monkeypatch.setattr(ha, "plug_latency_vms", plug)

    def measure(system, vm1, vm, out):
        assert vm1 == f"{system.name}-vm1"
        events.append(("create", vm))
        out["ready_ms"].append(10.0 if system.name == "tn" else 30.0)

    sc = {"lat_alternated": 3, "N": 3}
    out = ha.alternated_latency({"tn": _Up("tn", events), "ov": _Up("ov", events)}, sc,
                                measure=measure)
    assert events == [("up", "tn"), ("plugged", "tn", 3), ("up", "ov"), ("plugged", "ov", 3),
                      ("create", "tn-lat1"), ("create", "ov-lat1"), ("create", "ov-lat2"),
                      ("create", "tn-lat2"), ("create", "tn-lat3"), ("create", "ov-lat3"),
                      ("down", "ov"), ("down", "tn")]
    assert out["tn"]["ready_ms"] == [10.0] * 3 and out["ov"]["ready_ms"] == [30.0] * 3
    assert "error" not in out["tn"]

    events.clear()
    out = ha.alternated_latency({"tn": _Up("tn", events), "ov": _Up("ov", events, fail=True)},
                                sc, measure=measure)
    assert out["ov"]["error"].startswith("RuntimeError") and not out["ov"]["ready_ms"]
    assert out["tn"]["ready_ms"] == [10.0] * 3


def test_the_alternated_ready_row_carries_the_target_and_reads_old_results_as_missing():
    sc = {"name": "ha-h3", "role": "ha", "H": 3, "P": 150, "N": 3, "lat": 10,
          "lat_alternated": 2}
    tn, ovn = _run([30, 40], [20], 300, 2.5, 2.6, 0), _run([100, 120], [], 200, 0.1, 0.2, 0)
    tn["lat_alternated"] = {"ready_ms": [20.0, 24.0]}
    ovn["lat_alternated"] = {"ready_ms": [50.0, 40.0]}
    label = "port create -> ready, creates alternated with the other system's, median"

    def row(runs):
        results = {"params": {"scenarios": [sc]}, "raw": {"ha-h3": runs}}
        (found,) = [r for r in report.ha_rows(results) if r.label == label]
        return found

    alt = row({"tenantnet": [tn], "ovn": [ovn]})
    assert (alt.tenantnet["median"], alt.ovn["median"]) == (22, 45)
    assert alt.target.result == "PASS"  # 22 / 45 <= 0.5
    old = row({"tenantnet": [_run([30], [20], 300, 2.5, 2.6, 0)],
               "ovn": [_run([100], [], 200, 0.1, 0.2, 0)]})
    assert old.tenantnet is None and old.ovn is None  # results from before: n/a
    ovn["lat_alternated"]["error"] = "RuntimeError('ovn did not start')"
    assert row({"tenantnet": [tn], "ovn": [ovn]}).ovn is None
