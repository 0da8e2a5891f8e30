"""The loss with BT as every position's second choice (`backtrack.fallback_share`).

Greedy decoding with bans already searches: after a rewind the erased token is banned where it
stood, and the row takes the best token left. Where the erased token was the only good one (a
step that follows from what came before), the best token left should be BT, "go further back",
not some token the model never meant. One-hot targets leave that second place to chance; this
loss gives BT a share `s` of each target: `-(1 - s) log p(target) - s log p(BT)` at every trained
position whose target is not BT itself (those keep `-log p(BT)`). With `s` below the probability
of a real alternative (another arm, another digit the model hesitates over), a ban moves to the
alternative; at a position with none, to BT. The argmax is unchanged wherever the target held
more than `s`, so decoding without bans is not touched.
"""

from __future__ import annotations

import torch

from training.objectives import IGNORE


def fallback_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    backtrack_id: int,
    share: float,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The summed loss over trained positions, divided by `num_items` (the Trainer's count of
    trained positions in the whole accumulated batch) or, without it, by this batch's count.

    `targets[b, i]` is what position `i` predicts (already shifted, as the collator makes them)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    trained = targets != IGNORE
    target_nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    backtrack_nll = -log_probs[..., backtrack_id]
    softened = trained & (targets != backtrack_id)
    per_position = torch.where(
        softened, (1 - share) * target_nll + share * backtrack_nll, target_nll
    )
    total = per_position[trained].sum()
    count = trained.sum() if num_items is None else num_items
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)
