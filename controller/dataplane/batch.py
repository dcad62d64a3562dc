"""One data-plane step's barriers, and the port statuses that follow from them.

A port becomes ACTIVE when the hosts it depends on confirmed: for a patched port its own host
(peers that have not installed its unicast rule yet flood towards its host, which is already
theirs, so traffic flows either way); for a recompiled network, whose set of hosts may have
changed, every host the step sent to (a new host's tunnel traffic is only accepted once its
peers confirmed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Batch:
    waiting: set[str] = field(default_factory=set)  # hosts whose barrier is outstanding
    failed: set[str] = field(default_factory=set)  # hosts that did not confirm
    active: dict[str, str | None] = field(default_factory=dict)  # port -> host, None: all
    down: list[str] = field(default_factory=list)

    def confirmed(self, host_id: str, ok: bool) -> None:
        self.waiting.discard(host_id)
        if not ok:
            self.failed.add(host_id)

    def settle(self) -> dict[str, str]:
        """Statuses known now: ports whose hosts confirmed become ACTIVE; DOWN ones once every
        host of the step replied.  A port whose host failed is left as it was (that switch is
        re-read and its networks recompiled).  Each status is returned once."""
        out: dict[str, str] = {}
        done = not self.waiting
        for pid, need in list(self.active.items()):
            if need is None:
                if not done:
                    continue
                ready = not self.failed
            elif need in self.waiting:
                continue
            else:
                ready = need not in self.failed
            del self.active[pid]
            if ready:
                out[pid] = "ACTIVE"
        if done:
            out.update(dict.fromkeys(self.down, "DOWN"))
            self.down.clear()
        return out
