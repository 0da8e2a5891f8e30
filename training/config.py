"""The training configuration: dataclasses read once from YAML plus `key=value` overrides.

    python -m training.train --config configs/default.yaml training.epochs=4 backtrack.objective=masked

Every field has a default and a docstring; library code receives these typed objects, never the
raw YAML or the command line. The sections are pydantic dataclasses: types are checked by
pydantic (`2.7` for an int is refused, never truncated; a string `"no"` for a bool is false, as
YAML reads `no`; `"1e-3"` for a float is 0.001; a `Literal` field takes only its choices) and the
ranges by `Config.validate`; either way a bad value raises `ConfigError` naming it as
`section.field`.
"""

from __future__ import annotations

from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from backtrack.prompts import PROMPT_FORMATS
from backtrack.validation import problems
from training.path_star import LABELS as PATH_STAR_LABELS
from training.tasks import SEARCH_TASKS, TASKS

Objective = Literal["rewind", "masked"]
ErrorSourceName = Literal["random", "in_distribution", "mixed"]


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


SECTION = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
"""Every section is a pydantic dataclass with this config: unknown fields are mistakes; a number
where a string goes (`output_dir=2024`) is a string."""


@dataclass(config=SECTION)
class ModelConfig:
    name_or_path: str = "tiny"
    """`tiny`: a Llama built from the fields below and trained from scratch with the char
    tokenizer; otherwise a local Hugging Face directory (or one holding `gguf_file`)."""
    gguf_file: str | None = None
    """A GGUF file inside `name_or_path` (the SmolLM2 package ships one)."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    dtype: str = "float32"
    """Weights' dtype when loading a pretrained model (`bfloat16` halves memory on a GPU)."""
    trust_remote_code: bool = False


@dataclass(config=SECTION)
class DataConfig:
    task: str | None = "addition"
    """The bundled synthetic task (`addition`, `addition_msd`: answer most significant digit
    first, `word_addition`, `path_star`: a path through a star-shaped graph, `checksum`: the
    number whose digits sum to a target); None reads
    `train_file`/`eval_file` instead."""
    digits: int = 3
    """Operand digits of the synthetic task."""
    train_size: int = 32000
    eval_size: int = 300
    """Held-out problems (never in the training split); evaluation uses the same split."""
    seed: int = 1234
    """Fixes the synthetic splits; changing it changes which problems are held out."""
    short_operand_share: float = 0.0
    """Synthetic task: the share of training operands with fewer digits (held-out ones never)."""
    chain_share: float = 0.0
    """Synthetic addition: the probability that a column's digits sum to 9 (both splits), which
    makes long carry chains common (`training.tasks`)."""
    branches: int = 4
    """`path_star`: the arms leaving the start, one of which leads to the goal; `checksum`: the
    numbers to pick from."""
    branch_length: int = 4
    """`path_star`: the nodes on each arm (the answer's length); `checksum`: each number's
    digits."""
    goal_unlearned: bool = False
    """`path_star`, `checksum`: no loss on a right answer's last token, the goal the prompt
    states (the goal node, the target). Learned, it teaches copying the goal into any walk, whose
    dead end then looks like the goal and is never deleted; unlearned, the last token is learned
    only where it must be worked out: in the wrong walks (`backtrack.wrong_branch_share`). Plain
    SFT (`backtrack.use_backtrack=false`) walks none, so there it has no effect."""
    train_file: str | None = None
    """JSONL with `prompt`/`response` or GSM8K's `question`/`answer` on every line."""
    eval_file: str | None = None
    max_length: int = 512
    """Examples longer than this (prompt + response + errors) are truncated from the right."""
    prompt_format: str = "auto"
    """How prompts are written (`backtrack.prompts`): `plain` text, `chat` (one user turn of the
    tokenizer's chat template) or `auto` (chat when the tokenizer has a template). Recorded in
    `backtrack.json`; the server encodes every route's prompts the same way."""


@dataclass(config=SECTION)
class PhaseConfig:
    start_epoch: float = 0.0
    """The phase begins at this (fractional) epoch and lasts until the next phase begins."""
    max_errors: int = 0
    """Each corrupted example carries 1..max_errors injected tokens; 0 means a clean phase."""
    error_share: float = 0.0
    """Share of examples that are corrupted in this phase; the rest stay clean."""


@dataclass(config=SECTION)
class OnPolicyConfig:
    """Errors mined from the model being trained (`training.on_policy`)."""

    steps: list[int] = field(default_factory=list)
    """Optimiser steps at which the model's own answers are decoded and their first wrong tokens
    become training errors (each round replaces the last); empty: no mining."""
    problems: int = 4000
    """Training problems decoded per round (the first ones of the training split)."""
    temperature: float = 0.0
    """0 mines greedy answers; above 0, sampled ones (more, and more varied, errors)."""
    share: float = 0.15
    """Share of training examples replaced by a mined one (a problem the model got wrong, with
    its own first wrong token), once a round has mined any."""
    span: int = 1
    """Tokens of the model's own answer taken as the error, from its first wrong one on: 1
    trains `wrong BT right`; more trains deleting a mistake seen only a few tokens later."""


