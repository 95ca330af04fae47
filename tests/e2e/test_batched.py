"""The batched llama.cpp engine (CHAT_ENGINE=batched) through a real server and the shipped
SmolLM2: concurrent streams of every kind, a cancel that spares the others, aborts that leak
nothing, and interleaved conversations that keep their KV prefix.

Tiny model: these assert protocol shape, validity and accounting, never answer quality."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import APIStatusError, OpenAI

from egemma.app import create_app
from tests.e2e.conftest import KEY, SMOL, real_settings
from tests.e2e.test_responses_sdk import ANSWER_SCHEMA, WEATHER, check_sequence
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

PARALLEL = 8
TIMEOUT = 600  # generous: the shared 2-core CI box runs these beside other work


def raw_events(server: LiveServer, payload: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with (
        httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http,
        http.stream(
            "POST",
            "/v1/responses",
            json={**payload, "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        assert resp.status_code == 200
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
    return events


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("batched-data")
    settings = real_settings(
        data,
        CHAT_ENGINE="batched",
        CHAT_PARALLEL=str(PARALLEL),
        CHAT_EXTRA_MODELS="",
        CHAT_N_CTX="1024",
        CHAT_QUEUE_SIZE="64",
        CHAT_QUEUE_TIMEOUT="900",
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=300)
    yield server
    server.stop()


def client(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def engine_of(server: LiveServer) -> Any:
    """The batched engine itself (the registry's managed engine wraps it once loaded)."""
    chat = server.app.state.egemma.engines.chat[SMOL]
    return getattr(chat, "loaded", None) or chat


def wait_idle(server: LiveServer, timeout: float = 300.0) -> None:
    engine = engine_of(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.admission_stats()
        if engine.slot_report()["busy_slots"] == 0 and stats.depth == 0 and not stats.busy:
            return
        time.sleep(0.1)
    raise AssertionError(f"engine not idle: {engine.slot_report()} {engine.admission_stats()}")


def body(kind: str, i: int) -> dict[str, Any]:
    base: dict[str, Any] = {"model": SMOL, "max_output_tokens": 16, "temperature": 0.0}
    if kind == "tool":
        return {
            **base,
            "input": f"What is the weather in city number {i}?",
            "max_output_tokens": 40,
            "tools": [WEATHER],
            "tool_choice": "required",
        }
    if kind == "json":
        return {
            **base,
            "input": f"Answer briefly: what is {i} plus {i}?",
            "max_output_tokens": 40,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": ANSWER_SCHEMA,
                    "strict": True,
                }
            },
        }
    return {**base, "input": f"Write one sentence about the number {i}."}


def check_kind(kind: str, final: dict[str, Any]) -> None:
    if kind == "tool":
        calls = [o for o in final["output"] if o["type"] == "function_call"]
        assert calls, final["output"]
        assert calls[0]["name"] == "get_weather"
        jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["parameters"])
    elif kind == "json" and final["status"] == "completed":
        texts = [
            c["text"]
            for o in final["output"]
            if o["type"] == "message"
            for c in o["content"]
            if c["type"] == "output_text"
        ]
        jsonschema.validate(json.loads("".join(texts)), ANSWER_SCHEMA)


def test_health_reports_the_slots(batched_server: LiveServer) -> None:
    health = httpx.get(f"{batched_server.base_url}/health", timeout=10).json()
    text = json.dumps(health)
    assert f'"parallel": {PARALLEL}' in text
    assert '"kv_bytes"' in text


