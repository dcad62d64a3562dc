"""Every address plan a lab on this machine uses, in one registry, so that no two users collide.

Labs run side by side (several test files, the bench, the demo, the Mininet topologies, other
people's runs), and what they create in the root namespace is shared: the management bridge's
address, where the controller listens, and the names ``P-*`` of namespaces and links, the work
dir ``/tmp/tenantnet-lab-P`` and the lock ``/tmp/tenantnet-lab-P.lock`` of lab prefix ``P``.  Plan
number ``X`` owns management 10.251.X.0/24 (the controller at .254, hypervisor N at .N) and
underlay 10.252.X.0/24 (namespace-private, kept distinct so that an address in a log or a
capture names its lab):

====  ==============  ===============================================================
X     prefix          user
====  ==============  ===============================================================
0-9   tn, tn1 .. tn9  integration-test slots: ``make_lab`` takes the first free one
50    tnd             ``make demo`` (scripts/demo.py)
61    tni             data-plane integration tests (tests/integration/dataplane_fixtures.py)
63    tnb             bench, tenantnet side
64    tno             bench, OVN side
65    tnf             fault-injection tests (tests/integration/test_faults.py)
66    tnh             bench's clustered scenario, tenantnet side (bench/ha.py)
67    toh             bench's clustered scenario, OVN side
70    mnt70           Mininet topologies (mininet_topos/; its links are ``mnt70_*``)
====  ==============  ===============================================================

A new user adds a plan here; importing this module checks that numbers and prefixes are unique.
Standard library only: Mininet's Debian python imports it too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # short: names like P-hv12 fit IFNAMSIZ
SLOT_COUNT = 10
SLOT_BASE = "tn"


@dataclass(frozen=True)
class AddressPlan:
    number: int  # X in 10.251.X.0/24 and 10.252.X.0/24
    prefix: str
    user: str

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"lab prefix must match {PREFIX_RE.pattern} (got {self.prefix!r})")
        if not 0 <= self.number <= 255:
            raise ValueError(f"plan number must be 0..255 (got {self.number})")

    @property
    def mgmt_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.251.{self.number}.0/24")

    @property
    def mgmt_gw(self) -> str:
        """The controller's address on the management bridge (root namespace)."""
        return str(self.mgmt_net.network_address + 254)

    @property
    def mgmt_ip(self) -> str:
        """``mgmt_gw`` with its prefix length, as ``Lab(mgmt_ip=...)`` takes it."""
        return f"{self.mgmt_gw}/{self.mgmt_net.prefixlen}"

    @property
    def underlay_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.252.{self.number}.0/24")

    def lab_kwargs(self) -> dict[str, str]:
        """``Lab(n, **plan.lab_kwargs())``."""
        return {"prefix": self.prefix, "mgmt_ip": self.mgmt_ip,
                "underlay_net": str(self.underlay_net)}


def slot(i: int, base: str = SLOT_BASE) -> AddressPlan:
    """Integration-test slot ``i``: prefix ``base`` (slot 0) or ``base<i>``, plan number ``i``."""
    if not 0 <= i < SLOT_COUNT:
        raise ValueError(f"slot must be 0..{SLOT_COUNT - 1} (got {i})")
    return AddressPlan(i, base if i == 0 else f"{base}{i}", f"integration-test slot {i}")


SLOTS = tuple(slot(i) for i in range(SLOT_COUNT))
DEFAULT = SLOTS[0]  # Lab() without arguments, and what `make clean-hosts` cleans
DEMO = AddressPlan(50, "tnd", "make demo")
DATAPLANE_TESTS = AddressPlan(61, "tni", "data-plane integration tests")
BENCH_TENANTNET = AddressPlan(63, "tnb", "bench: tenantnet")
BENCH_OVN = AddressPlan(64, "tno", "bench: OVN")
FAULT_TESTS = AddressPlan(65, "tnf", "fault-injection tests")
# the clustered scenario has labs of its own: it runs beside the other scenarios' benches
BENCH_HA_TENANTNET = AddressPlan(66, "tnh", "bench HA: tenantnet")
BENCH_HA_OVN = AddressPlan(67, "toh", "bench HA: OVN")
MININET = AddressPlan(70, "mnt70", "Mininet topologies")

PLANS = (*SLOTS, DEMO, DATAPLANE_TESTS, BENCH_TENANTNET, BENCH_OVN, FAULT_TESTS,
         BENCH_HA_TENANTNET, BENCH_HA_OVN, MININET)


def collisions(plans: tuple[AddressPlan, ...]) -> list[str]:
    """Pairs of plans that share a number (hence subnets) or a prefix."""
    found = []
    for i, a in enumerate(plans):
        for b in plans[i + 1:]:
            if a.number == b.number or a.prefix == b.prefix:
                found.append(f"{a.user} ({a.prefix}, {a.number}) vs {b.user} "
                             f"({b.prefix}, {b.number})")
    return found


if collisions(PLANS):
    raise RuntimeError(f"lab address plans collide: {collisions(PLANS)}")
