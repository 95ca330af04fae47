"""Cache benchmark: what a cache hit saves, measured against misses in the same run.

- ``/summarize`` (shipped SmolLM2): miss (a model call) vs memory hit vs disk hit after a
  restart on the same ``DATA_DIR``, p50 over HTTP;
- ``/embed`` (shipped all-MiniLM-L6-v2): miss vs hit, p50 over HTTP (when the export exists).

Starts ``egemma serve`` itself (``benchlib.Server``) on a throwaway ``DATA_DIR``. Progress on
stderr; the last stdout line is the JSON row object described in ``scripts/bench.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import KEY, Server, log, row  # noqa: E402

FILES = int(os.environ.get("BENCH_CACHE_FILES", "3"))
EMBED_ROUNDS = int(os.environ.get("BENCH_CACHE_EMBED_ROUNDS", "20"))
AUTH = {"Authorization": f"Bearer {KEY}"}
SOURCE = '''"""Billing helpers ({salt})."""


def total(lines: list[float], tax: float = 0.2) -> float:
    """Sum the invoice lines and add tax."""
    return round(sum(lines) * (1 + tax), 2)
'''


def timed_post(http: httpx.Client, path: str, **kwargs: Any) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    resp = http.post(path, headers=AUTH, **kwargs)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return elapsed, body


def summarize(http: httpx.Client, salt: str) -> tuple[float, dict[str, Any]]:
    files = {"file": (f"billing_{salt}.py", SOURCE.format(salt=salt).encode())}
    form = {"max_tokens": "16", "temperature": "0"}
    return timed_post(http, "/summarize", files=files, data=form)


def summary_rows(data_dir: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    salts = [uuid.uuid4().hex[:8] for _ in range(FILES)]
    misses: list[float] = []
    hits: list[float] = []
    server = Server(DATA_DIR=str(data_dir), **env)
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for salt in salts:
                seconds, body = summarize(http, salt)
                assert body["cached"] is False, body
                misses.append(seconds)
                log(f"summary miss {seconds * 1000:.0f} ms")
            for _ in range(3):
                for salt in salts:
                    seconds, body = summarize(http, salt)
                    assert body["cached"] is True, body
                    hits.append(seconds)
    finally:
        server.stop()
    disk: list[float] = []
    server = Server(DATA_DIR=str(data_dir), **env)  # a new process: only the disk level is warm
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for salt in salts:
                seconds, body = summarize(http, salt)
                assert body["cached"] is True, body
                disk.append(seconds)
    finally:
        server.stop()
    miss, hit, disk_hit = (statistics.median(v) * 1000 for v in (misses, hits, disk))
    log(f"summary p50: miss {miss:.1f} ms, memory hit {hit:.2f} ms, disk hit {disk_hit:.2f} ms")
    return [
        row("summarize memory hit vs miss (p50)", hit, miss, miss / hit, ">= 10", "ms"),
        row(
            "summarize disk hit after restart vs miss (p50)",
            disk_hit,
            miss,
            miss / disk_hit,
            ">= 10",
            "ms",
        ),
    ]


def installed_embedding_model() -> Path | None:
    """The ONNX export ``make install`` made (``egemma prepare-models``), if it is current."""
    from egemma.export import export_is_current
    from egemma.modelfiles import MINILM_ONNX_DIR, minilm_source_dir
    from egemma.settings import Settings

    src = minilm_source_dir()
    installed = Settings().server.models_root / MINILM_ONNX_DIR
    return installed if src is not None and export_is_current(src, installed) else None


def embed_rows(data_dir: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    model = installed_embedding_model()
    if model is None:
        log("no current all-MiniLM-L6-v2 export (make install); skipping the embeddings rows")
        return []
    server = Server(DATA_DIR=str(data_dir), EMBEDDING_MODEL_PATH=str(model), **env)
    misses: list[float] = []
    hits: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            if http.get("/health").json().get("embedding_model", {}).get("status") != "loaded":
                log("embedding model not loaded; skipping the embeddings rows")
                return []
            for i in range(EMBED_ROUNDS):
                text = f"{uuid.uuid4().hex} cache bench sentence number {i} about invoices."
                files = {"file": ("t.txt", text.encode())}
                misses.append(timed_post(http, "/embed", files=files)[0])
                hits.append(timed_post(http, "/embed", files=files)[0])
    finally:
        server.stop()
    miss, hit = (statistics.median(v) * 1000 for v in (misses, hits))
    log(f"embed p50: miss {miss:.2f} ms, hit {hit:.2f} ms")
    return [row("embed cache hit vs miss (p50)", hit, miss, miss / hit, None, "ms")]


def main() -> int:
    limits = {
        "SUMMARIZE_RATE_LIMIT_CALLS": "1000000",
        "EMBED_RATE_LIMIT_CALLS": "1000000",
        "CHAT_EXTRA_MODELS": "",
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="egemma-bench-cache-") as tmp:
        summary_env = {**limits, "SUMMARY_LOCAL_ENABLED": "true"}
        rows += summary_rows(Path(tmp) / "summaries", summary_env)
        embed_env = {**limits, "EMBEDDING_ENABLED": "true", "CHAT_MODEL_ENABLED": "false"}
        rows += embed_rows(Path(tmp) / "embeddings", embed_env)
    print(json.dumps({"name": "cache", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