@pytest.mark.timeout(1200)  # eight streams with grammars on a shared 2-core box
def _nice(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of proc(5), after the name


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_the_decode_threads_run_below_the_event_loop(batched_server: LiveServer) -> None:
    """CHAT_DECODE_NICE (5): the scheduler thread, and the llama.cpp workers its decodes start
    (ggml's pool lives for one decode, so they are looked for while a stream runs)."""
    base = _nice(threading.get_native_id())
    schedulers = [t for t in threading.enumerate() if t.name.startswith("llama-batch-")]
    assert schedulers
    for thread in schedulers:
        assert thread.native_id is not None
        assert _nice(thread.native_id) == min(base + 5, 19)
    known = {t.native_id for t in threading.enumerate()}
    workers: set[int] = set()
    with client(batched_server).responses.stream(
        model=SMOL, input="Count from one to fifty.", max_output_tokens=48, temperature=0.0
    ) as stream:
        for _event in stream:
            for task in Path("/proc/self/task").iterdir():
                tid = int(task.name)
                with contextlib.suppress(FileNotFoundError):  # a worker that just ended
                    if tid not in known and _nice(tid) == min(base + 5, 19):
                        workers.add(tid)
    if (os.cpu_count() or 1) > 1:  # one core: the scheduler thread decodes alone
        assert workers


def test_eight_concurrent_streams_of_every_kind_complete(batched_server: LiveServer) -> None:
    kinds = ["tool", "json", "plain", "tool", "json", "plain", "tool", "plain"]

    def run(i: int) -> tuple[str, list[dict[str, Any]]]:
        return kinds[i], raw_events(batched_server, body(kinds[i], i))

    with ThreadPoolExecutor(max_workers=len(kinds)) as pool:
        results = list(pool.map(run, range(len(kinds))))
    for kind, events in results:
        final = check_sequence(events)
        check_kind(kind, final)
    wait_idle(batched_server)


def test_one_cancelled_stream_leaves_the_others_untouched(batched_server: LiveServer) -> None:
    started = threading.Event()

    def cancelled() -> int:
        payload = {**body("plain", 99), "stream": True, "max_output_tokens": 100}
        with (
            httpx.Client(base_url=batched_server.base_url, timeout=TIMEOUT) as http,
            http.stream(
                "POST", "/v1/responses", json=payload, headers={"Authorization": f"Bearer {KEY}"}
            ) as resp,
        ):
            for line in resp.iter_lines():
                if "output_text.delta" in line:
                    started.set()
                    return 1
        return 0

    def other(i: int) -> list[dict[str, Any]]:
        started.wait(TIMEOUT)
        return raw_events(batched_server, body("plain", i))

    with ThreadPoolExecutor(max_workers=4) as pool:
        others = [pool.submit(other, i) for i in range(3)]
        assert pool.submit(cancelled).result() == 1
        for future in others:
            final = check_sequence(future.result())
            assert final["output"], final
    wait_idle(batched_server)


def server_tasks(server: LiveServer) -> int:
    """Tasks alive on the server's event loop (asked on that loop)."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(count(), server._loop).result(30)


POOLS = ("AnyIO worker", "asyncio_")  # anyio's worker pool, the loop's default executor


def anyio_workers() -> int:
    return sum(t.name.startswith("AnyIO worker") for t in threading.enumerate())


def own_threads() -> int:
    """Threads of this process outside the two bounded pools, whose idle workers linger until
    their next use (anyio: at most its limiter, 40 by default)."""
    return sum(not t.name.startswith(POOLS) for t in threading.enumerate())


def settled(server: LiveServer, tasks: int, threads: int, timeout: float = 120.0) -> None:
    """Back to the task and thread counts from before (a task may still be closing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_tasks(server) <= tasks and own_threads() <= threads:
            return
        time.sleep(0.2)
    names = sorted(t.name for t in threading.enumerate())
    raise AssertionError(f"leaked: {server_tasks(server)} tasks (was {tasks}), threads {names}")


ABORTS = 1000  # the figure; most leave after the first event, which costs little


@pytest.mark.timeout(1800)
def test_a_thousand_aborted_streams_leak_nothing(batched_server: LiveServer) -> None:
    wait_idle(batched_server)
    engine = engine_of(batched_server)
    before = engine.admission_stats()
    tasks, threads = server_tasks(batched_server), own_threads()
    local = threading.local()
    clients: list[httpx.Client] = []

    def http() -> httpx.Client:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=batched_server.base_url, timeout=TIMEOUT)
            clients.append(local.http)
        return local.http  # type: ignore[no-any-return]

    def abort(i: int) -> bool:
        # Most leave after the first event (admitted, before or during prefill); one in 100
        # after its first token (a running sequence of the batch; these cost the most time).
        until = "output_text.delta" if i % 100 == 0 else "event: "
        payload = {**body("plain", i), "stream": True, "max_output_tokens": 32}
        with http().stream(
            "POST", "/v1/responses", json=payload, headers={"Authorization": f"Bearer {KEY}"}
        ) as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                if until in line:
                    return True  # leaving the block closes this connection mid-stream
        return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        left = sum(pool.map(abort, range(ABORTS)))
    for each in clients:
        each.close()
    assert left == ABORTS
    wait_idle(batched_server)
    after = engine.admission_stats()
    assert after.depth == 0
    assert not after.busy
    assert after.rejected == before.rejected
    assert after.admitted - before.admitted + after.abandoned - before.abandoned >= ABORTS
    assert anyio_workers() <= 40
    assert engine.slot_report()["busy_slots"] == 0
    assert not engine._incoming  # nothing parked in the scheduler
    settled(batched_server, tasks, threads)
    # The server still serves a whole answer afterwards.
    final = check_sequence(raw_events(batched_server, body("plain", 7)))
    assert final["status"] in ("completed", "incomplete")


def test_interleaved_conversations_both_keep_their_prefix(batched_server: LiveServer) -> None:
    wait_idle(batched_server)
    oai = client(batched_server)
    long_a = "You are helping plan a garden with tomatoes, basil and beans. " * 8
    long_b = "You are reviewing a Python module that parses CSV files quickly. " * 8
    first = {
        name: oai.responses.create(
            model=SMOL, instructions=text, input="Say hello.", max_output_tokens=8
        )
        for name, text in (("a", long_a), ("b", long_b))
    }
    for name, text in (("a", long_a), ("b", long_b)):
        second = oai.responses.create(
            model=SMOL,
            instructions=text,
            input="And now say goodbye.",
            previous_response_id=first[name].id,
            max_output_tokens=8,
        )
        assert second.usage is not None
        assert first[name].usage is not None
        cached = second.usage.input_tokens_details.cached_tokens
        # Its whole first turn's prompt is still in its slot despite the other conversation.
        assert cached >= first[name].usage.input_tokens - 2, (name, cached, first[name].usage)


def test_prompt_cache_key_pins_a_conversation(batched_server: LiveServer) -> None:
    wait_idle(batched_server)
    oai = client(batched_server)
    text = "Describe the history of lighthouses on rocky coasts in detail. " * 6
    first = oai.responses.create(
        model=SMOL, input=text, max_output_tokens=4, extra_body={"prompt_cache_key": "pin-1"}
    )
    # More distinct conversations than slots pass through; the pinned one keeps its slot.
    for i in range(PARALLEL + 1):
        oai.responses.create(model=SMOL, input=f"Count to {i}.", max_output_tokens=4)
    again = oai.responses.create(
        model=SMOL, input=text, max_output_tokens=4, extra_body={"prompt_cache_key": "pin-1"}
    )
    assert first.usage is not None
    assert again.usage is not None
    assert again.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2


WORDS = [
    "Alpha",
    "Bravo",
    "Charlie",
    "Delta",
    "Echo",
    "Foxtrot",
    "Golf",
    "Hotel",
    "India",
    "Juliett",
    "Kilo",
    "Lima",
    "Mike",
    "November",
    "Oscar",
    "Papa",
    "Quebec",
    "Romeo",
    "Sierra",
    "Tango",
]


def fill_other_slots(oai: OpenAI, words: list[str]) -> list[Any]:
    """More fresh conversations than slots, each opening differently: without a pin, the
    least recently used slot, whichever conversation it holds, is taken next."""
    fresh = []
    for word in words:
        answer = oai.responses.create(
            model=SMOL, instructions=f"{word} is the code word.", input="Hi.", max_output_tokens=2
        )
        assert answer.usage is not None
        fresh.append(answer.usage)
    return fresh


@pytest.mark.parametrize("link", ["previous_response_id", "conversation"])
def test_a_chain_of_turns_stays_on_its_slot(batched_server: LiveServer, link: str) -> None:
    """Turn 3 finds turn 2's KV although more conversations than slots ran in between: a
    ``previous_response_id`` chain pins by its root response, a conversation by its id."""
    wait_idle(batched_server)
    oai = client(batched_server)
    text = "You are a patient tutor explaining the water cycle to a curious student. " * 8
    ask: dict[str, Any] = {"model": SMOL, "instructions": text, "max_output_tokens": 4}
    if link == "conversation":
        ask["conversation"] = oai.conversations.create().id
    turn = oai.responses.create(**ask, input="What is evaporation?")
    turns = [turn]
    for question in ("And condensation?", "And precipitation?"):
        if link == "previous_response_id":
            ask["previous_response_id"] = turn.id
        if len(turns) == 2:
            start = 0 if link == "conversation" else PARALLEL + 1
            fresh = fill_other_slots(oai, WORDS[start : start + PARALLEL + 1])
        turn = oai.responses.create(**ask, input=question)
        turns.append(turn)
    usages = [t.usage for t in turns]
    assert all(u is not None for u in usages)
    second, third = usages[1], usages[2]
    assert second is not None
    assert third is not None
    cached = third.input_tokens_details.cached_tokens
    # Everything turn 2 read is still in the slot: the fresh conversations went elsewhere.
    assert cached >= second.input_tokens - 2, (link, cached, second)
    assert cached < third.input_tokens
    # cached_tokens is each request's own: the fresh ones share only the template's opening.
    for usage in fresh:
        assert usage.input_tokens_details.cached_tokens < 8, usage


def test_a_pinned_slot_is_restored_after_a_restart(tmp_path: Path) -> None:
    text = "Explain how tides are caused by the moon and the sun, step by step. " * 6

    def ask(server: LiveServer) -> Any:
        oai = OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)
        answer = oai.responses.create(
            model=SMOL, input=text, max_output_tokens=4, extra_body={"prompt_cache_key": "tides"}
        )
        assert answer.usage is not None
        return answer.usage

    env = {
        "CHAT_ENGINE": "batched",
        "CHAT_PARALLEL": "2",
        "CHAT_EXTRA_MODELS": "",
        "SUMMARY_LOCAL_ENABLED": "false",
    }
    first_server = LiveServer(create_app(real_settings(tmp_path, **env)))
    first_server.start(timeout=300)
    try:
        cold = ask(first_server)
    finally:
        first_server.stop()
    assert cold.input_tokens_details.cached_tokens == 0
    assert list((tmp_path / "kv-slots").rglob("*.kv")), "the slot was written on shutdown"
    # A foreign or corrupt file beside it is ignored, not fatal.
    for folder in (tmp_path / "kv-slots").iterdir():
        (folder / ("0" * 64 + ".kv")).write_bytes(b"not a llama.cpp state file")
    second_server = LiveServer(create_app(real_settings(tmp_path, **env)))
    second_server.start(timeout=300)
    try:
        warm = ask(second_server)
    finally:
        second_server.stop()
    assert warm.input_tokens_details.cached_tokens >= cold.input_tokens - 2


