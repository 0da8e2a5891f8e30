"""Typed events: the server's own protocol module, strict about order, lenient about extras."""

from __future__ import annotations

import dataclasses
import json

import pytest

import backtrack.events as server_events
from clients import events as client_events
from clients.errors import ProtocolError, StreamError
from clients.events import TokenEvent, VisibleText, parse_event
from clients.sse import ServerSentEvent


@pytest.mark.parametrize("name", ["TokenEvent", "BacktrackEvent", "DoneEvent", "VisibleText"])
def test_the_client_uses_the_servers_protocol_module_not_a_copy(name):
    assert getattr(client_events, name) is getattr(server_events, name)


def test_a_field_added_to_an_event_reaches_the_client_parser(monkeypatch):
    """The client parses with the protocol's own dataclasses: a new field needs no client edit."""

    @dataclasses.dataclass(frozen=True)
    class Token(server_events.TokenEvent):
        special: bool = False

    monkeypatch.setitem(server_events.EVENT_TYPES, "token", Token)
    data = json.dumps({"index": 0, "id": 5, "text": "a", "logprob": -0.5, "special": True})
    assert parse_event(ServerSentEvent("token", data)) == Token(0, 5, "a", -0.5, special=True)


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
    with pytest.raises(server_events.ProtocolViolation):
        visible.apply(TokenEvent(2, 1, "b", 0.0))
    with pytest.raises(server_events.ProtocolViolation):
        visible.apply(client_events.BacktrackEvent(1, 1, "b", 1))
    assert visible.text == "a"


def test_the_decoder_reports_events_out_of_order_as_protocol_errors():
    decoder = client_events.StreamDecoder(200)
    token = json.dumps({"index": 1, "id": 5, "text": "a", "logprob": 0.0})
    with pytest.raises(ProtocolError, match="index 1"):
        decoder.on_message(ServerSentEvent("token", token))
