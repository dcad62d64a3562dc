"""controller/limits: the open-files limit is raised at start, as far as the hard limit allows."""

from __future__ import annotations

import resource
import subprocess
import sys

CHILD = (
    "import resource; from controller.limits import raise_fd_limit; "
    "got = raise_fd_limit(); "
    "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def _run_with(soft: int, hard: int) -> tuple[int, int]:
    """raise_fd_limit in a child started with these limits (what an init system hands us)."""
    cmd = ["prlimit", f"--nofile={soft}:{hard}", sys.executable, "-c", CHILD]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    assert _run_with(100, 4096) == (4096, 4096)


def test_a_hard_limit_is_respected_and_reported() -> None:
    assert _run_with(100, 100) == (100, 100)


def test_never_above_the_target() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # as high as this test may go
    got, soft = _run_with(100, hard)
    assert got == soft == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536))
