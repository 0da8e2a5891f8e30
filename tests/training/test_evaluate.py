"""The evaluation's figures mean what docs/evaluation.md says they mean."""

from __future__ import annotations

import pytest
import torch

from backtrack.prompts import PromptEncoder
from backtrack.tiny import build_tiny_llama, tiny_llama_config
from training.config import Config
from training.data import load_problems
from training.evaluate import (
    Subject,
    error_repair,
    false_backtrack_rate,
    held_out_problems,
    recovery_rate,
)


def test_error_repair_is_the_share_of_plain_errors_that_backtracking_fixed():
    assert error_repair(0.6, 0.94) == pytest.approx(0.85)
    assert error_repair(0.5, 0.5) == 0
    assert error_repair(0.95, 1.0) is None  # plain barely errs: no meaningful figure


def test_the_held_out_problems_are_never_training_problems():
    config = Config()
    config.data.train_size, config.data.eval_size = 5000, 100
    train, held_out = load_problems(config.data)
    assert held_out_problems(config, 10) == held_out[:10]
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}


def biased_model(vocab_size: int, backtrack_id: int, shift: float):
    """A fresh tiny model whose BT logit is moved by `shift` (far above or below every other)."""
    model = build_tiny_llama(tiny_llama_config(vocab_size))
    bias = torch.zeros(vocab_size)
    bias[backtrack_id] = shift
    model.lm_head.register_forward_hook(lambda _module, _inputs, output: output + bias)
    return model


@pytest.mark.parametrize(("shift", "rate"), [(1e4, 1.0), (-1e4, 0.0)])
def test_recovery_and_false_backtracks_count_the_backtrack_decisions(
    char_tokenizer, backtrack_id, shift, rate
):
    model = biased_model(len(char_tokenizer), backtrack_id, shift)
    subject = Subject(
        model,
        char_tokenizer,
        backtrack_id,
        held_out_problems(Config(), 5),
        PromptEncoder(char_tokenizer),
    )
    assert recovery_rate(subject) == rate
    assert recovery_rate(subject, kind="out_of_distribution") == rate
    assert false_backtrack_rate(subject) == rate


def non_digit_deleter(tokenizer, backtrack_id: int):
    """A fresh tiny model that emits BT right after any non-digit, and never after a digit."""
    digits = torch.tensor(tokenizer.convert_tokens_to_ids(list("0123456789")))
    model = build_tiny_llama(tiny_llama_config(len(tokenizer)))

    def backtrack_after_a_non_digit(_module, _args, kwargs, output):
        non_digit = ~torch.isin(kwargs["input_ids"][:, -1], digits)
        output.logits[:, -1, backtrack_id] += torch.where(non_digit, 1e4, -1e4)
        return output

    model.register_forward_hook(backtrack_after_a_non_digit, with_kwargs=True)
    return model


def test_a_model_that_deletes_only_non_digits_recovers_from_those_alone(
    char_tokenizer, backtrack_id
):
    """The two recovery figures tell apart what the model deletes: here letters, never digits."""
    model = non_digit_deleter(char_tokenizer, backtrack_id)
    subject = Subject(
        model,
        char_tokenizer,
        backtrack_id,
        held_out_problems(Config(), 8),
        PromptEncoder(char_tokenizer),
    )
    assert recovery_rate(subject, kind="in_distribution") == 0.0
    assert recovery_rate(subject, kind="out_of_distribution") == 1.0


def test_evaluating_a_missing_checkpoint_says_so_and_exits(tmp_path, capsys):
    from training import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
