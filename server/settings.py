"""The server's one settings object: environment variables (`BACKTRACK_*`) and CLI flags.

    python -m server --checkpoint checkpoints/default --port 8080
    BACKTRACK_CHECKPOINT=checkpoints/default BACKTRACK_API_KEY=secret python -m server

CLI flags override the environment. Everything is validated here, once, so a bad value stops
start-up with a message naming the setting; the rest of the server receives typed values.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backtrack.device import resolve_device
from backtrack.validation import problems
from server.event_log import unwritable
from server.limits import limit_field
from server.special_text import SpecialTokensInPrompts


class SettingsError(ValueError):
    """A setting with a bad value; the message names it."""


class Settings(BaseSettings):
    """Everything an operator can set. Each field is `BACKTRACK_<NAME>` or `--<name>`; the
    per-request caps come from the one table of them (`server.limits.CAPS`)."""

    model_config = SettingsConfigDict(
        env_prefix="BACKTRACK_",
        extra="forbid",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m server",
    )

    checkpoint: Path = Field(Path("checkpoints/default"), description="checkpoint directory")
    model_id: str | None = Field(
        None, description="name in /info and OpenAI answers (default: the directory name)"
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside the checkpoint directory, if any"
    )
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights and compute dtype; auto: bfloat16 on a GPU that has it and on a CPU "
        "with AMX or AVX-512 bf16, else float32 (sampling decisions stay float32)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="threads for the model's forwards, fixed (default: one fewer than the CPUs "
        "this process may use, from its affinity and the cgroup CPU quota, leaving a core to "
        "the HTTP side, and one fewer again for each core other processes keep busy)",
    )
    kv_layout: Literal["auto", "slots", "padded"] = Field(
        "auto",
        description="KV cache layout: slots (addressed by position, compilable), padded (one "
        "left-padded cache, any full-attention model); auto: slots where the model allows",
    )
    compile: bool = Field(
        True,
        description="compile the batched decode step (torch.compile; CUDA graphs on a GPU) and "
        "warm it up before /health reports ready; needs kv_layout slots",
    )
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    max_input_tokens: int = limit_field("max_input_tokens")
    max_new_tokens: int = limit_field("max_new_tokens")
    default_max_new_tokens: int = limit_field("default_max_new_tokens")
    max_concurrent_requests: int = Field(16, ge=1, description="requests decoded at once")
    max_queue_size: int = Field(64, ge=0, description="requests waiting for a slot; beyond it: 429")
    max_request_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the places (max_concurrent_requests + max_queue_size) one request "
        "may take with its choices (prompts x n); a request asking for more is refused (422), "
        "so one request never shuts other clients out",
    )
    max_batch_total_tokens: int = Field(
        65536,
        ge=1,
        description="KV budget in tokens: a request reserves its prompt plus its max_new_tokens "
        "(and 2 per allowed backtrack in keep mode); requests wait until theirs fits",
    )
    max_batch_prefill_tokens: int = Field(
        512,
        ge=1,
        description="prompt tokens prefilled per step while other requests decode (chunked prefill)",
    )
    max_stop_sequences: int = limit_field("max_stop_sequences")
    max_stop_sequence_chars: int = limit_field("max_stop_sequence_chars")
    max_backtracks: int = limit_field("max_backtracks")
    max_backtrack_depth: int = limit_field("max_backtrack_depth")
    max_scored_logprobs: int = limit_field("max_scored_logprobs")
    max_input_chars: int = limit_field("max_input_chars")
    special_tokens_in_prompts: SpecialTokensInPrompts = Field(
        "refuse",
        description="a special token (the backtrack token, EOS...) written in prompt text: "
        "refuse (422 naming the field), text (encoded as plain characters) or parse (becomes "
        "the token, as vLLM and TGI do); chat templates' own tokens are always parsed",
    )
    max_request_bytes: int = Field(
        2_000_000,
        ge=1,
        description="largest request body in bytes (TGI's payload_limit); beyond: 413",
    )
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        description="largest request head (request line and headers) in bytes; beyond: 431 and "
        "the connection closed",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a connection has to send a complete request head (from opening, or "
        "from its previous response); beyond: closed",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a request has to send its whole body once its head is in; "
        "beyond: 408 and the connection closed",
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="open connections (idle keep-alive ones and open streams included) and "
        "requests in progress at once; beyond: 503 (uvicorn's limit_concurrency). Keep it well "
        "above max_concurrent_requests + max_queue_size",
    )
    health_stall_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds one worker turn may take before /health answers 503 (wedged worker)",
    )
    max_consecutive_faults: int = Field(
        3,
        ge=1,
        description="failed engine turns (steps) in a row after which /health answers 503",
    )
    request_timeout: float = Field(
        300.0, gt=0, description="seconds before a request ends with finish_reason timeout"
    )
    shutdown_timeout: float = Field(
        10.0, ge=0, description="seconds in-flight requests get to finish after SIGTERM"
    )
    sse_ping_interval: float = Field(
        15.0,
        ge=0,
        description="seconds between keep-alive comments on a quiet SSE stream (0: none), "
        "so proxies' and clients' read timeouts need not exceed it",
    )
    sse_send_timeout: float = Field(
        30.0,
        ge=0,
        description="seconds one SSE frame may wait for a client that does not read; beyond: "
        "the stream is closed and its generation cancelled (0: wait for ever)",
    )
    api_key: SecretStr | None = Field(
        None,
        description="if set, generation needs 'Authorization: Bearer <key>' "
        "(surrounding whitespace is stripped)",
    )
    protect_metrics: bool = Field(
        False,
        description="with an API key, /metrics, /info, /docs and /openapi.json need it too "
        "(/health and the web page stay open)",
    )
    api_key_file: Path | None = Field(
        None,
        description="file holding the API key (a mounted Secret), instead of api_key; "
        "surrounding whitespace is stripped",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS (JSON list)"
    )
    event_log: Path | None = Field(
        None,
        description="JSONL file that receives one line per finished request: its token and "
        "backtrack events in order, counts and finish reason, for `python -m training.analyze` "
        "(unset: no log)",
    )
    event_log_max_bytes: int = Field(
        100_000_000, ge=1, description="size at which the event log moves to event_log.1"
    )
    event_log_backups: int = Field(
        5, ge=0, description="rotated event logs kept (event_log.1 ... .N; 0: none)"
    )
    event_log_prompts: bool = Field(
        False,
        description="the event log holds prompt and answer text and token ids too; without it "
        "a line holds positions, token kinds (digit, letter...), logprobs and counts only",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log verbosity"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        resolve_device(value)  # raises ValueError naming the problem
        return value

    @field_validator("event_log")
    @classmethod
    def _event_log_writable(cls, value: Path | None) -> Path | None:
        problem = None if value is None else unwritable(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would compare equal to an empty header: protected in name only. A key
        # made with `echo` ends in a newline no client sends: stripped, or it refuses everyone.
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("must not be empty; unset BACKTRACK_API_KEY to run without a key")
        return SecretStr(key)

    @model_validator(mode="after")
    def _key_from_file(self) -> Settings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None:
            raise ValueError("api_key_file: set either api_key or api_key_file, not both")
        try:
            key = self.api_key_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"api_key_file: cannot read {self.api_key_file}: {error}") from None
        if not key:
            raise ValueError(f"api_key_file: {self.api_key_file} is empty")
        self.api_key = SecretStr(key)
        return self

    @property
    def exposed_without_key(self) -> bool:
        """Listening beyond loopback with no API key: whoever reaches the port may generate."""
        return self.api_key is None and not is_loopback(self.host)

    @property
    def served_model_id(self) -> str:
        return self.model_id or self.checkpoint.resolve().name


def is_loopback(host: str) -> bool:
    """`127.0.0.1`, `::1`, `localhost`: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it can be reached from outside
        return False


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, overridden by `argv` flags; SettingsError on a bad value."""
    try:
        return Settings(_cli_parse_args=argv or [], _cli_exit_on_error=False)
    except ValidationError as error:
        raise SettingsError(describe(error)) from None
    except SystemExit as error:  # argparse's own errors (unknown flag, missing value)
        if error.code in (0, None):  # --help
            raise
        raise SettingsError(f"invalid command line: {error}") from None
    except Exception as error:  # pydantic-settings wraps argparse errors in SettingsError
        raise SettingsError(str(error)) from None


def describe(error: ValidationError) -> str:
    """One line per bad setting: `setting max_queue_size: Input should be ... (got 'x')`."""
    return "\n".join(
        f"setting {problem.field(empty='settings')}: {problem.message} (got {problem.value!r})"
        for problem in problems(error.errors())
    )
