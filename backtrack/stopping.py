"""Stop sequences on the visible text: where one matches, and how much text must be held back.

Pure string functions, so they are tested with no model. Matching runs on the text after
deletions: a stop sequence that was typed and then erased does not stop generation.
"""

from __future__ import annotations


def find_stop(text: str, stops: list[str], search_from: int = 0) -> int | None:
    """Start of the earliest stop sequence in `text` that ends at or after `search_from`."""
    best: int | None = None
    for stop in stops:
        start = text.find(stop, max(0, search_from - len(stop) + 1))
        if start != -1 and (best is None or start < best):
            best = start
    return best


def partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop sequence.

    That many trailing characters may still become a stop sequence, so a stream must not show
    them yet.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
