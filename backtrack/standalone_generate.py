"""Backtracking `generate` for plain transformers: every checkpoint's `custom_generate/generate.py`.

    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    ids = model.generate(**tokenizer("123+456=", return_tensors="pt"), max_new_tokens=8)

With `trust_remote_code=True` transformers replaces `model.generate` with `generate` below, which
decodes the way the project's server does: when the model emits `<|BACKTRACK|>` (BT), the last
visible token is erased and decoding goes on; it returns the prompt and the final text after
every deletion. Copied verbatim into each checkpoint, this file imports only the standard library,
torch and transformers. The rules are the server's (`docs/decoding.md`):

* the decision "backtrack or not" is taken on the model's untempered distribution (`argmax`, or
  `threshold` on p(BT)); `sample` draws BT like any token and `never` suppresses it. Temperature,
  top-k, top-p, min-p and the repetition penalty shape only the ordinary token;
* `mode="rewind"` drops the erased token from the KV cache and bans it at its position (a ban
  holds only for its prefix: a deletion further back drops it); `mode="keep"` feeds BT instead;
* a deletion never reaches into the prompt, nor more than `max_backtrack_depth` tokens behind the
  furthest position reached; a BT with nothing it may delete is ignored (the best ordinary token
  follows). Once `max_backtracks` deletions are spent, BT is no candidate for the rest of the call;
* barring EOS (`ignore_eos`, `min_tokens`/`min_new_tokens`) never hands EOS's probability to BT;
* `max_new_tokens` bounds the visible output; when it is full the last token is reviewed once
  more: BT deletes it and decoding goes on, anything else ends the row.

Settings: the call's keywords, then `backtrack.json`'s `decoding`, then the server's defaults.
Rows of a batch are decoded one after the other, independently.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.utils import ModelOutput, cached_file

MODES = ("rewind", "keep")
POLICIES = ("argmax", "threshold", "sample", "never")
DECODING: tuple[str, ...] = ("mode", "backtrack_policy", "backtrack_threshold")
DECODING += ("max_backtracks", "max_backtrack_depth")
"""The settings `backtrack.json`'s `decoding` may give defaults to (`Settings` holds the server's)."""
FROM_CONFIG: tuple[str, ...] = ("max_new_tokens", "max_length", "min_new_tokens", "min_length")
FROM_CONFIG += ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")
"""Generation-config entries with a `Settings` field of the same name and meaning."""
DEFAULT_MAX_NEW_TOKENS = 64
EXTRA_KEYWORDS = (*DECODING, "ignore_eos", "min_tokens", "seed", "backtrack_token_id")
HANDLED = {*FROM_CONFIG, "eos_token_id", "pad_token_id", "bos_token_id", "return_dict_in_generate"}
HANDLED |= {"num_beams", "num_return_sequences"}
HANDLED |= {"use_cache", "cache_implementation", "transformers_version", "_from_model_config"}
"""Generation-config entries read here, or without effect on this decoding (the cache is ours)."""
NEG_INF = float("-inf")


@dataclass
class BacktrackGenerateOutput(ModelOutput):
    """What `return_dict_in_generate=True` returns: the sequences and how each row got there."""

    sequences: torch.Tensor | None = None
    edits: list[list[tuple[str, int, int]]] | None = None
    """Per row, in order: `("token", index, id)` appended, `("backtrack", index, id)` erased."""
    finish_reasons: list[str] | None = None
    """Per row: `eos` or `length`."""


@dataclass
class Settings:
    """One call's decoding parameters, checked: the server's names, defaults and ranges."""

    backtrack_id: int
    eos_ids: set[int]
    mode: str = "rewind"
    backtrack_policy: str = "argmax"
    backtrack_threshold: float = 0.3
    max_backtracks: int = 16
    max_backtrack_depth: int = 8
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_tokens: int | None = None
    min_new_tokens: int | None = None
    min_length: int | None = None
    ignore_eos: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    max_context: int = 1 << 30

    def check(self) -> None:
        rules = [
            ("mode", self.mode in MODES, f"must be one of {', '.join(MODES)}"),
            ("backtrack_policy", self.backtrack_policy in POLICIES, f"must be one of {POLICIES}"),
            ("backtrack_threshold", 0 < self.backtrack_threshold < 1, "must be in (0, 1)"),
            ("max_backtracks", self.max_backtracks >= 0, "must be at least 0"),
            ("max_backtrack_depth", self.max_backtrack_depth >= 1, "must be at least 1"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "must be at least 1"),
            ("min_tokens", (self.min_tokens or 0) >= 0, "must be at least 0"),
            ("temperature", not self.do_sample or self.temperature >= 1e-2, "must be >= 0.01"),
            ("top_k", (self.top_k or 0) >= 0, "must be at least 1"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("min_p", self.min_p is None or 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("repetition_penalty", 1e-2 <= self.repetition_penalty <= 100, "must be in [0.01, 100]"),
        ]  # fmt: skip
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} {rule}")

    def limits(self, prompt_length: int) -> tuple[int, int]:
        """(max visible tokens, visible tokens before EOS may end the row) for one prompt."""
        if self.max_new_tokens is None and self.max_length is not None:
            most = self.max_length - prompt_length
        else:
            most = self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        if most < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room after the prompt")
        least = self.min_tokens if self.min_tokens is not None else self.min_new_tokens
        if least is None:
            least = max(0, (self.min_length or 0) - prompt_length)
        return most, least


def checkpoint_metadata(model: Any) -> dict[str, Any]:
    """The checkpoint's `backtrack.json` (a local directory or a Hub repository), or {}."""
    source = str(getattr(model, "name_or_path", "") or "")
    if not source:  # a model built in memory
        return {}
    try:
        local = Path(source).is_dir()
        path = Path(source) / "backtrack.json" if local else cached_file(source, "backtrack.json")
    except (OSError, ValueError):  # neither a directory nor a reachable repository
        return {}
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else {}


