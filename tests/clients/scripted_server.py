"""A real HTTP server that answers each request with the next scripted reply.

For what the real model server cannot be made to do on demand (refuse with 429, stall
mid-stream, break the protocol): the client under test still speaks real HTTP over a socket.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    pause: float = 0.0
    """Seconds to wait before each chunk after the first."""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


def sse_reply(*events: tuple[str, dict[str, Any]], pause: float = 0.0) -> Reply:
    chunks = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
    return Reply(200, {"content-type": "text/event-stream"}, chunks, pause)


def json_reply(status: int, payload: dict[str, Any], **headers: str) -> Reply:
    headers = {"content-type": "application/json", **headers}
    return Reply(status, headers, [json.dumps(payload).encode()])


class ScriptedServer:
    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def next_reply(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return (
                self.replies.pop(0) if self.replies else json_reply(500, {"error": "script over"})
            )


def _handler(script: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            headers = {key.lower(): value for key, value in self.headers.items()}
            reply = script.next_reply(Received(self.path, headers, body, time.monotonic()))
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            for number, chunk in enumerate(reply.chunks):
                if number and reply.pause:
                    time.sleep(reply.pause)
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def scripted_server(*replies: Reply) -> Iterator[tuple[str, ScriptedServer]]:
    """Serve `replies` in order on a free local port; yields (base url, script)."""
    script = ScriptedServer(list(replies))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
