"""Request bodies of every endpoint (pydantic), and their translation into GenerationParams.

Types are checked by pydantic (422 naming the field); ranges by `GenerationParams` itself
(`InvalidParameter`, also 422 naming the field); limits of this server by `Limits`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backtrack.params import GenerationParams, InvalidParameter
from server.service import Limits


def _off(value: Any) -> Any:
    """Refuse (422 naming the field) an option this server accepts only when it is off."""
    if value is True or value not in (None, False, 0, {}, []):
        raise ValueError("is not supported by this server (leave it unset)")
    return value


def _one(value: Any) -> Any:
    """Like `_off`, for options whose neutral value is 1 (best_of, typical_p)."""
    if value is not None and (value is True or value != 1):
        raise ValueError("is not supported by this server (leave it unset or 1)")
    return value


class BacktrackOptions(BaseModel):
    """The backtrack parameters every generation endpoint accepts beside its own."""

    max_backtracks: int | None = None
    max_backtrack_depth: int | None = None
    mode: Literal["rewind", "keep"] | None = None
    backtrack_policy: Literal["argmax", "threshold", "sample", "never"] | None = None
    backtrack_threshold: float | None = None


class Parameters(BacktrackOptions):
    """TGI's parameter names plus the backtrack ones."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    do_sample: bool = False
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    details: bool = False
    hold_back_deletable: bool | None = None
    """Never stream a token a later backtrack could delete (default: off on /generate, on for TGI)."""
    # TGI's clients send these with every request; only their neutral values are accepted.
    return_full_text: bool | None = None
    decoder_input_details: bool = False
    truncate: int | None = None
    watermark: bool = False
    typical_p: float | None = None
    best_of: int | None = None
    top_n_tokens: int | None = None
    frequency_penalty: float | None = None
    grammar: Any = None
    adapter_id: str | None = None

    _check_off = field_validator(
        "return_full_text",
        "decoder_input_details",
        "truncate",
        "watermark",
        "top_n_tokens",
        "frequency_penalty",
        "grammar",
        "adapter_id",
    )(_off)
    _check_one = field_validator("typical_p", "best_of")(_one)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIOptions(BacktrackOptions):
    """Fields shared by /v1/completions and /v1/chat/completions (unknown ones are ignored)."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    hold_back_deletable: bool = True
    """Default on: OpenAI clients cannot erase, so a streamed token is never one later deleted."""
    user: str | None = None
    ignore_eos: bool = False
    """vLLM's extension: never stop on EOS (load tests ask for exactly max_tokens)."""
    min_tokens: int = 0
    """vLLM's extension: EOS is not drawn before this many tokens."""
    # Parts of OpenAI's API this server does not implement: only their neutral values pass.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    _check_off = field_validator(
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "echo",
        "suffix",
        "tools",
        "response_format",
    )(_off)
    _check_one = field_validator("best_of")(_one)


class CompletionRequest(OpenAIOptions):
    prompt: str | list[str]
    max_tokens: int | None = 16


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(OpenAIOptions):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def build_params(
    limits: Limits,
    *,
    max_new_tokens: int | None,
    field_prefix: str,
    options: BacktrackOptions,
    sampling: dict[str, Any],
    stop: list[str],
    max_tokens_name: str = "max_new_tokens",
) -> GenerationParams:
    """GenerationParams from request fields; InvalidParameter names the request's own field."""
    if max_new_tokens is None:
        max_new_tokens = min(limits.default_max_new_tokens, limits.max_new_tokens)
    _at_most(f"{field_prefix}{max_tokens_name}", max_new_tokens, limits.max_new_tokens)
    check_stop(stop, limits, f"{field_prefix}stop")
    values = {key: value for key, value in sampling.items() if value is not None}
    values.update(backtrack_values(options, limits, field_prefix))
    try:
        return GenerationParams(max_new_tokens=max_new_tokens, stop=stop, **values)
    except InvalidParameter as error:
        message = str(error).removeprefix(error.field).strip()
        name = max_tokens_name if error.field == "max_new_tokens" else error.field
        raise InvalidParameter(f"{field_prefix}{name}", message) from None


