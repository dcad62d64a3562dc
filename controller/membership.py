"""Which live controller instance owns which hypervisor: rendezvous hashing over the members.

Pure (no etcd, no clock): `controller.store.etcd_members` feeds it the live members from etcd
leases.  Rendezvous (highest random weight) hashing gives every host to the member with the
highest hash of (member, host): all instances compute the same owner from the same member list
without talking to each other, and when a member joins or leaves only the hosts it gains or
held move (about 1/N of them), unlike ``hash(host) % N`` which would move almost all.
The hash is BLAKE2b, not Python's ``hash``, which is salted per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def weight(member: str, host: str) -> int:
    """The member's score for the host (same on every instance and every run)."""
    digest = hashlib.blake2b(f"{member}\0{host}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(host: str, members: Iterable[str]) -> str | None:
    """The member owning ``host`` (None: no live member); ties go to the smaller member id."""
    best: tuple[int, str] | None = None
    for member in members:
        key = (weight(member, host), member)
        if best is None or key[0] > best[0] or (key[0] == best[0] and key[1] < best[1]):
            best = key
    return None if best is None else best[1]


@dataclass(frozen=True)
class MemberView:
    """One instance's view of the cluster: who it is, which members are live (sorted), and
    the etcd revision the list was read at (views compare by it: a newer one replaces)."""

    me: str
    members: tuple[str, ...] = ()
    revision: int = 0
    # (member, its OpenFlow target as switches reach it), published in its membership record:
    # what an owner writes as the bridges' other controllers
    targets: tuple[tuple[str, str], ...] = ()
    # The etcd lease this instance held when it read the list (0: none).  A new one means it
    # left the members in between (its lease lapsed: a stall, a partition) and joined again,
    # though the list may read the same: another instance may have taken its hosts meanwhile,
    # so what it recorded as its own under the old lease is void (`DataPlane._note_owner`).
    lease: int = 0

    def peer_targets(self) -> tuple[str, ...]:
        """The other live members' OpenFlow targets, sorted (none while not live)."""
        if not self.live:
            return ()
        return tuple(sorted(t for m, t in self.targets if m != self.me and m in self.members))

    @property
    def live(self) -> bool:
        """Whether this instance holds its membership (its lease is alive)."""
        return self.me in self.members

    def owner(self, host: str) -> str | None:
        return owner_of(host, self.members)

    def owned(self, hosts: Iterable[str]) -> list[str]:
        """The hosts this instance owns (none while it is not live: it must not act then)."""
        return [h for h in hosts if self.owner(h) == self.me] if self.live else []

    def status(self, hosts: Iterable[str]) -> dict[str, Any]:
        """The ``cluster`` part of /tenantnet/status: members and each host's owner."""
        return {
            "member": self.me,
            "live": self.live,
            "members": list(self.members),
            "revision": self.revision,
            "host_owner": {h: self.owner(h) for h in sorted(hosts)},
        }
