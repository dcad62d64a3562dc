"""The bench's statistics, PASS/MISS targets and table rendering (no lab needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.scenario import bulk_port
from bench.stats import across_runs, median, percentile, ratio, summary


def test_median_percentile_ignore_missing():
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 2, 3]) == 2.5
    assert median([None, "x", float("nan")]) is None
    assert percentile(range(1, 11), 90) == 9
    assert percentile([5], 90) == 5
    s = summary([1, None, 3, 2])
    assert (s["n"], s["min"], s["max"], s["median"]) == (3, 1, 3, 2)
    assert across_runs([10, 30, 20]) == {"median": 20, "min": 10, "max": 30, "runs": 3}
    assert ratio(1, 0) is None and ratio(None, 1) is None and ratio(1, 4) == 0.25


def test_bulk_port_layout_spreads_hosts_and_networks():
    specs = [bulk_port(i, 3, 4) for i in range(24)]
    assert {s[0] for s in specs} == {1, 2, 3}
    assert {s[1] for s in specs} == {0, 1, 2, 3}
    assert len({s[3] for s in specs}) == 24 and len({(s[1], s[4]) for s in specs}) == 24


def _run(ready, pps, flows, lost=0, fm=0):
    return {
        "lat_before": {"ready_ms": ready, "ping_ms": [r + 3 for r in ready], "flow_mods": [12]},
        "bulk": {"seconds": 1.0, "ports_per_s": pps},
        "flows": {"flows": flows, "groups": [4] * len(flows)},
        "rss_kb": {"a": 1024, "b": 1024},
        "restart": {"lost": lost, "max_gap_ms": 20, "flow_mods": fm, "fresh_flows": 0,
                    "reconcile_s": 1.0},
    }


def _results():
    sc = {"name": "m", "role": "main", "H": 3, "P": 60, "N": 4, "lat_before": 3,
          "restart": True}
    return {
        "started": 0,
        "machine": {"nproc": 2},
        "versions": {"tenantnet": "abc"},
        "params": {"quick": True, "scenarios": [sc], "iperf_seconds": 5},
        "raw": {
            "m": {"tenantnet": [_run([4, 5, 6], 900, [100, 110, 120]),
                                _run([5, 6, 7], 1100, [100, 110, 120])],
                  "ovn": [_run([10, 12, 14], 400, [1000, 1000, 1000], lost=3, fm=None)]},
            "dataplane": {"tenantnet": [900, 910, 920], "ovn": [800, 810, 820],
                          "baseline": [950, 940, 930]},
        },
    }


def test_rows_targets_and_ratios():
    rows = report.build_rows(_results())
    by = {r.label: r for r in rows}
    lat = by["(a) flows confirmed on host, median"]
    assert lat.tenantnet == {"median": 5.5, "min": 5, "max": 6, "runs": 2}
    assert lat.ratio == pytest.approx(5.5 / 12)
    assert lat.target.result == "PASS"  # 0.46 <= 0.5
    bulk = by["ports/s until all ready"]
    assert bulk.ratio == pytest.approx(2.5) and bulk.target.result == "PASS"
    assert by["flows per host (median of hosts)"].target.result == "PASS"
    assert by["pings lost"].target.result == "PASS"
    assert by["flow-mods sent after restart"].ovn is None
    dp = by["throughput across hosts"]
    assert dp.target.value == pytest.approx(910 / 940) and dp.target.result == "MISS"


def test_render_and_write(tmp_path):
    res = _results()
    rows = report.build_rows(res)
    text = report.render_text(rows)
    assert text.splitlines()[0].split() == ["measure", "tenantnet", "OVN", "tn/OVN", "target",
                                            "result"]
    assert "5.5 [5.0..6.0]" in text and "MISS" in text
    md = report.render_markdown(rows)
    assert md.startswith("| measure |")
    j, m, table = report.write_results(res, str(tmp_path))
    doc = json.loads(Path(j).read_text())
    assert doc["rows"] and doc["rows"][0]["result"] in ("PASS", "MISS")
    assert "tenantnet vs OVN" in Path(m).read_text()
    assert table == text


def test_a_bulk_scenario_without_a_latency_before_it_is_reported():
    """`--only h10-p1000` (a main scenario that measures latency after its bulk, not before):
    the bulk rows were named after a variable only measure 1's loop set (UnboundLocalError)."""
    res = _results()
    sc = res["params"]["scenarios"][0]
    del sc["lat_before"]
    by = {r.label: r for r in report.build_rows(res)}
    assert "(a) flows confirmed on host, median" not in by
    assert by["ports/s until all ready"].ratio == pytest.approx(2.5)
