"""One request decoded alone, through the batch decoder with a single row.

    Sequence(model, tokenizer, bt_id, prompt_ids, params)  -> prefilled
    sequence.step() / .backtrack() / .force_token(id)      -> events, logits refreshed
    generate(...)                                           -> every event to the end

When the model's backtrack decision fires, the last visible token is erased:

* `mode="rewind"`: the token leaves the KV cache, the token before it is fed again at its old
  position (one single-token forward, whatever the context length), the erased token is banned
  there, and the next step resamples;
* `mode="keep"`: BT and the erased token stay in the context (the `masked` training objective);
  only the visible output is edited.

The decisions and limits live in `backtrack.row`, the batched forward and sampling in
`backtrack.batch`; this module is the convenient one-request view of them (tests, benchmarks,
tools). After every call `next_logits` is the distribution at the row's current position.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.batch import BatchDecoder, StepReport
from backtrack.events import Event
from backtrack.params import GenerationParams
from backtrack.row import Counters, eos_token_ids

__all__ = ["Counters", "Sequence", "eos_token_ids", "generate"]


class Sequence:
    """One request's decoding, stepped one decision at a time."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        backtrack_id: int,
        prompt_ids: list[int],
        params: GenerationParams,
        hold_back_deletable: bool = False,
    ) -> None:
        self.decoder = BatchDecoder(model, tokenizer, backtrack_id)
        self.row = self.decoder.add(prompt_ids, params, hold_back_deletable)
        self.decoder.prefill()

    # -- state ---------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.row.finished

    @property
    def visible_ids(self) -> list[int]:
        return self.row.visible_ids

    @property
    def context_ids(self) -> list[int]:
        return self.row.context_ids

    @property
    def prompt_ids(self) -> list[int]:
        return self.row.prompt_ids

    @property
    def next_logits(self) -> torch.Tensor | None:
        return self.row.next_logits

    @property
    def bans(self) -> dict[int, set[int]]:
        return self.row.bans

    @property
    def counters(self) -> Counters:
        return self.row.counters

    @property
    def kv_tokens(self) -> int:
        """KV entries this request holds (0 once it ended)."""
        return self.decoder.kv.tokens_held()

    # -- actions ---------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Advance by one decision: append a token, erase one, or finish."""
        if self.row.finished:
            return []
        report = StepReport()
        self.decoder.decide(report)
        self.decoder.forward()
        return report.events.get(self.row, [])

    def backtrack(self) -> list[Event] | None:
        """Erase the last visible token as if the model had emitted BT; None when ignored."""
        events = self.row.backtrack()
        self._settle()
        return events

    def force_token(self, token_id: int) -> list[Event]:
        """Append `token_id` as if the model had chosen it."""
        events = self.row.append_forced(token_id)
        self._settle()
        return events

    def cancel(self, reason: str) -> list[Event]:
        """End the request now and free its KV."""
        return self.decoder.cancel(self.row, reason)

    def _settle(self) -> None:
        if self.row.finished:
            self.decoder.cancel(self.row, "done")  # frees the KV; the row's done event stays
        else:
            self.decoder.forward()


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backtrack_id: int,
    prompt_ids: list[int],
    params: GenerationParams,
    hold_back_deletable: bool = False,
) -> Iterator[Event]:
    """Decode one request to the end, yielding its events; the last one is a DoneEvent."""
    decoder = BatchDecoder(model, tokenizer, backtrack_id)
    row = decoder.add(prompt_ids, params, hold_back_deletable)
    while not row.finished:
        report = decoder.step()
        yield from report.events.get(row, [])
