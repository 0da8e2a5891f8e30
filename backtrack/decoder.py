"""The rewinding decoder: one request, stepped one token at a time.

    prefill(prompt) -> step() -> step() -> ... -> done

Each `step()` runs at most one single-token forward and returns the events it produced. When the
model's backtrack decision fires, the last visible token is erased:

* `mode="rewind"`: the KV cache is cropped so the token is gone from the model's context, the
  distribution at that position is recomputed by re-feeding the token before it (one forward,
  whatever the context length), the erased token is banned there, and the next step resamples.
* `mode="keep"`: BT and the erased token stay in the context (the `masked` training objective);
  only the visible output is edited.

Deletions never reach into the prompt, nor further than `max_backtrack_depth` behind the furthest
position reached; a BT with nothing it may delete is ignored and counted. `max_new_tokens` bounds
the visible output and `max_backtracks` the deletions, so every request terminates.

The server steps many `Sequence`s on one worker; `generate()` drives one to the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from backtrack.detokenize import IncrementalDetokenizer
from backtrack.events import DoneEvent, Event
from backtrack.params import GenerationParams
from backtrack.sampling import build_processors, choose, mask_tokens, wants_backtrack
from backtrack.stopping import find_stop, partial_stop_length
from backtrack.stream import StreamView, VisibleOutput


@torch.inference_mode()
def forward_tokens(
    model: PreTrainedModel, cache: DynamicCache, token_ids: list[int]
) -> torch.Tensor:
    """Feed `token_ids` after what `cache` holds; return the next-token logits (1-D, float32)."""
    input_ids = torch.tensor([token_ids], device=model.device)
    output = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return output.logits[0, -1].float()


def prefill(model: PreTrainedModel, prompt_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """A fresh cache holding the prompt, and the distribution of the first generated token."""
    cache = DynamicCache(config=model.config)
    return cache, forward_tokens(model, cache, prompt_ids)


def rewind(model: PreTrainedModel, cache: DynamicCache, previous_token: int) -> torch.Tensor:
    """Drop the last token and the one before from `cache`, then re-feed the one before.

    Costs one single-token forward whatever the context length, and leaves the cache exactly as
    if the dropped token had never been generated.
    """
    cache.crop(-2)
    return forward_tokens(model, cache, [previous_token])


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


@dataclass
class _Counters:
    backtracks: int = 0
    ignored_backtracks: int = 0
    sampled_tokens: int = 0
    high_water: int = 0
    removed: list[dict] = field(default_factory=list)


class Sequence:
    """One request's decoding state: cache, visible tokens, bans and counters."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        backtrack_id: int,
        prompt_ids: list[int],
        params: GenerationParams,
        hold_back_deletable: bool = False,
    ) -> None:
        if not prompt_ids:
            raise ValueError("inputs must encode to at least one token")
        self.model, self.params, self.backtrack_id = model, params, backtrack_id
        self.prompt_ids = list(prompt_ids)
        self.detok = IncrementalDetokenizer(tokenizer)
        self.logprobs: list[float] = []
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.processors = build_processors(params)
        self.generator = _generator(params.seed, model.device)
        self.seed = self.generator.initial_seed()
        self.bans: dict[int, set[int]] = {}
        self.counters = _Counters()
        self.hold_back_deletable = hold_back_deletable
        self.view = StreamView()
        self.context_ids = list(prompt_ids)
        """What the model's cache holds: prompt + visible (rewind), or everything fed (keep)."""
        self.cache: DynamicCache | None
        self.cache, self.next_logits = prefill(model, self.prompt_ids)
        self.done: DoneEvent | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None

    @property
    def visible_ids(self) -> list[int]:
        return self.detok.ids

    def step(self) -> list[Event]:
        """Advance by one decision: append a token, erase one, or finish."""
        if self.done is not None:
            return []
        logits = self._allowed_logits()
        if self.params.backtrack_policy != "sample" and wants_backtrack(
            logits, self.backtrack_id, self.params.backtrack_policy, self.params.backtrack_threshold
        ):
            events = self._backtrack()
            if events is not None:
                return events
        token, logprob = self._choose(
            logits, allow_backtrack=self.params.backtrack_policy == "sample"
        )
        if token == self.backtrack_id:
            events = self._backtrack()
            if events is not None:
                return events
            token, logprob = self._choose(logits, allow_backtrack=False)
        return self._append(token, logprob)

    def force_token(self, token_id: int) -> list[Event]:
        """Append `token_id` as if the model had chosen it (evaluation injects errors this way)."""
        if self.done is not None:
            return []
        logprob = float(torch.log_softmax(self.next_logits, dim=-1)[token_id])
        return self._append(token_id, logprob)

    def backtrack(self) -> list[Event] | None:
        """Erase the last visible token as if the model had emitted BT.

        Returns the events, or None when the BT is ignored (nothing it may delete). Honours every
        limit a model-chosen BT does, so tests and evaluation can drive rewinds directly.
        """
        if self.done is not None:
            return []
        return self._backtrack()

    def cancel(self, reason: str) -> list[Event]:
        """End the request now (client gone, timeout, shutdown) and free its cache."""
        if self.done is not None:
            return []
        return self._finish(reason)

    # -- decisions ---------------------------------------------------------------------------

    def _allowed_logits(self) -> torch.Tensor:
        """Next-token logits with this position's bans applied (unless they would ban all)."""
        banned = self.bans.get(len(self.visible_ids))
        if not banned or len(banned | {self.backtrack_id}) >= self.next_logits.numel():
            return self.next_logits
        return mask_tokens(self.next_logits, banned)

    def _choose(self, logits: torch.Tensor, allow_backtrack: bool) -> tuple[int, float]:
        if not allow_backtrack:
            logits = mask_tokens(logits, [self.backtrack_id])
        # only the repetition penalty reads the context; skip building it otherwise
        context = torch.tensor(self.context_ids if self.processors else [], device=logits.device)
        return choose(logits, context, self.processors, self.params.do_sample, self.generator)

    def _may_delete(self) -> bool:
        """A deletion must leave the prompt alone and stay within the depth limit."""
        index = len(self.visible_ids) - 1
        return index >= 0 and index >= self.counters.high_water - self.params.max_backtrack_depth

    # -- edits -------------------------------------------------------------------------------

    def _backtrack(self) -> list[Event] | None:
        """Erase the last visible token; None when the BT must be ignored."""
        if not self._may_delete():
            self.counters.ignored_backtracks += 1
            return None
        if self.counters.backtracks >= self.params.max_backtracks:
            return self._finish("max_backtracks")
        if self.params.mode == "keep" and len(self.context_ids) + 1 > self.max_context:
            return self._finish("length")  # keep feeds BT: no room left in the context
        self.counters.backtracks += 1
        index = len(self.visible_ids) - 1
        removed_id, removed_text = self.detok.pop()
        self.logprobs.pop()
        self.counters.removed.append({"id": removed_id, "text": removed_text, "index": index})
        if self.params.mode == "rewind":
            self.context_ids.pop()
            self.next_logits = rewind(self.model, self.cache, self.context_ids[-1])
            self.bans.setdefault(index, set()).add(removed_id)
        else:
            self.next_logits = self._feed(self.backtrack_id)
        return self.view.on_pop(index, self.counters.backtracks) + self._release()

    def _append(self, token: int, logprob: float) -> list[Event]:
        self.counters.sampled_tokens += 1
        if token in self.eos_ids:
            return self._finish("eos")
        added = len(self.detok.push(token))
        self.logprobs.append(logprob)
        self.counters.high_water = max(self.counters.high_water, len(self.visible_ids))
        stop_at = self._stop_position(added)
        if stop_at is not None:
            return self._finish("stop", text_length=stop_at)
        if len(self.visible_ids) >= self.params.max_new_tokens:
            return self._finish("length")
        if len(self.context_ids) + 1 > self.max_context:
            return self._finish("length")
        self.next_logits = self._feed(token)
        return self._release()

    def _stop_position(self, added: int) -> int | None:
        """Where a stop sequence starts in the text, if the last `added` characters completed one.

        Only the tail a new match can touch is searched, so a step costs the same at any length.
        """
        if not self.params.stop:
            return None
        tail = self.detok.tail(max(map(len, self.params.stop)) + added)
        start = find_stop(tail, self.params.stop, len(tail) - added)
        return None if start is None else self.detok.length - len(tail) + start

    def _feed(self, token: int) -> torch.Tensor:
        self.context_ids.append(token)
        return forward_tokens(self.model, self.cache, [token])

    # -- output ------------------------------------------------------------------------------

    def _visible(self) -> VisibleOutput:
        return VisibleOutput(self.detok.ids, self.detok.texts, self.logprobs)

    def _release(self) -> list[Event]:
        """Show what can no longer be changed by a stop sequence (or, when asked, a deletion)."""
        texts = self.detok.texts
        limit = len(texts)
        stops = self.params.stop
        # a partial stop is shorter than the longest stop, so that much of the tail suffices
        held_chars = (
            partial_stop_length(self.detok.tail(max(map(len, stops))), stops) if stops else 0
        )
        while held_chars > 0 and limit > 0:
            held_chars -= len(texts[limit - 1])
            limit -= 1
        if self.hold_back_deletable and self._deletions_possible():
            final = self.counters.high_water - self.params.max_backtrack_depth
            limit = min(limit, max(0, final))
        return self.view.release(self._visible(), limit)

    def _deletions_possible(self) -> bool:
        return (
            self.params.backtrack_policy != "never"
            and self.counters.backtracks < self.params.max_backtracks
        )

    def _finish(self, reason: str, text_length: int | None = None) -> list[Event]:
        full_text = self.detok.text
        cut = len(full_text) if text_length is None else text_length
        events = self.view.flush(self._visible(), cut)
        self.done = DoneEvent(
            generated_text=full_text[:cut],
            finish_reason=reason,
            generated_tokens=len(self.view.shown),
            backtracks=self.counters.backtracks,
            sampled_tokens=self.counters.sampled_tokens,
            ignored_backtracks=self.counters.ignored_backtracks,
            removed_tokens=list(self.counters.removed),
            seed=self.seed if self.params.do_sample else self.params.seed,
            prompt_tokens=len(self.prompt_ids),
        )
        self.cache = None  # frees the KV cache as soon as the request ends
        return [*events, self.done]


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backtrack_id: int,
    prompt_ids: list[int],
    params: GenerationParams,
    hold_back_deletable: bool = False,
) -> Iterator[Event]:
    """Decode one request to the end, yielding its events; the last one is a DoneEvent."""
    sequence = Sequence(model, tokenizer, backtrack_id, prompt_ids, params, hold_back_deletable)
    while not sequence.finished:
        yield from sequence.step()
