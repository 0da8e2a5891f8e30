"""An incremental Server-Sent Events parser: bytes in, complete events out.

The one SSE reader of the project: the Python client, the tests and the benchmarks all read
streams with it (the web page has its own in JavaScript).

Follows the WHATWG event-stream rules the server's stream relies on: lines end with `\\n`, `\\r\\n`
or `\\r`; `event:` names the event (default `message`); several `data:` lines join with `\\n`; a
line starting with `:` is a comment (keep-alive pings); a blank line dispatches the event. Chunks
may split anywhere, even inside a multi-byte character or between `\\r` and `\\n`, so the parser
buffers until a line is complete.

    >>> parser = SSEParser()
    >>> parser.feed(b'event: token\\ndata: {"index": 0}\\n')
    []
    >>> parser.feed(b"\\n")
    [ServerSentEvent(event='token', data='{"index": 0}', id=None, retry=None)]
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (TGI, OpenAI and the native stream all send JSON)."""
        return json.loads(self.data)


class SSEParser:
    """Feed it raw chunks in arrival order; it returns the events each chunk completed."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._skip_newline = False  # the previous chunk ended in "\r"; a leading "\n" pairs with it
        self._first_line = True
        self._reset_fields()

    def _reset_fields(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk)
        if self._skip_newline and text.startswith("\n"):
            text = text[1:]
        self._skip_newline = False
        events: list[ServerSentEvent] = []
        for line in self._complete_lines(text):
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _complete_lines(self, text: str) -> Iterator[str]:
        buffer = self._pending + text
        start = 0
        for position, char in enumerate(buffer):
            if char == "\n" and position > 0 and buffer[position - 1] == "\r":
                start = position + 1  # second half of a "\r\n" already ended the line
            elif char in "\r\n":
                yield buffer[start:position]
                start = position + 1
        self._pending = buffer[start:]
        self._skip_newline = buffer.endswith("\r")

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if self._first_line:
            line = line.removeprefix("\ufeff")
            self._first_line = False
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:  # an event with no data line is dropped, as browsers do
            self._reset_fields()
            return None
        event = ServerSentEvent(
            self._event or "message", "\n".join(self._data), self._id, self._retry
        )
        self._reset_fields()
        return event


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Parse a whole byte stream, yielding each event as soon as its blank line arrives."""
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """`iter_events` for an async byte stream."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
