"""eGemma release gate: one Locust user class per scenario, thresholds in thresholds.toml.

Run by ``make loadtest`` (scripts/loadtest.sh) against a server it starts; by hand::

    .venv-load/bin/locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 60s \
        --host http://127.0.0.1:8765 --exit-code-on-error 0 --only-summary

Environment: LOAD_API_KEY (bearer key), LOAD_MODEL (chat model), LOAD_EMBEDDING_MODEL,
LOAD_PERSONA (summarize persona), LOAD_THRESHOLDS (path of the thresholds file), LOAD_GATE_REPORT
(also write the gate's table to this file).

- Streams use ``HttpUser`` (requests, ``stream=True``) read line by line: geventhttpclient's
  ``read(n)`` waits for n bytes and would report a late first token. JSON users use
  ``FastHttpUser``.
- 429 and 503 answers go to their own entries ("<endpoint> [429]"), never mixed into the p95.
- An endpoint answering 404 is reported as not built, and the user for it stops.
- The gate runs in ``events.quitting`` and sets ``process_exit_code`` only on failure (run with
  ``--exit-code-on-error 0`` so that the gate, which bounds failure ratios, decides).

Locust imports gevent, which monkey-patches the process: nothing in src/ or tests/ imports this.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, HttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gate  # noqa: E402  (sibling module, found by path)

API_KEY = os.environ.get("LOAD_API_KEY", "load-test-key")
MODEL = os.environ.get("LOAD_MODEL", "smollm2-135m-instruct")
EMBEDDING_MODEL = os.environ.get("LOAD_EMBEDDING_MODEL", "all-minilm-l6-v2")
PERSONA = os.environ.get("LOAD_PERSONA", "developer")
THRESHOLDS = Path(
    os.environ.get("LOAD_THRESHOLDS", Path(__file__).resolve().parent / "thresholds.toml")
)
HEADERS = {"Authorization": f"Bearer {API_KEY}"}

PROMPTS = [
    "Name three primary colors.",
    "Say hello in French.",
    "What is two plus two?",
    "Give one tip for writing tests.",
    "Describe the sea in five words.",
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "A release gate stops a slow build from shipping.",
    "def add(a, b):\n    return a + b",
    "Rain is expected in the afternoon, clearing by evening.",
    "Locust spawns users that send requests.",
    "SQLite keeps the conversation store on disk.",
    "Hypercorn serves the ASGI application.",
]
CODE_SAMPLE = '''"""A tiny module to summarize."""


def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
'''
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
}

MISSING: dict[str, str] = {}  # endpoint name → why it never answered
CPU_WARNING = {"seen": False}


def classify(response: Any, name: str, path: str) -> bool:
    """Route shed and broken answers; True when the body is worth reading."""
    status = response.status_code
    if status in (429, 503):
        response.request_meta["name"] = f"{name} [{status}]"
        response.success()
        return False
    if status == 404 and name not in MISSING:
        MISSING[name] = f"{path} answered 404: endpoint not built (or wrong route)"
    if not 200 <= status < 300:
        response.failure(f"HTTP {status}: {str(response.text)[:200]}")
        return False
    return True


def stop_if_missing(name: str) -> None:
    if name in MISSING:
        raise StopUser()


class ResponsesStreamUser(HttpUser):
    """Responses API over SSE: full streams with TTFT, and streams abandoned after 3 events."""

    weight = 3
    wait_time = between(1.0, 3.0)

    def _stream(self, name: str, abandon_after: int | None) -> None:
        body = {
            "model": MODEL,
            "input": random.choice(PROMPTS),
            "stream": True,
            "store": False,
            "max_output_tokens": 24,
        }
        start = time.perf_counter()
        with self.client.post(
            "/v1/responses",
            json=body,
            headers=HEADERS,
            stream=True,
            catch_response=True,
            name=name,
        ) as response:
            if not classify(response, name, "POST /v1/responses (stream)"):
                response.close()
            else:
                self._read(response, name, start, abandon_after)
        stop_if_missing(name)

    def _read(self, response: Any, name: str, start: float, abandon_after: int | None) -> None:
        events_seen, first_delta, last_type = 0, None, ""
        for line in response.iter_lines(chunk_size=None):
            if not line.startswith(b"data:"):
                continue
            events_seen += 1
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                last_type = json.loads(payload).get("type", "")
            except ValueError:
                response.failure(f"event {events_seen} is not JSON: {payload[:80]!r}")
                return
            if first_delta is None and last_type.endswith(".delta"):
                first_delta = time.perf_counter()
                self.environment.events.request.fire(
                    request_type="SSE",
                    name="responses: TTFT",
                    response_time=(first_delta - start) * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )
            if abandon_after is not None and events_seen >= abandon_after:
                break
        response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
        if abandon_after is not None:
            response.close()  # the server sees the disconnect and must free the slot
            response.success()
        elif last_type in ("response.completed", "response.incomplete"):
            response.success()
        else:
            response.failure(f"stream ended after {events_seen} events on {last_type!r}")

    @task(3)
    def stream(self) -> None:
        self._stream("responses: stream", abandon_after=None)

    @task(1)
    def abandon(self) -> None:
        self._stream("responses: abandon after 3 events", abandon_after=3)


class ToolCallUser(FastHttpUser):
    """Responses API, JSON, a required function tool: the output must be a valid call."""

    weight = 1
    wait_time = between(2.0, 4.0)

    @task
    def tool_call(self) -> None:
        name = "responses: tool call"
        body = {
            "model": MODEL,
            "input": "What is the weather in Paris?",
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "store": False,
            "max_output_tokens": 64,
        }
        with self.client.post(
            "/v1/responses", json=body, headers=HEADERS, catch_response=True, name=name
        ) as response:
            if classify(response, name, "POST /v1/responses (tools)"):
                calls = [
                    item
                    for item in (response.json() or {}).get("output", [])
                    if item.get("type") == "function_call"
                ]
                try:
                    ok = bool(calls) and isinstance(json.loads(calls[0]["arguments"]), dict)
                except (ValueError, KeyError, TypeError):
                    ok = False
                if not ok:
                    response.failure("no function_call item with JSON object arguments")
        stop_if_missing(name)


class EmbeddingsUser(FastHttpUser):
    """OpenAI-shaped embeddings, small batches of varied sentences (cache hits and misses)."""

    weight = 3
    wait_time = between(0.2, 0.6)

    @task
    def embeddings(self) -> None:
        name = "embeddings"
        texts = random.sample(SENTENCES, k=random.randint(1, 4))
        texts[0] = f"{texts[0]} (sample {random.randrange(10**9)})"  # one cache miss per request
        body = {"model": EMBEDDING_MODEL, "input": texts, "encoding_format": "float"}
        with self.client.post(
            "/v1/embeddings", json=body, headers=HEADERS, catch_response=True, name=name
        ) as response:
            if classify(response, name, "POST /v1/embeddings"):
                data = (response.json() or {}).get("data", [])
                if len(data) != len(texts) or not all(d.get("embedding") for d in data):
                    response.failure(f"expected {len(texts)} embeddings, got {len(data)}")
        stop_if_missing(name)


class SummarizeUser(HttpUser):
    """The original's multipart /summarize with a persona (local model).

    A summary holds the shared chat model for seconds (persona prompt + file), so this user paces
    itself: on 2 cores, back-to-back summaries would starve every Responses user behind them.
    """

    weight = 1
    wait_time = between(10.0, 20.0)

    @task
    def summarize(self) -> None:
        name = "summarize"
        source = f"# revision {uuid.uuid4().hex}\n{CODE_SAMPLE}"  # a fresh text: no cached summary
        files = {"file": ("fib.py", source.encode(), "text/x-python")}
        data = {"persona": PERSONA, "max_tokens": "32"}
        with self.client.post(
            "/summarize", files=files, data=data, headers=HEADERS, catch_response=True, name=name
        ) as response:
            if classify(response, name, "POST /summarize") and not (
                (response.json() or {}).get("summary")
            ):
                response.failure("no summary in the answer")
        stop_if_missing(name)


class ConversationsUser(FastHttpUser):
    """Conversations: create, append, list, delete (the store under concurrent writers)."""

    weight = 2
    wait_time = between(0.2, 0.8)

    def _call(self, method: str, path: str, name: str, body: Any = None) -> dict[str, Any] | None:
        with self.client.request(
            method, path, json=body, headers=HEADERS, catch_response=True, name=name
        ) as response:
            result = response.json() if classify(response, name, f"{method} {path}") else None
        stop_if_missing(name)
        return result

    @task
    def lifecycle(self) -> None:
        first = {"type": "message", "role": "user", "content": f"hello {uuid.uuid4().hex[:8]}"}
        created = self._call(
            "POST", "/v1/conversations", "conversations: create", {"items": [first]}
        )
        if not created or "id" not in created:
            return
        base = f"/v1/conversations/{created['id']}"
        reply = {"type": "message", "role": "assistant", "content": "hi"}
        self._call("POST", f"{base}/items", "conversations: add items", {"items": [reply]})
        self._call("GET", f"{base}/items?limit=10", "conversations: list items")
        self._call("DELETE", base, "conversations: delete")


@events.cpu_warning.add_listener
def _on_cpu_warning(environment: Environment, cpu_usage: float, **_: Any) -> None:
    CPU_WARNING["seen"] = True


@events.quitting.add_listener
def _release_gate(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.stats is None:
        return
    raw = [
        (
            entry.name,
            entry.num_requests,
            entry.num_failures,
            entry.get_response_time_percentile(0.5) or 0.0,
            entry.get_response_time_percentile(0.95) or 0.0,
        )
        for entry in environment.stats.entries.values()
    ]
    exceptions = len(environment.runner.exceptions) if environment.runner else 0
    verdict = gate.evaluate(
        gate.merge(raw),
        gate.load_thresholds(THRESHOLDS),
        missing=MISSING,
        exceptions=exceptions,
        cpu_warning=CPU_WARNING["seen"],
    )
    report = gate.render(verdict)
    print("\n" + report, flush=True)
    if os.environ.get("LOAD_GATE_REPORT"):
        Path(os.environ["LOAD_GATE_REPORT"]).write_text(report + "\n")
    if not verdict.passed:
        environment.process_exit_code = 3  # only on failure: never hide Locust's own errors
