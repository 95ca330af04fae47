"""Batched engine benchmark (issue 12), through a real ``egemma serve`` with CHAT_ENGINE=batched
and CHAT_PARALLEL=4, baselines measured in the same run, on the shipped SmolLM2-135M GGUF:

- aggregate decode tokens/s at 1, 2, 4 and 8 concurrent streams vs llama.cpp's own
  ``llama-server --parallel 4`` on the same GGUF and threads (goal ≥ 1.0× at 4 streams), the two
  servers measured in alternation so a noisy machine hits both alike. The binary comes from
  ``make llama-server`` (``LLAMA_SERVER_BIN``, else the newest under
  ~/.cache/egemma/llama-server/, else ``llama-server`` on PATH); without one those rows are
  skipped with a line saying so, and eGemma's own scaling (k streams vs 1) is still reported;
- single-stream decode vs native llama-cpp-python (goal ≥ 0.95×), alternated the same way;
- TTFT p50/p95 of a short request while 3 long streams run vs idle (goal ≤ 2×);
- turn-2 TTFT of 4 interleaved conversations vs their cold turn 1 (goal ≤ 0.3×).

The load average is logged at the start and the end: on a shared machine it says how much the
figures can be trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    Server,
    decode_rate,
    free_port,
    log,
    median,
    row,
    stop_process,
    stream_timings,
    wait_ready,
)

from egemma.modelfiles import resolve  # noqa: E402
from egemma.settings import Settings  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOKENS = 48
N_CTX = 1024
PARALLEL = 4
STREAMS = (1, 2, 4, 8)
ROUNDS = 5
THREADS = os.cpu_count() or 1
SETTLE_SECONDS = 0.5
STORY = "Write a long, detailed story about a lighthouse keeper and the ships she watches."


def body(i: int, tokens: int = TOKENS, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": f"Story {i}. {STORY}",
        "max_output_tokens": tokens,
        "temperature": 0,
        "store": False,
        **extra,
    }


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def settle() -> None:
    """Let the last measurement's threads go quiet before the next one starts: llama-server's
    workers spin about 0.2 s after a decode (llama.cpp's default polling), which would slow
    whichever side is measured next."""
    time.sleep(SETTLE_SECONDS)


def concurrent(one: Callable[[int], int], streams: int, offset: int) -> float:
    """Completion tokens of ``streams`` concurrent requests per second of wall time."""
    settle()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        tokens = sum(pool.map(one, range(offset, offset + streams)))
    return float(tokens / (time.perf_counter() - start))


def egemma_one(url: str) -> Callable[[int], int]:
    def one(i: int) -> int:
        usage = stream_timings(url, body(i))["response"].get("usage", {})
        return int(usage.get("output_tokens", 0))

    return one


class LlamaServer:
    """llama.cpp's ``llama-server`` on the same GGUF, streamed through its chat endpoint."""

    def __init__(self, binary: str, path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-m", str(path), "--parallel", str(PARALLEL), "-c", str(N_CTX * PARALLEL)]
            + ["-t", str(THREADS), "-tb", str(THREADS), "--host", "127.0.0.1"]
            + ["--port", str(self.port), "--no-webui"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(self.proc, f"{self.url}/health", "llama-server", 120)

    def one(self, i: int) -> int:
        payload = {
            "messages": [{"role": "user", "content": body(i)["input"]}],
            "max_tokens": TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        tokens = 0
        with (
            httpx.Client(timeout=300) as http,
            http.stream("POST", f"{self.url}/v1/chat/completions", json=payload) as resp,
        ):
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = int(usage.get("completion_tokens", 0))
        return tokens

    def stop(self) -> None:
        stop_process(self.proc)


class Native:
    """llama-cpp-python in this process, the single-stream decode baseline."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path),
            n_ctx=N_CTX,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            verbose=False,
        )

    def rate(self, i: int) -> float:
        text = f"<|im_start|>user\n{body(i)['input']}<|im_end|>\n<|im_start|>assistant\n"
        stamps = []
        for _ in self.llm.create_completion(
            self.llm.tokenize(text.encode(), special=True),
            max_tokens=TOKENS,
            temperature=0.0,
            stream=True,
        ):
            stamps.append(time.perf_counter())
        return decode_rate(stamps)

    def close(self) -> None:
        self.llm.close()


def ttft_under_load(url: str) -> tuple[list[float], list[float]]:
    """Short-request TTFTs idle, then while 3 long streams keep running (each re-sent when it
    ends, so all 3 decode during every short request)."""
    short = {"input": "Say hi.", "max_output_tokens": 4}
    idle = [stream_timings(url, body(900 + i, **short))["ttft"] for i in range(8)]
    stop = threading.Event()

    def long_stream(i: int) -> None:
        while not stop.is_set():
            stream_timings(url, body(950 + i, tokens=200))

    with ThreadPoolExecutor(max_workers=3) as pool:
        longs = [pool.submit(long_stream, i) for i in range(3)]
        time.sleep(1.5)
        busy = []
        for i in range(8):
            busy.append(stream_timings(url, body(910 + i, **short))["ttft"])
            time.sleep(0.2)
        stop.set()
        for f in longs:
            f.result()
    return idle, busy


def interleaved_turns(url: str) -> tuple[list[float], list[float]]:
    """4 conversations with long instructions: every turn 1, then every turn 2."""
    cold, warm, ids = [], [], []
    topics = ["gardens", "compilers", "sailing", "bread"]
    for i, topic in enumerate(topics):
        instructions = f"You are an expert on {topic}. Answer in one short sentence. " * 40
        first = stream_timings(
            url,
            {**body(i, tokens=8), "store": True, "instructions": instructions, "input": "Hello."},
        )
        cold.append(first["ttft"])
        ids.append((first["response"]["id"], instructions))
    for i, (previous, instructions) in enumerate(ids):
        second = stream_timings(
            url,
            {
                **body(i, tokens=8),
                "store": True,
                "instructions": instructions,
                "input": "And again?",
                "previous_response_id": previous,
            },
        )
        warm.append(second["ttft"])
    return cold, warm


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def llama_server_binary() -> str | None:
    for name in ("LLAMA_SERVER_BIN", "LLAMA_SERVER"):
        configured = os.environ.get(name)
        if configured and Path(configured).is_file():
            return configured
    built = sorted(
        Path.home().glob(".cache/egemma/llama-server/*/llama-server"),
        key=lambda p: p.stat().st_mtime,
    )
    if built:
        return str(built[-1])
    return shutil.which("llama-server")


def single_stream(url: str, native: Native) -> dict[str, Any]:
    ours, theirs = [], []
    for i in range(ROUNDS + 1):
        settle()
        mine = decode_rate(stream_timings(url, body(10 + i))["stamps"])
        settle()
        base = native.rate(10 + i)
        if i:  # the first round warms both up
            ours.append(mine)
            theirs.append(base)
    return row(
        "single-stream decode vs native llama-cpp-python",
        median(ours),
        median(theirs),
        median(ours) / median(theirs),
        ">= 0.95",
        "tokens/s",
    )


def aggregates(url: str, peer: LlamaServer | None) -> list[dict[str, Any]]:
    ours_rates: dict[int, list[float]] = {k: [] for k in STREAMS}
    peer_rates: dict[int, list[float]] = {k: [] for k in STREAMS}
    for r in range(ROUNDS):
        for k in STREAMS:
            offset = 100 * k + 10 * r
            ours_rates[k].append(concurrent(egemma_one(url), k, offset))
            if peer is not None:
                peer_rates[k].append(concurrent(peer.one, k, offset))
        line = " ".join(f"{k}:{ours_rates[k][-1]:.0f}" for k in STREAMS)
        if peer is not None:
            line += " | llama-server " + " ".join(f"{k}:{peer_rates[k][-1]:.0f}" for k in STREAMS)
        log(f"round {r + 1} tok/s by streams: eGemma {line} (load {load()})")
    ours = {k: median(v) for k, v in ours_rates.items()}
    rows = [
        row(
            f"aggregate decode, {k} streams vs 1 (eGemma batched)",
            ours[k],
            ours[1],
            ours[k] / ours[1],
            None,
            "tokens/s",
        )
        for k in STREAMS[1:]
    ]
    if peer is not None:
        theirs = {k: median(v) for k, v in peer_rates.items()}
        rows += [
            row(
                f"aggregate decode, {k} streams vs llama-server --parallel {PARALLEL}",
                ours[k],
                theirs[k],
                ours[k] / theirs[k],
                ">= 1.0" if k == PARALLEL else None,
                "tokens/s",
            )
            for k in STREAMS
        ]
    return rows


def latencies(url: str) -> list[dict[str, Any]]:
    idle, busy = ttft_under_load(url)
    rows = [
        row(
            f"short-request TTFT {name}, 3 long streams vs idle",
            fn(busy) * 1000,
            fn(idle) * 1000,
            fn(busy) / fn(idle),
            "<= 2",
            "ms",
        )
        for name, fn in (("p50", median), ("p95", p95))
    ]
    cold, warm = interleaved_turns(url)
    rows.append(
        row(
            "turn-2 TTFT, 4 interleaved conversations vs cold turn 1",
            median(warm) * 1000,
            median(cold) * 1000,
            median(warm) / median(cold),
            "<= 0.3",
            "ms",
        )
    )
    return rows


def main() -> int:
    settings = Settings(env_file=None)
    path = resolve(f"builtin:{MODEL}", "CHAT_MODEL_PATH", settings.server.models_root).path
    start_load = os.getloadavg()[0]
    log(f"load average at start: {load()} ({THREADS} threads)")
    binary = llama_server_binary()
    if binary is None:
        log("llama-server comparison skipped: no llama-server binary (run `make llama-server`)")
    server = Server(
        CHAT_ENGINE="batched",
        CHAT_PARALLEL=str(PARALLEL),
        CHAT_N_CTX=str(N_CTX),
        CHAT_N_THREADS=str(THREADS),
        CHAT_EXTRA_MODELS="",
        CHAT_QUEUE_SIZE="64",
    )
    peer: LlamaServer | None = None
    rows = []
    try:
        peer = LlamaServer(binary, path) if binary is not None else None
        stream_timings(server.url, body(0, tokens=4))  # warm-up
        if peer is not None:
            peer.one(0)
        native = Native(path)
        try:
            rows.append(single_stream(server.url, native))
        finally:
            native.close()
        rows += aggregates(server.url, peer)
        if peer is not None:
            peer.stop()
            peer = None
        rows += latencies(server.url)
    finally:
        server.stop()
        if peer is not None:
            peer.stop()
    log(f"load average at the end: {load()}")
    for when, value in (("start", start_load), ("end", os.getloadavg()[0])):
        rows.append(row(f"machine load average (1 min) at the {when}", value, None, None, None, ""))
    print(json.dumps({"name": "batched", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
