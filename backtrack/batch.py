"""The batch decoder: every running request advances in one forward per step.

    add(prompt, params) -> Row            rows join between steps
    step() -> StepReport                  1. one batched forward: each row feeds its pending token
                                             (a new token, or the re-fed token after a rewind)
                                          2. chunked prefill of joining rows, within a token budget
                                          3. one vectorised decision per ready row: BT or a token
    cancel(row) -> events                 a row leaves at once and frees its KV

A backtrack costs no forward of its own: the rewound row's re-fed token is its input in the next
batched forward, beside every other row's new token. Prefill runs in chunks of at most
`prefill_chunk_tokens` per step while other rows are decoding, so a long prompt never freezes the
running streams. This is the only decode loop in the project: the server, evaluation and
`backtrack.decoder.generate` all run through it (`backtrack.standalone_generate`, which every
checkpoint carries for plain transformers, restates it with no project import; tests compare).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.compiled import CompiledStep
from backtrack.core_share import CoreShare
from backtrack.events import DoneEvent, Event
from backtrack.kv import PaddedKV, UnsupportedModel, check_supported
from backtrack.params import GenerationParams
from backtrack.row import Row, RowSetup, eos_token_ids
from backtrack.sampling import decide
from backtrack.slots import SlotKV, slots_supported

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one step did, for the engine's streams and metrics (no private counters read)."""

    events: dict[Row, list[Event]] = field(default_factory=dict)
    finished: list[Row] = field(default_factory=list)
    decode_rows: int = 0
    """Rows in this step's batched forward (0: no decode forward ran)."""
    rewound_rows: int = 0
    """Rows whose input this step was a re-fed token after a rewind."""
    prefill_tokens: int = 0
    sampled_tokens: int = 0
    backtracks: int = 0
    forwards: int = 0
    """Model forwards this step: at most one decode forward plus the prefill chunks."""
    kv_tokens: int = 0
    """KV entries held by the rows after the step."""
    kv_slots: int = 0
    """KV slots allocated after the step (padding and holes included)."""
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0

    def add(self, row: Row, events: list[Event] | None) -> None:
        if events:
            self.events.setdefault(row, []).extend(events)


KV_LAYOUTS = ("auto", "slots", "padded")


def choose_layout(model: PreTrainedModel, layout: str = "auto") -> str:
    """The KV layout `model` gets: `slots` (addressed by position) where the model allows it,
    else `padded`; `auto` picks, a named layout the model cannot have raises UnsupportedModel."""
    if layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout={layout!r} is not one of {', '.join(KV_LAYOUTS)}")
    if layout in ("auto", "slots"):
        try:
            slots_supported(model)
            return "slots"
        except UnsupportedModel:
            if layout == "slots":
                raise
    check_supported(model)
    return "padded"


def make_kv(
    model: PreTrainedModel, layout: str = "auto", compact_slack: int = 32
) -> PaddedKV | SlotKV:
    """The KV layout object for `model` (see `choose_layout`)."""
    if choose_layout(model, layout) == "slots":
        return SlotKV(model)
    return PaddedKV(model, compact_slack=compact_slack)


