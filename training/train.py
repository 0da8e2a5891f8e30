"""Train a backtracking model and write a checkpoint the server loads.

    make train                                        # the default: tiny Llama, bundled addition
    python -m training.train --config configs/default.yaml training.epochs=2 backtrack.objective=masked
    torchrun --nproc_per_node 2 -m training.train --config configs/default.yaml   # DDP (gloo on CPU)
    accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml \
        -m training.train --config configs/llama31_8b_gsm8k.yaml               # FSDP2, full weights
    python -m training.train --config configs/llama31_8b_gsm8k_lora.yaml      # LoRA on one GPU

The output directory holds the Hugging Face model and tokenizer, `loss.png`, `curriculum.json`,
`train_results.json`, Trainer checkpoints under `trainer/` (a rerun resumes from the newest) and,
written last, `backtrack.json`: its presence means the checkpoint is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from backtrack.checkpoint import CheckpointMetadata, save_checkpoint_files
from backtrack.core_share import CoreShare, core_share_for
from backtrack.threads import configure_threads
from backtrack.tokens import embedding_rows
from training import lora
from training.carry import CarryPlanter
from training.collator import BacktrackCollator
from training.config import Config, ConfigError, PhaseConfig, load_config
from training.curriculum import CurriculumCallback
from training.data import ExampleDataset, build_datasets, prompt_encoder
from training.distributed import enable_fsdp_on_cpu
from training.errors import ErrorPlan, Injector, build_source
from training.fallback import fallback_loss
from training.modeling import StartingPoint, starting_point
from training.on_policy import OnPolicyCallback, SelfCorrectionInjector
from training.plots import save_loss_curve
from training.resources import peak_rss_mb, run_figures
from training.tasks import SEARCH_TASKS
from training.wrong_branches import WrongBranchPlanter

logger = logging.getLogger("training")


class BacktrackTrainer(Trainer):
    """A Trainer whose evaluation batches stay clean while training batches carry errors, and
    whose loss gives BT a share of every other target when `fallback_share` is set."""

    def __init__(
        self,
        *args,
        eval_collator: BacktrackCollator,
        backtrack_id: int | None = None,
        fallback_share: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.backtrack_id = backtrack_id
        self.fallback_share = fallback_share

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.fallback_share or self.backtrack_id is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = inputs["shift_labels"]
        forward = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
        outputs = model(**forward)
        loss = fallback_loss(
            outputs.logits, targets, self.backtrack_id, self.fallback_share, num_items_in_batch
        )
        return (loss, outputs) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        self.is_fsdp_enabled = enable_fsdp_on_cpu(self.accelerator)


TRAINER_NAMES: dict[str, str | None] = {
    "epochs": "num_train_epochs",
    "warmup_ratio": "warmup_steps",  # a float below 1 is a ratio to TrainingArguments
    "gradient_checkpointing": "activation_checkpointing",
    # the pipeline interprets these itself rather than passing them through
    "output_dir": None,
    "eval_steps": None,
    "resume": None,
    "threads": None,
    "trainer_args": None,
}
"""The one mapping of the `training` section onto TrainingArguments: a field's name there, or
None for a field the pipeline reads itself; a field not listed passes by its own name."""


def section_arguments(config: Config) -> dict[str, Any]:
    """The `training` section's fields under their TrainingArguments names."""
    run = config.training
    passed: dict[str, Any] = {}
    for item in fields(run):
        name = TRAINER_NAMES.get(item.name, item.name)
        if name is not None:
            passed[name] = getattr(run, item.name)
    return passed


def pipeline_arguments(config: Config, has_eval: bool) -> dict[str, Any]:
    """What the pipeline fixes: evaluation only with held-out data, the collator in this
    process, gloo for DDP on CPU, checkpoints under `<output_dir>/trainer`."""
    run = config.training
    eval_every = run.eval_steps if has_eval and run.eval_steps > 0 else 0
    on_gpu = torch.cuda.is_available()
    distributed_cpu = torch.distributed.is_torchelastic_launched() and not on_gpu
    return {
        "output_dir": str(Path(run.output_dir) / "trainer"),
        "save_total_limit": 1,
        "eval_strategy": "steps" if eval_every else "no",
        "eval_steps": eval_every or None,
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,  # the collator reads the curriculum's plan in this process
        "ddp_backend": "gloo" if distributed_cpu else None,
        "use_cpu": not on_gpu,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "include_num_input_tokens_seen": "all",  # tokens/s per process in train_results.json
    }


