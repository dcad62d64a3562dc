"""The pure parts of the bench's clustered scenario (issue 18, bench/ha.py): its plan and the
report's rows (the tenantnet column on etcd, the SQLite rows from the same runs, the target on
port-ready vs OVN clustered, failover figures per kind)."""

from __future__ import annotations

import argparse

from bench import report, run
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
    assert "runs" not in full and "lat_before" not in full and "lat_after" not in full
    (quick,) = _ha(_args(quick=True))
    assert (quick["P"], quick["runs"]) == (60, 1)
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
