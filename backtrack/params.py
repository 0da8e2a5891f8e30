"""The request vocabulary: every generation parameter, decoding mode and backtrack policy, once.

`GenerationParams` is the one definition (in the spirit of vLLM's `SamplingParams`): each field's
type, default, range and docstring live here and nowhere else. The TGI and OpenAI request models
(`server.api.vocabulary`) are derived from its fields, `/info` publishes `describe()`,
and the Python client, the terminal viewer and the web page build their parameters, flags and
controls from that description. Adding a parameter is one field here plus its behaviour.

Names follow TGI (`max_new_tokens`, `temperature`, `top_k`, `top_p`, ...) plus the backtrack
ones. Invalid values raise `InvalidParameter` (a `ValueError`) whose message starts with the field
name, so the HTTP layer can answer 422 naming the field. Torch-free: clients import it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from backtrack.validation import problems

Mode = Literal["rewind", "keep"]
BacktrackPolicy = Literal["argmax", "threshold", "sample", "never"]
MODES: tuple[Mode, ...] = get_args(Mode)
POLICIES: tuple[BacktrackPolicy, ...] = get_args(BacktrackPolicy)
MIN_TEMPERATURE = 1e-2
"""Below it logits / temperature overflow to inf and sampling fails (vLLM clamps here too)."""
MAX_SEED = 2**64 - 1
"""torch.Generator.manual_seed takes 64-bit seeds."""
PENALTY_RANGE = (1e-2, 100.0)
"""A repetition penalty outside it overflows the scores of repeated tokens."""


def _hint(text: str) -> dict[str, Any]:
    """Extra words for the error message of a field (kept out of the range itself)."""
    return {"x-hint": text}


class GenerationParams(BaseModel):
    """How one request is decoded. Construct with keywords; a bad value raises InvalidParameter."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False, frozen=False
    )

    max_new_tokens: int = Field(64, ge=1)
    """Upper bound on the visible output length; deleted tokens do not count against it."""
    do_sample: bool = False
    """Sample ordinary tokens (temperature, top_k, top_p, min_p apply); off means greedy."""
    temperature: float = Field(
        1.0, ge=MIN_TEMPERATURE, json_schema_extra=_hint("(use do_sample false for greedy)")
    )
    """Sampling temperature of ordinary tokens; the backtrack decision stays untempered."""
    top_k: int | None = Field(None, ge=1)
    """Sample among the k most likely ordinary tokens."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens whose probability mass reaches top_p."""
    min_p: float | None = Field(None, ge=0, le=1)
    """Drop tokens less likely than min_p times the most likely one."""
    repetition_penalty: float | None = Field(None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    """Penalty on the scores of tokens already in the context (1 is none)."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED, json_schema_extra=_hint("(2**64 - 1)"))
    """Seed of the request's sampler, for reproducible runs (random when unset)."""
    stop: list[str] = Field(
        default_factory=list,
        json_schema_extra={"x-message": "stop sequences must not be empty strings"},
    )
    """Stop sequences, matched on the visible text after deletions and never part of the output."""
    max_backtracks: int = Field(16, ge=0)
    """Deletions allowed per request; once spent, the rest is decoded without backtracking."""
    max_backtrack_depth: int = Field(8, ge=1)
    """How far behind the furthest position ever reached a deletion may go."""
    mode: Mode = "rewind"
    """`rewind` drops the token from the KV cache; `keep` leaves BT and it in the context."""
    backtrack_policy: BacktrackPolicy = "argmax"
    """How BT is decided: argmax / threshold of the untempered distribution, sampled, or never."""
    backtrack_threshold: float = Field(0.3, gt=0, lt=1)
    """p(BT) above which the `threshold` policy deletes."""
    ignore_eos: bool = False
    """Never end on EOS (EOS is not drawn): load tests ask for exactly max_new_tokens."""
    min_tokens: int = Field(0, ge=0)
    """EOS is not drawn before the visible output has this many tokens."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if not all(stop):
            raise ValueError("empty stop sequence")
        return stop

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise InvalidParameter.from_validation(type(self), error) from None


class InvalidParameter(ValueError):
    """A parameter out of range; `field` names it for the 422 answer."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name} {message}")
        self.field = field_name

    @classmethod
    def from_validation(cls, model: type[BaseModel], error: ValidationError) -> InvalidParameter:
        """The first error, worded from the field's declared range or choices."""
        first = problems(error.errors())[0]
        name = str(first.location[0]) if first.location else "parameters"
        info = model.model_fields.get(name)
        if info is None:
            return cls(name, "is not a generation parameter")
        kind = first.kind
        if kind.endswith(("_type", "_parsing")) or kind in ("int_from_float", "missing"):
            return cls(name, first.message[:1].lower() + first.message[1:])
        return cls(name, rule_text(info) or first.message)


def rule_text(info: FieldInfo) -> str:
    """`must be in (0, 1]`, `must be at least 1`, `must be one of rewind, keep`: from the field."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "x-message" in extra:
        return str(extra["x-message"])
    choices = literal_choices(info.annotation)
    if choices:
        return f"must be one of {', '.join(choices)}"
    bounds = _bounds(info)
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if low is not None and high is not None:
        left, right = "[" if "ge" in bounds else "(", "]" if "le" in bounds else ")"
        text = f"must be in {left}{low}, {high}{right}"
    elif low is not None:
        text = f"must be at least {low}" if "ge" in bounds else f"must be greater than {low}"
    elif high is not None:
        text = f"must be at most {high}" if "le" in bounds else f"must be less than {high}"
    else:
        return ""
    hint = extra.get("x-hint")
    return f"{text} {hint}" if hint else text


def _bounds(info: FieldInfo) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(item, key, None)
            if value is not None:
                bounds[key] = value
    return bounds


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) annotation."""
    if get_origin(annotation) is Literal:
        return tuple(get_args(annotation))
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return tuple(get_args(arg))
    return ()


def _json_type(annotation: Any) -> tuple[str, bool]:
    """(JSON type name, nullable) of a field's annotation."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    nullable = len(args) < len(get_args(annotation))
    base = args[0] if nullable and len(args) == 1 else annotation
    if literal_choices(base):
        return "string", nullable
    origin = get_origin(base) or base
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return names.get(origin, "string"), nullable


def describe(model: type[GenerationParams] = GenerationParams) -> list[dict[str, Any]]:
    """Every field as `{name, type, nullable, default, description, [minimum...], [choices]}`.

    What `/info` sends as `parameters`: the web page builds its controls from it, the viewer its
    flags and the client its parameter names, so none of them spells a parameter out.
    """
    described = []
    for name, info in model.model_fields.items():
        kind, nullable = _json_type(info.annotation)
        entry: dict[str, Any] = {
            "name": name,
            "type": kind,
            "nullable": nullable,
            "default": info.get_default(call_default_factory=True),
            "description": info.description or "",
        }
        bounds = _bounds(info)
        names = {
            "ge": "minimum",
            "gt": "exclusiveMinimum",
            "le": "maximum",
            "lt": "exclusiveMaximum",
        }
        entry.update({names[key]: value for key, value in bounds.items()})
        choices = literal_choices(info.annotation)
        if choices:
            entry["choices"] = list(choices)
        described.append(entry)
    return described
