"""The contract with clients nobody here wrote: TGI's `text-generation`, `huggingface_hub`'s
InferenceClient and the `openai` SDK, unchanged, against the real server process; and the fields
evaluation harnesses send (prompt lists, token ids, `logprobs`, `echo`).

`text-generation` pins huggingface_hub below 1.0, which transformers 5 does not accept, so it
is installed without its dependencies (`pip install --no-deps text-generation`); it needs only
pydantic, requests and aiohttp. Its `Request.dict()` is pydantic v1's spelling: the
deprecation warning it raises is the client's own and is filtered where it is used.
"""

from __future__ import annotations

import asyncio
import io
import math

import openai
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from backtrack.events import TokenEvent
from clients.viewer import parse_options
from server.api.native import TgiRenderer
from tests.server.conftest import API_KEY, EOS_FIRST_PROMPT, EXPECTED_TEXT, MODEL_ID, PROMPT

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
TGI_CLIENT_WARNING = "ignore:The `dict` method is deprecated:DeprecationWarning"
"""text-generation 0.7 calls pydantic's v1 `.dict()`; its warning, not ours."""


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


# -- TGI's own client -----------------------------------------------------------------------------


TGI_CLIENT_MISSING = "TGI's client is not installed: `make install` adds text-generation"


@pytest.mark.filterwarnings(TGI_CLIENT_WARNING)
def test_text_generation_client_generate_and_stream(server):
    text_generation = pytest.importorskip("text_generation", reason=TGI_CLIENT_MISSING)
    client = text_generation.Client(server.url, headers=HEADERS, timeout=30)
    response = client.generate(PROMPT, max_new_tokens=20)
    assert response.generated_text == EXPECTED_TEXT
    assert response.details.finish_reason == "eos_token"
    assert response.details.generated_tokens == len(EXPECTED_TEXT)
    assert "".join(token.text for token in response.details.tokens) == EXPECTED_TEXT
    streamed = list(client.generate_stream(PROMPT, max_new_tokens=20))
    assert "".join(r.token.text for r in streamed) == EXPECTED_TEXT
    assert streamed[-1].generated_text == EXPECTED_TEXT


@pytest.mark.filterwarnings(TGI_CLIENT_WARNING)
def test_text_generation_async_client(server):
    text_generation = pytest.importorskip("text_generation", reason=TGI_CLIENT_MISSING)

    async def run() -> tuple[str, str]:
        client = text_generation.AsyncClient(server.url, headers=HEADERS, timeout=30)
        response = await client.generate(PROMPT, max_new_tokens=20)
        tokens = [r.token.text async for r in client.generate_stream(PROMPT, max_new_tokens=20)]
        return response.generated_text, "".join(tokens)

    assert asyncio.run(run()) == (EXPECTED_TEXT, EXPECTED_TEXT)


def test_huggingface_hub_inference_client(server):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server.url, api_key=API_KEY)
    assert client.text_generation(PROMPT, max_new_tokens=20) == EXPECTED_TEXT
    details = client.text_generation(PROMPT, max_new_tokens=20, details=True)
    assert details.generated_text == EXPECTED_TEXT
    streamed = client.text_generation(PROMPT, max_new_tokens=20, stream=True)
    assert "".join(streamed) == EXPECTED_TEXT


@pytest.mark.filterwarnings(TGI_CLIENT_WARNING)
def test_tgi_samples_when_a_warper_is_set(server):
    """TGI's `sampling = do_sample or has_warpers`: temperature 5 alone samples."""
    text_generation = pytest.importorskip("text_generation", reason=TGI_CLIENT_MISSING)
    client = text_generation.Client(server.url, headers=HEADERS, timeout=30)
    texts = {
        client.generate(PROMPT, max_new_tokens=8, temperature=5.0, seed=seed).generated_text
        for seed in range(8)
    }
    assert len(texts) > 1
    same_seed = {
        client.generate(PROMPT, max_new_tokens=8, temperature=5.0, seed=3).generated_text
        for _ in range(2)
    }
    assert len(same_seed) == 1
    greedy = client.generate(PROMPT, max_new_tokens=8, temperature=1.0, seed=1)
    assert greedy.generated_text == EXPECTED_TEXT


