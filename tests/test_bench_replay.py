"""The replay bench's alternation: which side goes first flips every round, results keep their places."""

from bench.replay import _in_turn


def test_in_turn_alternates_the_order_and_keeps_results_in_place():
    for round_index, expected_order in ((0, ["a", "b", "c"]), (1, ["c", "b", "a"]), (2, ["a", "b", "c"])):
        ran = []
        results = _in_turn(round_index, *(lambda name=name: ran.append(name) or name.upper() for name in "abc"))
        assert ran == expected_order
        assert results == ["A", "B", "C"]
