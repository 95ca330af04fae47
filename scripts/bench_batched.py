"""Batched engine benchmark (issue 12), all through a real ``egemma serve`` with
CHAT_ENGINE=batched, baselines from the same run:

- aggregate decode tokens/s at 1, 2, 4 and 8 concurrent streams, each vs 1 stream;
- single-stream decode vs native llama-cpp-python (goal ≥ 0.95×);
- TTFT p50/p95 of a short request while 3 long streams run vs idle (goal ≤ 2×);
- turn-2 TTFT of 4 interleaved conversations vs their cold turn (goal ≤ 0.3×);
- 4 streams vs llama.cpp's own ``llama-server --parallel 4`` (goal ≥ 1.0×), only when a
  ``llama-server`` binary is found (``LLAMA_SERVER`` or ~/.cache/egemma/llama-server/bin);
  otherwise one line says it was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Server, decode_rate, free_port, log, median, row, stream_timings  # noqa: E402

from egemma.modelfiles import resolve  # noqa: E402
from egemma.settings import Settings  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOKENS = 48
N_CTX = 1024
THREADS = os.cpu_count() or 1


def body(i: int, tokens: int = TOKENS, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": f"Story {i}. Write a long, detailed story about a lighthouse keeper.",
        "max_output_tokens": tokens,
        "temperature": 0,
        "store": False,
        **extra,
    }


def aggregate(url: str, streams: int, offset: int) -> float:
    """Completion tokens of ``streams`` concurrent requests per second of wall time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        results = list(pool.map(lambda i: stream_timings(url, body(offset + i)), range(streams)))
    wall = time.perf_counter() - start
    tokens = sum(r["response"].get("usage", {}).get("output_tokens", 0) for r in results)
    return float(tokens / wall)


def native_rate(path: Path) -> float:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False
    )
    rates = []
    for i in range(4):
        text = f"<|im_start|>user\n{body(i)['input']}<|im_end|>\n<|im_start|>assistant\n"
        stamps = []
        for _ in llm.create_completion(
            llm.tokenize(text.encode(), special=True),
            max_tokens=TOKENS,
            temperature=0.0,
            stream=True,
        ):
            stamps.append(time.perf_counter())
        if i:
            rates.append(decode_rate(stamps))
    llm.close()
    return median(rates)


def ttft_under_load(url: str) -> tuple[list[float], list[float]]:
    short = {"input": "Say hi.", "max_output_tokens": 4}
    idle = [stream_timings(url, body(900 + i, **short))["ttft"] for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        longs = [pool.submit(stream_timings, url, body(950 + i, tokens=400)) for i in range(3)]
        time.sleep(1.0)
        busy = [stream_timings(url, body(910 + i, **short))["ttft"] for i in range(6)]
        for f in longs:
            f.result()
    return idle, busy


def interleaved_turns(url: str) -> tuple[list[float], list[float]]:
    cold, warm, ids = [], [], []
    topics = ["gardens", "compilers", "sailing", "bread"]
    for i, topic in enumerate(topics):
        instructions = f"You are an expert on {topic}. Answer in one short sentence. " * 12
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
    configured = os.environ.get("LLAMA_SERVER")
    if configured and Path(configured).is_file():
        return configured
    cached = Path.home() / ".cache/egemma/llama-server/bin/llama-server"
    if cached.is_file():
        return str(cached)
    return shutil.which("llama-server")


def llama_server_aggregate(binary: str, path: Path, streams: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-m", str(path), "--parallel", str(streams), "-c", str(N_CTX * streams)]
        + ["-t", str(THREADS), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

        def one(i: int) -> int:
            payload = {"prompt": body(i)["input"], "n_predict": TOKENS, "temperature": 0}
            answer = httpx.post(f"{url}/completion", json=payload, timeout=300).json()
            return int(answer.get("tokens_predicted", 0))

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=streams) as pool:
            tokens = sum(pool.map(one, range(streams)))
        return float(tokens / (time.perf_counter() - start))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    settings = Settings(env_file=None)
    path = resolve(f"builtin:{MODEL}", "CHAT_MODEL_PATH", settings.server.models_root).path
    log("native single-stream baseline")
    native = native_rate(path)
    server = Server(
        CHAT_ENGINE="batched",
        CHAT_PARALLEL="8",
        CHAT_N_CTX=str(N_CTX),
        CHAT_EXTRA_MODELS="",
        CHAT_QUEUE_SIZE="64",
    )
    rows = []
    try:
        stream_timings(server.url, body(0, tokens=4))  # warm-up
        single = [decode_rate(stream_timings(server.url, body(10 + i))["stamps"]) for i in range(3)]
        rows.append(
            row(
                "single-stream decode vs native",
                median(single),
                native,
                median(single) / native,
                ">= 0.95",
                "tokens/s",
            )
        )
        rates = {}
        for k in (1, 2, 4, 8):
            rates[k] = aggregate(server.url, k, 100 * k)
            log(f"{k} streams: {rates[k]:.1f} tok/s aggregate")
        for k in (2, 4, 8):
            rows.append(
                row(
                    f"aggregate decode, {k} streams vs 1",
                    rates[k],
                    rates[1],
                    rates[k] / rates[1],
                    None,
                    "tokens/s",
                )
            )
        idle, busy = ttft_under_load(server.url)
        for name, fn in (("p50", median), ("p95", p95)):
            rows.append(
                row(
                    f"short-request TTFT {name}, 3 long streams vs idle",
                    fn(busy) * 1000,
                    fn(idle) * 1000,
                    fn(busy) / fn(idle),
                    "<= 2",
                    "ms",
                )
            )
        cold, warm = interleaved_turns(server.url)
        rows.append(
            row(
                "turn-2 TTFT, 4 interleaved conversations vs cold",
                median(warm) * 1000,
                median(cold) * 1000,
                median(warm) / median(cold),
                "<= 0.3",
                "ms",
            )
        )
    finally:
        server.stop()
    binary = llama_server_binary()
    if binary is None:
        log("llama-server comparison skipped: no llama-server binary (set LLAMA_SERVER)")
    else:
        theirs = llama_server_aggregate(binary, path, 4)
        rows.append(
            row(
                "aggregate decode, 4 streams vs llama-server --parallel 4",
                rates[4],
                theirs,
                rates[4] / theirs,
                ">= 1.0",
                "tokens/s",
            )
        )
    print(json.dumps({"name": "batched", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
