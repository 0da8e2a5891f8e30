"""`POST /v1/completions`, `POST /v1/chat/completions`, `POST /v1/responses` and `GET /v1/models`,
as the openai SDK expects.

OpenAI clients cannot erase text, so streams hold back every token a later backtrack could still
delete (`hold_back_deletable`, default on): the concatenated deltas always equal the final text.
With it off, tokens stream at once and each deletion arrives as a chunk with empty text and a
`backtrack` field in its choice, which an unaware client ignores.

Completions take one prompt or a list, as text or token ids (`list[int]`, `list[list[int]]`),
and `n` choices per prompt; choice `index` is `prompt * n + j`, as OpenAI and vLLM number them.
Each choice is its own request in the engine's batch, so one request may ask for at most
`max_choices_per_request` of them (`max_request_share` of the places; `check_choices`, 422 on `n`).
`/v1/responses` is OpenAI's Responses API over the same conversation rendering: one answer, as a
`response` object or its typed events (`server.api.responses_protocol`,
`server.api.responses_render`).

`logprobs` (and chat `logprobs`/`top_logprobs`) are the model's own log-probabilities of the
returned tokens given the prompt and the tokens before them, with the top alternatives. In
`rewind` mode a kept token's context when it was drawn is its context in the final text, so its
figures come from the step that drew it (`TokenEvent.score`: no extra forward, streamed or not);
in `keep` mode (deleted tokens and BT stay in the context) one extra forward over prompt + final
text scores them on the engine's worker thread (`GenerationService.score`). A deleted token is
never part of them. `echo` adds the prompt's tokens (the first one with logprob null), scored by a
forward over the prompt, which is how evaluation harnesses score likelihoods.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from backtrack.params import GenerationParams
from server.api.chat_render import ChatRenderer
from server.api.choices import Prompt, check_choices, choice_params, submit_all
from server.api.completion_render import CompletionRenderer
from server.api.deps import Service, Streaming, require_api_key
from server.api.errors import ApiError, OpenAIError, error_responses
from server.api.openai_protocol import ChatCompletionRequest, CompletionRequest, openai_params
from server.api.openai_protocol import Prompt as PromptField
from server.api.openai_render import OpenAIRenderer, generation_failed
from server.api.responses import ChatCompletion, Completion
from server.api.responses_objects import ResponseObject
from server.api.responses_protocol import ResponsesRequest, responses_params
from server.api.responses_render import ResponsesRenderer
from server.api.streaming import collect, sse_response
from server.limits import Limits
from server.service import GenerationService

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_api_key)],
    tags=["openai"],
    responses=error_responses(OpenAIError),
)
EVENT_STREAM: dict[str, Any] = {"text/event-stream": {}}
COMPLETION_OR_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"model": Completion, "content": {"application/json": {}, **EVENT_STREAM}}
}
CHAT_OR_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "content": {"application/json": {}, **EVENT_STREAM}}
}


@router.get("/models", summary="The one model this server serves")
async def list_models(service: Service) -> dict[str, Any]:
    model = {"id": service.served.model_id, "object": "model", "created": 0, "owned_by": "local"}
    return {"object": "list", "data": [model]}


def encodable(text: str) -> bool:
    """False for text holding a lone surrogate, which no UTF-8 body can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_model(
    body: CompletionRequest | ChatCompletionRequest | ResponsesRequest, service: GenerationService
) -> str:
    """The served id; any other `model` is answered 404, as vLLM does."""
    served = service.served.model_id
    if body.model is not None and not encodable(body.model):
        # JSON may escape half a UTF-16 pair; such a name cannot even be echoed in the 404
        raise ApiError(422, "model: not valid Unicode (a lone surrogate)", "validation", "model")
    if body.model is not None and body.model != served:
        raise ApiError(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
    return served


def prompt_count(prompt: PromptField) -> int:
    """How many prompts `prompt` holds, before any is tokenised."""
    if isinstance(prompt, str) or all(isinstance(item, int) for item in prompt):
        return 1
    return len(prompt)


async def completion_prompts(body: CompletionRequest, service: GenerationService) -> list[Prompt]:
    """The request's prompts as ids, whichever of the four shapes `prompt` takes."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [Prompt(await service.encode_completion(prompt, "prompt"), prompt)]
    if all(isinstance(item, int) for item in prompt):
        ids = service.check_token_ids([item for item in prompt if isinstance(item, int)], "prompt")
        return [Prompt(ids, service.decode(ids))]
    prompts = []
    for number, item in enumerate(prompt):
        field = f"prompt.{number}"
        if isinstance(item, str):
            prompts.append(Prompt(await service.encode_completion(item, field), item))
        elif isinstance(item, list):
            ids = service.check_token_ids(item, field)
            prompts.append(Prompt(ids, service.decode(ids)))
    return prompts


def check_scoring(render: OpenAIRenderer, max_tokens: int, limits: Limits) -> None:
    """422 before any work when the log-probabilities asked for pass `max_scored_logprobs`:
    one line of the answer per choice, scored token and alternative (an echoed prompt is also
    scored by a forward of its own), so an answer's size is bounded before it is generated."""
    if render.top_n is None:
        return
    scored = sum((len(prompt.ids) if render.echo else 0) + max_tokens for prompt in render.prompts)
    asked = scored * (render.top_n + 1)
    if asked > limits.max_scored_logprobs:
        raise ApiError(
            422,
            f"logprobs: this request asks for {asked} log-probabilities ({scored} scored tokens "
            f"over {len(render.prompts)} choices, {render.top_n + 1} per token); this server "
            f"gives at most {limits.max_scored_logprobs} per request (max_scored_logprobs): "
            "lower n, max_tokens or logprobs, or drop echo",
            "invalid_request_error",
            "logprobs",
        )


def include_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post(
    "/completions",
    summary="OpenAI text completions, streaming or not",
    responses=COMPLETION_OR_STREAM,
)
async def completions(
    body: CompletionRequest, request: Request, service: Service, streaming: Streaming
) -> Any:
    model = check_model(body, service)
    check_choices(prompt_count(body.prompt), body.n, service.limits)
    generate = body.max_tokens != 0
    params = openai_params(body, service.limits, max_tokens=None if generate else 1)
    prompts = [prompt for prompt in await completion_prompts(body, service) for _ in range(body.n)]
    render = CompletionRenderer(
        model, service, prompts, body.logprobs, include_usage(body), echo=body.echo
    )
    return await _serve(body, render, generate, request, service, streaming, params)


@router.post(
    "/chat/completions",
    summary="OpenAI chat completions, streaming or not",
    responses=CHAT_OR_STREAM,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: Service, streaming: Streaming
) -> Any:
    model = check_model(body, service)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(
            422, "top_logprobs: needs logprobs set to true", "invalid_request_error", "top_logprobs"
        )
    check_choices(1, body.n, service.limits)
    params = openai_params(body, service.limits)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompts = [Prompt(await service.encode_chat(messages, "messages"), "")] * body.n
    top_n = (body.top_logprobs or 0) if body.logprobs else None
    render = ChatRenderer(model, service, prompts, top_n, include_usage(body))
    return await _serve(body, render, True, request, service, streaming, params)


RESPONSE_OR_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ResponseObject,
        "description": "The `response` object, or with `stream: true` its typed SSE events "
        "(`response.created` ... `response.completed`, `response.incomplete` or "
        "`response.failed`)",
        "content": {"text/event-stream": {}},
    }
}


