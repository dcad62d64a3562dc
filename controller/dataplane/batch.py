"""One data-plane step's barriers, and the port statuses that follow from them.

A port becomes ACTIVE when the hosts its traffic depends on are ready for it:

* its **own host** must confirm its flows - always;
* its **peers** (the network's other hosts) must confirm only when its host has just joined the
  network in this step: peers accept a host's tunnel traffic only once their ingress rules for it
  are in.  A host that was already a member is accepted already, and a peer that has not yet
  installed the new MAC's unicast rule floods towards the port's host, so traffic flows either
  way (the per-port path and a recompile of a network whose hosts stay the same are alike here).

A peer that fails - its barrier timed out, it rejected the batch, or it disconnected - does not
hold the port back: that switch is broken and is re-read and recompiled whole when it answers
again, which installs what the port needs.  A peer already known to be degraded is not waited for
at all (the caller leaves it out).  A port whose *own* host failed is left as it was.

A DOWN status needs no confirmation from a peer: it is settled once its own host replied, or, for
a port bound nowhere (whose flows the step removes wherever they were), once every host of the
step replied.  Every wait ends: barriers time out, and a dead switch fails its barriers.

`step` numbers the batch: the data plane writes a status only from the latest step that decided
one for that port, so a slow step can never overwrite what a later one settled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Batch:
    step: int = 0
    started: float = field(default_factory=time.monotonic)  # for the port-ready latency
    waiting: set[str] = field(default_factory=set)  # hosts whose barrier is outstanding
    failed: set[str] = field(default_factory=set)  # hosts that did not confirm
    # port -> (its own host, the peers it waits for as well)
    active: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    down: dict[str, str | None] = field(default_factory=dict)  # port -> its host, None: all
    # host -> gratuitous ARPs sent once it confirms this step, and the interface addresses they
    # announce (controller.dataplane.garp)
    announce: dict[str, tuple[list[tuple[int, bytes]], set[str]]] = field(default_factory=dict)

    def confirmed(self, host_id: str, ok: bool) -> None:
        self.waiting.discard(host_id)
        if not ok:
            self.failed.add(host_id)

    def settle(self) -> dict[str, str | None]:
        """Statuses known now, each returned once; None: left as it was (its host failed)."""
        out: dict[str, str | None] = {}
        for pid, (own, peers) in list(self.active.items()):
            if own in self.waiting or not peers.isdisjoint(self.waiting):
                continue
            del self.active[pid]
            out[pid] = None if own in self.failed else "ACTIVE"
        for pid, host in list(self.down.items()):
            if (not self.waiting) if host is None else host not in self.waiting:
                del self.down[pid]
                out[pid] = "DOWN"
        return out