def test_a_summary_shares_the_model_with_running_streams(batched_server: LiveServer) -> None:
    """/summarize on the local engine (the chat model itself) while chat streams decode."""
    wait_idle(batched_server)
    engine = engine_of(batched_server)
    before = engine.admission_stats().admitted
    code = b'"""Helpers."""\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n'

    def summarize() -> httpx.Response:
        with httpx.Client(base_url=batched_server.base_url, timeout=TIMEOUT) as http:
            return http.post(
                "/summarize",
                files={"file": ("helpers.py", code)},
                data={"max_tokens": "16", "temperature": "0"},
                headers={"Authorization": f"Bearer {KEY}"},
            )

    with ThreadPoolExecutor(max_workers=4) as pool:
        streams = [
            pool.submit(raw_events, batched_server, {**body("plain", i), "max_output_tokens": 48})
            for i in range(3)
        ]
        summary = pool.submit(summarize)
        answers = [check_sequence(f.result()) for f in streams]
        r = summary.result()
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["language"], result["model"], result["cached"]) == ("Python", SMOL, False)
    assert isinstance(result["summary"], str)
    assert result["summary"].strip()
    for final in answers:
        assert final["status"] in ("completed", "incomplete")
        assert final["output"], final
    assert engine.admission_stats().admitted - before >= 4  # the summary ran on this engine
    wait_idle(batched_server)