def resolve_settings(model: Any, config: GenerationConfig, extra: dict[str, Any]) -> Settings:
    """Keywords over `backtrack.json`'s `decoding` over the defaults; anything else refused."""
    metadata = checkpoint_metadata(model)
    decoding = metadata.get("decoding") or {}
    for name in decoding:
        if name not in DECODING:
            raise ValueError(f"backtrack.json decoding: {name} is not a backtracking setting")
    backtrack_id = extra.pop("backtrack_token_id", None)
    if backtrack_id is None:
        backtrack_id = metadata.get("backtrack_token_id", -1)
    if backtrack_id is None or backtrack_id < 0:
        raise ValueError("no backtrack.json with a backtrack_token_id: pass backtrack_token_id")
    eos = config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    for name, value in config.to_diff_dict().items():
        if name in HANDLED or not value:  # unset, 0, False: no effect
            continue
        raise ValueError(f"{name} is not supported by the backtracking generate")
    for name in ("num_beams", "num_return_sequences"):
        if (getattr(config, name, None) or 1) != 1:
            raise ValueError(f"{name} must be 1: the backtracking generate decodes one sequence")
    max_context = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    settings = Settings(int(backtrack_id), eos_ids, max_context=int(max_context))
    given = {name: getattr(config, name) for name in FROM_CONFIG}
    for name, value in {**given, **decoding, **extra}.items():
        if value is not None:
            setattr(settings, name, value)
    settings.check()
    return settings


def _masked(scores: torch.Tensor, tokens: set[int] | frozenset[int]) -> torch.Tensor:
    if not tokens:
        return scores
    masked = scores.clone()
    masked[list(tokens)] = NEG_INF
    return masked


def _unless_empty(masked: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """`masked`, or `fallback` where masking left no token at all."""
    return fallback if bool(masked.max() == NEG_INF) else masked


def shape(scores: torch.Tensor, context: list[int], settings: Settings) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k, top-p, min-p: transformers'
    logits processors in `generate()`'s order, for one row."""
    if settings.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)), device=scores.device)
        picked = scores[seen]
        penalty = settings.repetition_penalty
        scores = scores.clone()
        scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)
    if not settings.do_sample:
        return scores
    scores = scores / settings.temperature
    if settings.top_k and settings.top_k < scores.shape[0]:  # 0, as None: no top-k
        kth = torch.sort(scores, descending=True).values[settings.top_k - 1]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if settings.top_p is not None and settings.top_p < 1.0:
        ordered, indices = torch.sort(scores, descending=False)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - settings.top_p
        remove[-1] = False
        scores = scores.masked_fill(remove.scatter(0, indices, remove), NEG_INF)
    if settings.min_p:
        probs = torch.softmax(scores, dim=-1)
        remove = probs < settings.min_p * probs.max()
        remove[scores.argmax()] = False
        scores = scores.masked_fill(remove, NEG_INF)
    return scores


