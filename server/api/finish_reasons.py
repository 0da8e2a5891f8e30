"""Finish reasons every client can parse: TGI's and OpenAI's closed sets, with ours beside them.

Our reasons (`DoneEvent.finish_reason`) are more than either protocol names: beside eos, stop and
length, a request can be cut short (`timeout`, `shutdown`, `cancelled`) or fail (`error`). TGI's clients refuse any value outside `length | eos_token | stop_sequence`
(text_generation's models raise a ValidationError on the whole answer) and OpenAI documents
`stop | length` (plus reasons for features not served here), so each protocol's `finish_reason`
carries only its own names. Any other reason, known today or added later, reads as `length`:
the answer stopped before the model ended it, which is what `length` tells a client (vLLM's
`abort` outside OpenAI's set is a known break of its clients). Our own reason travels beside it,
in `backtrack_finish_reason`. `error` never reaches these fields: each route turns it into its
protocol's error (a 424 or 500, or an error event in a stream).
"""

from __future__ import annotations

from typing import Literal

TgiFinishReason = Literal["length", "eos_token", "stop_sequence"]
OpenAIFinishReason = Literal["stop", "length"]

EXTENSION_FIELD = "backtrack_finish_reason"
"""Where TGI details and OpenAI choices carry our own reason."""
EXTENSION_DESCRIPTION = (
    "This server's own reason, as the native stream's `done` event names it: eos, stop, "
    "length, or why the request was cut short (timeout, shutdown, cancelled). "
    "An open set: a client should accept values it does not know."
)
TRUNCATED: Literal["length"] = "length"
"""What a request cut short for any reason outside a protocol's set reads as."""

TGI_FINISH_REASONS: dict[str, TgiFinishReason] = {
    "eos": "eos_token",
    "stop": "stop_sequence",
    "length": "length",
}
OPENAI_FINISH_REASONS: dict[str, OpenAIFinishReason] = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
}


def tgi_finish_reason(reason: str) -> TgiFinishReason:
    """TGI's name for one of our reasons; `length` for every reason TGI has no name for."""
    return TGI_FINISH_REASONS.get(reason, TRUNCATED)


def openai_finish_reason(reason: str) -> OpenAIFinishReason:
    """OpenAI's name for one of our reasons; `length` for every reason OpenAI has no name for."""
    return OPENAI_FINISH_REASONS.get(reason, TRUNCATED)
