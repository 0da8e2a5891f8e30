"""The curriculum over injected errors, driven by a Trainer callback.

Phases begin at (fractional) epochs. Before every optimiser step the callback sets the shared
`ErrorPlan` that the collator's injector reads, so the dataset under the Trainer never changes
length or content: only the errors drawn per batch do. The Trainer collates a step's batches just
before that step begins, so a new phase shows in the batches one step after its boundary. The
collator must run in the training process (`dataloader_num_workers=0`) to see the plan. A clean first phase lets the model learn
the task before it sees errors (corrupting from step 0 stops a small model learning the task at
all). The phase in force and the observed number of errors per example are logged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from training.config import PhaseConfig
from training.errors import ErrorPlan, Injector

logger = logging.getLogger(__name__)


def phase_at(phases: list[PhaseConfig], epoch: float) -> int:
    """Index of the phase in force at `epoch` (the last one that has begun)."""
    current = 0
    for index, phase in enumerate(phases):
        if epoch + 1e-9 >= phase.start_epoch:
            current = index
    return current


@dataclass
class CurriculumCallback(TrainerCallback):
    phases: list[PhaseConfig]
    plan: ErrorPlan
    injector: Injector | None = None
    """Its error counts are logged with every Trainer log line."""
    current: int = -1
    history: list[dict] = field(default_factory=list)
    """One record per phase change and per log: what `curriculum.json` holds."""

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        index = phase_at(self.phases, state.epoch or 0.0)
        if index == self.current:
            return
        self.current = index
        phase = self.phases[index]
        self.plan.max_errors, self.plan.error_share = phase.max_errors, phase.error_share
        record = {"step": state.global_step, "epoch": state.epoch or 0.0, "phase": index}
        self.history.append({**record, **asdict(phase)})
        logger.info(
            "curriculum phase %d from epoch %.2f: up to %d errors in %.0f%% of examples",
            index, phase.start_epoch, phase.max_errors, 100 * phase.error_share,
        )  # fmt: skip

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kwargs,
    ) -> None:
        if self.injector is None or not self.injector.counts:
            return
        counts = self.injector.take_counts()
        total = sum(counts.values())
        shares = {f"errors_{k}": round(n / total, 4) for k, n in counts.items()}
        self.history.append({"step": state.global_step, "phase": self.current, **shares})
        if logs is not None:
            logs["curriculum_phase"] = self.current
        logger.info("curriculum phase %d, errors per example: %s", self.current, shares)
