"""One request's decoding state inside a batch: visible tokens, bans, limits and counters.

A `Row` never runs the model. The batch decoder hands it the next-token logits its last token
produced and the decision the vectorised sampler made for it; the row applies the decision and
says what the model must be fed next:

* append a token: the token is fed at the next position;
* erase a token in `mode="rewind"`: the token and the one before leave the KV cache and the one
  before is fed again at its old position (in a batch that re-feed rides the same forward as the
  other rows' new tokens, so a backtrack costs no extra forward), and the erased token is banned
  at that position;
* erase a token in `mode="keep"`: BT is fed like any token (the `masked` training objective).

Invariant kept for the KV layout: the cache holds `context_ids[:cached]`; before the next forward
it must hold `context_ids[:-1]` (`slots_to_drop` tells how many trailing slots go) and then
`context_ids[-1]` is fed at position `len(context_ids) - 1`.

Deletions never reach into the prompt, nor further than `max_backtrack_depth` behind the furthest
position reached; a BT with nothing it may delete is ignored and counted, and the best ordinary
token is taken instead, so the row never stalls (the depth is a per-step limit: once the output
moves on, deletions are possible again). A ban holds only for the prefix it was made under: a
deletion at position p drops every ban beyond p. `max_new_tokens` bounds the visible output and
`max_backtracks` the deletions: once the budget is spent, backtracking is off for the rest of the
request (the sampler decides as under policy `never`) and decoding goes on to EOS, a stop or the
length limit, so every request terminates with a whole answer, and `DoneEvent` says that the
budget ran out.

The last token is reviewed like every other: when the output reaches `max_new_tokens`, that token
is fed and the model takes one more decision. BT deletes it and decoding goes on; EOS ends the
request with `eos`; any other token ends it with `length`, unappended. So a length-limited answer
never ends on a token the model would have deleted, at the price of one forward per such request
(none when the policy is `never` or the deletion budget is spent).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.detokenize import IncrementalDetokenizer
from backtrack.events import DoneEvent, Event, TokenScore
from backtrack.params import GenerationParams
from backtrack.sampling import RowSampling, score_token
from backtrack.stopping import find_stop, partial_stop_length
from backtrack.stream import StreamView, VisibleOutput


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
class Counters:
    backtracks: int = 0
    ignored_backtracks: int = 0
    sampled_tokens: int = 0
    high_water: int = 0
    removed: list[dict] = field(default_factory=list)
    removed_logprobs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RowSetup:
    """What every row of one model shares (computed once per decoder, not per request)."""

    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    eos_ids: frozenset[int]
    max_context: int


def _generator(seed: int | None) -> torch.Generator:
    # CPU generators draw the same numbers on every host; the uniforms are moved to the device.
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class Row:
    """One request's decoding state; the batch decoder feeds it logits and decisions."""

    def __init__(
        self,
        setup: RowSetup,
        prompt_ids: list[int],
        params: GenerationParams,
        hold_back_deletable: bool = False,
        score_top: int | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("inputs must encode to at least one token")
        self.setup, self.params = setup, params
        self.backtrack_id = setup.backtrack_id
        self.prompt_ids = list(prompt_ids)
        self.detok = IncrementalDetokenizer(setup.tokenizer)
        self.logprobs: list[float] = []
        self.score_top = score_top if params.mode == "rewind" else None
        """Alternatives each appended token is scored with (`TokenEvent.score`); None: unscored.
        Only in `rewind` mode is a token's context at its step the one it has in the final text
        (`keep` leaves deleted tokens and BT in it), so only there does the step's score hold."""
        self.scores: list[TokenScore | None] = []
        self.max_context = setup.max_context
        self.generator = _generator(params.seed)
        self.seed = self.generator.initial_seed()
        self.bans: dict[int, set[int]] = {}
        self.counters = Counters()
        self.hold_back_deletable = hold_back_deletable
        self.view = StreamView()
        self.context_ids = list(prompt_ids)
        """What the model's context is: prompt + visible (rewind), or everything fed (keep)."""
        self.cached = 0
        """How many of `context_ids` the KV cache holds (valid slots)."""
        self.prefilled = 0
        """Prompt tokens prefilled so far (chunked prefill advances it)."""
        self.next_logits: torch.Tensor | None = None
        """Distribution after the last fed token; None while a feed is pending."""
        self.decisions = 0
        """Decisions taken so far (model or forced), one per step the row was ready."""
        self.forced: deque[int] = deque()
        """Decisions to take instead of the model's (token ids, BT for a deletion)."""
        self.done: DoneEvent | None = None

    # -- what the batch decoder reads ------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done is not None

    @property
    def visible_ids(self) -> list[int]:
        return self.detok.ids

    @property
    def ready(self) -> bool:
        """Prefilled, logits at hand, not finished: the row can take a decision."""
        return self.done is None and self.next_logits is not None

    @property
    def reviewing_last(self) -> bool:
        """The output holds `max_new_tokens` tokens: the next decision may only delete the last
        one (BT) or end the request; a token it would append ends it instead."""
        return len(self.visible_ids) >= self.params.max_new_tokens

    @property
    def needs_feed(self) -> bool:
        return (
            self.done is None
            and self.next_logits is None
            and self.prefilled == len(self.prompt_ids)
        )

    @property
    def slots_to_drop(self) -> int:
        """Trailing KV slots to remove before the next feed (2 after a rewind, else 0)."""
        return self.cached - (len(self.context_ids) - 1)

    @property
    def feed(self) -> tuple[int, int]:
        """(token, position) to feed next."""
        return self.context_ids[-1], len(self.context_ids) - 1

    def logits_for_decision(self) -> torch.Tensor:
        """The logits the next decision is taken on (a ready row has them)."""
        if self.next_logits is None:
            raise RuntimeError("the row is not ready: its last token has not been fed")
        return self.next_logits

    def fed(self, logits: torch.Tensor) -> None:
        """The batch decoder fed `feed`; these are the logits it produced."""
        self.cached = len(self.context_ids)
        self.next_logits = logits

    def sampling(self) -> RowSampling:
        """What the sampler needs: the rewind's bans here, the request's bars (EOS under
        `ignore_eos` or before `min_tokens`; kept apart so they never feed the BT decision),
        and whether BT is still a candidate (not once the deletion budget is spent)."""
        banned = self.bans.get(len(self.visible_ids))
        eos_barred = self.params.ignore_eos or len(self.visible_ids) < self.params.min_tokens
        return RowSampling(
            self.params,
            self.generator,
            self.context_ids if self.params.repetition_penalty not in (None, 1.0) else [],
            banned=frozenset(banned) if banned else frozenset(),
            barred=self.setup.eos_ids if eos_barred else frozenset(),
            may_backtrack=self._deletions_possible(),
            ends=self.setup.eos_ids,
        )

    # -- decisions ---------------------------------------------------------------------------

    def decide(self, wants_backtrack: bool, token: int, logprob: float) -> list[Event] | None:
        """Apply the sampler's decision; None when nothing changed (an ignored forced BT)."""
        if self.done is not None:
            return []
        self.decisions += 1
        if self.forced:
            forced = self.forced.popleft()
            if forced == self.backtrack_id:
                return self.backtrack()
            return self.append_forced(forced)
        if wants_backtrack:
            events = self._backtrack()
            if events is not None:
                return events
        if self.reviewing_last:
            # the last token stands: the output is full, so the new token is not appended
            return self._finish("eos" if token in self.setup.eos_ids else "length")
        return self._append(token, logprob)

    def append_forced(self, token_id: int) -> list[Event]:
        """Append `token_id` as if the model had chosen it (evaluation injects errors this way)."""
        if self.done is not None:
            return []
        assert self.next_logits is not None, "a forced token needs the logits of its position"
        if self.reviewing_last:
            return self._finish("length")
        logprob = float(torch.log_softmax(self.next_logits.float(), dim=-1)[token_id])
        return self._append(token_id, logprob)

    def backtrack(self) -> list[Event] | None:
        """Erase the last visible token as if the model had emitted BT; None when ignored."""
        if self.done is not None:
            return []
        return self._backtrack()

    def cancel(self, reason: str) -> list[Event]:
        """End the request now (client gone, timeout, shutdown, error)."""
        if self.done is not None:
            return []
        return self._finish(reason)

    def _may_delete(self) -> bool:
        """A deletion must leave the prompt alone and stay within the depth limit."""
        index = len(self.visible_ids) - 1
        return index >= 0 and index >= self.counters.high_water - self.params.max_backtrack_depth

    # -- edits -------------------------------------------------------------------------------

    def _backtrack(self) -> list[Event] | None:
        if not self._may_delete() or self._budget_spent():
            # only a forced BT meets a spent budget: the sampler no longer offers BT then
            self.counters.ignored_backtracks += 1
            return None
        if self.params.mode == "keep" and self.next_logits is None:
            raise RuntimeError("keep mode feeds BT after the last token: feed that token first")
        if self.params.mode == "keep" and len(self.context_ids) + 1 > self.max_context:
            return self._finish("length")  # keep feeds BT: no room left in the context
        self.counters.backtracks += 1
        index = len(self.visible_ids) - 1
        removed_id, removed_text = self.detok.pop()
        self.counters.removed_logprobs.append(self.logprobs.pop())
        self.scores.pop()
        self.counters.removed.append({"id": removed_id, "text": removed_text, "index": index})
        if self.params.mode == "rewind":
            self.context_ids.pop()
            for position in [p for p in self.bans if p > index]:
                del self.bans[position]  # their prefix just changed
            self.bans.setdefault(index, set()).add(removed_id)
        else:
            self.context_ids.append(self.backtrack_id)
        self.next_logits = None
        return self.view.on_pop(index, self.counters.backtracks) + self._release()

    def _append(self, token: int, logprob: float) -> list[Event]:
        self.counters.sampled_tokens += 1
        if token in self.setup.eos_ids:
            return self._finish("eos")
        score = None
        if self.score_top is not None and self.next_logits is not None:
            score = score_token(self.next_logits, token, self.score_top)
        added = len(self.detok.push(token))
        self.logprobs.append(logprob)
        self.scores.append(score)
        self.counters.high_water = max(self.counters.high_water, len(self.visible_ids))
        stop_at = self._stop_position(added)
        if stop_at is not None:
            return self._finish("stop", text_length=stop_at)
        if len(self.context_ids) + 1 > self.max_context:
            return self._finish("length")
        if self.reviewing_last and not (self._deletions_possible() and self._may_delete()):
            return self._finish("length")  # nothing could delete it: no review to wait for
        self.context_ids.append(token)
        self.next_logits = None
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

    # -- output ------------------------------------------------------------------------------

    def _visible(self) -> VisibleOutput:
        return VisibleOutput(self.detok.ids, self.detok.texts, self.logprobs, self.scores)

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
        return self.params.backtrack_policy != "never" and not self._budget_spent()

    def _budget_spent(self) -> bool:
        return self.counters.backtracks >= self.params.max_backtracks

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
            backtrack_budget_exhausted=0 < self.params.max_backtracks <= self.counters.backtracks,
            removed_tokens=list(self.counters.removed),
            seed=self.seed if self.params.do_sample else self.params.seed,
            prompt_tokens=len(self.prompt_ids),
        )
        self.next_logits = None
        return [*events, self.done]
