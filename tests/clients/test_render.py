"""The terminal viewer's drawing, checked on an emulated screen of various widths.

The promise to the user: a deleted token is shown struck through, then erased, and once the
stream is over the screen shows exactly what printing the final text once would show.
"""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from clients.events import BacktrackEvent, DoneEvent, StreamUpdate, TokenEvent, VisibleText
from clients.render import LineRenderer, Summary, TerminalRenderer, printable
from tests.clients.screen import Screen


def updates_from(operations: list[str | None]) -> list[StreamUpdate]:
    """Token texts (push) and None (delete the last one) turned into the stream's updates."""
    visible, updates, backtracks = VisibleText(), [], 0
    for text in operations:
        if text is not None:
            event = TokenEvent(len(visible.tokens), 1, text, -0.1)
        elif visible.tokens:
            backtracks += 1
            event = BacktrackEvent(len(visible.tokens) - 1, 1, visible.tokens[-1].text, backtracks)
        else:
            continue
        updates.append(StreamUpdate(event, visible.apply(event)))
    done = DoneEvent(visible.text, "eos", len(visible.tokens), backtracks)
    updates.append(StreamUpdate(done, visible.apply(done)))
    return updates


def render(prompt: str, updates: list[StreamUpdate], width: int, on_strike=None) -> str:
    out = io.StringIO()
    renderer = TerminalRenderer(out, width, strike_seconds=0.5, sleep=on_strike or (lambda _: None))
    renderer.start(prompt)
    for update in updates:
        renderer.update(update)
    return out.getvalue()


token_texts = st.one_of(
    st.text(alphabet="ab \n\t東", min_size=0, max_size=4),
    st.sampled_from([" Paris", "\n", "x", "東京", "\x1b[2J"]),
)


@settings(max_examples=150, deadline=None)
@given(
    operations=st.lists(st.one_of(token_texts, st.none()), max_size=30),
    width=st.integers(min_value=2, max_value=12),
    prompt=st.text(alphabet="12+=\n ", max_size=10),
)
def test_the_live_screen_ends_as_printing_the_final_text_would(operations, width, prompt):
    updates = updates_from(operations)
    final = updates[-1].text
    live = Screen(width).feed(render(prompt, updates, width))
    once = Screen(width).feed(printable(prompt + final))
    assert live.lines() == once.lines()
    assert live.struck_text() == ""


def test_a_deleted_token_is_struck_through_before_it_is_erased():
    updates = updates_from(["The", " capital", " is", " Lyon", None, " Paris"])
    screens: list[Screen] = []
    output = io.StringIO()
    renderer = TerminalRenderer(
        output, 12, sleep=lambda _: screens.append(Screen(12).feed(output.getvalue()))
    )
    renderer.start("Q: ")
    for update in updates:
        renderer.update(update)
    assert len(screens) == 1
    assert screens[0].struck_text() == " Lyon"
    assert "".join(screens[0].lines()).startswith("Q: The capital is Lyon")
    assert Screen(12).feed(output.getvalue()).lines() == ["Q: The capit", "al is Paris"]


def test_a_deleted_newline_is_visible_while_struck():
    strikes: list[str] = []
    updates = updates_from(["a", "\n", None, "b"])
    output = io.StringIO()
    renderer = TerminalRenderer(
        output, 20, sleep=lambda _: strikes.append(Screen(20).feed(output.getvalue()).struck_text())
    )
    renderer.start("")
    for update in updates:
        renderer.update(update)
    assert strikes == ["\u21b5"]
    assert Screen(20).feed(output.getvalue()).lines() == ["ab"]


def test_model_text_cannot_drive_the_terminal():
    assert printable("a\x1b[2Jb\tc\n") == "a\ufffd[2Jb    c\n"


def test_line_renderer_prints_one_line_per_event():
    output = io.StringIO()
    renderer = LineRenderer(output)
    renderer.start("1+1=")
    for update in updates_from(["3", None, "2", "\n"]):
        renderer.update(update)
    renderer.finish(Summary(2, 3, 1, 0.5, "eos"))
    assert output.getvalue().splitlines() == [
        'prompt "1+1="',
        'token 0 "3" -0.1000',
        'backtrack 0 "3" 1',
        'token 0 "2" -0.1000',
        'token 1 "\\n" -0.1000',
        'done eos "2\\n"',
        "summary 2 tokens (3 sampled), 1 backtracks, 0.50 s, 6.0 tokens/s, finish: eos",
    ]
