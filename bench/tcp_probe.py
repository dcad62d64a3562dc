"""TCP helpers run inside VM namespaces by the security-group bench (`bench.secgroups`).

* ``serve IP PORT [PORT ...]``: accept and close connections on each port until stdin closes
  (prints ``READY`` once listening).
* ``first-success IP:PORT [IP:PORT ...]``: from a ``go`` line on stdin on, try to connect to
  every target again and again (a new non-blocking connect every ``--every`` s, since a
  dropped SYN would otherwise wait for the kernel's 1 s retransmission) and print, as JSON,
  the wall-clock time of each target's first established connection (None if none within
  ``--timeout``).  The bench times a rule create -> enforced on every host with it.
* ``rate IP PORT --seconds S --threads T``: open and close connections as fast as the
  threads can for S seconds; prints JSON ``{"connections": n, "failed": f, "seconds": s}``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time


def serve(ip: str, ports: list[int]) -> None:
    socks = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(1024)
        s.setblocking(False)
        socks.append(s)
    print("READY", flush=True)
    while True:
        ready, _, _ = select.select([*socks, sys.stdin], [], [], 1.0)
        if sys.stdin in ready and not sys.stdin.readline():
            return
        for s in ready:
            if s is sys.stdin:
                continue
            while True:
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    break
                c.close()


def _connects(ip: str, port: int, timeout: float) -> bool:
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _first_connect(ip: str, port: int, every: float, give_up: float) -> float | None:
    """Start a non-blocking connect every ``every`` s (each lives 1 s: a dropped SYN is not
    waited for) until one is established; its wall-clock time, or None at ``give_up``."""
    pending: list[tuple[socket.socket, float]] = []
    next_try = 0.0
    try:
        while time.time() < give_up:
            now = time.time()
            if now >= next_try:
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect((ip, port))
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    s = None  # type: ignore[assignment]
                if s is not None:
                    pending.append((s, now))
                next_try = now + every
            for s, born in list(pending):
                if now - born > 1.0:
                    s.close()
                    pending.remove((s, born))
            _, writable, _ = select.select([], [s for s, _ in pending], [],
                                           max(0.0, next_try - time.time()))
            for s in writable:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    return time.time()
                pending[:] = [(x, b) for x, b in pending if x is not s]
                s.close()
        return None
    finally:
        for s, _ in pending:
            s.close()


def first_success(targets: list[str], every: float, timeout: float) -> dict[str, object]:
    sys.stdin.readline()  # "go"
    t0 = time.time()
    found: dict[str, float | None] = dict.fromkeys(targets)

    def probe(target: str) -> None:
        ip, port = target.rsplit(":", 1)
        found[target] = _first_connect(ip, int(port), every, t0 + timeout)

    threads = [threading.Thread(target=probe, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"start": t0, "first": found}


def rate(ip: str, port: int, seconds: float, threads: int) -> dict[str, object]:
    counts = [0] * threads
    failed = [0] * threads
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < end:
            if _connects(ip, port, 1.0):
                counts[i] += 1
            else:
                failed[i] += 1

    t0 = time.monotonic()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"connections": sum(counts), "failed": sum(failed),
            "seconds": round(time.monotonic() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tcp_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("ip")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("first-success")
    p.add_argument("targets", nargs="+")
    p.add_argument("--every", type=float, default=0.01, help="s between connect attempts")
    p.add_argument("--timeout", type=float, default=30)
    p = sub.add_parser("rate")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.ip, args.ports)
    elif args.cmd == "first-success":
        print(json.dumps(first_success(args.targets, args.every, args.timeout)),
              flush=True)
    else:
        print(json.dumps(rate(args.ip, args.port, args.seconds, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
