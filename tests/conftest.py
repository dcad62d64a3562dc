"""Suite-wide: under CI a skipped real-OVS or Mininet test is a failure, not a quiet pass.

Tests that need root, Open vSwitch, OVN or Mininet (markers ``ovs`` and ``mininet``) skip on a
developer machine that lacks them.  In CI (``CI=true``, as CI services set it) the suite runs
after ``make test``'s bootstrap installed everything, so such a skip means the environment is
broken and the tests that prove the README's claims did not run: the report says so as a
failure with the skip's reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

ENV_MARKERS = ("ovs", "mininet")


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
