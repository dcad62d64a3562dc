"""The per-port DHCP flood guard (`controller.services.dhcp_guard`) on a fake clock: a budget
per port and second, a ban at the first packet over it, bans doubling per repeated offence up
to a cap, forgiveness after a quiet spell, ports independent of each other."""

from __future__ import annotations

from controller.services.dhcp_guard import DROP, PASS, PRUNE_AT, Ban, FloodGuard, GuardSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guard(max_pps: int = 5, ban_s: int = 10, max_ban_s: int = 40) -> tuple[FloodGuard, Clock]:
    clock = Clock()
    return FloodGuard(GuardSettings(max_pps, ban_s, max_ban_s), clock), clock


def _flood(guard: FloodGuard, port: int, n: int) -> list[object]:
    return [guard.admit(port) for _ in range(n)]


def test_a_port_within_its_budget_is_always_answered() -> None:
    guard, clock = _guard(max_pps=5)
    for _ in range(30):  # 5 per second for 30 seconds
        assert _flood(guard, 1, 5) == [PASS] * 5
        clock.now += 1.0


def test_the_first_packet_over_the_budget_bans_and_the_rest_are_dropped() -> None:
    guard, clock = _guard(max_pps=5, ban_s=10)
    verdicts = _flood(guard, 1, 9)
    assert verdicts[:5] == [PASS] * 5
    assert verdicts[5] == Ban(seconds=10, offence=1)
    assert verdicts[6:] == [DROP] * 3
    clock.now += 9.9
    assert guard.admit(1) == DROP
    clock.now += 0.2  # the switch expired the drop rule: answered again
    assert guard.admit(1) == PASS


def test_repeated_offences_double_the_ban_up_to_the_cap() -> None:
    guard, clock = _guard(max_pps=5, ban_s=10, max_ban_s=40)
    bans = []
    for _ in range(5):
        verdicts = _flood(guard, 1, 6)
        ban = verdicts[-1]
        assert isinstance(ban, Ban)
        bans.append((ban.seconds, ban.offence))
        clock.now += ban.seconds  # floods again the moment the rule expires
    assert bans == [(10, 1), (20, 2), (40, 3), (40, 4), (40, 5)]


def test_a_port_quiet_for_the_longest_ban_is_forgiven() -> None:
    guard, clock = _guard(max_pps=5, ban_s=10, max_ban_s=40)
    assert _flood(guard, 1, 6)[-1] == Ban(10, 1)
    clock.now += 10 + 39
    assert _flood(guard, 1, 6)[-1] == Ban(20, 2)  # not quiet long enough
    clock.now += 20 + 40
    assert _flood(guard, 1, 6)[-1] == Ban(10, 1)


def test_ports_have_budgets_of_their_own() -> None:
    guard, _ = _guard(max_pps=5)
    assert isinstance(_flood(guard, 1, 6)[-1], Ban)
    assert _flood(guard, 2, 5) == [PASS] * 5  # the neighbour is not affected
    assert guard.admit(1) == DROP


def test_memory_is_bounded_by_the_ports_seen_recently() -> None:
    guard, clock = _guard(max_pps=5, max_ban_s=40)
    for port in range(PRUNE_AT):
        guard.admit(port)
    clock.now += 41
    guard.admit("new")
    assert len(guard) == 1


def test_making_room_never_forgives_a_recent_offender() -> None:
    """Idle entries are dropped when the table is full, but a port whose last ban ended less
    than ``max_ban_s`` ago is not idle: forgetting it would forgive it early, and its next
    flood would get the first ban again instead of a doubled one."""
    guard, clock = _guard(max_pps=5, ban_s=10, max_ban_s=40)
    assert _flood(guard, "flooder", 6)[-1] == Ban(10, 1)
    clock.now += 10 + 35  # the ban ended 35 s ago; its window opened 45 s ago
    for port in range(PRUNE_AT):  # other ports fill the table: room is made
        guard.admit(port)
    assert len(guard) <= PRUNE_AT + 1
    assert _flood(guard, "flooder", 6)[-1] == Ban(20, 2)
