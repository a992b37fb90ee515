"""Prometheus metrics of `pocketlm serve` at GET /metrics (prometheus_client, one registry per app).

Requests by route and status, requests running and waiting, prompt and completion tokens, time to the first
piece of text, time between pieces, request duration and the decode rate of the last batched step."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GAPS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self, queue_sizes):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pocketlm_requests", "HTTP requests answered", ["route", "status"], registry=r)
        running = Gauge("pocketlm_requests_running", "generations in progress", registry=r)
        waiting = Gauge("pocketlm_requests_waiting", "generations waiting for a slot", registry=r)
        running.set_function(lambda: queue_sizes()[0])
        waiting.set_function(lambda: queue_sizes()[1])
        self.prompt_tokens = Counter("pocketlm_prompt_tokens", "prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter("pocketlm_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("pocketlm_time_to_first_token_seconds", "from the request's arrival to its first "
                              "piece of text", buckets=LATENCY, registry=r)
        self.gap = Histogram("pocketlm_inter_token_seconds", "time between pieces of text of one generation",
                             buckets=GAPS, registry=r)
        self.duration = Histogram("pocketlm_generation_seconds", "from arrival to the last piece of text",
                                  buckets=LATENCY, registry=r)
        self.decode_rate = Gauge("pocketlm_decode_tokens_per_second", "tokens per second of the last batched "
                                 "decode step (all running requests together)", registry=r)
        self.batch = Gauge("pocketlm_decode_batch_size", "requests in the last batched decode step", registry=r)

    def on_step(self, rows: int, seconds: float) -> None:
        self.batch.set(rows)
        if seconds > 0:
            self.decode_rate.set(rows / seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
