"""Typed events: in step with the server's dataclasses, strict about order, lenient about extras."""

from __future__ import annotations

import dataclasses
import json

import pytest

import backtrack.events as server_events
from clients import events as client_events
from clients.errors import ProtocolError, StreamError
from clients.events import TokenEvent, VisibleText, parse_event
from clients.sse import ServerSentEvent


@pytest.mark.parametrize("name", ["TokenEvent", "BacktrackEvent", "DoneEvent"])
def test_client_events_mirror_the_server_payloads(name):
    server_fields = [field.name for field in dataclasses.fields(getattr(server_events, name))]
    client_fields = [field.name for field in dataclasses.fields(getattr(client_events, name))]
    assert client_fields == server_fields
    assert getattr(client_events, name).kind == getattr(server_events, name).kind


def test_unknown_fields_are_ignored_and_unknown_events_skipped():
    data = json.dumps({"index": 0, "id": 5, "text": "a", "logprob": -0.5, "special": False})
    assert parse_event(ServerSentEvent("token", data)) == TokenEvent(0, 5, "a", -0.5)
    assert parse_event(ServerSentEvent("ping", "{}")) is None


@pytest.mark.parametrize("data", ['{"index": 0}', "not json", "[1, 2]"])
def test_malformed_payloads_are_protocol_errors(data):
    with pytest.raises(ProtocolError):
        parse_event(ServerSentEvent("token", data))


def test_an_error_event_raises_with_the_server_message():
    data = json.dumps({"error": "worker died", "error_type": "generation"})
    with pytest.raises(StreamError) as caught:
        parse_event(ServerSentEvent("error", data), status=200)
    assert (caught.value.message, caught.value.error_type, caught.value.status) == (
        "worker died",
        "generation",
        200,
    )


def test_events_out_of_order_are_refused():
    visible = VisibleText()
    visible.apply(TokenEvent(0, 1, "a", 0.0))
    with pytest.raises(ProtocolError):
        visible.apply(TokenEvent(2, 1, "b", 0.0))
    with pytest.raises(ProtocolError):
        visible.apply(client_events.BacktrackEvent(1, 1, "b", 1))
    assert visible.text == "a"
