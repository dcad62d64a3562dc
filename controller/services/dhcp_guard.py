"""Per-port DHCP flood detection with backoff: which packet-in is one too many, and for how long
the port's DHCP is then dropped on its switch.

Why: the per-host packet-in meter (`controller.southbound.ofp_codec.controller_meter`) bounds
what a host costs the controller, but one flooding VM can use its whole host's budget and starve
its neighbours' DHCP.  So each port gets a budget of its own (``max_pps`` packet-ins per one
second window); a port that exceeds it commits an *offence* and gets a drop rule above its punt
rule for ``ban_s`` seconds, doubled at each further offence up to ``max_ban_s``.  The switch
expires the rule (hard timeout), so nothing here is persisted or reconciled; a port that stays
quiet for ``max_ban_s`` after its last ban ends starts again at ``ban_s``.  Real clients send a
handful of messages per minute, far below any sensible budget.

Pure: time comes from an injected clock, the caller installs the rule and logs.  Memory is
bounded by the ports that sent DHCP recently: idle entries are dropped when the table grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

WINDOW_S = 1.0
"""The length of the window ``max_pps`` counts over."""

PRUNE_AT = 4096
"""Entries kept before idle ones are dropped (one per port that sent DHCP recently)."""


@dataclass(frozen=True)
class GuardSettings:
    max_pps: int = 20
    """DHCP packet-ins a port may send per second before it is dropped for a while."""
    ban_s: int = 10
    """The first drop's length; doubled per repeated offence."""
    max_ban_s: int = 320
    """The longest drop (and how long a port must stay quiet to be forgiven)."""


@dataclass(frozen=True)
class Ban:
    """An offence: drop the port's DHCP for ``seconds`` (its ``offence``-th in a row)."""

    seconds: int
    offence: int


PASS = "pass"
DROP = "drop"


@dataclass
class _Port:
    window_start: float
    count: int = 0
    offences: int = 0
    banned_until: float = 0.0


class FloodGuard:
    """Decides, per packet-in of a port, whether to answer it, drop it or ban the port."""

    def __init__(
        self, settings: GuardSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or GuardSettings()
        self._clock = clock
        self._ports: dict[Hashable, _Port] = {}

    def admit(self, port: Hashable) -> str | Ban:
        """`PASS` (answer it), `DROP` (the port is banned: its rule is on the way or the switch
        lost it) or a `Ban` (this packet made an offence: install the drop, log it once)."""
        now = self._clock()
        s = self.settings
        state = self._ports.get(port)
        if state is None:
            if len(self._ports) >= PRUNE_AT:
                self._prune(now)
            state = self._ports[port] = _Port(window_start=now)
        if now < state.banned_until:
            return DROP
        if now - state.window_start >= WINDOW_S:
            state.window_start, state.count = now, 0
        state.count += 1
        if state.count <= s.max_pps:
            return PASS
        if state.offences and now - state.banned_until >= s.max_ban_s:
            state.offences = 0  # quiet long enough since the last ban ended: forgiven
        state.offences += 1
        seconds = min(s.ban_s << min(state.offences - 1, 32), s.max_ban_s)
        state.banned_until = now + seconds
        state.count = 0
        return Ban(seconds, state.offences)

    def banned_for(self, port: Hashable) -> float:
        """Seconds left of the port's ban (0 when it has none)."""
        state = self._ports.get(port)
        return max(0.0, state.banned_until - self._clock()) if state is not None else 0.0

    def _prune(self, now: float) -> None:
        """Forget ports with no ban to remember and no current window."""
        horizon = self.settings.max_ban_s
        self._ports = {
            port: state
            for port, state in self._ports.items()
            if now - max(state.window_start, state.banned_until) < horizon
        }

    def __len__(self) -> int:
        return len(self._ports)