@dataclass(config=SECTION)
class BacktrackConfig:
    use_backtrack: bool = True
    """False trains plain SFT (no injected errors): the baseline to compare against."""
    objective: Objective = "rewind"
    error_source: ErrorSourceName = "in_distribution"
    random_error_share: float = 0.5
    """With `error_source: mixed`, the share of error tokens drawn uniformly (any ordinary token);
    the rest follow the response distribution."""
    carry_error_share: float = 0.0
    """Addition: the share of corrupted examples whose first error is the digit one too small
    where a carry comes in (`training.carry`), the mistake the task's structure makes likely."""
    wrong_branch_share: float = 0.0
    """`path_star`, `checksum`: the share of training examples that first walk a wrong branch to
    its dead end and delete it (`training.wrong_branches`), how a search is taught."""
    fallback_share: float = 0.0
    """BT's share of the target at every other trained position: BT becomes the model's second
    choice, so when a rewind bans the only good token the model goes further back (repeated
    rewinds search its alternatives depth first); 0 leaves the targets one-hot."""
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    use_curriculum: bool = True
    """True follows `phases`; False uses `max_errors` and `error_share` from the first step."""
    max_errors: int = 3
    error_share: float = 0.3
    phases: list[PhaseConfig] = field(
        default_factory=lambda: [
            PhaseConfig(0.0, 0, 0.0),
            PhaseConfig(4.0, 3, 0.3),
        ]
    )
    init_words: list[str] = field(
        default_factory=lambda: ["delete", "undo", "erase", "back", "remove", "backspace", "cancel"]
    )
    """Words whose embeddings initialise BT's (their mean); the mean embedding when none exist."""


@dataclass(config=SECTION)
class TrainingConfig:
    output_dir: str = "checkpoints/default"
    epochs: float = 8.0
    max_steps: int = -1
    """Positive: stop after this many optimiser steps whatever `epochs` says (quick runs)."""
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    bf16: bool = False
    logging_steps: int = 50
    save_steps: int = 1000
    eval_steps: int = 500
    seed: int = 0
    resume: bool = True
    """Continue from the newest Trainer checkpoint in `<output_dir>/trainer` when one exists."""
    threads: int | None = None
    """torch CPU threads; None: the CPUs this process may use (affinity, cgroup CPU quota)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: far less memory for about a third more time.
    Under FSDP use the accelerate config's `fsdp_activation_checkpointing` instead."""
    trainer_args: dict[str, Any] = field(default_factory=dict)
    """Any other `transformers.TrainingArguments` field, passed through as given (`optim`,
    `max_grad_norm`, `adam_beta2`, ...); a name it does not know fails at start-up."""


