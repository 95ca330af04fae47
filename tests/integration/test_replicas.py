"""Two eGemma replicas (real ``egemma serve`` processes, fake models) on one real PostgreSQL and
one real Redis agree: whichever replica a request lands on, stored responses, conversations,
background responses (and their cancel) and
rate-limit buckets are the same; a replica killed with SIGKILL loses nothing acknowledged; a
PostgreSQL restart under load is 503 + Retry-After (never 500) and heals by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.backing import PostgresCluster, postgres_bin, start_postgres
from tests.conftest import AUTH, TEST_KEY
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=TEST_KEY, max_retries=0)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=AUTH, timeout=30)


@dataclass
class Cluster:
    tmp: Path
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)

    def start(self, count: int = 1, **extra: str) -> list[Replica]:
        """Start ``count`` replicas at once (in parallel: each takes seconds to import)."""
        started = [self._spawn(extra) for _ in range(count)]
        for replica in started:
            self._wait_ready(replica)
        return started

    def _spawn(self, extra: dict[str, str]) -> Replica:
        port = free_port()
        n = len(self.replicas)
        log = self.tmp / f"replica-{n}.log"
        env = {
            **os.environ,
            "WORKBENCH_API_KEY": TEST_KEY,
            "DATA_DIR": str(self.tmp / f"replica-{n}"),  # nothing shared on disk
            "PORT": str(port),
            "CHAT_RATE_LIMIT_CALLS": "100000",
            "CONVERSATION_RATE_LIMIT_CALLS": "100000",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
            ),
            **self.env,
            **extra,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.serve_fake"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        replica = Replica(proc, f"http://127.0.0.1:{port}", log)
        self.replicas.append(replica)
        return replica

    @staticmethod
    def _wait_ready(replica: Replica) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert replica.proc.poll() is None, replica.log.read_text()
            try:
                if httpx.get(f"{replica.base}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("replica did not become ready: " + replica.log.read_text())

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster, redis_server: Any
) -> Iterator[Cluster]:
    """Two replicas for the module (``replicas[0]``, ``[1]``); tests may start more."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    shared = {
        "STORE_URL": pg_cluster.new_database(),
        "CACHE_URL": redis_server.url,
        "RATE_LIMIT_STORAGE_URI": "async+" + redis_server.url,
        # A bucket only one test uses, small enough to run out (counted before the route's 503).
        "EMBED_RATE_LIMIT_CALLS": "4",
        "EMBED_RATE_LIMIT_SECONDS": "60",
    }
    running = Cluster(tmp_path_factory.mktemp("replicas"), shared)
    running.start(2)
    yield running
    running.stop()


def test_a_previous_response_chain_alternating_between_replicas(cluster: Cluster) -> None:
    a, b = cluster.replicas[:2]
    previous = None
    ids = []
    with a.sdk() as sa, b.sdk() as sb:
        for turn in range(4):
            sdk = (sa, sb)[turn % 2]  # every turn lands on the other replica
            response = sdk.responses.create(
                model="fast", input=f"turn {turn}", previous_response_id=previous
            )
            assert response.status == "completed"
            previous = response.id
            ids.append(response.id)
        for rid in ids:
            assert (
                sa.responses.retrieve(rid).model_dump() == sb.responses.retrieve(rid).model_dump()
            )
        last = sb.responses.retrieve(ids[-1])
        assert last.previous_response_id == ids[-2]
        sa.responses.delete(ids[0])
        with pytest.raises(openai.NotFoundError):
            sb.responses.retrieve(ids[0])  # deleted on A is gone on B


def test_a_conversation_appended_from_both_replicas(cluster: Cluster) -> None:
    a, b = cluster.replicas[:2]
    with a.sdk() as sa, b.sdk() as sb:
        conv = sa.conversations.create(items=[{"role": "user", "content": "start"}])
        for i in range(6):
            sdk = (sa, sb)[i % 2]
            sdk.conversations.items.create(conv.id, items=[{"role": "user", "content": f"m{i}"}])
        sb.responses.create(model="fast", input="from b", conversation=conv.id)
        sa.responses.create(model="fast", input="from a", conversation=conv.id)
        seen_a = [i.model_dump() for i in sa.conversations.items.list(conv.id, order="asc")]
        seen_b = [i.model_dump() for i in sb.conversations.items.list(conv.id, order="asc")]
        assert seen_a == seen_b
        texts = [i["content"][0]["text"] for i in seen_a if i.get("role") == "user"]
        assert texts == ["start", *[f"m{i}" for i in range(6)], "from b", "from a"]
        assert len(seen_a) == 11  # nine user messages and two assistant answers


def test_rate_limit_buckets_are_shared_by_the_replicas(cluster: Cluster) -> None:
    a, b = cluster.replicas[:2]
    body = {"input": "x", "model": "none"}
    with a.http() as ha, b.http() as hb:
        # The replicas serve no embedding model (503), but every call counts in the bucket.
        codes = [h.post("/v1/embeddings", json=body).status_code for h in (ha, hb, ha, hb)]
        assert 429 not in codes
        for http in (ha, hb):  # the fifth call is over the limit wherever it lands
            over = http.post("/v1/embeddings", json=body)
            assert over.status_code == 429
            assert int(over.headers["Retry-After"]) >= 1
        health = hb.get("/health").json()
        assert health["store"] == {"status": "ok", "backend": "postgresql"}
        assert health["redis"]["rate_limits"] == {"status": "ok"}


