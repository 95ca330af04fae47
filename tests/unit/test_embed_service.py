"""Embedding service pieces: prompts, Matryoshka, run planning, batching, queue, cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from egemma.engines.onnx import plan_runs
from egemma.errors import InvalidRequestError, UnavailableError
from egemma.services.embeddings.service import (
    EMBEDDINGGEMMA_PROMPT_NAMES,
    DynamicBatcher,
    EmbeddingService,
    truncate,
)
from egemma.settings import EmbeddingSettings
from tests.fakes.embedding_models import GEMMA_PROMPTS
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio


def _settings(**kw: object) -> EmbeddingSettings:
    return EmbeddingSettings(_env_file=None, **kw)  # type: ignore[call-arg]


def _service(engine: FakeEmbeddingEngine, data_dir: Path, **kw: object) -> EmbeddingService:
    return EmbeddingService.create(engine, _settings(**kw), data_dir)


def test_truncate_then_normalise() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 64)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for d in (1, 16, 63, 64):
        cut = truncate(v, d)
        assert cut.shape == (3, d)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-5)
        # Same direction as the plain slice.
        cos = (cut * v[:, :d]).sum(1) / np.linalg.norm(v[:, :d], axis=1)
        np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "lengths", [[5], [3, 3, 3], [2, 4, 8, 16, 32, 64, 128, 256], [7] * 100, [1, 250, 256]]
)
def test_plan_runs_covers_sorted_input_in_contiguous_runs(lengths: list[int]) -> None:
    runs = plan_runs(lengths)
    assert runs[0][0] == 0
    assert runs[-1][1] == len(lengths)
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        assert end == start
    assert all(end > start for start, end in runs)


def test_plan_runs_keeps_short_texts_away_from_long_ones() -> None:
    runs = plan_runs([8] * 31 + [256])
    assert (31, 32) in runs  # the long text is not padded onto the short ones


def test_prompts_of_a_prompted_model(tmp_path: Path) -> None:
    service = _service(FakeEmbeddingEngine(prompts=GEMMA_PROMPTS), tmp_path)
    assert service.prefix("query") == "task: search result | query: "
    assert service.prefix("document", title="My Page") == "title: My Page | text: "
    assert service.prefix("Retrieval-document", title="T") == "title: T | text: "
    assert service.prefix("query", title="ignored") == "task: search result | query: "
    assert service.prefix(None) == ""
    with pytest.raises(InvalidRequestError) as err:
        service.prefix("Nope")
    assert err.value.param == "prompt_name"
    assert "Retrieval-query" in err.value.message


def test_model_without_prompts_accepts_gemma_names_as_no_ops(tmp_path: Path) -> None:
    service = _service(FakeEmbeddingEngine(), tmp_path)
    for name in EMBEDDINGGEMMA_PROMPT_NAMES:
        assert service.prefix(name, title="x") == ""
    with pytest.raises(InvalidRequestError) as err:
        service.prefix("search_query")
    assert "document" in err.value.message


def test_dimensions_bounds_and_default(tmp_path: Path) -> None:
    plain = _service(FakeEmbeddingEngine(dimension=32), tmp_path)
    assert plain.default_dimensions == 32
    assert plain.check_dimensions(1) == 1
    for bad in (0, 33, -1):
        with pytest.raises(InvalidRequestError):
            plain.check_dimensions(bad)
    mrl = _service(FakeEmbeddingEngine(dimension=32, matryoshka_dims=(32, 16, 8)), tmp_path)
    assert mrl.default_dimensions == 8


async def test_concurrent_requests_are_batched_with_identical_vectors(tmp_path: Path) -> None:
    engine = FakeEmbeddingEngine(delay=0.02)
    service = _service(engine, tmp_path, cache_max_size=0, disk_cache_bytes=0, max_wait_ms=5)
    texts = [f"text {i}" for i in range(40)]
    try:
        results = await asyncio.gather(*(service.embed([t]) for t in texts))
    finally:
        await service.aclose()
    assert engine.texts_encoded == 40
    assert len(engine.calls) < 10  # gathered, not one run per request
    assert max(len(c) for c in engine.calls) <= 32
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_allclose(result.vectors[0], engine.vector(text), rtol=1e-6)


async def test_identical_waiting_texts_share_one_slot(tmp_path: Path) -> None:
    engine = FakeEmbeddingEngine(delay=0.02)
    service = _service(engine, tmp_path, cache_max_size=0, disk_cache_bytes=0)
    try:
        await asyncio.gather(*(service.embed(["same", "same", "other"]) for _ in range(5)))
    finally:
        await service.aclose()
    assert engine.texts_encoded == 2


async def test_full_queue_answers_503() -> None:
    engine = FakeEmbeddingEngine(delay=0.2)
    batcher = DynamicBatcher(engine.encode, max_batch=1, max_wait=0.0, queue_size=2)
    first = asyncio.ensure_future(batcher.submit(["a"]))
    await asyncio.sleep(0.05)  # "a" is running; the queue is empty
    queued = asyncio.ensure_future(batcher.submit(["b", "c"]))
    await asyncio.sleep(0)
    with pytest.raises(UnavailableError) as err:
        await batcher.submit(["d"])
    assert err.value.headers["Retry-After"] == "1"
    await asyncio.gather(first, queued)
    await batcher.aclose()


async def test_engine_error_fails_only_its_batch(tmp_path: Path) -> None:
    engine = FakeEmbeddingEngine()
    calls = 0

    def flaky(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return engine.encode(texts)

    batcher = DynamicBatcher(flaky, max_batch=8, max_wait=0.0, queue_size=8)
    with pytest.raises(RuntimeError):
        await batcher.submit(["x"])
    ((vector, tokens),) = await batcher.submit(["y"])
    assert vector.shape == (32,)
    assert tokens == 3
    await batcher.aclose()


async def test_cache_hit_after_restart(tmp_path: Path) -> None:
    first = FakeEmbeddingEngine()
    service = _service(first, tmp_path)
    stored = await service.embed(["persist me"], prompt_name="query")
    await service.aclose()
    assert first.texts_encoded == 1

    second = FakeEmbeddingEngine()
    restarted = _service(second, tmp_path)
    again = await restarted.embed(["persist me"], prompt_name="query")
    await restarted.aclose()
    assert second.texts_encoded == 0
    np.testing.assert_array_equal(stored.vectors, again.vectors)
    assert again.tokens == stored.tokens


async def test_cache_is_keyed_by_model_identity_and_prompt(tmp_path: Path) -> None:
    engine = FakeEmbeddingEngine(prompts=GEMMA_PROMPTS)
    service = _service(engine, tmp_path)
    await service.embed(["x"], prompt_name="query")
    await service.embed(["x"], prompt_name="document")
    await service.embed(["x"], prompt_name="query")
    await service.aclose()
    assert engine.texts_encoded == 2
    other = FakeEmbeddingEngine(prompts=GEMMA_PROMPTS, name="other-model")
    service = _service(other, tmp_path)
    await service.embed(["x"], prompt_name="query")
    await service.aclose()
    assert other.texts_encoded == 1


async def test_unusable_disk_cache_is_served_uncached(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")  # DATA_DIR/cache cannot be created
    engine = FakeEmbeddingEngine()
    service = _service(engine, tmp_path, cache_max_size=0)
    result = await service.embed(["still served"])
    await service.aclose()
    assert result.vectors.shape == (1, 32)


async def test_a_waiter_whose_client_left_is_dropped() -> None:
    engine = FakeEmbeddingEngine(delay=0.1)
    batcher = DynamicBatcher(engine.encode, max_batch=1, max_wait=0.0, queue_size=8)
    running = asyncio.ensure_future(batcher.submit(["first"]))
    await asyncio.sleep(0.02)
    left = asyncio.ensure_future(batcher.submit(["abandoned"]))
    shared_a = asyncio.ensure_future(batcher.submit(["shared"]))
    shared_b = asyncio.ensure_future(batcher.submit(["shared"]))
    await asyncio.sleep(0)
    left.cancel()
    shared_a.cancel()  # the other request still wants "shared"
    await running
    ((vector, _),) = await shared_b
    await batcher.aclose()
    assert ["abandoned"] not in engine.calls
    assert ["shared"] in engine.calls
    np.testing.assert_allclose(vector, engine.vector("shared"), rtol=1e-6)


def test_providers_follow_settings_and_availability() -> None:
    from egemma.engines.onnx import select_providers

    available = ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(_settings(), available) == [
        "CoreMLExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(_settings(force_cpu=True), available) == ["CPUExecutionProvider"]
    only_cuda = _settings(providers="CUDAExecutionProvider")
    assert select_providers(only_cuda, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_session_options_never_spin() -> None:
    from egemma.engines.onnx import session_options

    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_float_array_is_json_and_round_trips_float32() -> None:
    import json

    from egemma.api.embeddings import float_array

    rng = np.random.default_rng(7)
    v = (rng.standard_normal(300) * np.logspace(-9, 3, 300)).astype(np.float32)
    back = np.asarray(json.loads(float_array(v)), dtype=np.float32)
    np.testing.assert_array_equal(back, v)