def test_slots_beyond_the_memory_budget_are_a_startup_message_naming_the_settings(
    tmp_path: Path,
) -> None:
    """16 slots of 8,192 tokens (about 3 GiB of KV) cannot fit 1 GiB: the chat model is an error
    at startup naming CHAT_PARALLEL and CHAT_N_CTX; the same budget serves the single engine."""
    env = {
        "CHAT_PARALLEL": "16",
        "CHAT_N_CTX": "8192",
        "MODEL_MEMORY_BUDGET": "1GiB",
        "CHAT_EXTRA_MODELS": "",
        "SUMMARY_LOCAL_ENABLED": "false",
    }
    server = LiveServer(create_app(real_settings(tmp_path, CHAT_ENGINE="batched", **env)))
    server.start(timeout=300)
    try:
        chat = httpx.get(f"{server.base_url}/health", timeout=10).json()["chat_model"]
        with pytest.raises(APIStatusError) as info:
            client(server).responses.create(model=SMOL, input="hi", max_output_tokens=2)
    finally:
        server.stop()
    assert chat["status"] == "error", chat
    for name in ("CHAT_PARALLEL", "CHAT_N_CTX", "MODEL_MEMORY_BUDGET", "16 KV slots of 8192"):
        assert name in chat["reason"], chat["reason"]
    assert info.value.status_code == 503
    single = LiveServer(create_app(real_settings(tmp_path, CHAT_ENGINE="single", **env)))
    single.start(timeout=300)
    try:
        chat = httpx.get(f"{single.base_url}/health", timeout=10).json()["chat_model"]
    finally:
        single.stop()
    assert chat["status"] == "loaded", chat