class Writers:
    """Threads appending items to one conversation through the given replicas."""

    def __init__(self, targets: Callable[[], list[str]], conv: str, count: int = 4) -> None:
        self.targets = targets
        self.conv = conv
        self.acknowledged: list[str] = []
        self.statuses: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _run(self, n: int) -> None:
        with httpx.Client(headers=AUTH, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                bases = self.targets()
                base = bases[(n + i) % len(bases)]
                item = {"role": "user", "content": f"w{n}-{i}"}
                i += 1
                try:
                    resp = http.post(
                        f"{base}/v1/conversations/{self.conv}/items", json={"items": [item]}
                    )
                except httpx.HTTPError:
                    continue  # that replica is gone: nothing was acknowledged
                with self.lock:
                    self.statuses.append((resp.status_code, resp.headers.get("Retry-After")))
                    if resp.status_code == 200:
                        self.acknowledged.append(resp.json()["data"][0]["id"])
                time.sleep(0.005)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.acknowledged)
        while len(self.acknowledged) < start + n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.acknowledged) >= start + n, self.statuses[-10:]


def _all_item_ids(replica: Replica, conv: str) -> set[str]:
    """Every item id of the conversation (the SDK's iteration follows the pages)."""
    with replica.sdk() as sdk:
        return {item.id for item in sdk.conversations.items.list(conv, limit=100)}  # type: ignore[union-attr]


def test_a_background_response_started_on_one_is_cancelled_on_the_other(
    cluster: Cluster,
) -> None:
    a, b = cluster.replicas[:2]
    with a.sdk() as sa, b.sdk() as sb:
        created = sa.responses.create(model="slow", input="long", background=True)
        assert created.status in ("queued", "in_progress")
        deadline = time.monotonic() + 30
        while sb.responses.retrieve(created.id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelled = sb.responses.cancel(created.id)  # the run is on a: only the store links them
        assert cancelled.status == "cancelled"
        assert sa.responses.retrieve(created.id).status == "cancelled"
    with b.http() as http:
        text = http.get(f"/v1/responses/{created.id}", params={"stream": "true"}).text
    assert text.rstrip().splitlines()[-2] == "event: response.cancelled"


def test_a_background_response_of_a_killed_replica_ends_failed(cluster: Cluster) -> None:
    [a] = cluster.start()  # a third replica, to be killed
    b = cluster.replicas[1]
    with a.sdk() as sa:
        created = sa.responses.create(model="slow", input="long", background=True)
    with b.sdk() as sb:
        deadline = time.monotonic() + 30
        while sb.responses.retrieve(created.id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        deadline = time.monotonic() + 60  # its heartbeat goes stale after STALE_SECONDS
        while (found := sb.responses.retrieve(created.id)).status == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert found.status == "failed"
    assert found.error is not None
    assert "stopped before it finished" in found.error.message


def test_a_replica_killed_mid_stream_loses_nothing_acknowledged(cluster: Cluster) -> None:
    [a] = cluster.start()  # a third replica, to be killed
    b = cluster.replicas[1]
    with a.sdk() as sa:
        conv = sa.conversations.create().id
    alive = [a.base, b.base]
    got_events = threading.Event()

    def stream_on_a() -> None:
        try:
            with a.sdk() as sdk, sdk.responses.stream(model="slow", input="long") as events:
                for _ in events:
                    got_events.set()
        except (openai.APIError, httpx.HTTPError):
            return  # the replica died under the stream, as intended

    streamer = threading.Thread(target=stream_on_a)
    streamer.start()
    assert got_events.wait(30)
    with Writers(lambda: alive, conv) as writers:
        writers.wait_for(40)
        a.proc.send_signal(signal.SIGKILL)  # mid-stream, mid-writes
        a.proc.wait()
        alive[:] = [b.base]
        writers.wait_for(20)  # the survivor keeps serving
    streamer.join(timeout=30)
    assert set(writers.acknowledged) <= _all_item_ids(b, conv)
    with b.sdk() as sb:
        assert sb.responses.create(model="fast", input="still here").status == "completed"


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of its own: this test stops and starts the server."""
    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )
    pg = start_postgres()
    yield pg
    pg.destroy()


def test_postgres_restart_under_load_is_503_then_heals(
    tmp_path: Path, own_postgres: PostgresCluster, redis_url: str
) -> None:
    running = Cluster(
        tmp_path, {"STORE_URL": own_postgres.new_database(), "STORE_BUSY_TIMEOUT": "1"}
    )
    try:
        a, b = running.start(2)
        with a.sdk() as sa:
            conv = sa.conversations.create().id
        with Writers(lambda: [a.base, b.base], conv) as writers:
            writers.wait_for(30)
            own_postgres.stop("fast")
            time.sleep(3)  # down for a while, under load
            with writers.lock:
                during = list(writers.statuses)
            own_postgres.start()
            writers.wait_for(40, timeout=60)  # both replicas reconnect by themselves
        codes = {code for code, _ in writers.statuses}
        assert codes <= {200, 503}, writers.statuses
        refused = [retry for code, retry in during if code == 503]
        assert refused, "no request was refused while PostgreSQL was down"
        assert all(retry is not None and int(retry) >= 1 for retry in refused)
        for replica in (a, b):
            with replica.http() as http:
                assert http.get("/ready").status_code == 200
                assert (
                    http.post(
                        f"/v1/conversations/{conv}/items",
                        json={"items": [{"role": "user", "content": "after"}]},
                    ).status_code
                    == 200
                )
        assert set(writers.acknowledged) <= _all_item_ids(b, conv)
    finally:
        running.stop()
