"""`tenantnet` console command: `tenantnet serve [options]` runs the controller; `tenantnet
status`, `hosts`, `ports [--host H]`, `drift HOST` and `trace PORT --to-ip IP ...` ask a
running one through its REST API (controller/apiclient.py) and print tables, or one line
and exit code 1 on an error.
`tenantnet status` exits with NOT_READY_EXIT (2) when the controller answers but is not ready,
so that a script or a health check can wait on it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from urllib.parse import quote

from controller import config


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries that speak per message or per poll: keep them for debugging only.
    for noisy in ("os_ken", "ovsdbapp", "ovs", "uvicorn", "uvicorn.error", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # It logs an ERROR for every failed schema fetch; ovsdb_host says it once per outage.
    logging.getLogger("ovsdbapp.backend.ovs_idl.idlutils").setLevel(logging.CRITICAL)


NOT_READY_EXIT = 2
"""Exit code of `tenantnet status` when /readyz says the controller is not ready (1 stays
"could not ask": connection, TLS, HTTP errors)."""

STOP_GRACE_S = 2.0
"""SIGTERM/SIGINT stop the process within this time, whatever state it is in."""


def _exit_later(seconds: float) -> None:
    """Exit the process after ``seconds`` unless it exited before (a stop that hangs, e.g. a
    start-up still in progress, must not keep a SIGTERMed controller alive)."""

    def force() -> None:
        time.sleep(seconds)
        logging.getLogger("tenantnet").warning("stop took over %.1f s: exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=force, name="stop-deadline", daemon=True).start()


def _watch_signals(callback: Callable[[int], None]) -> None:
    """Call ``callback(signum)`` on SIGTERM/SIGINT from a thread of its own, at once.

    A Python signal handler runs only when the main thread returns to the interpreter, which a
    start-up stuck in C (SQLite waiting for a lock, a blocking connect) may not do for a long
    time.  The C-level handler always writes the signal number to the wake-up fd, and a thread
    blocked on it does not depend on the main thread at all.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)  # no default action: the watcher decides
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            for signum in os.read(read_fd, 64):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    callback(signum)

    threading.Thread(target=watch, name="signals", daemon=True).start()


def serve(settings: config.Settings) -> int:
    from controller.service import Controller

    log = logging.getLogger("tenantnet")
    ctl = Controller(settings)
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("signal %d received, stopping", signum)
            stop.set()
            _exit_later(STOP_GRACE_S)

    _watch_signals(on_signal)
    try:
        ctl.start()
    except Exception as exc:  # every failed start ends the process, with a one-line reason
        log.critical("tenantnet cannot start: %s", exc)
        log.debug("start-up failure", exc_info=True)
        logging.shutdown()
        # os-ken's hub threads (if it got that far) are not daemons: leave now.
        os._exit(1)
    stop.wait()
    ctl.stop()
    logging.shutdown()
    # os-ken's hub threads are not daemons and do not stop on their own: leave now.
    os._exit(0)