def trainer_argument_names() -> frozenset[str]:
    """Every field `transformers.TrainingArguments` takes (imported here only when asked)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    return frozenset(item.name for item in fields(TrainingArguments) if item.init)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BacktrackRows = Literal["token", "full"]


@dataclass(config=SECTION)
class LoraConfig:
    """LoRA (and QLoRA) with peft: adapters on the linear layers, BT's rows trained in full."""

    enabled: bool = False
    r: int = 16
    """The adapters' rank."""
    alpha: int = 32
    """The adapters' scale is alpha / r."""
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linear layers that get adapters (Llama's names); the output layer never does."""
    backtrack_rows: BacktrackRows = "token"
    """`token`: only BT's embedding and output rows train (peft's `trainable_token_indices`),
    every other row stays frozen; `full`: the whole embedding and output matrices train
    (`modules_to_save`), several GB of gradients and Adam state more for a 128k vocabulary."""
    qlora: bool = False
    """Load the frozen base weights in 4-bit NF4 (bitsandbytes, CUDA only); the merged
    checkpoint is written from a full-precision reload of the base, never from 4-bit weights."""


@dataclass(config=SECTION)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backtrack: BacktrackConfig = field(default_factory=BacktrackConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        bt = self.backtrack
        _require(0 <= bt.random_error_share <= 1, "backtrack.random_error_share", "in [0, 1]")
        _require(bt.max_errors >= 0, "backtrack.max_errors", "at least 0")
        _require(0 <= bt.carry_error_share <= 1, "backtrack.carry_error_share", "in [0, 1]")
        _require(0 <= bt.wrong_branch_share <= 1, "backtrack.wrong_branch_share", "in [0, 1]")
        _require(
            bt.wrong_branch_share == 0 or self.data.task in SEARCH_TASKS,
            "backtrack.wrong_branch_share",
            f"0 unless data.task is one of {', '.join(SEARCH_TASKS)}",
        )
        _require(
            not self.data.goal_unlearned or self.data.task in SEARCH_TASKS,
            "data.goal_unlearned",
            f"false unless data.task is one of {', '.join(SEARCH_TASKS)}",
        )
        _require(0 <= bt.fallback_share < 0.5, "backtrack.fallback_share", "in [0, 0.5)")
        _require(0 <= bt.on_policy.share <= 1, "backtrack.on_policy.share", "in [0, 1]")
        _require(bt.on_policy.span >= 1, "backtrack.on_policy.span", "at least 1")
        _require(bt.on_policy.problems >= 1, "backtrack.on_policy.problems", "at least 1")
        _require(bt.on_policy.temperature >= 0, "backtrack.on_policy.temperature", "at least 0")
        _require(
            all(step >= 0 for step in bt.on_policy.steps), "backtrack.on_policy.steps", "at least 0"
        )
        _require(0 <= bt.error_share <= 1, "backtrack.error_share", "in [0, 1]")
        _require(bool(bt.phases), "backtrack.phases", "a non-empty list")
        _require(bt.phases[0].start_epoch == 0, "backtrack.phases", "starting at epoch 0")
        for name in self.training.trainer_args:
            _require(
                name in trainer_argument_names(),
                f"training.trainer_args.{name}",
                "a transformers.TrainingArguments field",
            )
        starts = [phase.start_epoch for phase in bt.phases]
        _require(starts == sorted(set(starts)), "backtrack.phases", "in increasing start_epoch")
        for phase in bt.phases:
            _require(phase.max_errors >= 0, "backtrack.phases.max_errors", "at least 0")
            _require(0 <= phase.error_share <= 1, "backtrack.phases.error_share", "in [0, 1]")
        _require(
            self.data.task is not None or self.data.train_file is not None,
            "data.train_file",
            "set when data.task is null",
        )
        _require(
            self.data.task is None or self.data.task in TASKS,
            "data.task",
            f"one of {', '.join(TASKS)} or null",
        )
        _require(self.data.digits >= 1, "data.digits", "at least 1")
        _require(self.data.branches >= 2, "data.branches", "at least 2")
        _require(self.data.branch_length >= 1, "data.branch_length", "at least 1")
        _require(
            self.data.task != "path_star"
            or 1 + self.data.branches * self.data.branch_length <= len(PATH_STAR_LABELS),
            "data.branches",
            f"such that 1 + branches x branch_length is at most {len(PATH_STAR_LABELS)}"
            " (one letter per node)",
        )
        _require(
            self.data.task != "checksum" or self.data.branches <= len(PATH_STAR_LABELS),
            "data.branches",
            f"at most {len(PATH_STAR_LABELS)} for checksum (one letter per number)",
        )
        _require(0 <= self.data.chain_share <= 1, "data.chain_share", "in [0, 1]")
        _require(0 <= self.data.short_operand_share <= 1, "data.short_operand_share", "in [0, 1]")
        _require(
            self.data.prompt_format in ("auto", *PROMPT_FORMATS),
            "data.prompt_format",
            "auto, plain or chat",
        )
        _require(
            self.training.per_device_train_batch_size >= 1,
            "training.per_device_train_batch_size",
            "at least 1",
        )
        lora = self.lora
        _require(lora.r >= 1, "lora.r", "at least 1")
        _require(lora.alpha > 0, "lora.alpha", "positive")
        _require(0 <= lora.dropout < 1, "lora.dropout", "in [0, 1)")
        _require(bool(lora.target_modules), "lora.target_modules", "a non-empty list")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CONFIG: TypeAdapter[Config] = TypeAdapter(Config)


def _require(ok: bool, name: str, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expectation}")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """The inverse of `Config.to_dict` (what a checkpoint's metadata holds)."""
    return _validate(raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or take the defaults when `path` is None), then apply `section.field=value`."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
    for override in overrides or []:
        _apply_override(raw, override)
    return _validate(raw)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[leaf] = yaml.safe_load(value)


def _validate(raw: Any) -> Config:
    """pydantic builds every section; its first complaint becomes a ConfigError naming the
    field (`training.epochs`, `backtrack.phases.1.max_errors`)."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections")
    try:
        return _CONFIG.validate_python(raw)
    except ValidationError as error:
        raise _config_error(error) from None


def _config_error(error: ValidationError) -> ConfigError:
    first = problems(error.errors())[0]
    cause = first.context.get("error")
    if isinstance(cause, ConfigError):  # raised by Config.validate: already names its field
        return cause
    name = first.field(empty="config")
    if first.kind == "unexpected_keyword_argument":
        return ConfigError(f"unknown field {name}")
    if first.kind == "literal_error":
        return ConfigError(f"{name} must be one of {first.context['expected']}")
    return ConfigError(f"{name}: {first.message} (got {first.value!r})")
