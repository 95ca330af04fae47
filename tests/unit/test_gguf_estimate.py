"""The GGUF header reader and memory estimate, against the shipped model files."""

from __future__ import annotations

from pathlib import Path

import pytest

from egemma.modelfiles import ModelFileError, resolve
from egemma.services.models.gguf import (
    GgufError,
    effective_n_ctx,
    estimate,
    kv_cache_bytes,
    read_header,
)

MIB = 1024**2


def shipped(name: str) -> Path:
    root = Path.home() / ".egemma" / "models"
    try:
        return resolve(f"builtin:{name}", "CHAT_MODEL_PATH", root).path
    except ModelFileError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_tensor_table_covers_the_whole_data_section(name: str) -> None:
    path = shipped(name)
    header = read_header(path)
    last = max(header.tensors, key=lambda t: t.offset)
    # The last tensor ends exactly at the end of the file: every size was computed right.
    assert header.data_offset + last.offset + last.nbytes == path.stat().st_size
    assert header.weight_bytes <= path.stat().st_size - header.data_offset


def test_smollm2_facts_and_kv_cache() -> None:
    header = read_header(shipped("smollm2-135m-instruct"))
    assert header.architecture == "llama"
    assert len(header.tensors) == 272
    assert header.arch_value("block_count") == 30
    assert header.arch_value("attention.head_count_kv") == 3
    # llama.cpp itself reports "KV buffer size = 45.00 MiB" for 2048 cells, 30 layers:
    # 2048 × 30 layers × 3 KV heads × (64 + 64) dims × 2 bytes.
    assert kv_cache_bytes(header, 2048) == 45 * MIB
    assert effective_n_ctx(header, 100_000) == 8192


def test_gemma3_kv_uses_its_own_head_dims() -> None:
    header = read_header(shipped("gemma-3-270m"))
    assert header.architecture == "gemma3"
    assert header.arch_value("attention.key_length") == 256
    # 18 layers × 1 KV head × (256 + 256) × 2 bytes per token.
    assert kv_cache_bytes(header, 2048) == 2048 * 18 * 512 * 2
    assert effective_n_ctx(header, 8192) == 8192


def test_estimate_adds_weights_kv_and_compute() -> None:
    path = shipped("smollm2-135m-instruct")
    small, large = estimate(path, 2048), estimate(path, 8192)
    assert small.weights == large.weights == read_header(path).weight_bytes
    assert large.kv_cache == 4 * small.kv_cache
    # llama.cpp reports a 99.38 MiB CPU compute buffer for this model at n_ubatch 512.
    assert 90 * MIB < small.compute < 110 * MIB
    assert small.total == small.weights + small.kv_cache + small.compute


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope" + bytes(64))
    with pytest.raises(GgufError, match="not a GGUF"):
        read_header(bad)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(shipped("smollm2-135m-instruct").read_bytes()[:4096])
    with pytest.raises(GgufError, match="ends inside"):
        read_header(truncated)