def _client_command(args: argparse.Namespace) -> int:
    """status / hosts / ports / drift: GETs and a table on stdout, or one line on stderr and 1;
    status of a controller that is not ready: its table, one line on stderr and NOT_READY_EXIT."""
    from controller import apiclient, cli_views

    not_ready: str | None = None
    try:
        client = apiclient.ApiClient(apiclient.resolve(args, os.environ))
        try:
            if args.command == "status":
                _, status = client.get("/tenantnet/status")
                code, ready = client.get("/readyz", ok=(200, 503, 404))
                print(cli_views.status_view(status, ready if code != 404 else None))
                if code == 503:  # 404: a server without /readyz, nothing to judge by
                    not_ready = str(ready.get("reason") or "no reason given")
            elif args.command == "drift":
                from controller.cli_drift import drift_view

                _, drift = client.get(f"/tenantnet/hosts/{quote(args.host, safe='')}/drift")
                print(drift_view(drift))
            elif args.command == "trace":
                from controller import cli_trace

                _, answer = client.post("/tenantnet/trace", cli_trace.request_body(args))
                print(cli_trace.trace_view(answer["trace"], flows=args.flows))
            elif args.command == "hosts":
                _, hosts = client.get("/v2.0/hosts")
                _, status = client.get("/tenantnet/status")
                print(cli_views.hosts_view(hosts["hosts"], status))
            else:
                params = {}
                if args.host is not None:
                    client.get(f"/v2.0/hosts/{quote(args.host, safe='')}")  # 404: no such host
                    params["binding:host_id"] = args.host
                _, ports = client.get("/v2.0/ports", params=params)
                _, nets = client.get("/v2.0/networks", params={"fields": ["id", "name"]})
                names = {n["id"]: n.get("name") or "" for n in nets["networks"]}
                print(cli_views.ports_view(ports["ports"], names))
        finally:
            client.close()
    except apiclient.CliError as exc:
        print(f"tenantnet {args.command}: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError) as exc:
        print(
            f"tenantnet {args.command}: unexpected answer from the API ({type(exc).__name__}:"
            f" {exc})",
            file=sys.stderr,
        )
        return 1
    if not_ready is not None:
        print(f"tenantnet {args.command}: controller not ready: {not_ready}", file=sys.stderr)
        return NOT_READY_EXIT
    return 0


# the etcd settings `store-copy` takes (as flags only: it reads no config file)
COPY_SETTINGS = ("etcd_prefix", "etcd_timeout_s", "etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key",
                 "etcd_user", "etcd_password_file")  # fmt: skip


def _store_copy(args: argparse.Namespace) -> int:
    """SQLite -> etcd or etcd -> SQLite (`controller.store.transfer`); one line on failure."""
    from controller.store import StoreError, transfer
    from controller.store.etcd_log import EtcdUnavailable

    from_etcd, to_etcd = (p.startswith("etcd://") for p in (args.source, args.target))
    if from_etcd == to_etcd:
        print("tenantnet store-copy: one side must be etcd://..., one a file", file=sys.stderr)
        return 2
    extra = {n: getattr(args, n) for n in COPY_SETTINGS if getattr(args, n) is not None}
    url = args.source if from_etcd else args.target
    try:
        settings = config.load(argparse.Namespace(store=url, **extra), environ={})
        etcd = settings.etcd
        assert etcd is not None
        if to_etcd:
            size = transfer.sqlite_to_etcd(args.source, etcd, replace=args.replace)
            print(f"copied {args.source} into {url} (prefix {etcd.prefix}, {size} bytes)")
        else:
            transfer.etcd_to_sqlite(etcd, args.target, replace=args.replace)
            print(f"copied {url} (prefix {etcd.prefix}) into {args.target}")
    except (config.ConfigError, ValueError, EtcdUnavailable, StoreError) as exc:
        print(f"tenantnet store-copy: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    # python-ovs imports eventlet only to detect it, and eventlet warns about itself on import;
    # its DNS support imports dnspython, whose DSA code warns at import under cryptography >= 51
    # (16 lines at every start, about code tenantnet never runs).
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    warnings.filterwarnings("ignore", module=r"dns\.")
    parser = argparse.ArgumentParser(prog="tenantnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the controller (REST API + OpenFlow + OVSDB)")
    config.add_arguments(p_serve)
    from controller import apiclient

    for name, help_text in (
        ("status", "hosts, flows and readiness of a running controller"),
        ("hosts", "registered hosts with their state and flow counts"),
        ("ports", "ports with their network, addresses, host and status"),
        ("drift", "how a host's switch differs from the desired state (changes nothing)"),
    ):
        p = sub.add_parser(name, help=help_text)
        apiclient.add_arguments(p)
        if name == "ports":
            p.add_argument("--host", help="only the ports bound to this host")
        if name == "drift":
            p.add_argument("host", help="the host's id")
    p_trace = sub.add_parser("trace", help="follow a packet from a port, in tenant terms")
    apiclient.add_arguments(p_trace)
    from controller import cli_trace

    cli_trace.add_arguments(p_trace)
    p_copy = sub.add_parser(
        "store-copy",
        help="copy a store between SQLite and etcd (every instance stopped; see docs/ha.md)",
    )
    p_copy.add_argument("source", help="a SQLite store file, or etcd://HOST:PORT,...")
    p_copy.add_argument("target", help="etcd://HOST:PORT,..., or a SQLite store file")
    p_copy.add_argument("--replace", action="store_true", help="overwrite an existing target")
    for name in COPY_SETTINGS:
        p_copy.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    args = parser.parse_args(argv)
    if args.command == "store-copy":
        return _store_copy(args)
    if args.command != "serve":
        return _client_command(args)
    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        # one line naming the setting (argparse's error would print the usage first)
        print(f"tenantnet serve: error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    for flag in config.secrets_on_command_line(args):
        logging.getLogger("tenantnet").warning(
            "%s is visible to every local user (ps); prefer %s-file or the environment",
            flag,
            flag,
        )
    if args.command == "serve":
        return serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
