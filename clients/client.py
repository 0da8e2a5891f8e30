"""Python clients of the native API: `BacktrackClient` (sync) and `AsyncBacktrackClient`.

    with BacktrackClient("http://127.0.0.1:8000") as client:
        print(client.generate("123+456=", max_new_tokens=8).generated_text)
        for update in client.stream("123+456=", max_new_tokens=8):
            print(update.event.kind, repr(update.text))

`generate` posts `POST /generate` and returns the final text (after deletions) with the server's
details; `stream` posts the same body with `"stream": true` and yields a `StreamUpdate` (the typed
event and the visible text after it) per token, backtrack and done event. Server errors become
`APIError` subclasses with the server's message and status; 429 (and 503 with `Retry-After`) are
retried as `RetryPolicy` says, before any event has been yielded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from clients.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ProtocolError,
    error_from_response,
)
from clients.events import StreamDecoder, StreamUpdate
from clients.parameters import Parameters
from clients.retry import RetryPolicy, parse_retry_after
from clients.sse import SSEParser

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch and pydantic
    from typing_extensions import Unpack

DEFAULT_URL = "http://127.0.0.1:8000"


PARAMETER_NAMES = frozenset(Parameters.__annotations__)
"""Generation parameters (`backtrack.params.GenerationParams`, the server's own vocabulary) and
the request options (`clients.parameters`, generated from it); anything else fails before any
request is sent."""


@dataclass(frozen=True)
class Details:
    """What the server reports about a finished non-streaming generation."""

    finish_reason: str
    """TGI's names: eos_token | length | stop_sequence (`length` for a request cut short)."""
    generated_tokens: int
    backtracks: int = 0
    seed: int | None = None
    deleted_tokens: list[dict[str, Any]] = field(default_factory=list)
    """`{"id", "text", "index"}` of every deleted token, in deletion order."""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    """The final tokens: `{"id", "text", "logprob", "special"}`."""
    prompt_tokens: int = 0
    sampled_tokens: int = 0
    ignored_backtracks: int = 0
    backtrack_budget_exhausted: bool = False
    """Every allowed deletion was spent; the rest was written without backtracking."""
    backtrack_finish_reason: str | None = None
    """The server's own reason: eos, stop, length, or why it was cut short (timeout, ...)."""


@dataclass(frozen=True)
class Generation:
    """The answer of a non-streaming request."""

    generated_text: str
    """The final text, after every deletion."""
    details: Details | None
    """Present unless the request said `details=False`."""


def request_body(inputs: str, parameters: Parameters, stream: bool) -> dict[str, Any]:
    """The JSON body; a name outside the vocabulary fails here, before any request is sent."""
    unknown = sorted(set(parameters) - PARAMETER_NAMES)
    if unknown:
        raise TypeError(f"unknown generation parameter(s): {', '.join(unknown)}")
    return {"inputs": inputs, "parameters": dict(parameters), "stream": stream}


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"accept": "application/json, text/event-stream", **(extra or {})}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """A float bounds connecting and every wait for the next chunk of a stream."""
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def _generation(response: httpx.Response) -> Generation:
    """Parse the JSON answer; unknown keys are ignored so newer servers keep working."""
    try:
        payload = response.json()
        raw = payload.get("details")
        known = {f.name for f in fields(Details)}
        details = Details(**{k: v for k, v in raw.items() if k in known}) if raw else None
        return Generation(str(payload["generated_text"]), details)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"unexpected answer: {response.text[:200]!r}") from exc


def _refusal(response: httpx.Response) -> APIError:
    """The exception for an error answer whose body has been read."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return error_from_response(response.status_code, response.content, retry_after)


def _check_event_stream(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise ProtocolError(f"expected an event stream, got {content_type or 'no content type'}")


@contextmanager
def _transport_errors() -> Iterator[None]:
    """httpx's exceptions become the client's, so callers catch one family."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(f"connection failed: {exc}") from exc


class BacktrackClient:
    """Blocking client. Reuses one connection pool; close it (or use `with`) when done."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, timeout=_timeout(timeout), headers=_headers(api_key, headers)
        )

    def generate(self, inputs: str, **parameters: Unpack[Parameters]) -> Generation:
        """The final text and, unless `details=False`, the server's details."""
        parameters.setdefault("details", True)
        with self._post(request_body(inputs, parameters, stream=False), stream=False) as response:
            return _generation(response)

    def stream(self, inputs: str, **parameters: Unpack[Parameters]) -> Iterator[StreamUpdate]:
        """Yield every token, backtrack and done event with the visible text after it.

        Leaving the loop early (or calling `close()` on the iterator you kept) closes the
        connection, which cancels the generation on the server.
        """
        with self._post(request_body(inputs, parameters, stream=True), stream=True) as response:
            _check_event_stream(response)
            decoder, parser = StreamDecoder(response.status_code), SSEParser()
            with _transport_errors():
                for chunk in response.iter_bytes():
                    for message in parser.feed(chunk):
                        update = decoder.on_message(message)
                        if update is not None:
                            yield update
                        if decoder.finished:
                            return
            decoder.check_complete()

    @contextmanager
    def _post(self, body: dict[str, Any], stream: bool) -> Iterator[httpx.Response]:
        """Send `body`, retrying refusals; yields a successful response, closed afterwards."""
        attempt = 0
        while True:
            with _transport_errors():
                request = self._http.build_request("POST", "/generate", json=body)
                response = self._http.send(request, stream=stream)
                if response.is_success:
                    break
                response.read()
                response.close()
            error = _refusal(response)
            delay = self.retry.delay(attempt, error)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BacktrackClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncBacktrackClient:
    """`BacktrackClient` for asyncio: the same arguments, `await generate`, `async for stream`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=_timeout(timeout), headers=_headers(api_key, headers)
        )

    async def generate(self, inputs: str, **parameters: Unpack[Parameters]) -> Generation:
        """The final text and, unless `details=False`, the server's details."""
        parameters.setdefault("details", True)
        body = request_body(inputs, parameters, stream=False)
        async with self._post(body, stream=False) as response:
            return _generation(response)

    async def stream(
        self, inputs: str, **parameters: Unpack[Parameters]
    ) -> AsyncIterator[StreamUpdate]:
        """Yield every token, backtrack and done event with the visible text after it.

        Leaving the loop early and closing the iterator (`aclose()`) cancels the generation.
        """
        body = request_body(inputs, parameters, stream=True)
        async with self._post(body, stream=True) as response:
            _check_event_stream(response)
            decoder, parser = StreamDecoder(response.status_code), SSEParser()
            with _transport_errors():
                async for chunk in response.aiter_bytes():
                    for message in parser.feed(chunk):
                        update = decoder.on_message(message)
                        if update is not None:
                            yield update
                        if decoder.finished:
                            return
            decoder.check_complete()

    @asynccontextmanager
    async def _post(self, body: dict[str, Any], stream: bool) -> AsyncIterator[httpx.Response]:
        attempt = 0
        while True:
            with _transport_errors():
                request = self._http.build_request("POST", "/generate", json=body)
                response = await self._http.send(request, stream=stream)
                if response.is_success:
                    break
                await response.aread()
                await response.aclose()
            error = _refusal(response)
            delay = self.retry.delay(attempt, error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBacktrackClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