def test_viewer_temperature_samples_like_tgi():
    options = parse_options(["x", "--temperature", "1.5"], io.StringIO())
    assert options.parameters == {"temperature": 1.5, "do_sample": True}
    options = parse_options(["x", "--temperature", "1.5", "--no-do-sample"], io.StringIO())
    assert options.parameters["do_sample"] is False
    assert "do_sample" not in parse_options(["x"], io.StringIO()).parameters


def test_tgi_stream_marks_special_tokens_special():
    renderer = TgiRenderer(frozenset({2, 9}), 9, "<|BACKTRACK|>", eos_id=2, details=False)
    assert renderer._line(TokenEvent(0, 2, "</s>", -0.1))["token"]["special"] is True
    assert renderer._line(TokenEvent(1, 40, "a", -0.1))["token"]["special"] is False


# -- OpenAI: prompts, choices, the model --------------------------------------------------------


def test_completion_with_a_list_of_prompts_answers_one_choice_each(sdk):
    completion = sdk.completions.create(
        model=MODEL_ID, prompt=[PROMPT, "zz", PROMPT], max_tokens=6, temperature=0
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert [choice.text for choice in completion.choices] == [EXPECTED_TEXT, "zzzzzz", "2 ok"]
    assert completion.usage.prompt_tokens == 2 * len(PROMPT) + 2
    assert completion.usage.completion_tokens == 2 * len(EXPECTED_TEXT) + 6


def test_completion_with_token_ids(sdk, scripted_checkpoint_dir):
    tokenizer = AutoTokenizer.from_pretrained(scripted_checkpoint_dir)
    ids = tokenizer(PROMPT)["input_ids"]
    one = sdk.completions.create(model=MODEL_ID, prompt=ids, max_tokens=20, temperature=0)
    assert one.choices[0].text == EXPECTED_TEXT
    assert one.usage.prompt_tokens == len(ids)
    many = sdk.completions.create(
        model=MODEL_ID, prompt=[ids, tokenizer("zz")["input_ids"]], max_tokens=3, temperature=0
    )
    assert [c.text for c in many.choices] == ["2 o", "zzz"]


def test_n_choices_are_numbered_per_prompt(sdk):
    completion = sdk.completions.create(
        model=MODEL_ID, prompt=["zz", PROMPT], n=2, max_tokens=3, temperature=0
    )
    assert [(c.index, c.text) for c in completion.choices] == [
        (0, "zzz"),
        (1, "zzz"),
        (2, "2 o"),
        (3, "2 o"),
    ]


def test_streamed_prompt_list_numbers_its_chunks(sdk):
    chunks = list(
        sdk.completions.create(
            model=MODEL_ID, prompt=[PROMPT, "zz"], max_tokens=4, temperature=0, stream=True
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: EXPECTED_TEXT, 1: "zzzz"}


def test_an_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.completions.create(model="gpt-4o", prompt=PROMPT)
    assert raised.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_response_format_text_is_accepted_others_refused(sdk):
    messages = [{"role": "user", "content": PROMPT}]
    chat = sdk.chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, response_format={"type": "text"}
    )
    assert chat.choices[0].message.content == EXPECTED_TEXT
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.chat.completions.create(
            model=MODEL_ID, messages=messages, response_format={"type": "json_object"}
        )
    assert raised.value.body["param"] == "response_format.type"


def test_stream_options_without_stream_is_400(sdk):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.completions.create(
            model=MODEL_ID, prompt=PROMPT, stream_options={"include_usage": True}
        )
    assert raised.value.body["param"] == "stream_options"


def test_ignore_eos_and_min_tokens_are_honoured(sdk):
    exact = sdk.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    assert exact.usage.completion_tokens == 12
    longer = sdk.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"min_tokens": 6}
    )
    assert longer.usage.completion_tokens >= 6


