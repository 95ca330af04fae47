"""Replicas benchmark: Responses throughput of two eGemma replicas against one, both on the
remote engine and sharing ONE upstream model server (llama-cpp-python's ``llama_cpp.server``
with the shipped SmolLM2), in the same run on the same machine.

Why one shared upstream: that is the deployment compose.scale.yaml describes (replicas scale the
front end — store, auth, parsing, streaming — while the model server owns the accelerator). A
``llama_cpp.server`` decodes one request at a time, so on this setup the ratio measures what a
second replica adds when the model is the bottleneck: about 1.0 is the honest expectation, and a
ratio well below 1.0 would mean replicas get in each other's way. An upstream per replica would
measure two model servers, not two replicas. No goal is set: the figure is printed, not judged.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import KEY, Server, log, row  # noqa: E402
from tests.upstream import Upstream  # noqa: E402

MODEL = "smollm2-135m-instruct"
CLIENTS = 4
REQUESTS = 6  # per side and round, after one warm-up request per replica
TOKENS = 8


def one(url: str, i: int) -> None:
    body = {
        "model": MODEL,
        "input": f"Note {i}: name one colour.",
        "max_output_tokens": TOKENS,
        "temperature": 0,
        "store": True,
    }
    reply = httpx.post(
        f"{url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=600,
    )
    reply.raise_for_status()


def throughput(urls: list[str]) -> float:
    """Requests per second with CLIENTS concurrent clients spread round-robin over ``urls``."""
    counter = itertools.count()
    targets = itertools.cycle(urls)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                i = next(counter)
                url = next(targets)
            if i >= REQUESTS:
                return
            try:
                one(url, i)
            except httpx.HTTPError as exc:
                errors.append(exc)
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"requests failed: {errors[0]}")
    return REQUESTS / elapsed


def main() -> int:
    tmp = tempfile.TemporaryDirectory(prefix="egemma-bench-upstream-")
    upstream = Upstream(Path(tmp.name) / "llama_cpp_server.log")
    log("starting llama_cpp.server (shared upstream)")
    upstream.start()
    env = {
        "CHAT_UPSTREAM_URL": upstream.url,
        "CHAT_N_CTX": "2048",
        "CHAT_EXTRA_MODELS": "",
        "CHAT_QUEUE_SIZE": "64",
    }
    servers: list[Server] = []
    try:
        log("starting two eGemma replicas on the remote engine")
        servers = [Server(**env), Server(**env)]
        for s in servers:
            one(s.url, -1)  # warm-up
        # Alternate the order so neither side always runs on a warmer machine.
        one_rps, two_rps = [], []
        for round_ in range(2):
            sides = [("1 replica", [servers[0].url]), ("2 replicas", [s.url for s in servers])]
            for label, urls in sides if round_ == 0 else sides[::-1]:
                rps = throughput(urls)
                (one_rps if label == "1 replica" else two_rps).append(rps)
                log(f"round {round_}: {label}: {rps:.3f} responses/s")
    finally:
        for s in servers:
            s.stop()
        upstream.stop()
        tmp.cleanup()
    one_best, two_best = max(one_rps), max(two_rps)
    rows = [
        row(
            "2 replicas vs 1, one shared llama_cpp.server upstream",
            two_best,
            one_best,
            two_best / one_best,
            None,
            "responses/s",
        )
    ]
    print(json.dumps({"name": "replicas", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
