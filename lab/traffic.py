"""Traffic helpers that run inside a network namespace: ping, background ping, tcpdump, TCP."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from .proc import CommandError, base_env, log, ns_cmd, read_pidfile, run, terminate

_STATS_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_REPLY_RE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")


class PingResult(NamedTuple):
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


class PingStats(NamedTuple):
    sent: int
    received: int
    max_gap_ms: float  # longest time without a reply (between replies, or last reply -> stop)

    @property
    def lost(self) -> int:
        return self.sent - self.received


def parse_ping_stats(text: str) -> tuple[int, int] | None:
    m = _STATS_RE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ping(ns: str, ip: str, count: int = 3, interval: float = 0.2, timeout: float = 2) -> PingResult:
    """Send ``count`` echo requests from namespace ``ns``; returns (sent, received)."""
    cmd = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{timeout:g}", ip]
    cp = run(*cmd, ns=ns, check=False, timeout=count * interval + timeout + 10)
    stats = parse_ping_stats(cp.stdout)
    if stats is None:
        raise CommandError(ns_cmd(ns, cmd), cp.returncode, cp.stdout, cp.stderr)
    return PingResult(*stats)


class BackgroundPing:
    """``ping -D -i interval`` running in the background; ``stop()`` returns PingStats."""

    def __init__(self, ns: str, ip: str, interval: float, outfile: str):
        self.ns, self.ip, self.interval, self.outfile = ns, ip, interval, outfile
        self._out = open(outfile, "w")  # noqa: SIM115 - closed in stop()
        cmd = ns_cmd(ns, ["ping", "-n", "-D", "-i", f"{interval:g}", "-W", "1", ip])
        log.debug("start: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=base_env())
        self.started = time.time()
        self.result: PingStats | None = None

    def stop(self) -> PingStats:
        if self.result is not None:
            return self.result
        stopped = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        with open(self.outfile) as f:
            text = f.read()
        stats = parse_ping_stats(text)
        if stats is None:
            raise CommandError(self.proc.args, self.proc.returncode, text, "")
        replies = [m for m in map(_REPLY_RE.match, text.splitlines()) if m]
        stamps = [float(m.group(1)) for m in replies]
        sent, received = stats
        # SIGINT can land while the last echo is on the wire: ping then counts it as lost.  Only
        # that one probe is forgiven, and only when the last reply is recent, so a real outage
        # at the end still counts (and shows in max_gap_ms).
        last_seq = max((int(m.group(2)) for m in replies), default=0)
        if (sent - received == 1 and last_seq == sent - 1 and stamps
                and stopped - stamps[-1] < 2 * self.interval + 0.05):
            sent -= 1
        points = [self.started, *stamps, stopped]
        gap = max(b - a for a, b in itertools.pairwise(points)) if stamps else (
            stopped - self.started)
        self.result = PingStats(sent, received, round(gap * 1000, 1))
        return self.result

    close = stop


class Capture:
    """tcpdump running in a namespace. Started (and listening) when the constructor returns.

    ``wait()`` returns the output lines once ``count`` packets were seen or ``timeout`` passed.
    Output is ``tcpdump -l -n -e -vv`` so VXLAN shows ``vni N`` and GRE ``key=0x...``.
    """

    def __init__(self, ns: str, iface: str, outfile: str, bpf: str = "", count: int = 10,
                 timeout: float = 5, extra_args: tuple[str, ...] = ("-e", "-vv")):
        self.ns, self.iface, self.outfile, self.count = ns, iface, outfile, count
        self._out = open(outfile, "w")  # noqa: SIM115 - closed in stop()
        self._errfile = outfile + ".err"
        self._err = open(self._errfile, "w")  # noqa: SIM115
        cmd = ["tcpdump", "-l", "-n", *extra_args, "-i", iface, "-c", str(count)]
        if bpf:
            cmd.append(bpf)
        self.cmd = ns_cmd(ns, cmd)
        log.debug("start: %s", " ".join(self.cmd))
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=base_env())
        self.deadline = time.monotonic() + timeout
        self._lines: list[str] | None = None
        # wait until tcpdump really listens, so the caller can send traffic right away
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            with open(self._errfile) as f:
                if "listening on" in f.read():
                    return
            time.sleep(0.02)
        self.stop()
        with open(self._errfile) as f:
            err = f.read()
        raise CommandError(self.cmd, self.proc.returncode, "", err or "tcpdump did not start")

    def wait(self) -> list[str]:
        """Wait for ``count`` packets or the timeout, stop tcpdump and return its output lines."""
        if self._lines is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(max(0.0, self.deadline - time.monotonic()))
            self.stop()
        return self._lines or []

    lines = wait

    @property
    def text(self) -> str:
        return "\n".join(self.wait())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        if self._lines is None:
            with open(self.outfile) as f:
                self._lines = f.read().splitlines()

    close = stop

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("READY", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3])); n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    n += len(b)
print(n, flush=True)
"""

_CLIENT = r"""
import socket, sys
n = int(sys.argv[3]); buf = b"x" * (1 << 16)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
while n > 0:
    k = c.send(buf[:min(n, len(buf))]); n -= k
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def tcp_transfer(client_ns: str, server_ns: str, server_ip: str, nbytes: int, port: int = 5001,
                 timeout: float = 20) -> int:
    """Send ``nbytes`` over one TCP connection; returns the byte count the server received."""
    py = sys.executable or "python3"
    scmd = ns_cmd(server_ns, [py, "-c", _SERVER, server_ip, str(port), str(timeout)])
    log.debug("start: tcp server in %s on %s:%d", server_ns, server_ip, port)
    srv = subprocess.Popen(scmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL, env=base_env())
    try:
        line = srv.stdout.readline() if srv.stdout else ""
        if line.strip() != "READY":
            srv.wait(5)
            raise CommandError(scmd, srv.returncode, line, srv.stderr.read() if srv.stderr else "")
        run(py, "-c", _CLIENT, server_ip, str(port), str(nbytes), str(timeout), ns=client_ns,
            timeout=timeout + 5)
        out, err = srv.communicate(timeout=timeout)
        if srv.returncode != 0:
            raise CommandError(scmd, srv.returncode, out, err)
        return int(out.split()[-1])
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait(5)


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: float = 2, port: int = 5201,
          workdir: str = "/tmp") -> float:
    """iperf3 TCP throughput client -> server in Mbit/s (receiver side)."""
    pidfile = os.path.join(workdir, f"iperf3-{server_ns}-{port}.pid")
    run("iperf3", "-s", "-D", "-1", "-B", server_ip, "-p", str(port), "--pidfile", pidfile,
        ns=server_ns, timeout=10)
    try:
        for _ in range(50):  # -D returns before the socket listens
            if os.path.exists(pidfile):
                break
            time.sleep(0.02)
        time.sleep(0.1)
        cp = run("iperf3", "-c", server_ip, "-p", str(port), "-t", f"{seconds:g}", "-J",
                 "--connect-timeout", "3000", ns=client_ns, timeout=seconds + 15)
        data = json.loads(cp.stdout)
        return round(data["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
    finally:
        pid = read_pidfile(pidfile)
        if pid:
            terminate([pid], grace=1)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
