"""Store benchmark: stored-response write and chain-read latency, p50 and p95, on PostgreSQL
(a throwaway cluster on 127.0.0.1, as the tests start it) against SQLite (the embedded default)
in the same run, through the same ``Store`` interface the server uses.

- write: ``responses.save`` of one turn (4 input items, 2 output items), acknowledged = committed
  (SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``; both fsync every commit).
- chain read: what a ``previous_response_id`` turn reads, ``responses.get`` up a chain of 8.

Goal (issue 16): PostgreSQL within 3x of SQLite at p50 and p95 (it adds a loopback round trip
per statement; it buys several replicas on one store). Needs Debian's ``postgresql``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from benchlib import log, row  # noqa: E402
from tests.backing import start_postgres  # noqa: E402

from egemma.services.responses.items import normalize_input  # noqa: E402
from egemma.store.base import Store  # noqa: E402
from egemma.store.postgres import PostgresStore  # noqa: E402
from egemma.store.sqlite import SqliteStore  # noqa: E402

WRITES = 300
CHAINS = 60
DEPTH = 8


def _turn(rid: str, previous: str | None, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    inputs = normalize_input(
        [{"role": "user", "content": f"question {n}: " + "words " * 40} for _ in range(4)]
    )
    output = normalize_input(
        [{"role": "assistant", "content": f"answer {n}: " + "tokens " * 80} for _ in range(2)]
    )
    response = {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": "bench",
        "previous_response_id": previous,
        "output": output,
        "usage": {"input_tokens": 200, "output_tokens": 160, "total_tokens": 360},
    }
    return response, inputs


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def _measure(store: Store, tag: str) -> dict[str, list[float]]:
    await store.open()
    writes: list[float] = []
    for i in range(WRITES):
        response, inputs = _turn(f"resp_{tag}_w{i}", None, i)
        t0 = time.perf_counter()
        await store.responses.save(response, inputs)
        writes.append((time.perf_counter() - t0) * 1000)
    heads = []
    for c in range(CHAINS):
        previous = None
        for d in range(DEPTH):
            rid = f"resp_{tag}_c{c}_{d}"
            await store.responses.save(*_turn(rid, previous, d))
            previous = rid
        heads.append(previous)
    reads: list[float] = []
    for head in heads:
        t0 = time.perf_counter()
        rid: str | None = head
        links = 0
        while rid is not None:
            found = await store.responses.get(rid)
            assert found is not None
            rid = found[0].get("previous_response_id")
            links += 1
        reads.append((time.perf_counter() - t0) * 1000)
        assert links == DEPTH
    await store.close()
    return {"write": writes, "chain": reads}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log("SQLite (synchronous=FULL)")
        lite = asyncio.run(_measure(SqliteStore(Path(tmp) / "bench.db"), "s"))
    log("starting a throwaway PostgreSQL on 127.0.0.1")
    cluster = start_postgres()
    try:
        url = cluster.new_database()
        log("PostgreSQL (synchronous_commit=on)")
        pg = asyncio.run(_measure(PostgresStore(url), "p"))
    finally:
        cluster.destroy()
    rows = []
    for kind, label in (
        ("write", "stored-response write"),
        ("chain", f"chain read ({DEPTH} turns)"),
    ):
        for q in (50, 95):
            p, s = _pct(pg[kind], q), _pct(lite[kind], q)
            log(f"{label} p{q}: PostgreSQL {p:.2f} ms, SQLite {s:.2f} ms")
            rows.append(row(f"{label} p{q}, PostgreSQL vs SQLite", p, s, p / s, "<= 3", "ms"))
    print(json.dumps({"name": "store", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
