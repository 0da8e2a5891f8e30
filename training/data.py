"""(prompt, response) pairs from JSONL or the bundled task, tokenised once into `Example`s.

Two JSONL shapes are read: GSM8K's `{"question", "answer"}` and the generic
`{"prompt", "response"}`. Prompts are encoded by `backtrack.prompts`, the encoder the server uses
too, in the format `data.prompt_format` names (recorded in `backtrack.json`), so a model is
trained on exactly the ids it will be served. Everything downstream (error injection,
objectives, collation) works on these token ids and never decodes and re-encodes text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from backtrack.prompts import PromptEncoder, resolve_format
from training.config import DataConfig
from training.tasks import Problem, load_task


@dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    """The response's tokens, ending with EOS."""


def read_jsonl(path: str | Path) -> list[Problem]:
    """Read GSM8K-shaped or generic JSONL; the message names the line that is neither."""
    problems = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" in row and "response" in row:
            problems.append(Problem(str(row["prompt"]), str(row["response"])))
        elif "question" in row and "answer" in row:
            problems.append(Problem(str(row["question"]), str(row["answer"])))
        else:
            raise ValueError(
                f"{path}:{number}: expected prompt/response or question/answer fields, "
                f"got {sorted(row)}"
            )
    return problems


def encode(encoder: PromptEncoder, problem: Problem) -> Example:
    """The prompt as the server will encode it (`backtrack.prompts`), the response plus EOS."""
    tokenizer = encoder.tokenizer
    response = tokenizer.encode(problem.response, add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        response.append(tokenizer.eos_token_id)
    return Example(tuple(encoder.completion(problem.prompt)), tuple(response))


def prompt_encoder(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> PromptEncoder:
    """The encoder `data.prompt_format` names (`auto`: the chat template when there is one)."""
    return PromptEncoder(tokenizer, resolve_format(config.prompt_format, tokenizer))


class ExampleDataset(Dataset):
    """Clean examples; errors are injected later, per batch, so the curriculum can change them
    without changing what the Trainer sees as the dataset."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def load_problems(config: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems from the bundled task or from JSONL files."""
    if config.task is not None:
        task = load_task(
            config.task, config.digits, config.seed, config.short_operand_share,
            config.chain_share, config.branches, config.branch_length,
        )  # fmt: skip
        return task.splits(config.train_size, config.eval_size)
    assert config.train_file is not None  # Config.validate guarantees it
    train = read_jsonl(config.train_file)
    held_out = read_jsonl(config.eval_file) if config.eval_file else []
    return train, held_out[: config.eval_size]


def build_datasets(
    config: DataConfig, encoder: PromptEncoder
) -> tuple[ExampleDataset, ExampleDataset]:
    train, held_out = load_problems(config)
    return (
        ExampleDataset([encode(encoder, problem) for problem in train]),
        ExampleDataset([encode(encoder, problem) for problem in held_out]),
    )
