from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backtrack.stopping import find_stop, partial_stop_length


def test_find_stop_returns_the_earliest_match():
    assert find_stop("abc\n\nxyz END", ["END", "\n\n"]) == 3
    assert find_stop("nothing here", ["END"]) is None


def test_find_stop_only_looks_at_text_that_can_contain_a_new_match():
    assert find_stop("END and more", ["END"], search_from=8) is None
    assert find_stop("xxEN" + "D", ["END"], search_from=4) == 2


def test_partial_stop_length_holds_back_a_possible_beginning():
    assert partial_stop_length("hello EN", ["END"]) == 2
    assert partial_stop_length("hello", ["END"]) == 0
    assert partial_stop_length("a<", ["<|end|>", "<<"]) == 1


@given(
    text=st.text(alphabet="abE", max_size=12), stop=st.text(alphabet="abE", min_size=1, max_size=3)
)
def test_text_outside_the_held_back_tail_never_changes_a_match(text, stop):
    held = partial_stop_length(text, [stop])
    assert held < len(stop)
    if stop not in text:
        # any continuation can only complete the stop inside the held-back tail
        start = find_stop(text + stop, [stop])
        assert start is not None and start >= len(text) - held