def draw(scores: torch.Tensor, settings: Settings, generator: torch.Generator) -> int:
    """Argmax when greedy; else one uniform from `generator` inverted through the CDF."""
    if not settings.do_sample:
        return int(scores.argmax())
    uniform = torch.rand((), generator=generator).to(scores.device)
    cumulative = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
    picked = torch.searchsorted(cumulative, (uniform * cumulative[-1]).reshape(1), right=True)
    return min(int(picked[0]), scores.shape[0] - 1)


class CachedModel:
    """Next-token logits after a context, reusing the KV cache of its longest cached prefix."""

    def __init__(self, model: Any) -> None:
        self.model = model
        accepted = inspect.signature(model.forward).parameters
        # transformers 5 renamed the cache keyword; older 5.x releases take the former name
        self.cache_keyword = "cache" if "cache" in accepted else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.cache: DynamicCache | None = None

    def logits_after(self, context: list[int]) -> torch.Tensor:
        """The cache holds a prefix of `context` (after a rewind, longer than what stays): it is
        cut to `context[:-1]` and the rest is fed. A cache that cannot be cut (a sliding window
        past its size, recurrent layers) is dropped and the context recomputed."""
        held = 0 if self.cache is None else self.cache.get_seq_length()
        keep = min(held, len(context) - 1)
        if self.cache is not None and held > keep:
            try:
                self.cache.crop(keep - held)  # a negative count: that many slots go
            except (RuntimeError, ValueError, NotImplementedError):
                self.cache, keep = None, 0
        if self.cache is None:
            self.cache, keep = DynamicCache(config=self.model.config), 0
        ids = torch.tensor([context[keep:]], dtype=torch.long, device=self.model.device)
        kwargs = {self.cache_keyword: self.cache, **self.extra}
        return self.model(input_ids=ids, use_cache=True, **kwargs).logits[0, -1].float()


@dataclass
class RowResult:
    visible: list[int] = field(default_factory=list)
    edits: list[tuple[str, int, int]] = field(default_factory=list)
    finish_reason: str = "length"


def decode_row(
    model: Any, prompt: list[int], settings: Settings, generator: torch.Generator
) -> RowResult:
    """One prompt to the end: a decision per step, BT erasing the last visible token."""
    bt, most, least = settings.backtrack_id, *settings.limits(len(prompt))
    eos = settings.eos_ids
    cached, result = CachedModel(model), RowResult()
    visible, context = result.visible, list(prompt)
    bans: dict[int, set[int]] = {}
    high_water = backtracks = 0
    logits = cached.logits_after(context)

    def may_delete() -> bool:
        index = len(visible) - 1
        return index >= 0 and index >= high_water - settings.max_backtrack_depth

    def may_backtrack() -> bool:
        return settings.backtrack_policy != "never" and backtracks < settings.max_backtracks

    while True:
        banned = bans.get(len(visible), set()) - {bt}
        penalised = context if settings.repetition_penalty != 1.0 else []
        # the decision sees the rewind's bans (unless EOS leads or no token is left), never a bar
        decision = logits if int(logits.argmax()) in eos else _masked(logits, banned)
        if banned and bool(_masked(decision, {bt}).max() == NEG_INF):
            decision = logits
        policy = settings.backtrack_policy if may_backtrack() else "never"
        if policy == "argmax":
            wants_backtrack = int(decision.argmax()) == bt
        elif policy == "threshold":
            probability = float(torch.softmax(decision, dim=-1)[bt])
            wants_backtrack = probability > settings.backtrack_threshold
        elif policy == "sample":
            wants_backtrack = draw(shape(decision, penalised, settings), settings, generator) == bt
        else:
            wants_backtrack = False
        ordinary = _masked(logits, {bt})
        if settings.ignore_eos or len(visible) < least:
            ordinary = _unless_empty(_masked(ordinary, settings.eos_ids), ordinary)
        ordinary = _unless_empty(_masked(ordinary, banned), ordinary)
        token = draw(shape(ordinary, penalised, settings), settings, generator)

        if wants_backtrack and may_delete():
            if settings.mode == "keep" and len(context) + 1 > settings.max_context:
                return result  # keep feeds BT: no room left in the context
            backtracks += 1
            index = len(visible) - 1
            removed = visible.pop()
            result.edits.append(("backtrack", index, removed))
            if settings.mode == "rewind":
                context.pop()
                bans = {position: ids for position, ids in bans.items() if position <= index}
                bans.setdefault(index, set()).add(removed)
            else:
                context.append(bt)
            logits = cached.logits_after(context)
            continue
        if len(visible) >= most or token in settings.eos_ids:
            # a full output keeps its last token; EOS ends the row unappended
            result.finish_reason = "eos" if token in settings.eos_ids else "length"
            return result
        visible.append(token)
        result.edits.append(("token", len(visible) - 1, token))
        high_water = max(high_water, len(visible))
        if len(context) + 1 > settings.max_context:
            return result
        if len(visible) >= most and not (may_backtrack() and may_delete()):
            return result  # nothing could delete the last token: no review to wait for
        context.append(token)
        logits = cached.logits_after(context)


