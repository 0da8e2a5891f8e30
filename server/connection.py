"""The HTTP protocol uvicorn runs: h11 with a header deadline and a header size limit.

Both act before the application sees a request (ASGI only starts once the headers are complete),
so they live in the protocol: a connection that has not sent a complete request head within
`header_timeout` seconds of opening (or of its previous response) is closed, and a head larger
than `max_header_bytes` is answered 431 and closed (h11's `max_incomplete_event_size` bounds
only a head still arriving; the protocol bounds a complete one too). uvicorn's
default parser (httptools) has neither: one slow or endless header would hold a connection and
its buffer for ever.

Closing is lingering, as nginx's `lingering_close`: a connection closed while its client may still
be sending (a 413 for a body over the limit, a 408) first shuts its write side, so the client reads
the whole answer and an end of stream, then reads and drops what still arrives for at most
`LINGER_SECONDS` (or `LINGER_BYTES`) before the socket closes. Closing a socket with unread data
sends a reset instead, and a client still sending its body would lose the answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LINGER_SECONDS = 2.0
LINGER_BYTES = 8 << 20


class _LingeringTransport:
    """The connection's transport, whose `close()` lingers (the module's docstring)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self.lingering = False
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # the client sees the answer end; we keep reading
        self._transport.resume_reading()
        self._timer = self._loop.call_later(LINGER_SECONDS, self.close_now)

    def drop(self, data: bytes) -> None:
        """What a lingering connection receives: counted and dropped."""
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES:
            self.close_now()

    def close_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head is late or too large."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering = _LingeringTransport(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, self._lingering))
        self._head_deadline: asyncio.TimerHandle | None = None
        self._track_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        self._lingering.close_now()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._lingering.lingering:  # the client is done too: nothing left to wait for
            self._lingering.close_now()
            return
        super().eof_received()

    def handle_events(self) -> None:
        super().handle_events()
        self._track_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track_head()

    def data_received(self, data: bytes) -> None:
        if self._lingering.lingering:
            self._lingering.drop(data)
            return
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._refuse_head()
            return
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        """h11 bounds only a head still incomplete; this bounds any head, however it arrives."""
        limit = self.config.h11_max_incomplete_event_size
        if limit is None:
            return False
        pending = self.conn.trailing_data[0] + data  # at most `limit` bytes buffered before
        end = pending.find(b"\r\n\r\n")
        return (len(pending) if end < 0 else end + 4) > limit

    def _refuse_head(self) -> None:
        limit = self.config.h11_max_incomplete_event_size
        message = f"the request head is over {limit} bytes (max_header_bytes)"
        body = json.dumps({"error": message, "error_type": "validation"}).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.transport.close()

    def _track_head(self) -> None:
        """A deadline runs exactly while a request head is awaited (h11's peer state IDLE): from
        the connection's start, and from the end of each request, for the next one."""
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._head_arrived()
        elif getattr(self, "_head_deadline", None) is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_late)

    def _head_arrived(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request head in time")
            self.transport.close()


def guarded_protocol(header_timeout: float) -> type[H11Protocol]:
    """The protocol class to hand uvicorn (`Config(http=...)`), with this header deadline."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {"header_timeout": header_timeout})
