"""Smoke test of the benchmark: a tiny bench (H=2, P=10, one run) produces its table and files.

The real bench (`make bench` / `make bench-quick`) never runs in `make test`; this only checks
that `python -m bench.run` still works end to end against the current controller and OVN.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.common import OVN_LAB, REPO, TN_LAB
from bench.sut_ovn import ovn_installed
from tests.harness.cleanup import LabLock

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(120)]


def _labs_free() -> bool:
    for prefix in (TN_LAB["prefix"], OVN_LAB["prefix"]):
        lock = LabLock(prefix)
        if not lock.acquire(0):
            return False
        lock.release()
    return True


@pytest.mark.skipif(not ovn_installed(), reason="OVN not installed (TENANTNET_WITH_OVN=1 "
                    "bash scripts/bootstrap.sh)")
def test_bench_smoke(tmp_path):
    if not _labs_free():
        pytest.skip("a bench is running (its lab prefixes tnb/tno are taken)")
    t0 = time.monotonic()
    cp = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )
    elapsed = time.monotonic() - t0
    out = cp.stdout
    assert cp.returncode in (0, 1), f"bench crashed ({cp.returncode}):\n{out}\n{cp.stderr[-3000:]}"
    assert "measure" in out and "tenantnet" in out and "OVN" in out, out
    files = sorted(p.name for p in tmp_path.iterdir())
    jsons = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    mds = [p for p in tmp_path.iterdir() if p.suffix == ".md"]
    assert len(jsons) == 1 and len(mds) == 1, files
    doc = json.loads(jsons[0].read_text())
    for key in ("machine", "versions", "params", "raw", "rows"):
        assert key in doc, key
    labels = " ".join(r["label"] for r in doc["rows"])
    assert "ports/s" in labels and "flows per host" in labels, labels
    assert "| measure |" in mds[0].read_text()
    assert elapsed < 90, f"smoke bench took {elapsed:.0f} s"
