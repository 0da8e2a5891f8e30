"""Choosing the next token for every row of a batch: the backtrack decision, then the token.

The two are separate on purpose. Temperature flattens the distribution, so a BT drawn at
temperature fires on correct tokens; deciding "backtrack or not" on the *untempered*
distribution (argmax or a probability threshold) keeps bans safe. Temperature, top-k, top-p,
min-p and repetition penalty then shape only the choice among ordinary tokens.

The decision sees what the model wanted, so two kinds of forbidden token are kept apart:

* a *bar* is the request's own rule (EOS under `ignore_eos` or before `min_tokens`). It says
  nothing about whether the text so far is right, so it must not hand its probability to BT:
  the decision is taken as if the bar did not exist, and only the ordinary token is chosen among
  what the bar allows. Where the model's first choice is barred, the best allowed token follows;
* a *ban* is the rewind's (the token just erased at this position). It does reach the decision:
  when the erased token was the only good choice, BT at the position before is the model saying
  "go further back", so repeated rewinds search the model's own alternatives depth first.

Everything is vectorised over the rows, each row with its own parameters: one batched step
costs a handful of tensor operations whatever the batch size, not a Python loop of per-row
logits processors. The shaping follows transformers' processors exactly (`RepetitionPenalty`,
`Temperature`, `TopK`, `TopP`, `MinP`, in `generate()`'s order); the tests compare the two.

Seeded sampling draws one uniform number per row from the row's own generator and inverts the
row's cumulative distribution, so a seeded request draws the same tokens whatever shares its
batch. Pure functions of tensors: testable with no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backtrack.events import TokenScore
from backtrack.params import GenerationParams

NEG_INF = float("-inf")


@dataclass(frozen=True)
class RowSampling:
    """What one row asks of the sampler this step."""

    params: GenerationParams
    generator: torch.Generator
    context_ids: list[int]
    """What the repetition penalty looks at (read only when the row sets one)."""
    banned: frozenset[int] = frozenset()
    """Tokens a rewind erased at this position: the decision sees the ban (see the module)."""
    barred: frozenset[int] = frozenset()
    """Tokens the request forbids here (EOS under `ignore_eos` or before `min_tokens`; a
    bad-words or allowed-tokens list would belong here too): the decision never sees them."""
    may_backtrack: bool = True
    """False once the deletion budget is spent: BT is no candidate, as under policy `never`."""
    ends: frozenset[int] = frozenset()
    """The request's end tokens (EOS): where one leads, bans do not reach the decision (`ban`)."""


@dataclass(frozen=True)
class Choices:
    """One decision per row, as Python values (the rows' bookkeeping is Python)."""

    wants_backtrack: list[bool]
    """Policy argmax/threshold fired, or policy sample drew BT."""
    tokens: list[int]
    """The ordinary token each row would append (BT and barred tokens never among them)."""
    logprobs: list[float]
    """Each token's log-probability under the untempered distribution (bans and bars applied)."""


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def apply_repetition_penalty(
    scores: torch.Tensor, contexts: Sequence[list[int]], penalties: Sequence[float]
) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor with a penalty per row (1.0: none)."""
    rows, vocab = scores.shape
    width = max(1, max(len(context) for context in contexts))
    padded = torch.full((rows, width), vocab, dtype=torch.long, device=scores.device)
    for row, context in enumerate(contexts):
        if context and penalties[row] != 1.0:
            padded[row, : len(context)] = torch.tensor(context, device=scores.device)
    seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, padded, True)
    penalty = _column(penalties, scores.device)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :vocab], penalised, scores)


def apply_top_k(scores: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """Keep each row's `top_k[row]` best scores (ties kept, as transformers does)."""
    vocab = scores.shape[1]
    k = torch.tensor([min(max(1, value), vocab) for value in top_k], device=scores.device)
    ordered = torch.sort(scores, dim=-1, descending=True).values
    kth = ordered.gather(1, (k - 1).unsqueeze(1))
    return scores.masked_fill(scores < kth, NEG_INF)


