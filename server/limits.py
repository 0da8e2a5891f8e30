"""What this server accepts per request: one table of caps, read by everything that states them.

`CAPS` is the only place a per-request limit is defined. The settings declare their limit
fields from it (`limit_field`), the request models' translation checks against it
(`server.api.vocabulary`), `/info` publishes it (`Limits.published`), and the OpenAPI schema
writes each cap on the request fields it bounds (`Cap.bounds`, `server.api.openapi_schema`).
The docs page's limits table is generated from it (`scripts/gen_reference.py`).

    >>> CAPS["max_stop_sequences"].bounds
    {'stop': 'maxItems'}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

from backtrack.params import GenerationParams

if TYPE_CHECKING:
    from server.settings import Settings


@dataclass(frozen=True)
class Cap:
    """One per-request limit: its setting, default, meaning and the request fields it bounds."""

    name: str
    """The setting (`BACKTRACK_<NAME>`, `--<name>`) and the `/info` key."""
    default: int
    minimum: int
    description: str
    bounds: dict[str, str] = field(default_factory=dict)
    """Request field -> the JSON Schema keyword the cap sets on it (`maximum`, `maxItems`...)."""


def _table(*caps: Cap) -> dict[str, Cap]:
    return {cap.name: cap for cap in caps}


MAX_TOKENS_FIELDS = ("max_new_tokens", "max_tokens", "max_completion_tokens", "max_output_tokens")
CAPS = _table(
    Cap("max_input_tokens", 1024, 1, "longest prompt accepted, in tokens"),
    Cap(
        "max_new_tokens",
        512,
        1,
        "largest max_new_tokens a request may ask for",
        dict.fromkeys(MAX_TOKENS_FIELDS, "maximum"),
    ),
    Cap("default_max_new_tokens", 64, 1, "max_new_tokens when a request gives none"),
    Cap(
        "max_stop_sequences",
        4,
        0,
        "most stop sequences a request may give (TGI and OpenAI: 4)",
        {"stop": "maxItems"},
    ),
    Cap(
        "max_stop_sequence_chars",
        256,
        1,
        "longest stop sequence accepted, in characters",
        {"stop": "maxLength"},
    ),
    Cap(
        "max_backtracks",
        64,
        0,
        "largest max_backtracks a request may ask for",
        {"max_backtracks": "maximum"},
    ),
    Cap(
        "max_backtrack_depth",
        64,
        1,
        "largest max_backtrack_depth a request may ask for",
        {"max_backtrack_depth": "maximum"},
    ),
    Cap(
        "max_scored_logprobs",
        65536,
        1,
        "most log-probabilities one request may ask for: choices x scored tokens (echoed prompt "
        "+ max_tokens) x (alternatives + 1); each costs a forward and a line of the answer",
    ),
    Cap(
        "max_input_chars",
        65536,
        1,
        "longest prompt (all chat messages together) in characters, refused before it is tokenised",
        {"inputs": "maxLength", "prompt": "maxLength", "input": "maxLength"},
    ),
)
"""Every per-request cap, in the order the settings list them."""
PARAMETER_NAMES = frozenset(GenerationParams.model_fields)
CAPPED_PARAMETERS = ("max_backtracks", "max_backtrack_depth")
"""Generation parameters whose unset default is lowered to the server's cap (never refused)."""


CHOICES_LIMIT = "max_choices_per_request"
"""The `/info` key of the places one request may take: `max_request_share` of every place."""


def choices_limit(share: float, slots: int, queue: int) -> int:
    """The choices (prompts x n, one engine place each) one request may take: `share` of the
    decoding slots plus queue places, at least one, so other clients always find room.

    >>> choices_limit(0.5, 16, 64)
    40
    """
    return max(1, math.floor(share * (slots + queue)))


def limit_field(name: str) -> Any:
    """The settings field of cap `name`: its default, its minimum and its description."""
    cap = CAPS[name]
    return Field(cap.default, ge=cap.minimum, description=cap.description)


@dataclass(frozen=True)
class Limits:
    """The caps in effect (from the settings), and what only the loaded model knows."""

    max_input_tokens: int = CAPS["max_input_tokens"].default
    max_new_tokens: int = CAPS["max_new_tokens"].default
    default_max_new_tokens: int = CAPS["default_max_new_tokens"].default
    max_input_chars: int = CAPS["max_input_chars"].default
    max_stop_sequences: int = CAPS["max_stop_sequences"].default
    max_stop_sequence_chars: int = CAPS["max_stop_sequence_chars"].default
    max_backtracks: int = CAPS["max_backtracks"].default
    max_backtrack_depth: int = CAPS["max_backtrack_depth"].default
    max_scored_logprobs: int = CAPS["max_scored_logprobs"].default
    max_choices_per_request: int = choices_limit(0.5, 16, 64)
    """Choices (prompts x n) one request may ask for (`choices_limit` of the settings)."""
    model_id: str | None = None
    """The served model's id: the only `model` the OpenAI routes accept (the schema's enum)."""
    vocab_size: int | None = None
    """Token ids of a token-id prompt are below it (known once the model is loaded)."""
    max_prompt_tokens: int | None = None
    """The input token limit in effect (max_input_tokens within the model's context)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        caps = {name: getattr(settings, name) for name in CAPS}
        share = choices_limit(
            settings.max_request_share, settings.max_concurrent_requests, settings.max_queue_size
        )
        return cls(**caps, max_choices_per_request=share, model_id=settings.served_model_id)

    def cap(self, name: str) -> int:
        """The value in effect of the cap `name` (a key of `CAPS`)."""
        value: int = getattr(self, name)
        return value

    def published(self) -> dict[str, int]:
        """Every cap by its name, as `/info` publishes them (the input token limit in effect,
        within the model's context, once the model is loaded)."""
        caps = {name: self.cap(name) for name in CAPS}
        caps[CHOICES_LIMIT] = self.max_choices_per_request
        if self.max_prompt_tokens is not None:
            caps["max_input_tokens"] = self.max_prompt_tokens
        return caps

    def parameter_maxima(self) -> dict[str, int]:
        """Generation parameter -> the cap on it (`max_new_tokens`, `max_backtracks`...)."""
        return {
            request_field: self.cap(cap.name)
            for cap in CAPS.values()
            for request_field, keyword in cap.bounds.items()
            if keyword == "maximum" and request_field in PARAMETER_NAMES
        }

    def schema_bounds(self) -> dict[str, dict[str, int]]:
        """Request field -> {JSON Schema keyword: value}, for every field a cap bounds."""
        bounds: dict[str, dict[str, int]] = {}
        for cap in CAPS.values():
            for request_field, keyword in cap.bounds.items():
                bounds.setdefault(request_field, {})[keyword] = self.cap(cap.name)
        bounds["n"] = {"maximum": self.max_choices_per_request}  # one prompt's n choices
        return bounds
