"""What the data plane observed while the store could not take it: kept, latest value per object.

Port statuses, bindings, refused claims, virtual-IP holders and host states are observations of
the switches, not requests: only the latest value of each matters, and writing it late is as
good as writing it on time (unchanged values are skipped by the store).  So while the etcd
cluster has no quorum the replicated store keeps them here instead of failing (and instead of
blocking the data plane's actor on a cluster that cannot answer), and writes them when the
cluster is back.
The size is bounded by the number of ports, VIPs and hosts: one slot per object, newer replaces
older.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Observations:
    """One batch: what `Store.set_ports_observed` and `Store.set_host_state` take."""

    statuses: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, str | None] = field(default_factory=dict)
    refused: dict[str, dict[str, bool]] = field(default_factory=dict)  # port -> host -> refused?
    hosts: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # status, dpid
    # (network, virtual IP) -> the port that announced it last (one slot per VIP)
    vips: dict[tuple[str, str], str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.of_ports or bool(self.hosts)

    @property
    def of_ports(self) -> bool:
        """Whether the batch holds anything `Store.set_ports_observed` writes."""
        return bool(self.statuses or self.bindings or self.refused or self.vips)

    def __len__(self) -> int:
        """How many values the batch holds (what a log line counts as written or dropped)."""
        return (len(self.statuses) + len(self.bindings) + len(self.refused) + len(self.hosts)
                + len(self.vips))  # fmt: skip

    def newer(self, other: Observations) -> None:
        """Take ``other``'s values over these (``other`` was observed later)."""
        self.statuses.update(other.statuses)
        self.bindings.update(other.bindings)
        for pid, hosts in other.refused.items():  # per host: each is observed on its own
            self.refused[pid] = {**self.refused.get(pid, {}), **hosts}
        self.hosts.update(other.hosts)
        self.vips.update(other.vips)

    def older(self, other: Observations) -> None:
        """Take ``other``'s values only where these have none (``other`` is older)."""
        self.statuses = {**other.statuses, **self.statuses}
        self.bindings = {**other.bindings, **self.bindings}
        for pid, hosts in other.refused.items():
            self.refused[pid] = {**hosts, **self.refused.get(pid, {})}
        self.hosts = {**other.hosts, **self.hosts}
        self.vips = {**other.vips, **self.vips}


class PendingObservations:
    """The observations not written yet, and whether new ones must queue behind them.

    Thread-safe: the data plane adds, a flusher takes.  While anything is held *or being
    written* (`holding`), new observations queue too, so an older value can never be written
    after a newer one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = Observations()
        self._holding = False

    @property
    def holding(self) -> bool:
        with self._lock:
            return self._holding

    def add_if_holding(self, observed: Observations) -> bool:
        """Queue ``observed`` if observations are held; False: write it now."""
        with self._lock:
            if self._holding:
                self._held.newer(observed)
            return self._holding

    def hold(self, observed: Observations) -> None:
        """Queue ``observed`` (its write failed, or the store is known to be down)."""
        with self._lock:
            self._held.newer(observed)
            self._holding = True

    def take(self) -> Observations | None:
        """Everything held, to write (`give_back` it if the write fails); None when nothing is
        left, which also ends the holding: new observations are written directly again."""
        with self._lock:
            if not self._held:
                self._holding = False
                return None
            held, self._held = self._held, Observations()
            return held

    def give_back(self, taken: Observations) -> None:
        """Return what a failed write took; what was observed meanwhile stays newer."""
        with self._lock:
            self._held.older(taken)