def apply_top_p(scores: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p[row]` (1.0: all)."""
    ordered, indices = torch.sort(scores, dim=-1, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - _column(top_p, scores.device))
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, indices, remove), NEG_INF)


def apply_min_p(scores: torch.Tensor, min_p: Sequence[float]) -> torch.Tensor:
    """Drop tokens less likely than `min_p[row]` times the row's best token (0: none)."""
    probs = torch.softmax(scores, dim=-1)
    floor = _column(min_p, scores.device) * probs.amax(dim=-1, keepdim=True)
    remove = probs < floor
    # the best token always survives (min_tokens_to_keep=1)
    remove.scatter_(1, scores.argmax(dim=-1, keepdim=True), False)
    return scores.masked_fill(remove, NEG_INF)


def shape_scores(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """The processed scores each row draws from: penalty, then (sampling rows only) warpers."""
    scores = logits
    params = [row.params for row in rows]
    penalties = [p.repetition_penalty or 1.0 for p in params]
    if any(value != 1.0 for value in penalties):
        scores = apply_repetition_penalty(scores, [row.context_ids for row in rows], penalties)
    temperatures = [p.temperature if p.do_sample else 1.0 for p in params]
    if any(value != 1.0 for value in temperatures):
        scores = scores / _column(temperatures, scores.device)
    vocab = scores.shape[1]
    top_k = [p.top_k if p.do_sample and p.top_k is not None else vocab for p in params]
    if any(value < vocab for value in top_k):
        scores = apply_top_k(scores, top_k)
    top_p = [p.top_p if p.do_sample and p.top_p is not None else 1.0 for p in params]
    if any(value < 1.0 for value in top_p):
        scores = apply_top_p(scores, top_p)
    min_p = [p.min_p if p.do_sample and p.min_p else 0.0 for p in params]
    if any(value > 0 for value in min_p):
        scores = apply_min_p(scores, min_p)
    return scores


def _masked(scores: torch.Tensor, sets: Sequence[frozenset[int]]) -> torch.Tensor:
    """Each row's `sets[row]` set to -inf (a copy; `scores` itself when there is nothing to do)."""
    pairs = [(index, token) for index, tokens in enumerate(sets) for token in tokens]
    if not pairs:
        return scores
    masked = scores.clone()
    row_index, token_index = zip(*pairs, strict=True)
    masked[list(row_index), list(token_index)] = NEG_INF
    return masked


def _unless_empty(masked: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """`masked`, except that a row it left with no token at all keeps `fallback`'s row."""
    if masked is fallback:
        return masked
    empty = masked.amax(dim=-1, keepdim=True) == NEG_INF
    return torch.where(empty, fallback, masked)


def ban(logits: torch.Tensor, rows: Sequence[RowSampling], backtrack_id: int) -> torch.Tensor:
    """The distribution the backtrack decision is taken on: each row's bans applied (unless
    they would leave it no ordinary token), its bars not (they must not feed BT).

    Nor do bans reach the decision where an end token (EOS) leads: there the model says the
    answer is done. Under `ignore_eos` the tokens it is made to write instead, erased and banned
    one by one, would otherwise raise BT's share there until the threshold policy deleted the
    text written before, which the same request free to end keeps. (EOS is never banned: it
    ends a request, so no rewind erases it.)"""
    banned = _masked(logits, [row.banned - {backtrack_id} for row in rows])
    if banned is logits:
        return logits
    ordinary = banned.clone()
    ordinary[:, backtrack_id] = NEG_INF
    keep = ordinary.amax(dim=-1, keepdim=True) > NEG_INF
    if any(row.ends for row in rows):
        leaders = logits.argmax(dim=-1).tolist()
        end_leads = [leader in row.ends for leader, row in zip(leaders, rows, strict=True)]
        keep &= ~torch.tensor(end_leads, device=logits.device).unsqueeze(1)
    return torch.where(keep, banned, logits)


def ordinary_scores(
    logits: torch.Tensor, rows: Sequence[RowSampling], backtrack_id: int
) -> torch.Tensor:
    """What the ordinary token is chosen among: BT, bars and bans removed. A request's bar is
    its own rule and goes first; bans go where they leave a token, and a bar that would leave
    nothing at all (a vocabulary of BT and EOS) is dropped, so every row has a choice."""
    no_bt = logits.clone()
    no_bt[:, backtrack_id] = NEG_INF
    barred = _unless_empty(_masked(no_bt, [row.barred for row in rows]), no_bt)
    return _unless_empty(_masked(barred, [row.banned for row in rows]), barred)


def draw(scores: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """One token per row: argmax for greedy rows, inverse-CDF sampling for the others."""
    greedy = scores.argmax(dim=-1)
    sampled_rows = [index for index, row in enumerate(rows) if row.params.do_sample]
    if not sampled_rows:
        return greedy
    uniforms = torch.stack(
        [torch.rand((), generator=rows[index].generator) for index in sampled_rows]
    ).to(scores.device)
    probs = torch.softmax(scores[sampled_rows].float(), dim=-1)
    cumulative = probs.cumsum(dim=-1)
    targets = uniforms.unsqueeze(1) * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
    picked = picked.clamp_max(scores.shape[1] - 1)
    chosen = greedy.clone()
    chosen[sampled_rows] = picked
    return chosen


def decide(logits: torch.Tensor, rows: Sequence[RowSampling], backtrack_id: int) -> Choices:
    """The backtrack decision and the ordinary token for every row of `logits` ([rows, vocab]).

    The decision is taken on the model's own distribution with the rewind's bans (never the
    request's bars, never temperature or penalties); the token among the allowed ordinary ones.
    """
    raw = logits.float()
    decision = ban(raw, rows, backtrack_id)
    policies = [row.params.backtrack_policy if row.may_backtrack else "never" for row in rows]
    argmax_bt = (decision.argmax(dim=-1) == backtrack_id).tolist() if "argmax" in policies else []
    probs_bt = (
        torch.softmax(decision, dim=-1)[:, backtrack_id].tolist() if "threshold" in policies else []
    )
    sample_rows = [i for i, policy in enumerate(policies) if policy == "sample"]
    drew_bt: set[int] = set()
    if sample_rows:
        # BT competes with every token the model may write, drawn with the row's own generator
        subset = [rows[i] for i in sample_rows]
        with_bt = draw(shape_scores(decision[sample_rows], subset), subset).tolist()
        drew_bt = {
            i for i, token in zip(sample_rows, with_bt, strict=True) if token == backtrack_id
        }
    ordinary = ordinary_scores(raw, rows, backtrack_id)
    tokens = draw(shape_scores(ordinary, rows), rows)
    logprobs = torch.log_softmax(ordinary, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    wants = []
    for index, (row, policy) in enumerate(zip(rows, policies, strict=True)):
        if policy == "argmax":
            wants.append(argmax_bt[index])
        elif policy == "threshold":
            wants.append(probs_bt[index] > row.params.backtrack_threshold)
        else:
            wants.append(index in drew_bt)
    return Choices(wants, tokens.tolist(), logprobs.tolist())


def token_scores(logits: torch.Tensor, targets: torch.Tensor, top_n: int) -> list[TokenScore]:
    """Each row's `targets` token scored under the model's own distribution at that position
    (the untempered, unpenalised, unbanned softmax of `logits` [rows, vocab], BT included), with
    the `top_n` most likely tokens there: what OpenAI's `logprobs` report."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
    tops: list[tuple[tuple[int, float], ...]] = [() for _ in chosen]
    if top_n:
        values, indices = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        tops = [
            tuple(zip(i, v, strict=True))
            for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]
    return [TokenScore(logprob, top) for logprob, top in zip(chosen, tops, strict=True)]


def score_token(logits: torch.Tensor, token: int, top_n: int) -> TokenScore:
    """`token_scores` of one position from the step's own logits: the numbers a fresh forward
    over the same context gives (up to float summation order), without that forward."""
    target = torch.tensor([token], device=logits.device)
    return token_scores(logits.unsqueeze(0), target, top_n)[0]
