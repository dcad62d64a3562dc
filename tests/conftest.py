"""Suite-wide: under CI a skipped real-OVS or Mininet test is a failure, not a quiet pass.

Tests that need root, Open vSwitch, OVN or Mininet (markers ``ovs`` and ``mininet``) skip on a
developer machine that lacks them.  In CI (``CI=true``, as CI services set it) the suite runs
after ``make test``'s bootstrap installed everything, so such a skip means the environment is
broken and the tests that prove the README's claims did not run: the report says so as a
failure with the skip's reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ENV_MARKERS = ("ovs", "mininet", "etcd")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[
    None, pytest.TestReport, pytest.TestReport
]:
    rep = yield
    if rep.skipped and in_ci() and any(item.get_closest_marker(m) for m in ENV_MARKERS):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, where it must run: {reason}"
    return rep


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[Any]:
    """A 3-member etcd cluster on free loopback ports for the whole session (Debian's
    etcd-server, installed by `make test`); each test takes its own key prefix."""
    from lab.etcd_cluster import ETCD, EtcdCluster

    if not os.path.exists(ETCD):
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    root = Path(tempfile.mkdtemp(prefix="tn-etcd-"))
    cluster = EtcdCluster(root / "1")
    try:
        cluster.start()
    except RuntimeError:  # a port taken between choosing and binding it: once more, new ports
        cluster = EtcdCluster(root / "2")
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _etcd_test_settings(cluster: Any, **settings: Any) -> Any:
    return cluster.client_settings(
        **{"prefix": f"/t-{uuid.uuid4().hex[:12]}/", "timeout_s": 1.0, **settings}
    )


@pytest.fixture
def etcd_settings_for() -> Callable[..., Any]:
    """``etcd_settings_for(cluster, **settings)``: `EtcdSettings` for a store on ``cluster``
    (`EtcdCluster.client_settings`: every member, its CA with TLS) under a key prefix of the
    test's own, with a 1 s timeout, and ``settings`` (e.g. credentials) on top: the shape of
    every etcd test's settings (`etcd_settings`, the auth tests' own cluster's)."""
    return _etcd_test_settings


@pytest.fixture
def etcd_settings(etcd_cluster: Any) -> Any:
    """Settings for a store on the session cluster under a prefix of this test's own."""
    return _etcd_test_settings(etcd_cluster)