def _prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """Each row's prompt without its padding (left or right, as the mask says)."""
    rows = []
    for index, row in enumerate(input_ids.tolist()):
        if attention_mask is not None:
            row = [t for t, keep in zip(row, attention_mask[index].tolist(), strict=True) if keep]
        if not row:
            raise ValueError("every prompt must have at least one token")
        rows.append(row)
    return rows


def generate(
    inputs: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    *,
    model: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | BacktrackGenerateOutput:
    """`model.generate` with backtracking: the prompt plus the visible tokens, per row.

    Takes transformers' generation parameters where the server has an equivalent
    (`max_new_tokens`, `max_length`, `do_sample`, `temperature`, `top_k`, `top_p`, `min_p`,
    `repetition_penalty`, `eos_token_id`, `min_new_tokens`) and the server's own
    (`max_backtracks`, `max_backtrack_depth`, `backtrack_policy`, `backtrack_threshold`, `mode`,
    `ignore_eos`, `min_tokens`, `seed`); any other setting with an effect raises ValueError naming
    it.
    """
    if inputs is not None and input_ids is not None:
        raise ValueError("pass the prompt once: `inputs` or `input_ids`")
    input_ids = inputs if inputs is not None else input_ids
    config = copy.deepcopy(model.generation_config)
    if generation_config is not None:
        config.update(**generation_config.to_diff_dict())
    unused = config.update(**kwargs)
    unused.pop("tokenizer", None)  # transformers reads it only for stop_strings, refused below
    extra = {name: unused.pop(name) for name in EXTRA_KEYWORDS if name in unused}
    for name, value in unused.items():
        if value is not None:
            raise ValueError(f"{name} is not supported by the backtracking generate")
    seed = extra.pop("seed", None)
    settings = resolve_settings(model, config, extra)
    if input_ids is None:
        if config.bos_token_id is None:
            raise ValueError("no prompt and no bos_token_id to start from")
        input_ids = torch.tensor([[config.bos_token_id]], device=model.device)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else seed)
    with torch.inference_mode():
        results = [
            decode_row(model, prompt, settings, generator)
            for prompt in _prompts(input_ids, attention_mask)
        ]
    width = max(len(result.visible) for result in results)
    pad = config.pad_token_id
    pad = min(settings.eos_ids, default=0) if pad is None else pad
    rows = [
        input_ids[index].tolist() + result.visible + [pad] * (width - len(result.visible))
        for index, result in enumerate(results)
    ]
    sequences = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    if not config.return_dict_in_generate:
        return sequences
    return BacktrackGenerateOutput(
        sequences=sequences,
        edits=[result.edits for result in results],
        finish_reasons=[result.finish_reason for result in results],
    )
