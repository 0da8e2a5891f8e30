"""Retry-After parsing and the retry decision."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from clients.errors import APIError, OverloadedError, UnavailableError, ValidationError
from clients.retry import RetryPolicy, parse_retry_after


def test_retry_after_seconds_and_http_dates():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:05 GMT", now=now) == 5.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_overloaded_is_retried_as_the_server_asks_up_to_the_limit():
    policy = RetryPolicy(max_retries=2, max_wait=5.0)
    refused = OverloadedError(429, "full", "overloaded", retry_after=1.5)
    assert [policy.delay(attempt, refused) for attempt in range(3)] == [1.5, 1.5, None]


def test_without_retry_after_the_wait_backs_off_and_is_capped():
    policy = RetryPolicy(max_retries=5, max_wait=1.0, backoff=0.25)
    refused = OverloadedError(429, "full", "overloaded")
    assert [policy.delay(attempt, refused) for attempt in range(4)] == [0.25, 0.5, 1.0, 1.0]


def test_a_longer_wait_than_allowed_raises_instead_of_retrying_early():
    policy = RetryPolicy(max_wait=2.0)
    assert policy.delay(0, OverloadedError(429, "full", "overloaded", retry_after=60)) is None


@pytest.mark.parametrize(
    "error",
    [
        ValidationError(422, "temperature must be strictly positive"),
        APIError(500, "boom"),
        UnavailableError(503, "loading"),
    ],
)
def test_other_errors_are_not_retried(error):
    assert RetryPolicy().delay(0, error) is None


def test_unavailable_with_retry_after_is_retried():
    assert RetryPolicy().delay(0, UnavailableError(503, "busy", retry_after=0.5)) == 0.5