def training_arguments(config: Config, has_eval: bool) -> TrainingArguments:
    """The `training` section as TrainingArguments: each field by name, then what the pipeline
    fixes, then `trainer_args` for anything else; a field set twice fails at start-up."""
    arguments = {**section_arguments(config), **pipeline_arguments(config, has_eval)}
    check_trainer_args(config, set(arguments))
    return TrainingArguments(**arguments, **config.training.trainer_args)


def check_trainer_args(config: Config, taken: set[str] | None = None) -> None:
    """`trainer_args` may not set what the section or the pipeline already sets (ConfigError)."""
    if taken is None:
        taken = set(section_arguments(config)) | set(pipeline_arguments(config, has_eval=False))
    for name in config.training.trainer_args:
        if name in taken:
            raise ConfigError(
                f"training.trainer_args.{name}: set by the training section or the pipeline"
            )


def build_trainer(
    config: Config, start: StartingPoint
) -> tuple[BacktrackTrainer, CurriculumCallback | None]:
    """The Trainer, its collators and (with backtracking) the curriculum callback."""
    train_set, eval_set = build_datasets(config.data, prompt_encoder(config.data, start.tokenizer))
    args = training_arguments(config, has_eval=len(eval_set) > 0)
    bt = config.backtrack
    injector, callback = None, None
    if bt.use_backtrack:
        injector = _injector(
            config, start, train_set, seed=config.training.seed + args.process_index
        )
        phases = (
            bt.phases if bt.use_curriculum else [PhaseConfig(0.0, bt.max_errors, bt.error_share)]
        )
        callback = CurriculumCallback(phases, injector.plan, injector)
    callbacks: list[TrainerCallback] = [callback] if callback else []
    if callback and isinstance(injector, SelfCorrectionInjector) and bt.on_policy.steps:
        callbacks.append(_on_policy(config, start, injector, train_set, callback.history))
    trainer = BacktrackTrainer(
        model=start.model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        data_collator=_collator(config, start, injector),
        eval_collator=_collator(config, start, None),
        callbacks=callbacks or None,
        backtrack_id=start.backtrack_id,
        fallback_share=bt.fallback_share if bt.use_backtrack else 0.0,
    )
    return trainer, callback


def _on_policy(
    config: Config,
    start: StartingPoint,
    injector: SelfCorrectionInjector,
    train_set: ExampleDataset,
    history: list[dict],
) -> OnPolicyCallback:
    """Mining rounds on the first `on_policy.problems` training problems; their records go to
    `curriculum.json` beside the phases'."""
    mining = config.backtrack.on_policy
    problems = train_set.examples[: mining.problems]
    return OnPolicyCallback(
        injector, start.tokenizer, start.backtrack_id, problems, list(mining.steps),
        mining.temperature, history, mining.span,
    )  # fmt: skip


def _collator(config: Config, start: StartingPoint, injector: Injector | None) -> BacktrackCollator:
    pad_id = start.tokenizer.pad_token_id
    objective, length = config.backtrack.objective, config.data.max_length
    # plain SFT walks no wrong branch: its right answers are the only place it learns the goal
    unlearned = config.data.goal_unlearned and config.backtrack.use_backtrack
    return BacktrackCollator(start.backtrack_id, pad_id, objective, injector, length, unlearned)


def _injector(
    config: Config, start: StartingPoint, train_set: ExampleDataset, seed: int
) -> Injector:
    """Each process draws its own errors (the seed includes the process index)."""
    special = [*start.tokenizer.all_special_ids, start.backtrack_id]
    vocab_size = embedding_rows(start.model)
    source = build_source(
        config.backtrack.error_source,
        train_set.examples,
        vocab_size,
        special,
        config.backtrack.random_error_share,
    )
    bt = config.backtrack
    if not bt.on_policy.steps and bt.carry_error_share == 0 and bt.wrong_branch_share == 0:
        return Injector(source, ErrorPlan(), seed=seed)
    carry = None
    if bt.carry_error_share:
        msd = config.data.task == "addition_msd"
        carry = CarryPlanter.for_tokenizer(start.tokenizer, most_significant_first=msd)
    return SelfCorrectionInjector(
        source,
        ErrorPlan(),
        seed=seed,
        mined_share=bt.on_policy.share,
        carry=carry,
        carry_share=bt.carry_error_share,
        branches=_planter(config, start),
        branch_share=bt.wrong_branch_share,
    )