def _at_most(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise InvalidParameter(field, f"must be at most {limit} (got {value})")


def check_stop(stop: list[str], limits: Limits, field: str) -> None:
    """Stop sequences are matched at every step for every row: their number and length cost
    the whole batch, so both are capped (TGI's and OpenAI's limit is 4 sequences)."""
    if len(stop) > limits.max_stop_sequences:
        raise InvalidParameter(
            field, f"has {len(stop)} sequences; the limit is {limits.max_stop_sequences}"
        )
    longest = max(map(len, stop), default=0)
    if longest > limits.max_stop_sequence_chars:
        raise InvalidParameter(
            field,
            f"has a sequence of {longest} characters; "
            f"the limit is {limits.max_stop_sequence_chars}",
        )


def backtrack_values(options: BacktrackOptions, limits: Limits, prefix: str) -> dict[str, Any]:
    """The backtrack options given, within this server's caps; unset caps default to at most
    the server's cap, so a lowered cap never refuses a request that did not ask."""
    values = options.model_dump(exclude_none=True, include=set(BacktrackOptions.model_fields))
    caps = {
        "max_backtracks": limits.max_backtracks,
        "max_backtrack_depth": limits.max_backtrack_depth,
    }
    defaults = GenerationParams()
    for name, cap in caps.items():
        if name in values:
            _at_most(f"{prefix}{name}", values[name], cap)
        else:
            values[name] = min(getattr(defaults, name), cap)
    return values


def tgi_params(parameters: Parameters, limits: Limits) -> GenerationParams:
    sampling = {
        "temperature": parameters.temperature,
        "top_k": parameters.top_k,
        "top_p": parameters.top_p,
        "min_p": parameters.min_p,
        "repetition_penalty": parameters.repetition_penalty,
        "seed": parameters.seed,
        "do_sample": parameters.do_sample,
    }
    return build_params(
        limits,
        max_new_tokens=parameters.max_new_tokens,
        field_prefix="parameters.",
        options=parameters,
        sampling=sampling,
        stop=parameters.stop,
    )


def openai_params(
    body: CompletionRequest | ChatCompletionRequest, limits: Limits
) -> GenerationParams:
    """OpenAI semantics: sampling unless temperature is 0 (which means greedy)."""
    if body.n != 1:
        raise InvalidParameter("n", "must be 1 (one choice per request)")
    greedy = body.temperature == 0
    sampling = {
        "temperature": None if greedy else body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "seed": body.seed,
        "do_sample": not greedy,
        "ignore_eos": body.ignore_eos,
        "min_tokens": body.min_tokens,
    }
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    max_tokens = body.max_tokens
    name = "max_tokens"
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens, name = body.max_completion_tokens, "max_completion_tokens"
    return build_params(
        limits,
        max_new_tokens=max_tokens,
        field_prefix="",
        options=body,
        sampling=sampling,
        stop=stop,
        max_tokens_name=name,
    )


def apply_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Write this server's limits into the OpenAPI schema (maxItems, maxLength, maximum), so
    clients can read them from `/openapi.json` as well as from `/info`."""
    bounds = {
        "stop": {
            "maxItems": limits.max_stop_sequences,
            "maxLength": limits.max_stop_sequence_chars,
        },
        "max_backtracks": {"maximum": limits.max_backtracks},
        "max_backtrack_depth": {"maximum": limits.max_backtrack_depth},
        "max_new_tokens": {"maximum": limits.max_new_tokens},
        "max_tokens": {"maximum": limits.max_new_tokens},
        "max_completion_tokens": {"maximum": limits.max_new_tokens},
        "inputs": {"maxLength": limits.max_input_chars},
        "prompt": {"maxLength": limits.max_input_chars},
    }
    for component in schema.get("components", {}).get("schemas", {}).values():
        for name, prop in component.get("properties", {}).items():
            if name in bounds:
                _bound(prop, bounds[name])
    return schema


def _bound(prop: dict[str, Any], bounds: dict[str, int]) -> None:
    """Put each bound on the branch of the property's type it applies to."""
    for branch in prop.get("anyOf", [prop]):
        kind = branch.get("type")
        if kind == "array":
            if "maxItems" in bounds:
                branch["maxItems"] = bounds["maxItems"]
            if "maxLength" in bounds:
                branch.setdefault("items", {})["maxLength"] = bounds["maxLength"]
        elif kind == "string" and "maxLength" in bounds:
            branch["maxLength"] = bounds["maxLength"]
        elif kind == "integer" and "maximum" in bounds:
            branch["maximum"] = bounds["maximum"]
