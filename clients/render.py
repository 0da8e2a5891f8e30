"""How the terminal viewer draws a stream: live on a terminal, one line per event elsewhere.

On a terminal the text grows in place; a deleted token is redrawn struck through (red), stays a
moment so the eye catches it, then is erased. Only the tail of the output is ever redrawn: the
cursor moves back to where the changed text starts (rows and columns computed from the terminal
width), clears to the end of the screen and writes the new tail, so a deletion costs the same
however long the text is. Control characters from the model are made harmless before display.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from clients.events import BacktrackEvent, DoneEvent, StreamUpdate, TokenEvent

STRIKE = "\x1b[9;31m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"
CLEAR_TO_END = "\x1b[J"


def printable(text: str) -> str:
    """Text safe to write to a terminal: newlines kept, tabs as spaces, other controls shown."""
    return "".join(
        "    " if char == "\t" else char if char == "\n" or char.isprintable() else "\ufffd"
        for char in text
    )


def char_width(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def cursor_after(text: str, width: int) -> tuple[int, int]:
    """(row, column) of the cursor after writing `text` from the top-left corner.

    A row filled to the last column leaves the column at `width` (the terminal's pending wrap):
    the cursor is still on that row, and the next character starts the following one.
    """
    row = column = 0
    for char in text:
        if char == "\n":
            row, column = row + 1, 0
            continue
        size = char_width(char)
        if column + size > width:
            row, column = row + 1, 0
        column += size
    return row, column


def move_back(screen: str, keep: str, width: int) -> str:
    """Escape codes that put the cursor at the end of `keep` (a prefix of `screen`) and clear
    everything after it; `screen` is what the terminal shows and the cursor is at its end.

    When `keep` ends exactly at the right margin the cursor must end in the pending-wrap state
    that writing `keep` left it in, which no cursor movement reaches: the last character is
    cleared and written again instead.
    """
    current_row, _ = cursor_after(screen, width)
    row, column = cursor_after(keep, width)
    rewrite = ""
    if column >= width:
        rewrite = keep[-1]
        column -= char_width(rewrite)
    up = current_row - row
    vertical = "\r" if up == 0 else f"\r\x1b[{up}A"
    horizontal = f"\x1b[{column}C" if column else ""
    return vertical + horizontal + CLEAR_TO_END + rewrite


def _common_prefix(first: str, second: str) -> str:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return first[:length]


@dataclass(frozen=True)
class Summary:
    generated_tokens: int
    sampled_tokens: int
    backtracks: int
    seconds: float
    finish_reason: str

    @classmethod
    def of(cls, done: DoneEvent, seconds: float) -> Summary:
        return cls(
            done.generated_tokens, done.sampled_tokens, done.backtracks, seconds, done.finish_reason
        )

    def line(self) -> str:
        rate = self.sampled_tokens / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.generated_tokens} tokens ({self.sampled_tokens} sampled), "
            f"{self.backtracks} backtracks, {self.seconds:.2f} s, {rate:.1f} tokens/s, "
            f"finish: {self.finish_reason}"
        )


class TerminalRenderer:
    """Draws the stream live on a terminal `width` columns wide."""

    def __init__(
        self,
        out: TextIO,
        width: int,
        strike_seconds: float = 0.3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.out, self.width = out, max(1, width)
        self.strike_seconds, self.sleep = strike_seconds, sleep
        self.prompt = ""
        self.screen = ""
        """Exactly what the terminal shows since `start`, in display form."""

    def start(self, prompt: str) -> None:
        """Show the prompt dimmed; the generated text continues right after it."""
        self.prompt = printable(prompt)
        self.screen = self.prompt
        self.out.write(f"{DIM}{self.prompt}{RESET}")
        self.out.flush()

    def update(self, update: StreamUpdate) -> None:
        event = update.event
        if isinstance(event, BacktrackEvent):
            self._strike(printable(event.removed_text))
        self._show(self.prompt + printable(update.text))

    def finish(self, summary: Summary) -> None:
        self.out.write(f"\n{DIM}{summary.line()}{RESET}\n")
        self.out.flush()

    def _strike(self, removed: str) -> None:
        """Redraw the last token struck through and leave it there for a moment."""
        if not removed or not self.screen.endswith(removed):
            return
        kept = self.screen[: len(self.screen) - len(removed)]
        struck = removed.replace("\n", "\u21b5")  # a deleted newline shows as a struck ↵
        self.out.write(move_back(self.screen, kept, self.width) + STRIKE + struck + RESET)
        self.out.flush()
        self.screen = kept + struck
        self.sleep(self.strike_seconds)

    def _show(self, target: str) -> None:
        """Make the screen show `target`, rewriting only from where the two differ."""
        kept = _common_prefix(self.screen, target)
        if kept != self.screen:
            self.out.write(move_back(self.screen, kept, self.width))
        self.out.write(target[len(kept) :])
        self.out.flush()
        self.screen = target


class LineRenderer:
    """One line per event, for pipes and logs: `token 3 " Paris" -0.12`."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def start(self, prompt: str) -> None:
        self._line(f"prompt {_quote(prompt)}")

    def update(self, update: StreamUpdate) -> None:
        event = update.event
        if isinstance(event, TokenEvent):
            self._line(f"token {event.index} {_quote(event.text)} {event.logprob:.4f}")
        elif isinstance(event, BacktrackEvent):
            self._line(f"backtrack {event.index} {_quote(event.removed_text)} {event.backtracks}")
        else:
            self._line(f"done {event.finish_reason} {_quote(event.generated_text)}")

    def finish(self, summary: Summary) -> None:
        self._line(f"summary {summary.line()}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
