"""A minimal terminal emulator: what a screen shows after some output, cell by cell.

Understands what the viewer writes: printable characters (wide ones take two cells) with
automatic wrapping at the right margin (the cursor waits past the last column until the next
character), CR, LF (as a tty with `onlcr` does: back to column 0), cursor up (`ESC[nA`), cursor
forward (`ESC[nC`), erase to end of screen (`ESC[J`) and the strike-through attribute of SGR.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

CSI = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])")


@dataclass
class Cell:
    char: str
    struck: bool


@dataclass
class Screen:
    width: int
    rows: list[list[Cell | None]] = field(default_factory=lambda: [[]])
    row: int = 0
    column: int = 0
    struck: bool = False

    def feed(self, output: str) -> Screen:
        position = 0
        while position < len(output):
            match = CSI.match(output, position)
            if match:
                self._control(match.group(1), match.group(2))
                position = match.end()
                continue
            self._char(output[position])
            position += 1
        return self

    def lines(self) -> list[str]:
        """Each row's characters, trailing blanks dropped."""
        return ["".join(cell.char for cell in row if cell).rstrip() for row in self.rows]

    def struck_text(self) -> str:
        return "".join(cell.char for row in self.rows for cell in row if cell and cell.struck)

    def _char(self, char: str) -> None:
        if char == "\r":
            self.column = 0
        elif char == "\n":
            self._goto(self.row + 1, 0)
        else:
            size = 2 if unicodedata.east_asian_width(char) in "WF" else 1
            if self.column + size > self.width:
                self._goto(self.row + 1, 0)
            line = self.rows[self.row]
            line.extend([None] * (self.column + size - len(line)))
            line[self.column] = Cell(char, self.struck)
            self.column += size

    def _control(self, params: str, command: str) -> None:
        numbers = [int(number) for number in params.split(";") if number]
        count = numbers[0] if numbers else 1
        if command == "A":
            self._goto(max(0, self.row - count), min(self.column, self.width - 1))
        elif command == "C":
            self.column = min(self.width - 1, self.column + count)
        elif command == "J":
            del self.rows[self.row][self.column :]
            del self.rows[self.row + 1 :]
        elif command == "m":
            for number in numbers or [0]:
                if number == 0:
                    self.struck = False
                elif number == 9:
                    self.struck = True

    def _goto(self, row: int, column: int) -> None:
        while len(self.rows) <= row:
            self.rows.append([])
        self.row, self.column = row, column
