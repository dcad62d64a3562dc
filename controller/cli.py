"""`tenantnet` console command: `tenantnet serve [options]` runs the controller."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

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


def serve(settings: config.Settings) -> int:
    from controller.service import Controller

    ctl = Controller(settings)
    stop = threading.Event()

    def _signal(signum: int, _frame: object) -> None:
        logging.getLogger("tenantnet").info("signal %d received", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    ctl.start()
    stop.wait()
    ctl.stop()
    logging.shutdown()
    # os-ken's hub threads are not daemons and do not stop on their own: leave now.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    # python-ovs imports eventlet only to detect it, and eventlet warns about itself on import.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    parser = argparse.ArgumentParser(prog="tenantnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the controller (REST API + OpenFlow + OVSDB)")
    config.add_arguments(p_serve)
    args = parser.parse_args(argv)
    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        parser.error(str(exc))
    _setup_logging(settings.log_level)
    if args.command == "serve":
        return serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
