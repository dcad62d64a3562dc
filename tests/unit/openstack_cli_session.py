"""One long-lived process that runs the real, unmodified ``openstack`` CLI once per command.

Starting ``openstack`` costs seconds (imports and entry-point discovery) and the suite ran it
~50 times.  This process pays that once: it imports ``openstackclient.shell`` and, for each
JSON line ``[arg, ...]`` on stdin, calls its ``main(argv)`` - exactly what the ``openstack``
console script does - with stdout and stderr captured, and answers one JSON line
``{"rc", "stdout", "stderr"}``.  Each command builds its own shell, client manager and HTTP
session, as a new process would; the root logger's handlers (osc-lib adds a console handler
per run) are put back after each.  Run as ``python tests/unit/openstack_cli_session.py``
(standard library and openstackclient only).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import select
import subprocess
import sys
import warnings
from collections.abc import Mapping
from typing import Any


def serve() -> None:
    from openstackclient import shell

    out = sys.stdout
    sys.argv[:] = ["openstack"]  # as the console script sets it: the name in usage and errors
    for line in sys.stdin:
        argv = json.loads(line)
        stdout, stderr = io.StringIO(), io.StringIO()
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                rc = shell.main(argv)
            except SystemExit as exc:  # argparse errors, --help
                rc = exc.code if isinstance(exc.code, int) else 1
        root.handlers[:], root.level = handlers, level
        out.write(json.dumps({"rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}))
        out.write("\n")
        out.flush()


class CliSession:
    """The process above, started with ``env``; ``run(argv)`` -> CompletedProcess."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(env),
        )

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired(argv, timeout)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"openstack CLI session exited ({self.proc.wait()}) on {argv}")
        answer: dict[str, Any] = json.loads(line)
        return subprocess.CompletedProcess(
            ["openstack", *argv], answer["rc"], answer["stdout"], answer["stderr"]
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    # The clients warn about their own deprecations; a stray warning on stderr is not an answer.
    warnings.simplefilter("ignore")
    serve()