class BatchDecoder:
    """Owns the KV layout and the rows; one instance per model, stepped by one thread."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        backtrack_id: int,
        prefill_chunk_tokens: int = 512,
        compact_slack: int = 32,
        kv_layout: str = "auto",
        compile_step: bool = False,
        core_share: CoreShare | None = None,
    ) -> None:
        self.model = model
        self.core_share = core_share
        """Sets the thread count between steps from the cores other processes leave free."""
        self.backtrack_id = backtrack_id
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.setup = RowSetup(
            tokenizer=tokenizer,
            backtrack_id=backtrack_id,
            eos_ids=frozenset(eos_token_ids(model, tokenizer)),
            max_context=int(getattr(model.config, "max_position_embeddings", 1 << 30)),
        )
        self.kv: PaddedKV | SlotKV = make_kv(model, kv_layout, compact_slack)
        self.compiled: CompiledStep | None = None
        """The compiled decode step (`compile_step` on the slots layout), else None: eager."""
        if compile_step and isinstance(self.kv, SlotKV):
            self.compiled = CompiledStep(self.kv)
        self.rows: list[Row] = []
        """Unfinished rows in arrival order: prefilling, or decoding."""

    def warm_up(self, max_rows: int) -> bool:
        """Compile every graph a batch of up to `max_rows` rows needs; True if the step is
        compiled. A compile that fails (no C++ compiler on a CPU host, an unsupported model)
        leaves the step eager, with a warning that says why: decoding is the same, only slower."""
        if self.compiled is None:
            return False
        try:
            self.compiled.warm_up(max_rows)
        except Exception as error:
            log.warning("the decode step stays eager: compiling it failed (%s)", error)
            self.compiled.uninstall()
            self.compiled = None
            return False
        return True

    # -- rows joining and leaving -------------------------------------------------------------

    def add(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        hold_back_deletable: bool = False,
        score_top: int | None = None,
    ) -> Row:
        """A new row; it is prefilled by the coming steps (or `prefill`). With `score_top`, each
        token it appends carries its `TokenScore` with that many alternatives."""
        row = Row(self.setup, prompt_ids, params, hold_back_deletable, score_top)
        self.rows.append(row)
        return row

    def cancel(self, row: Row, reason: str) -> list[Event]:
        """End a row now and free its KV (client gone, timeout, shutdown); the KV is freed even
        when ending the row fails (a detokenizer error), so a fault never leaks the cache."""
        try:
            return row.cancel(reason)
        finally:
            self._leave(row)

    @property
    def kv_tokens(self) -> int:
        """KV entries the rows hold now (what a step reports as `kv_tokens`)."""
        return self.kv.tokens_held()

    @property
    def kv_slots(self) -> int:
        """KV slots allocated now (what a step reports as `kv_slots`)."""
        return self.kv.slots_allocated()

    def _leave(self, row: Row) -> None:
        self.kv.remove(row)
        if row in self.rows:
            self.rows.remove(row)

    # -- the step ---------------------------------------------------------------------------

    def step(self) -> StepReport:
        """Forward, prefill within the budget, decide: one step of every row."""
        if self.core_share is not None:
            self.core_share.follow()
        report = StepReport()
        start = time.perf_counter()
        self.forward(report)
        middle = time.perf_counter()
        budget = self.prefill_chunk_tokens if self.kv.rows else None
        self.prefill(report, budget)
        end = time.perf_counter()
        self.decide(report)
        report.decode_seconds = middle - start
        report.prefill_seconds = end - middle
        report.kv_tokens = self.kv_tokens
        report.kv_slots = self.kv_slots
        return report

    def forward(self, report: StepReport | None = None) -> None:
        """One batched forward feeding every row's pending token (rows with none idle)."""
        if not self.kv.rows:
            return
        rows = [cast(Row, key) for key in self.kv.keys]  # the layout keys its rows by Row
        feeds = []
        for row in rows:
            if row.needs_feed:
                if report is not None and row.slots_to_drop > 0:
                    report.rewound_rows += 1
                self.kv.drop_last(row, row.slots_to_drop)
                feeds.append(row.feed)
            else:
                feeds.append(None)
        if not any(feeds):
            return
        logits = self.kv.forward(feeds)
        for index, (row, feed) in enumerate(zip(rows, feeds, strict=True)):
            if feed is not None:
                row.fed(logits[index])
        if report is not None:
            report.decode_rows = len(rows)
            report.forwards += 1

    def prefill(self, report: StepReport | None = None, budget: int | None = None) -> None:
        """Prefill joining rows in arrival order, at most `budget` prompt tokens (None: all).

        Prompts that fit the budget whole are prefilled together in one left-padded forward;
        a longer prompt is prefilled in chunks over several steps.
        """
        left = budget
        together: list[Row] = []
        for row in list(self.rows):
            remaining = len(row.prompt_ids) - row.prefilled
            if row.finished or remaining == 0:
                continue
            if left is not None and left <= 0:
                break
            size = remaining if left is None else min(remaining, left)
            if row.prefilled == 0 and size == remaining:
                together.append(row)
            else:
                self._prefill_chunk(row, size)
                if report is not None:
                    report.prefill_tokens += size
                    report.forwards += 1
            if left is not None:
                left -= size
        if together:
            logits = self.kv.prefill_together(together, [row.prompt_ids for row in together])
            for index, row in enumerate(together):
                row.prefilled = len(row.prompt_ids)
                row.fed(logits[index])
            if report is not None:
                report.prefill_tokens += sum(len(row.prompt_ids) for row in together)
                report.forwards += 1

    def _prefill_chunk(self, row: Row, size: int) -> None:
        chunk = row.prompt_ids[row.prefilled : row.prefilled + size]
        final = row.prefilled + size == len(row.prompt_ids)
        logits = self.kv.prefill(row, chunk, final)
        row.prefilled += size
        if logits is not None:
            row.fed(logits)

    def decide(self, report: StepReport | None = None) -> None:
        """One decision per ready row, sampled for all rows at once."""
        report = report if report is not None else StepReport()
        ready = [row for row in self.rows if row.ready]
        if not ready:
            return
        logits = torch.stack([row.logits_for_decision() for row in ready])
        choices = decide(logits, [row.sampling() for row in ready], self.backtrack_id)
        finished: list[Row] = []
        for index, row in enumerate(ready):
            before_tokens, before_backtracks = row.counters.sampled_tokens, row.counters.backtracks
            events = row.decide(
                choices.wants_backtrack[index], choices.tokens[index], choices.logprobs[index]
            )
            report.add(row, events)
            report.sampled_tokens += row.counters.sampled_tokens - before_tokens
            report.backtracks += row.counters.backtracks - before_backtracks
            if row.finished:
                finished.append(row)
        if finished:
            self.kv.remove_many(finished)  # one copy of the cache for all rows that ended
            self.rows = [row for row in self.rows if not row.finished]
            report.finished.extend(finished)


def decode_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backtrack_id: int,
    requests: Iterable[tuple[list[int], GenerationParams]],
    max_rows: int = 64,
    forced: Iterable[list[int]] | None = None,
) -> Iterator[tuple[int, list[Event]]]:
    """Decode many requests, at most `max_rows` at once, refilling as rows finish.

    Yields (request index, that request's events) as each request finishes; `forced[i]` are
    decisions request i takes before the model's own (evaluation injects errors this way).
    """
    decoder = BatchDecoder(model, tokenizer, backtrack_id)
    pending = iter(enumerate(requests))
    forced_lists = iter(forced) if forced is not None else None
    index_of: dict[Row, int] = {}
    collected: dict[Row, list[Event]] = {}
    exhausted = False
    while True:
        while not exhausted and len(decoder.rows) < max_rows:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            index, (prompt_ids, params) = item
            row = decoder.add(prompt_ids, params)
            if forced_lists is not None:
                row.forced.extend(next(forced_lists))
            index_of[row], collected[row] = index, []
        if not decoder.rows:
            return
        report = decoder.step()
        for row, events in report.events.items():
            collected[row].extend(events)
        for row in report.finished:
            yield index_of.pop(row), collected.pop(row)


def final_event(events: list[Event]) -> DoneEvent:
    done = events[-1]
    assert isinstance(done, DoneEvent)
    return done
