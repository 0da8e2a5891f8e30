"""vLLM's metric names beside ours, so what was built for vLLM reads this server unchanged.

vLLM's Grafana dashboard, the Gateway API inference extension's endpoint picker with its default
flags, and KEDA or HPA recipes written for vLLM all select `vllm:*` series, filtered on
`model_name`. `server.metrics.Metrics` records each quantity once and hands it to this module as
well, so the two names of a quantity never disagree.

Where each name, type, label and bucket edge comes from:

* names and types: vLLM's metrics pages, https://docs.vllm.ai/en/stable/usage/metrics/ and
  docs/design/metrics.md in vllm-project/vllm ("v1 Metrics");
* labels `model_name` (the served model name) and `engine` (the engine core's index, "0" for a
  single engine), `finished_reason` on `vllm:request_success`, and every bucket edge:
  `PrometheusStatLogger` in vllm/v1/metrics/loggers.py; the reason values are vLLM's
  `FINISH_REASON_STRINGS` (vllm/v1/engine/__init__.py);
* `vllm:inter_token_latency_seconds` is the current name (vLLM 0.11 on; the dashboard in
  examples/online_serving/prometheus_grafana/grafana.json reads it); earlier releases and their
  dashboard read `vllm:time_per_output_token_seconds`, the same inter-token intervals, kept here too;
* `vllm:kv_cache_usage_perc` is a fraction 0..1 despite its name; `vllm:gpu_cache_usage_perc` is
  its name before vLLM 0.10, still the endpoint picker's default `--kv-cache-usage-percentage-metric`
  up to its v1.0 releases;
* `vllm:lora_requests_info` (labels `max_lora`, `running_lora_adapters`, `waiting_lora_adapters`,
  value a timestamp): the picker's default `--lora-info-metric`; this server serves no adapters,
  so it says so (none running or waiting, at most 0) instead of the picker finding no series.

vLLM's buckets, not ours: a dashboard that sums `_bucket` series `by (le)` across a fleet of vLLM
replicas and these gives right quantiles only when the edges are the same.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
"""vLLM's `vllm:time_to_first_token_seconds` edges."""
INTER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
"""vLLM's `vllm:inter_token_latency_seconds` (and `time_per_output_token_seconds`) edges."""
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
"""vLLM's `vllm:e2e_request_latency_seconds` edges."""

VLLM_FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
"""vLLM's `finished_reason` values; every one is exported from the start, at 0, as vLLM does."""
FINISHED_REASON = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "cancelled": "abort",
    "timeout": "abort",
    "shutdown": "abort",
    "error": "error",
}
"""Our finish reasons in vLLM's words: EOS or a stop sequence is `stop`; a cap reached (tokens or
context) is `length`; a request ended from outside (client gone, timeout, shutdown)
is `abort`, as vLLM names a request aborted before it finished."""
ENGINE = "0"
"""The `engine` label: one engine per server process, as a single-engine vLLM reports."""


def vllm_finished_reason(reason: str) -> str:
    return FINISHED_REASON.get(reason, "error")


class VllmMetrics:
    """The `vllm:*` series, bound to this server's model name, on the server's registry."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        labels = ["model_name", "engine"]
        bound = (model_name, ENGINE)

        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, labels, registry=registry).labels(*bound)

        def counter(name: str, help_text: str) -> Counter:
            return Counter(name, help_text, labels, registry=registry).labels(*bound)

        def histogram(name: str, help_text: str, buckets: tuple[float, ...]) -> Histogram:
            family = Histogram(name, help_text, labels, buckets=buckets, registry=registry)
            return family.labels(*bound)

        self.num_requests_running = gauge(
            "vllm:num_requests_running", "Requests being decoded (backtrack_running_requests)."
        )
        self.num_requests_waiting = gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for a decoding slot (backtrack_queue_size).",
        )
        self.kv_cache_usage = gauge(
            "vllm:kv_cache_usage_perc",
            "KV tokens held / max_batch_total_tokens; 1 means 100 percent usage.",
        )
        self.gpu_cache_usage = gauge(
            "vllm:gpu_cache_usage_perc",
            "Same as vllm:kv_cache_usage_perc, under its name before vLLM 0.10.",
        )
        self.prompt_tokens = counter(
            "vllm:prompt_tokens", "Prompt tokens prefilled (backtrack_prompt_tokens_total)."
        )
        self.generation_tokens = counter(
            "vllm:generation_tokens",
            "Tokens sampled, those later deleted by a backtrack included (backtrack_generated_tokens_total).",
        )
        success = Counter(
            "vllm:request_success",
            "Finished requests by vLLM's finish reason (backtrack_requests_total).",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self.request_success = {r: success.labels(*bound, r) for r in VLLM_FINISHED_REASONS}
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds",
            "From arrival to the first token sent to the client.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds",
            "Between consecutive tokens sent to the client.",
            INTER_TOKEN_BUCKETS,
        )
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Same as vllm:inter_token_latency_seconds, under its name before vLLM 0.11.",
            INTER_TOKEN_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds",
            "From arrival to the end of generation.",
            REQUEST_LATENCY_BUCKETS,
        )
        lora = Gauge(
            "vllm:lora_requests_info",
            "LoRA adapters running and waiting: none, this server serves one model.",
            ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            registry=registry,
        )
        lora.labels("0", "", "").set_to_current_time()

    def set_kv_usage(self, fraction: float) -> None:
        self.kv_cache_usage.set(fraction)
        self.gpu_cache_usage.set(fraction)

    def observe_inter_token(self, seconds: float) -> None:
        self.inter_token_latency.observe(seconds)
        self.time_per_output_token.observe(seconds)

    def request_finished(self, finish_reason: str, seconds: float) -> None:
        self.request_success[vllm_finished_reason(finish_reason)].inc()
        self.e2e_request_latency.observe(seconds)