@pytest.mark.parametrize(("budget", "batched"), [("", True), ("1GiB", False)])
def test_auto_takes_the_slots_where_they_fit_and_one_context_where_not(
    tmp_path: Path, budget: str, batched: bool
) -> None:
    """CHAT_ENGINE=auto (the default): 16 slots of 8,192 tokens fit the machine's RAM but not
    1 GiB, where the model is served from one context instead of failing."""
    env = {
        "CHAT_ENGINE": "auto",
        "CHAT_PARALLEL": "16",
        "CHAT_N_CTX": "8192",
        "MODEL_MEMORY_BUDGET": budget,
        "CHAT_EXTRA_MODELS": "",
        "SUMMARY_LOCAL_ENABLED": "false",
    }
    server = LiveServer(create_app(real_settings(tmp_path, **env)))
    server.start(timeout=300)
    try:
        answer = client(server).responses.create(model=SMOL, input="hi", max_output_tokens=2)
        chat = httpx.get(f"{server.base_url}/health", timeout=10).json()["chat_model"]
        engine = engine_of(server)
    finally:
        server.stop()
    assert answer.status in ("completed", "incomplete")
    assert chat["status"] == "loaded", chat
    assert hasattr(engine, "slot_report") is batched
    assert ("slots" in chat) is batched


def test_auto_weighs_the_gpu_budget_too(tmp_path: Path) -> None:
    """With layers offloaded, the slots must fit MODEL_VRAM_BUDGET as well: auto falls back to one
    context, batched names the GPU budget (registration only: nothing is loaded)."""
    from egemma.modelfiles import resolve
    from egemma.services.models.build import build_registry
    from egemma.services.models.llama import register_llama

    env = {"CHAT_PARALLEL": "16", "CHAT_N_CTX": "8192", "MODEL_VRAM_BUDGET": "600MiB"}
    settings = real_settings(tmp_path, CHAT_ENGINE="auto", CHAT_N_GPU_LAYERS="-1", **env)
    registry = build_registry(settings.models, settings.chat.n_gpu_layers)
    assert registry.vram_budget == 600 * 2**20
    path = resolve(f"builtin:{SMOL}", "CHAT_MODEL_PATH", settings.server.models_root).path
    engine = register_llama(registry, SMOL, path, settings)
    try:
        assert 0 < engine.entry.vram_estimate <= registry.vram_budget  # one context's KV
    finally:
        engine.close()
    registry.entries.clear()
    batched = real_settings(tmp_path, CHAT_ENGINE="batched", CHAT_N_GPU_LAYERS="-1", **env)
    with pytest.raises(ValueError, match="MODEL_VRAM_BUDGET") as info:
        register_llama(registry, SMOL, path, batched)
    assert "16 KV slots of 8192" in str(info.value)
