from flows.model import Apply, GotoTable, Output, Rule, match


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