@router.post(
    "/responses",
    summary="OpenAI Responses API: text in, one message out, streaming or not",
    responses=RESPONSE_OR_EVENTS,
)
async def responses(
    body: ResponsesRequest, request: Request, service: Service, streaming: Streaming
) -> Any:
    model = check_model(body, service)
    params = responses_params(body, service.limits)
    ids = await service.encode_chat(body.messages(), "input")
    render = ResponsesRenderer(model, body, params, len(ids))
    choices = submit_all(service, [(ids, params)], True, render.endpoint, body.hold_back_deletable)
    if body.stream:
        return sse_response(choices, render.frames, streaming)
    await collect(choices, request)
    return render.answer(choices.finals[0])


async def _serve(
    body: CompletionRequest | ChatCompletionRequest,
    render: OpenAIRenderer,
    generate: bool,
    request: Request,
    service: GenerationService,
    streaming: Streaming,
    params: GenerationParams,
) -> Any:
    """Choice `index` is `prompt * n + j`, with its own seed (`choice_params`)."""
    check_scoring(render, params.max_new_tokens if generate else 0, service.limits)
    choices = [
        (prompt.ids, choice_params(params, number % body.n))
        for number, prompt in enumerate(render.prompts)
    ]
    streams = submit_all(
        service, choices, generate, render.endpoint, body.hold_back_deletable, render.top_n
    )
    if body.stream:
        return sse_response(streams, render.frames, streaming)
    items, _ = await collect(streams, request)
    if any(done.finish_reason == "error" for done in streams.finals.values()):
        raise generation_failed()
    return await render.answer(streams.by_choice(items), streams.finals)
