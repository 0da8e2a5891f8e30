"""Connection limits and the API key act on the request head, over raw sockets to a real server.

A client that sends half a head, an endless head, or a slow body is cut off within its timeout
(set to 1 s here; each wait below allows many times that); beyond `max_connections` open
connections a request is 503; a request without the key to any protected path, the routes that
do not exist yet included, is a 401 before its body is read, so an unauthenticated client can
make the server neither wait for nor parse a body. `/health` and the web page stay open;
`protect_metrics` closes /metrics, /info and the API docs too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from server.connection import LINGER_BYTES
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY, LOOP_PROMPT

TIMEOUT = 1.0
WAIT = 15.0
"""How long a test waits for the server to act on a 1 s timeout: generous on a busy machine."""
HEAD_LIMIT = 4096


@pytest.fixture(scope="module")
def guarded(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    with running_server(
        scripted_checkpoint_dir,
        api_key=API_KEY,
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        max_header_bytes=HEAD_LIMIT,
    ) as handle:
        yield handle


def connect(server: ServerHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a hang fails with `socket.timeout`."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def head(path: str, length: int, key: bool) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}")
    if key:
        lines.append(f"Authorization: Bearer {API_KEY}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_half_sent_head_is_closed_after_header_timeout(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\n")  # and never the rest
        assert read_until_closed(sock) == b""


def test_a_keep_alive_connection_gets_the_same_deadline_for_its_next_head(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        reply = b""
        while not reply.endswith(b'{"status":"ok"}'):
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's head, half of it
        assert read_until_closed(sock) == b""


def test_a_head_over_max_header_bytes_is_431_and_closed(guarded):
    with connect(guarded) as sock:
        padding = "x" * (4 * HEAD_LIMIT)
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: {padding}\r\n\r\n".encode())
        reply = read_until_closed(sock)
    assert status_of(reply) == 431
    assert b"max_header_bytes" in reply


def test_an_endless_head_is_cut_at_max_header_bytes(guarded):
    """Answered 431 at the limit; what follows is read and dropped while the connection closes
    (so a client that stops sending reads the answer), and a client that never stops is cut."""
    with connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        for _ in range(256):
            sock.sendall(b"x" * 1024)
        assert status_of(read_until_closed(sock)) == 431
    with connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # cut while still sending
            for _ in range(LINGER_BYTES // 1024 * 4):
                sock.sendall(b"x" * 1024)


def test_a_client_still_sending_an_oversize_body_reads_its_413(guarded):
    """The server answers 413 as soon as a chunked body passes the limit, while the client is
    still sending: closing then would reset the connection and the client would lose the answer
    (a `ReadError` where a 413 belongs); the server shuts its side and drains instead."""
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40))  # 2.6 MB
    lines = ["POST /generate HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines += ["Transfer-Encoding: chunked", f"Authorization: Bearer {API_KEY}"]
    with connect(guarded) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = read_until_closed(sock)
    assert status_of(reply) == 413
    assert b"max_request_bytes" in reply


def test_a_body_slower_than_body_timeout_is_408_and_closed(guarded):
    with connect(guarded) as sock:
        sock.sendall(head("/generate", 100, key=True) + b'{"inputs": ')  # then nothing
        reply = read_until_closed(sock)
    assert status_of(reply) == 408
    assert b"body_timeout" in reply


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/responses", "/unknown"])
def test_no_key_is_401_before_the_body_is_read(guarded, path):
    with connect(guarded) as sock:
        sock.sendall(head(path, 1_000_000, key=False))  # a body announced, never sent
        reply = read_until_closed(sock)  # the answer needs none of it, and ends the connection
    assert status_of(reply) == 401


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_invalid_json_without_the_key_is_401_not_422(guarded, path):
    headers = {"content-type": "application/json"}
    reply = httpx.post(f"{guarded.url}{path}", content=b"{not json", headers=headers, timeout=WAIT)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"


def test_health_the_page_and_by_default_metrics_and_info_need_no_key(guarded):
    for path in ("/health", "/", "/metrics", "/info", "/openapi.json", "/docs"):
        assert httpx.get(f"{guarded.url}{path}", timeout=WAIT).status_code == 200, path


def test_info_shows_the_connection_limits(guarded):
    info = httpx.get(f"{guarded.url}/info", timeout=WAIT).json()
    assert info["header_timeout"] == TIMEOUT
    assert info["body_timeout"] == TIMEOUT
    assert info["max_header_bytes"] == HEAD_LIMIT
    assert info["max_connections"] == 256
    assert info["sse_send_timeout"] == 30.0
    assert info["protect_metrics"] is False


def test_protect_metrics_puts_the_service_pages_behind_the_key(scripted_checkpoint_dir):
    with running_server(scripted_checkpoint_dir, api_key=API_KEY, protect_metrics=True) as server:
        keyed = {"Authorization": f"Bearer {API_KEY}"}
        for path in ("/metrics", "/info", "/openapi.json", "/docs"):
            assert httpx.get(f"{server.url}{path}", timeout=WAIT).status_code == 401, path
            reply = httpx.get(f"{server.url}{path}", headers=keyed, timeout=WAIT)
            assert reply.status_code == 200, path
        for path in ("/health", "/"):
            assert httpx.get(f"{server.url}{path}", timeout=WAIT).status_code == 200, path


def test_beyond_max_connections_a_request_is_503_and_a_stream_counts(scripted_checkpoint_dir):
    settings = {"max_connections": 3, "max_new_tokens": 4000}
    with running_server(scripted_checkpoint_dir, **settings) as server:
        body = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
        with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=WAIT) as stream:
            assert stream.status_code == 200
            idle = connect(server)  # an open connection that has sent nothing yet
            with idle:
                reply = httpx.get(f"{server.url}/health", timeout=WAIT)
                assert reply.status_code == 503
        assert httpx.get(f"{server.url}/health", timeout=WAIT).status_code == 200
