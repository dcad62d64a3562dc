"""Smoke test of the benchmark machinery: a tiny bench (H=2, P=10, one run) runs both systems
end to end and writes its table and files.

What it asserts is that the machinery works: the run exits 0 (no scenario raised, no bulk create
failed), every scenario has its run of tenantnet *and* of OVN, and the files hold
what bench/README.md says.  It does not assert the bench's targets: at these sizes a PASS or MISS
says nothing, and speed goals are measured by ``make bench``, not by timed tests.  OVN is
installed by ``scripts/bootstrap.sh`` (behind ``make test``); without it this test skips, which
under ``CI=true`` counts as a failure (tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import OVN_LAB, REPO, TN_LAB
from bench.sut_ovn import ovn_installed
from lab.cleanup import LabLock

# A hang guard only (the smoke bench takes about a minute here), not a speed check.
pytestmark = [pytest.mark.ovs, pytest.mark.timeout(600)]


def _labs_free() -> bool:
    for prefix in (TN_LAB["prefix"], OVN_LAB["prefix"]):
        lock = LabLock(prefix)
        if not lock.acquire(0):
            return False
        lock.release()
    return True


@pytest.mark.skipif(not ovn_installed(), reason="OVN not installed (bash scripts/bootstrap.sh)")
def test_bench_smoke(tmp_path):
    if not _labs_free():
        pytest.skip("a bench is running (its lab prefixes tnb/tno are taken)")
    cp = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=570,
    )  # fmt: skip
    out = cp.stdout
    assert cp.returncode == 0, f"bench failed ({cp.returncode}):\n{out}\n{cp.stderr[-3000:]}"
    assert "measure" in out and "tenantnet" in out and "OVN" in out, out
    files = sorted(p.name for p in tmp_path.iterdir())
    jsons = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    mds = [p for p in tmp_path.iterdir() if p.suffix == ".md"]
    assert len(jsons) == 1 and len(mds) == 1, files
    doc = json.loads(jsons[0].read_text())
    for key in ("machine", "versions", "params", "raw", "rows"):
        assert key in doc, key
    assert doc["errors"] == [], doc["errors"]
    assert doc["params"]["smoke"] is True
    labels = " ".join(r["label"] for r in doc["rows"])
    assert "ports/s" in labels and "flows per host" in labels, labels
    # issue 15's scenario ran too: both systems answered udhcpc and the renewal load
    assert "DISCOVER -> ACK" in labels and "renewals answered" in labels, labels
    for system in ("tenantnet", "ovn"):
        (run,) = doc["raw"]["dhcp-arp-h2"][system]
        assert run["lease"]["total"], (system, run["lease"])
        assert run["load"]["acks"] > 0, (system, run["load"])
    # issue 14's scenario: on both systems the probe was blocked, then let in after the rule
    for system in ("tenantnet", "ovn"):
        (run,) = doc["raw"]["sg-h2-p4"][system]
        assert "error" not in run["rule"], (system, run["rule"])
        assert None not in run["rule"]["enforced_s"], (system, run["rule"])
    # issue 16's scenario: on both systems the interface added let the ping through, and a new
    # pair of VMs across the router reached each other
    for system in ("tenantnet", "ovn"):
        (run,) = doc["raw"]["routing-h2-p4"][system]
        assert "error" not in run["if_add"], (system, run["if_add"])
        assert run["if_add"]["ping_ms"] and None not in run["if_add"]["ping_ms"], (system, run)
        assert None not in run["pairs"]["ping_ms"], (system, run["pairs"])
    for sc in doc["params"]["scenarios"]:
        raw = doc["raw"][sc["name"]]
        assert len(raw["tenantnet"]) == 1 and len(raw["ovn"]) == 1, (sc["name"], raw)
    assert "| measure |" in mds[0].read_text()