def _planter(config: Config, start: StartingPoint) -> WrongBranchPlanter | None:
    if not config.backtrack.wrong_branch_share or config.data.task is None:
        return None  # Config.validate ties the share to a search task
    return WrongBranchPlanter(start.tokenizer, SEARCH_TASKS[config.data.task])


class FollowFreeCores(TrainerCallback):
    """Sets the thread count before each step from the cores other processes leave free."""

    def __init__(self, core_share: CoreShare) -> None:
        self.core_share = core_share

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.core_share.follow()


def resume_point(config: Config, trainer: Trainer) -> str | None:
    """The newest Trainer checkpoint of an interrupted run, when resuming is on."""
    directory = trainer.args.output_dir
    if not config.training.resume or directory is None or not Path(directory).is_dir():
        return None
    return get_last_checkpoint(directory)


def train(config: Config) -> Path:
    """Run the training described by `config`; return the checkpoint directory."""
    lora.check_supported(config.lora, config.model)
    threads = configure_threads(config.training.threads)
    set_seed(config.training.seed)
    output = Path(config.training.output_dir)
    quantization = lora.quantization_config(config.lora, getattr(torch, config.model.dtype))
    start = starting_point(
        config.model, config.backtrack.init_words, config.training.seed, quantization
    )
    if config.lora.enabled:
        start = lora.wrap(start, config.lora, config.training.gradient_checkpointing)
    trainer, callback = build_trainer(config, start)
    core_share = core_share_for(config.training.threads, threads)
    if core_share is not None:
        trainer.add_callback(FollowFreeCores(core_share))
    resume_from = resume_point(config, trainer)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    rss_before = peak_rss_mb()
    began = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.monotonic() - began
    results = {
        **result.metrics,
        "wall_seconds": elapsed,
        "world_size": trainer.args.world_size,
        **run_figures(trainer, rss_before),
    }
    save_weights(output, trainer, config)
    if trainer.is_world_process_zero():
        write_checkpoint(output, trainer, start, config, callback, results)
    return output


def save_weights(output: Path, trainer: Trainer, config: Config) -> None:
    """The model as a plain Hugging Face directory. Called on every process: under FSDP the full
    weights are gathered from all of them. LoRA: the adapter under `adapter/`, and the merged
    model (written by rank 0 alone) as the checkpoint."""
    if not config.lora.enabled:
        trainer.save_model(str(output))
        return
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        lora.save_adapter(model, output)
        seed = config.training.seed
        merged = lora.merged_model(
            model, config.lora, config.model, config.backtrack.init_words, seed
        )
        merged.save_pretrained(output)


def write_checkpoint(
    output: Path,
    trainer: Trainer,
    start: StartingPoint,
    config: Config,
    callback: CurriculumCallback | None,
    results: dict,
) -> None:
    """Tokenizer, loss curve, curriculum log and results (the weights are already saved);
    `backtrack.json` last."""
    output.mkdir(parents=True, exist_ok=True)
    start.tokenizer.save_pretrained(output)
    history = callback.history if callback else []
    phase_steps = [row["step"] for row in history if "max_errors" in row and row["step"] > 0]
    save_loss_curve(trainer.state.log_history, output / "loss.png", phase_steps)
    (output / "curriculum.json").write_text(json.dumps(history, indent=2) + "\n")
    (output / "train_results.json").write_text(json.dumps(results, indent=2) + "\n")
    metadata = CheckpointMetadata(
        backtrack_token_id=start.backtrack_id,
        objective=config.backtrack.objective,
        task=config.data.task,
        prompt_format=prompt_encoder(config.data, start.tokenizer).format,
        training_config=config.to_dict(),
    )
    save_checkpoint_files(output, metadata)
    logger.info("checkpoint written to %s (%.0f s of training)", output, results["wall_seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a backtracking model.")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. training.epochs=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        lora.check_supported(config.lora, config.model)
        check_trainer_args(config)
    except (ConfigError, OSError) as error:
        parser.error(str(error))  # a clear message and exit status 2, not a traceback
    train(config)


if __name__ == "__main__":
    main()
