"""Integration tests: emulated hypervisors (lab/hypervisors.py). Needs root and Open vSwitch.

Fixtures:
    make_lab(n_hosts=3, **Lab kwargs) -> Lab      started; closed at the end of the test
    make_module_lab(...)                           same, closed at the end of the module
    lab                                            a started 3-hypervisor Lab (per test)
    pki                                            an ovs-pki PKI (session): TLS labs and
                                                   controllers, see lab/pki.py

Unless ``prefix`` is given, a lab gets the first free "slot" of ``lab/plans.py``: prefix ``tn``
with mgmt 10.251.0.254/24, then ``tn1`` with 10.251.1.254/24, ... (``TENANTNET_LAB_PREFIX``
changes the base). Tests therefore must use ``lab.mgmt_ip`` / ``hv.mgmt_ip`` rather than literal
addresses.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal

import pytest

from lab import plans
from lab.hypervisors import SCHEMA, Lab, LabBusy
from lab.pki import Pki
from lab.proc import base_env

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRED = ("ip", "ovs-pki", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl",
            "ovs-appctl", "tcpdump", "ethtool", "ping")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, veths, OVS daemons)"
    path = base_env()["PATH"]
    missing = [b for b in REQUIRED if shutil.which(b, path=path) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/bootstrap.sh installs them)"
    if not os.path.exists(SCHEMA):
        return f"missing {SCHEMA} (openvswitch-switch not installed)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the OVS userspace datapath needs it for internal ports)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    for item in items:
        if not str(item.path).startswith(HERE + os.sep):
            continue
        item.add_marker(pytest.mark.ovs)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


class LabFactory:
    """Creates started labs, each in a free prefix/mgmt slot, and closes them all."""

    def __init__(self):
        self.labs: list[Lab] = []

    def __call__(self, n_hosts: int = 3, **kw) -> Lab:
        _install_signal_safety_net()
        if "prefix" in kw:
            lab = Lab(n_hosts, **kw).start()
        else:
            base = os.environ.get("TENANTNET_LAB_PREFIX", plans.SLOT_BASE)
            lab = None
            for i in range(plans.SLOT_COUNT):
                try:
                    lab = Lab(n_hosts, **{**plans.slot(i, base).lab_kwargs(), **kw}).start()
                    break
                except LabBusy:
                    continue
            if lab is None:
                pytest.fail(f"no free lab slot ({base}..{base}{plans.SLOT_COUNT - 1} all busy)")
        self.labs.append(lab)
        _live.append(lab)
        return lab

    def close_all(self, node=None) -> None:
        failed = node is not None and getattr(getattr(node, "rep_call", None), "failed", False)
        while self.labs:
            lab = self.labs.pop()
            if failed and lab.hypervisors:
                _report(lab)
            lab.close()
            if lab in _live:
                _live.remove(lab)


def _report(lab: Lab) -> None:
    print(f"\n--- lab state at failure ---\n{lab.describe()}")
    for hv in lab.hypervisors:
        tail = hv.log_tail(lines=15)
        if tail:
            print(f"--- {hv.name} ovs-vswitchd.log (tail) ---\n{tail}")


_live: list[Lab] = []
_net_installed = False


def _close_live() -> None:
    for lab in list(_live):
        lab.close()


def _install_signal_safety_net() -> None:
    """Close labs on interpreter exit and turn SIGTERM into KeyboardInterrupt (so teardown runs)."""
    global _net_installed
    if _net_installed:
        return
    _net_installed = True
    atexit.register(_close_live)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _term(signum, frame):
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, _term)


@pytest.fixture
def make_lab(request):
    factory = LabFactory()
    yield factory
    factory.close_all(request.node)


@pytest.fixture(scope="module")
def make_module_lab():
    factory = LabFactory()
    yield factory
    factory.close_all()


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab(3)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A PKI made with ``ovs-pki`` as the README says: CAs, the controller's certificate, the
    API's (``localhost``) and one switch certificate per host ``hv1``..``hv6`` (a TLS lab adds
    more when it has more hosts).  ``make_lab(n, pki=pki)`` + ``TenantnetProcess(..., pki=pki)``
    run anything with TLS on."""
    return Pki.create(tmp_path_factory.mktemp("pki"), hosts=[f"hv{i}" for i in range(1, 7)])
