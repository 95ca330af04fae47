"""VRAM as its own budget: the GGUF split between RAM and GPU, GPU detection, and admission
against both budgets. No GPU is visible here, so the figures are fake or from the shipped GGUFs'
headers; what llama.cpp really allocates on a GPU is not measured by these tests."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from egemma.errors import UnavailableError
from egemma.modelfiles import ModelFileError, resolve
from egemma.services.models import vram
from egemma.services.models.build import build_registry
from egemma.services.models.gguf import (
    COMPUTE_MIN_BYTES,
    GgufHeader,
    TensorInfo,
    estimate,
    kv_cache_bytes,
    read_header,
)
from egemma.services.models.registry import GIB, ModelEntry, ModelRegistry
from egemma.services.models.vram import (
    default_vram_budget,
    offloaded_layers,
    split_estimate,
    split_header,
)
from egemma.settings import ModelSettings

pytestmark = pytest.mark.unit
MIB = 1024**2


def fake_header(n_layer: int = 4, tied: bool = False) -> GgufHeader:
    """A llama-shaped header: F32 tensors of known sizes (one element = 4 bytes)."""
    tensors = [TensorInfo("token_embd.weight", (1000, 8), 0, 0)]  # 32,000 bytes
    for i in range(n_layer):
        tensors.append(TensorInfo(f"blk.{i}.attn_q.weight", (100, 10), 0, 0))  # 4,000 bytes
        tensors.append(TensorInfo(f"blk.{i}.ffn_up.weight", (100, 15), 0, 0))  # 6,000 bytes
    tensors.append(TensorInfo("output_norm.weight", (8,), 0, 0))  # 32 bytes
    if not tied:
        tensors.append(TensorInfo("output.weight", (1000, 8), 0, 0))  # 32,000 bytes
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": n_layer,
        "llama.embedding_length": 8,
        "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 1,
    }
    return GgufHeader(3, metadata, tuple(tensors), 0)


def test_offloaded_layer_count_follows_llama_cpp() -> None:
    assert offloaded_layers(30, 0) == 0
    assert offloaded_layers(30, 10) == 10
    assert offloaded_layers(30, 30) == 30  # every repeating layer, not the output
    assert offloaded_layers(30, 31) == 31  # the output layer too
    assert offloaded_layers(30, 999) == 31
    assert offloaded_layers(30, -1) == 31


def test_split_of_a_fake_header_counts_the_last_layers() -> None:
    header = fake_header()
    compute = 50 * MIB
    # KV per layer: n_ctx 100 × 1 KV head × (4 + 4) dims × 2 bytes = 1,600 bytes.
    none = split_header(header, 100, compute, 0)
    assert (none.weights_vram, none.kv_vram, none.compute_vram) == (0, 0, 0)
    assert none.weights_ram == header.weight_bytes
    assert none.kv_ram == 4 * 1600
    two = split_header(header, 100, compute, 2)
    assert two.gpu_layers == 2
    assert two.weights_vram == 2 * 10_000  # blk.2 and blk.3
    assert two.weights_ram == header.weight_bytes - 20_000
    assert (two.kv_vram, two.kv_ram) == (2 * 1600, 2 * 1600)
    # Once anything is offloaded, the compute graph's buffer is on the GPU.
    assert (two.compute_vram, two.compute_ram) == (compute, COMPUTE_MIN_BYTES)
    everything = split_header(header, 100, compute, -1)
    assert everything.weights_vram == 4 * 10_000 + 32 + 32_000  # layers, output norm, output
    assert everything.weights_ram == 32_000  # the input embedding stays in host memory
    assert everything.kv_ram == 0
    assert everything.ram_bytes(3) == 32_000 + COMPUTE_MIN_BYTES
    assert everything.vram_bytes(3) == 72_032 + 3 * 4 * 1600 + compute


def test_tied_embeddings_copy_the_embedding_to_the_gpu_for_the_output() -> None:
    header = fake_header(tied=True)
    split = split_header(header, 100, MIB, -1)
    assert split.weights_ram == 32_000
    assert split.weights_vram == 4 * 10_000 + 32 + 32_000  # output_norm + token_embd's copy
    only_layers = split_header(header, 100, MIB, 4)  # the output stays on the CPU: no copy
    assert only_layers.weights_vram == 40_000


def shipped(name: str) -> Path:
    root = Path.home() / ".egemma" / "models"
    try:
        return resolve(f"builtin:{name}", "CHAT_MODEL_PATH", root).path
    except ModelFileError as exc:
        pytest.skip(str(exc))


def test_shipped_gguf_split_adds_up() -> None:
    path = shipped("smollm2-135m-instruct")
    header = read_header(path)
    est = estimate(path, 2048)
    none = split_estimate(path, est, 0)
    assert none.ram_bytes() == est.total
    assert none.vram_bytes() == 0
    ten = split_estimate(path, est, 10)  # 10 of SmolLM2's 30 layers
    assert ten.kv_vram * 3 == kv_cache_bytes(header, 2048)
    assert ten.weights_ram + ten.weights_vram == header.weight_bytes
    full = split_estimate(path, est, -1)
    assert full.kv_ram == 0
    assert full.weights_vram > ten.weights_vram * 2
    assert full.weights_ram < header.weight_bytes / 2  # mostly the input embedding


def test_default_vram_budget_keeps_a_margin() -> None:
    assert default_vram_budget(None) is None
    assert default_vram_budget(16 * GIB) == 16 * GIB - int(1.6 * GIB)
    assert default_vram_budget(2 * GIB) == 2 * GIB - 512 * MIB
    assert default_vram_budget(256 * MIB) == 0


def test_detects_gpu_memory_with_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 16376\necho 8192\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(vram, "_llama_offloads", lambda: True)
    assert vram.detect_vram() == (16376 + 8192) * MIB
    # A llama.cpp built without a GPU backend offloads nothing, whatever the machine has.
    monkeypatch.setattr(vram, "_llama_offloads", lambda: False)
    assert vram.detect_vram() is None
    broken = tmp_path / "bin2"
    broken.mkdir()
    (broken / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    (broken / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}/usr/bin:/bin")
    assert vram.nvidia_smi_total() is None


def test_this_machine_has_no_gpu_budget_by_default() -> None:
    settings = ModelSettings(_env_file=None)  # type: ignore[call-arg]
    assert build_registry(settings, n_gpu_layers=-1).vram_budget is None
    assert build_registry(settings, n_gpu_layers=0).vram_budget is None
    settings = ModelSettings(_env_file=None, model_vram_budget="8GiB")  # type: ignore[call-arg]
    assert build_registry(settings, n_gpu_layers=-1).vram_budget == 8 * GIB


class FakeEngine:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def entry(model_id: str, ram: int, vram_bytes: int) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        kind="chat",
        path=f"/models/{model_id}.gguf",
        estimate=ram,
        vram_estimate=vram_bytes,
        load=FakeEngine,
    )


def registry(vram_budget: int | None = 8 * GIB, load_timeout: float = 0.3) -> ModelRegistry:
    return ModelRegistry(24 * GIB, 0.0, load_timeout, vram_budget=vram_budget)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_model_too_large_for_the_gpu_is_refused_naming_the_vram_budget() -> None:
    reg = registry()
    big = reg.add(entry("big", 2 * GIB, 9 * GIB))
    assert not reg.fits_alone(big)
    with pytest.raises(UnavailableError) as caught:
        run(reg.use(big))
    assert caught.value.code == "model_exceeds_vram_budget"
    assert "MODEL_VRAM_BUDGET" in caught.value.message
    assert big.state == "configured"
    assert big.users == 0
    # Without a VRAM budget (no GPU), only RAM counts.
    assert registry(vram_budget=None).fits_alone(entry("big", 2 * GIB, 9 * GIB))


def test_vram_alone_makes_room_by_evicting_an_idle_model() -> None:
    async def scenario() -> None:
        reg = registry()
        a = reg.add(entry("a", 1 * GIB, 5 * GIB))
        b = reg.add(entry("b", 1 * GIB, 4 * GIB))  # RAM fits both, VRAM only one
        await reg.use(a)
        reg.release(a)
        first = a.engine
        await reg.use(b)
        assert (a.state, b.state) == ("configured", "loaded")
        assert first.closed
        assert reg.evictions == 1
        assert reg.used_vram == 4 * GIB
        assert reg.used == 1 * GIB
        assert reg.describe()["vram_budget_bytes"] == 8 * GIB

    run(scenario())


def test_a_model_in_use_on_the_gpu_is_never_evicted() -> None:
    async def scenario() -> None:
        reg = registry()
        a = reg.add(entry("a", 1 * GIB, 5 * GIB))
        b = reg.add(entry("b", 1 * GIB, 4 * GIB))
        await reg.use(a)  # a request is using it
        with pytest.raises(UnavailableError) as caught:
            await reg.use(b)
        assert caught.value.code == "model_loading"
        assert "MODEL_VRAM_BUDGET" in caught.value.message
        assert a.state == "loaded"
        assert b.state == "configured"
        reg.release(a)
        await reg.use(b)  # idle now: evicted
        assert a.state == "configured"

    run(scenario())
