"""Prometheus metrics on a per-app ``CollectorRegistry`` (tests build many apps).

Labels are bounded and hold no secrets: HTTP method, the *route template* (``/v1/conversations/
{conversation_id}``, never the raw path), status, the served model name, the cache name. No prompt
text, keys or key hashes. Queue depth, cache counters, capability status and drain state are read
from the app at scrape time by ``StateCollector``; everything else is counted as it happens.
Names follow vLLM/TGI where they have one (``time_to_first_token_seconds``, queue size).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete"}
TERMINAL["response.failed"] = "failed"
STATES = ("loaded", "not_loaded", "disabled", "error")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TPS_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)
# ``*_created`` series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class StateCollector(Collector):
    """Reads the app's live state (``state.AppState``) at scrape time: admission per model,
    caches, capabilities, drain."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "egemma_queue_depth", "Requests waiting for the model's slot.", labels=["model"]
        )
        busy = GaugeMetricFamily(
            "egemma_model_busy", "1 while a generation holds the model's slot.", labels=["model"]
        )
        counters = {
            key: CounterMetricFamily(f"egemma_queue_{key}", help_, labels=["model"])
            for key, help_ in (
                ("admitted", "Requests given the model's slot."),
                ("rejected", "Requests refused by a full queue or its timeout (503)."),
                ("abandoned", "Waiters dropped because their client left."),
            )
        }
        for engine in self.state.engines.chat_engines():
            stats = engine.admission_stats()
            depth.add_metric([engine.name], stats.depth)
            busy.add_metric([engine.name], 1.0 if stats.busy else 0.0)
            for key, family in counters.items():
                family.add_metric([engine.name], getattr(stats, key))
        yield depth
        yield busy
        yield from counters.values()

    def _caches(self) -> Iterator[Metric]:
        families = {
            key: CounterMetricFamily(f"egemma_cache_{key}", help_, labels=["cache"])
            for key, help_ in (
                ("hits", "Cache lookups answered from memory or disk."),
                ("misses", "Cache lookups that found nothing."),
                ("errors", "Disk cache failures served uncached (fail-open)."),
            )
        }
        services = self.state.services
        for cache in services.caches() if services is not None else []:
            for key, family in families.items():
                family.add_metric([cache.name], getattr(cache, key))
        yield from families.values()

    def _capabilities(self) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "egemma_capability_status",
            "1 for each capability's current state (loaded, not_loaded, disabled, error).",
            labels=["capability", "state"],
        )
        models = GaugeMetricFamily(
            "egemma_model_loaded", "1 for each loaded model.", labels=["capability", "model"]
        )
        engines = self.state.engines
        for key, entry in sorted(engines.status.items()):
            for state in STATES:
                status.add_metric([key, state], 1.0 if entry.status == state else 0.0)
        for name in sorted(engines.chat):
            models.add_metric(["chat", name], 1.0)
        for key, engine in (
            ("local_summarization", engines.summary),
            ("embeddings", engines.embedding),
        ):
            if engine is not None:
                models.add_metric([key, engine.name], 1.0)
        yield status
        yield models

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._caches()
        yield from self._capabilities()
        yield from registry_metrics(self.state.engines.registry)
        draining = GaugeMetricFamily("egemma_draining", "1 while the server shuts down.")
        draining.add_metric([], 1.0 if self.state.draining else 0.0)
        yield draining
        store = GaugeMetricFamily(
            "egemma_store_up",
            "1 while the response/conversation store is usable, 0 when broken (see /health).",
        )
        store.add_metric([], 1.0 if self.state.store.health().status != "error" else 0.0)
        yield store
        live = GaugeMetricFamily("egemma_generations_in_flight", "Generations running now.")
        live.add_metric([], float(len(self.state.generations)))
        yield live


class Metrics:
    """Every metric of one app, on its own registry."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "egemma_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "egemma_http_request_duration_seconds",
            "Time from request to the last response byte (whole stream for SSE).",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "egemma_http_requests_in_flight", "HTTP requests being served.", registry=r
        )
        self.tokens = Counter("egemma_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter(
            "egemma_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "egemma_time_to_first_token_seconds",
            "From admission to the model's slot to the first output delta.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "egemma_generation_tokens_per_second",
            "Output tokens per second after the first token, per generation.",
            ["model"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            "egemma_generations",
            "Finished generations by outcome (completed, incomplete, failed, disconnected).",
            ["model", "outcome"],
            registry=r,
        )
        self.disconnects = Counter(
            "egemma_client_disconnects",
            "Clients that left before their answer ended (while queued or while generating).",
            ["stage"],
            registry=r,
        )
        r.register(StateCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def client_left(self, stage: str) -> None:
        self.disconnects.labels(stage).inc()

    async def observe(
        self, model: str, events: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        """Pass ``events`` through, timing the first delta and counting tokens and outcome."""
        start = time.monotonic()
        first: float | None = None
        outcome = "disconnected"
        try:
            async for event in events:
                kind = event["type"]
                if first is None and kind.endswith(".delta"):
                    first = time.monotonic()
                    self.ttft.labels(model).observe(first - start)
                if kind in TERMINAL:
                    outcome = TERMINAL[kind]
                    self._usage(model, event["response"].get("usage"), first)
                yield event
        finally:
            self.generations.labels(model, outcome).inc()
            if outcome == "disconnected":
                self.client_left("generating")
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # already closed by its own task
                    await aclose()

    def _usage(self, model: str, usage: dict[str, Any] | None, first: float | None) -> None:
        if not usage:
            return
        output = int(usage.get("output_tokens") or 0)
        self.tokens.labels(model).inc(output)
        self.prompt_tokens.labels(model).inc(int(usage.get("input_tokens") or 0))
        if first is not None and output > 1:
            elapsed = time.monotonic() - first
            if elapsed > 0:
                self.tokens_per_second.labels(model).observe((output - 1) / elapsed)


def registry_metrics(registry: Any) -> Iterator[Metric]:
    """Loads, unloads, evictions and load seconds of the model registry, and its memory."""
    if registry is None:
        return
    for name, help_, value in (
        ("egemma_model_loads", "Models loaded (startup, first use, admin).", registry.loads),
        ("egemma_model_unloads", "Models unloaded (eviction, idle, admin).", registry.unloads),
        ("egemma_model_evictions", "Idle models unloaded to fit another.", registry.evictions),
        ("egemma_model_load_failures", "Model loads that failed.", registry.load_failures),
        ("egemma_model_load_seconds", "Seconds spent loading models.", registry.load_seconds_total),
    ):
        counter = CounterMetricFamily(name, help_)
        counter.add_metric([], float(value))
        yield counter
    vram_budget, vram_used = registry.vram_budget or 0, registry.used_vram
    for name, help_, value in (
        ("egemma_model_memory_budget_bytes", "MODEL_MEMORY_BUDGET.", registry.budget),
        ("egemma_model_memory_used_bytes", "Estimated bytes of loaded models.", registry.used),
        ("egemma_model_vram_budget_bytes", "MODEL_VRAM_BUDGET (0: none).", vram_budget),
        ("egemma_model_vram_used_bytes", "Estimated GPU bytes of loaded models.", vram_used),
    ):
        gauge = GaugeMetricFamily(name, help_)
        gauge.add_metric([], float(value))
        yield gauge
    state = GaugeMetricFamily(
        "egemma_model_state", "1 for each configured model's state.", labels=["model", "state"]
    )
    for entry in registry.entries.values():
        state.add_metric([entry.id, entry.state], 1.0)
    yield state
