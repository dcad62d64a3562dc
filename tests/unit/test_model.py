from flows.diff import diff
from flows.model import Apply, GotoTable, Output, Rule, Slice, ToGroup, match


def test_match_is_sorted_and_drops_none():
    assert match(in_port=3, eth_dst="02:00:00:00:00:01", metadata=None) == (
        ("eth_dst", "02:00:00:00:00:01"),
        ("in_port", 3),
    )


def test_rules_with_same_content_are_equal_and_hashable():
    a = Rule(0, 10, match(in_port=1), (Apply((Output(2),)), GotoTable(3)), 1)
    b = Rule(0, 10, match(in_port=1), (Apply((Output(2),)), GotoTable(3)), 1)
    assert a == b and len({a, b}) == 1
    assert a.key == (0, 10, (("in_port", 1),))


def test_actions_of_different_kinds_never_compare_equal() -> None:
    """Named tuples compare by value; the kind tag keeps output:4 and group:4 apart, in rules,
    in the diff and in anything keyed on instructions."""
    assert Output(4) != ToGroup(4) and hash(Output(4)) != hash(ToGroup(4))
    assert Apply((Output(4),)) != Apply((ToGroup(4),)) and GotoTable(4) != Output(4)
    to_port = Rule(2, 100, match(metadata=7), (Apply((Output(4),)),), 1)
    to_group = Rule(2, 100, match(metadata=7), (Apply((ToGroup(4),)),), 1)
    assert to_port != to_group
    d = diff(Slice(frozenset({to_port})), Slice(frozenset({to_group})))
    assert d.add_rules == (to_port,) and d.replaces_rules