def test_ignore_eos_gives_exactly_max_tokens_after_the_text_written_before_eos(sdk):
    """The model wants EOS after `hi` and BT second: the answer is kept and written on."""
    free = sdk.completions.create(
        model=MODEL_ID, prompt=EOS_FIRST_PROMPT, max_tokens=12, temperature=0
    )
    assert (free.choices[0].text, free.choices[0].finish_reason) == ("hi", "stop")
    exact = sdk.completions.create(
        model=MODEL_ID,
        prompt=EOS_FIRST_PROMPT,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert exact.usage.completion_tokens == 12
    assert exact.choices[0].text.startswith(free.choices[0].text)
    assert exact.choices[0].finish_reason == "length"
    assert exact.choices[0].model_extra["backtrack_budget_exhausted"] is False


def test_an_openai_choice_says_when_the_deletion_budget_ran_out(sdk):
    spent = sdk.completions.create(
        model=MODEL_ID,
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        extra_body={"max_backtracks": 1},
    )
    assert (spent.choices[0].text, spent.choices[0].finish_reason) == ("2x", "stop")
    assert spent.choices[0].model_extra["backtrack_budget_exhausted"] is True
    chunks = list(
        sdk.completions.create(
            model=MODEL_ID,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            extra_body={"max_backtracks": 1},
        )
    )
    last = [chunk.choices[0] for chunk in chunks if chunk.choices[0].finish_reason][-1]
    assert last.model_extra["backtrack_budget_exhausted"] is True


# -- logprobs and echo --------------------------------------------------------------------------


def reference_logprobs(directory, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, straight from the checkpoint."""
    model = LlamaForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_scores_the_prompt_like_lm_eval_harness(sdk, scripted_checkpoint_dir, max_tokens):
    tokenizer = AutoTokenizer.from_pretrained(scripted_checkpoint_dir)
    ids = tokenizer(PROMPT + "2 o")["input_ids"]  # the model continues with "k"
    completion = sdk.completions.create(
        model=MODEL_ID, prompt=ids, max_tokens=max_tokens, echo=True, logprobs=1, temperature=0
    )
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + max_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = reference_logprobs(scripted_checkpoint_dir, ids)
    got = logprobs.token_logprobs[1 : len(ids)]
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got, expected, strict=True))
    # lm-eval's is_greedy: the top alternative equals the token at every continuation position
    for token, top in zip(logprobs.tokens[1:], logprobs.top_logprobs[1:], strict=True):
        assert token in top
    assert completion.choices[0].text.startswith(tokenizer.decode(ids))


def test_logprobs_zero_returns_the_chosen_tokens_never_a_deleted_one(sdk):
    completion = sdk.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=20, logprobs=0, temperature=0
    )
    choice = completion.choices[0]
    assert "".join(choice.logprobs.tokens) == EXPECTED_TEXT  # "3" and "x" were deleted
    assert len(choice.logprobs.token_logprobs) == completion.usage.completion_tokens
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert choice.logprobs.text_offset[0] == 0
    assert all(len(top) == 1 for top in choice.logprobs.top_logprobs)


def test_logprobs_top_n(sdk):
    completion = sdk.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=20, logprobs=3, temperature=0
    )
    for top in completion.choices[0].logprobs.top_logprobs:
        assert 3 <= len(top) <= 4
        assert all(lp <= 0 for lp in top.values())


def test_streamed_logprobs_match_the_whole_answer(sdk):
    whole = sdk.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=20, logprobs=2, temperature=0
    )
    chunks = list(
        sdk.completions.create(
            model=MODEL_ID, prompt=PROMPT, max_tokens=20, logprobs=2, temperature=0, stream=True
        )
    )
    streamed = [
        lp for c in chunks if c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs
    ]
    expected = whole.choices[0].logprobs.token_logprobs
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(streamed, expected, strict=True))


def test_chat_logprobs_and_top_logprobs(sdk):
    messages = [{"role": "user", "content": PROMPT}]
    chat = sdk.chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == EXPECTED_TEXT
    assert all(len(entry.top_logprobs) == 2 for entry in content)
    assert all(entry.bytes == list(entry.token.encode()) for entry in content)
    plain = sdk.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(model=MODEL_ID, messages=messages, top_logprobs=2)


def test_streamed_echo_and_empty_completions(sdk):
    chunks = list(
        sdk.completions.create(
            model=MODEL_ID, prompt=[PROMPT, "zz"], max_tokens=0, echo=True, logprobs=0, stream=True
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: PROMPT, 1: "zz"}
    empty = sdk.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=0)
    assert (empty.choices[0].text, empty.choices[0].finish_reason) == ("", "length")
    assert empty.usage.completion_tokens == 0


def test_chat_n_choices_stream(sdk):
    messages = [{"role": "user", "content": PROMPT}]
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL_ID, messages=messages, n=2, temperature=0, stream=True
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: EXPECTED_TEXT, 1: EXPECTED_TEXT}
