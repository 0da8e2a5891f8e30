"""Prometheus metrics, defined once on the server's own registry.

The names are a contract (dashboards are built on them). Latency buckets run from 1 ms to about
43 minutes so both GPU-scale (milliseconds) and CPU-scale (seconds) latencies resolve. The
quantities vLLM also exports are recorded through the methods below, once, under both names
(`server.vllm_metrics` holds vLLM's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from server.vllm_metrics import VllmMetrics

if TYPE_CHECKING:  # the report's type only: metrics stay free of torch
    from backtrack.batch import StepReport

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
    640.0,
    1280.0,
    2560.0,
)
BACKTRACK_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STEP_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""One forward: a tenth of a millisecond (a GPU decode step) to seconds (a long CPU prefill)."""


class Metrics:
    """Every metric the server exports, on one registry (several servers in one process are fine)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.vllm = VllmMetrics(r, model_name)
        self._kv_budget = 1
        self.requests = Counter(
            "backtrack_requests",
            "Finished generation requests, by endpoint and finish reason.",
            ["endpoint", "finish_reason"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "backtrack_rejected_requests",
            "Requests refused before generation, by endpoint and reason (validation, overloaded, unauthorized).",
            ["endpoint", "reason"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "backtrack_generated_tokens",
            "Ordinary tokens sampled, the ones later deleted included.",
            registry=r,
        )
        self.prompt_tokens = Counter(
            "backtrack_prompt_tokens", "Prompt tokens prefilled.", registry=r
        )
        self.backtracks = Counter(
            "backtrack_backtracks", "Backtracks taken (each erases one token).", registry=r
        )
        self.deleted_tokens = Counter(
            "backtrack_deleted_tokens", "Tokens erased by backtracks.", registry=r
        )
        self.request_backtracks = Histogram(
            "backtrack_request_backtracks",
            "Backtracks per finished request.",
            buckets=BACKTRACK_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "backtrack_time_to_first_token_seconds",
            "From arrival to the first token sent to the client.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "backtrack_inter_token_latency_seconds",
            "Between consecutive tokens sent to the client.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_request_latency = Histogram(
            "backtrack_e2e_request_latency_seconds",
            "From arrival to the end of generation.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_size = Gauge(
            "backtrack_queue_size", "Requests waiting for a decoding slot.", registry=r
        )
        self.running_requests = Gauge(
            "backtrack_running_requests", "Requests being decoded.", registry=r
        )
        self.kv_cache_tokens = Gauge(
            "backtrack_kv_cache_tokens",
            "Tokens held in the KV caches of running requests (0 once every request ended).",
            registry=r,
        )
        self.kv_cache_slots = Gauge(
            "backtrack_kv_cache_slots",
            "KV slots allocated for the running batch, padding and rewound holes included.",
            registry=r,
        )
        self.kv_cache_reserved_tokens = Gauge(
            "backtrack_kv_cache_reserved_tokens",
            "KV tokens reserved by admitted requests (prompt + the most they can generate).",
            registry=r,
        )
        self.kv_cache_budget_tokens = Gauge(
            "backtrack_kv_cache_budget_tokens",
            "The KV budget admission works within (max_batch_total_tokens).",
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "backtrack_kv_cache_usage_ratio",
            "KV tokens held as a fraction of the budget (0..1), for routers and autoscalers.",
            registry=r,
        )
        self.batch_size = Histogram(
            "backtrack_batch_size",
            "Rows in each batched decode forward.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.decode_step_seconds = Histogram(
            "backtrack_decode_step_seconds",
            "Time of each batched decode forward.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.prefill_step_seconds = Histogram(
            "backtrack_prefill_step_seconds",
            "Time spent prefilling prompt chunks in each step that prefilled.",
            buckets=STEP_BUCKETS,
            registry=r,
        )

    # -- quantities under both names: one call each, from the engine and its jobs ----------

    def set_waiting(self, requests: int) -> None:
        self.queue_size.set(requests)
        self.vllm.num_requests_waiting.set(requests)

    def set_running(self, requests: int) -> None:
        self.running_requests.set(requests)
        self.vllm.num_requests_running.set(requests)

    def set_kv_budget(self, tokens: int) -> None:
        self._kv_budget = max(tokens, 1)
        self.kv_cache_budget_tokens.set(tokens)

    def record_kv(self, tokens: int, slots: int) -> None:
        """The KV gauges (what an autoscaler and the endpoint picker read: ours and vLLM's),
        after every step and whenever a request leaves, however it ended, so an idle replica
        never reports the load of requests gone since."""
        self.kv_cache_tokens.set(tokens)
        self.kv_cache_slots.set(slots)
        self.kv_cache_usage.set(tokens / self._kv_budget)
        self.vllm.set_kv_usage(tokens / self._kv_budget)

    def prompt_prefilled(self, tokens: int) -> None:
        self.prompt_tokens.inc(tokens)
        self.vllm.prompt_tokens.inc(tokens)

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)
        self.vllm.time_to_first_token.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self.inter_token_latency.observe(seconds)
        self.vllm.observe_inter_token(seconds)

    def request_finished(
        self, endpoint: str, finish_reason: str, backtracks: int, seconds: float
    ) -> None:
        self.requests.labels(endpoint, finish_reason).inc()
        self.request_backtracks.observe(backtracks)
        self.e2e_request_latency.observe(seconds)
        self.vllm.request_finished(finish_reason, seconds)

    def record_step(self, report: StepReport) -> None:
        """What the step did as a whole, from its report."""
        self.generated_tokens.inc(report.sampled_tokens)
        self.vllm.generation_tokens.inc(report.sampled_tokens)
        self.backtracks.inc(report.backtracks)
        self.deleted_tokens.inc(report.backtracks)
        self.record_kv(report.kv_tokens, report.kv_slots)
        if report.decode_rows:
            self.batch_size.observe(report.decode_rows)
            self.decode_step_seconds.observe(report.decode_seconds)
        if report.prefill_tokens:
            self.prefill_step_seconds.observe(report.prefill_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
