"""When to retry a refused request, and how long to wait first.

An overloaded server answers 429 (or 503) at once with `Retry-After`; the client waits what the
server asked and tries again, a bounded number of times. A server that asks for a wait longer
than the client is willing to spend gets no early retry (it would only be refused again): the
error is raised instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from clients.errors import APIError, OverloadedError, UnavailableError


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    """Retries after the first attempt; 0 turns retrying off."""
    max_wait: float = 30.0
    """Longest single wait in seconds; a longer `Retry-After` raises instead of waiting."""
    backoff: float = 0.5
    """First wait when the server gives no `Retry-After`; doubles on each retry."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        if self.max_wait < 0 or self.backoff < 0:
            raise ValueError("max_wait and backoff must not be negative")

    def delay(self, attempt: int, error: APIError) -> float | None:
        """Seconds to wait before retry number `attempt` (0-based), or None to give up."""
        retry_after = error.retry_after
        retryable = isinstance(error, OverloadedError) or (
            isinstance(error, UnavailableError) and retry_after is not None
        )
        if not retryable or attempt >= self.max_retries:
            return None
        wait = retry_after if retry_after is not None else self.backoff * 2**attempt
        if wait > self.max_wait:
            return None if retry_after is not None else self.max_wait
        return wait
