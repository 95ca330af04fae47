"""GPU memory: what a model with offloaded layers puts on the GPU, and how much GPU there is.

llama.cpp (``llama_model_load``) offloads the *last* ``n_gpu_layers`` repeating layers
(``blk.N.*``); when ``n_gpu_layers`` exceeds the layer count the output layer (``output.*``,
``output_norm.*``) goes too, and a model with tied embeddings then copies ``token_embd`` to the
GPU for its output. The input embedding stays in host memory. Each offloaded layer's KV cache
is allocated on its GPU (``offload_kqv``, llama.cpp's default), and the compute graph's buffer
lives on the GPU once any layer is offloaded (a small host buffer stays). ``-1`` offloads
everything. Everything else of the model stays in RAM: the two figures are separate budgets.

No GPU is visible on the machines this is developed and tested on: the estimator and the
admission logic are unit-tested with fake figures (tests/unit/test_vram_budget.py).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from egemma.services.models.gguf import (
    COMPUTE_MIN_BYTES,
    GgufHeader,
    MemoryEstimate,
    kv_layer_bytes,
    read_header,
)

log = logging.getLogger(__name__)

MIB = 1024**2
VRAM_MARGIN_MIN = 512 * MIB  # CUDA context, cuBLAS workspace, the desktop
_LAYER = re.compile(r"blk\.(\d+)\.")
_OUTPUT = ("output.", "output_norm.")


@dataclass(frozen=True)
class SplitEstimate:
    """One model's memory by place: host RAM and GPU, weights and per-sequence KV cache."""

    gpu_layers: int  # offloaded layers, the output layer counting as one
    weights_ram: int
    weights_vram: int
    kv_ram: int  # per KV sequence (one context of n_ctx tokens)
    kv_vram: int
    compute_ram: int
    compute_vram: int

    def ram_bytes(self, sequences: int = 1) -> int:
        return self.weights_ram + self.kv_ram * sequences + self.compute_ram

    def vram_bytes(self, sequences: int = 1) -> int:
        return self.weights_vram + self.kv_vram * sequences + self.compute_vram


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> int:
    """llama.cpp's count: ``-1`` (or more than there are) is every layer plus the output."""
    if n_gpu_layers < 0:
        return n_layer + 1
    return min(n_gpu_layers, n_layer + 1)


def split_header(header: GgufHeader, n_ctx: int, compute: int, n_gpu_layers: int) -> SplitEstimate:
    """Split a model's weights, KV cache (``n_ctx`` tokens) and compute buffer between RAM and
    VRAM for ``n_gpu_layers`` offloaded layers."""
    n_layer = int(header.arch_value("block_count", 0))
    gpu = offloaded_layers(n_layer, n_gpu_layers)
    first_gpu = n_layer - min(gpu, n_layer)  # layers at or after this index are offloaded
    output_on_gpu = gpu > n_layer
    ram = vram = 0
    has_output = False
    embd = 0
    for tensor in header.tensors:
        size = tensor.nbytes
        layer = _LAYER.match(tensor.name)
        if tensor.name.startswith("output."):
            has_output = True
        if tensor.name.startswith("token_embd."):
            embd += size
        on_gpu = (layer is not None and int(layer.group(1)) >= first_gpu) or (
            output_on_gpu and tensor.name.startswith(_OUTPUT)
        )
        if on_gpu:
            vram += size
        else:
            ram += size
    if output_on_gpu and not has_output:
        vram += embd  # tied embeddings: the output's copy of token_embd
    kv = kv_layer_bytes(header, n_ctx)
    kv_vram = sum(kv[first_gpu:])
    if gpu == 0:
        return SplitEstimate(0, ram, 0, sum(kv), 0, compute, 0)
    return SplitEstimate(gpu, ram, vram, sum(kv) - kv_vram, kv_vram, COMPUTE_MIN_BYTES, compute)


def split_estimate(path: Path, est: MemoryEstimate, n_gpu_layers: int) -> SplitEstimate:
    """``est`` (from ``gguf.estimate``) split by place; with no offload, all of it is RAM."""
    if n_gpu_layers == 0:
        return SplitEstimate(0, est.weights, 0, est.kv_cache, 0, est.compute, 0)
    return split_header(read_header(path), est.n_ctx, est.compute, n_gpu_layers)


def _llama_offloads() -> bool:
    """Whether the installed llama.cpp was built with a GPU backend (a CPU build ignores
    ``n_gpu_layers``, whatever GPU the machine has)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:  # not installed, or an old build without the query
        log.debug("llama.cpp GPU offload query failed: %s", exc)
        return False


def nvidia_smi_total() -> int | None:
    """Total memory of the visible NVIDIA GPUs (llama.cpp splits layers across all of them)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        mib = [int(line.strip()) for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi did not report GPU memory: %s", exc)
        return None
    return sum(mib) * MIB if mib else None


def detect_vram() -> int | None:
    """GPU memory llama.cpp can use here, or None (no GPU build, no GPU visible)."""
    if not _llama_offloads():
        return None
    return nvidia_smi_total()


def default_vram_budget(total: int | None) -> int | None:
    """The GPU's memory minus a margin (10%, at least 512 MiB); None without a GPU."""
    if total is None:
        return None
    return max(0, total - max(VRAM_MARGIN_MIN, total // 10))
