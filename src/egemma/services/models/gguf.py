"""Read a GGUF header (no weights) and estimate what loading the model costs in memory.

The format (ggml ``docs/gguf.md``): magic ``GGUF``, version, tensor and key/value counts, the
key/values, then one info record per tensor (name, shape, ggml type, offset); tensor data starts
at the next ``general.alignment`` boundary. A tensor's bytes follow from its type's block size
and bytes per block, so the weights are known before anything is mapped.

The KV cache llama.cpp allocates is ``n_ctx × Σ_layers n_head_kv × (key_length + value_length)``
F16 values (two bytes each); ``key_length``/``value_length`` default to
``embedding_length / head_count``. It is sized for the whole context on every layer, an upper
bound for sliding-window models (Gemma 3 keeps its local layers shorter).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
KV_BYTES = 2  # llama.cpp's default cache type is F16
# llama.cpp reserves its compute graph for one micro-batch (``n_ubatch``, 512 by default):
# on CPU that buffer is dominated by the logits, n_ubatch × n_vocab F32 values.
UBATCH = 512
COMPUTE_MIN_BYTES = 16 * 1024**2

# ggml type id → (elements per block, bytes per block), ggml.c ``type_traits``.
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}

_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The file is not a GGUF this reader understands."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def nbytes(self) -> int:
        if self.ggml_type not in GGML_TYPES:
            raise GgufError(f"tensor {self.name} has unknown ggml type {self.ggml_type}")
        block, size = GGML_TYPES[self.ggml_type]
        elements = 1
        for dim in self.shape:
            elements *= dim
        return elements // block * size


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where tensor data starts

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Reader:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def take(self, length: int, what: str) -> bytes:
        """``length`` bytes, refused before reading when the file cannot hold them (a corrupt
        length field must be an error, never a multi-gigabyte allocation)."""
        if length > self.size - self.handle.tell():
            raise GgufError(f"the file ends inside {what}")
        return self.handle.read(length)

    def count(self, what: str) -> int:
        n = int(self.unpack("<Q"))
        if n > self.size - self.handle.tell():  # every element takes at least one byte
            raise GgufError(f"the file ends inside its {what} table (count {n})")
        return n

    def unpack(self, fmt: str) -> Any:
        raw = self.take(struct.calcsize(fmt), "its header")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        return self.take(length, "a string").decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.count("array")
            if item_kind in _SCALARS:
                fmt = _SCALARS[item_kind]
                raw = self.take(struct.calcsize(fmt) * count, "an array")
                return list(struct.unpack(f"<{count}{fmt[1]}", raw))
            return [self.value(item_kind) for _ in range(count)]
        raise GgufError(f"unknown metadata value type {kind}")


def read_header(path: Path) -> GgufHeader:
    """The metadata and tensor table of ``path``; reads only the header."""
    try:
        return _read_header(path)
    except GgufError as exc:
        if str(exc).startswith(path.name):
            raise
        raise GgufError(f"{path.name}: {exc}") from None


def _read_header(path: Path) -> GgufHeader:
    with path.open("rb") as handle:
        reader = _Reader(handle)
        if handle.read(4) != MAGIC:
            raise GgufError(f"{path.name} is not a GGUF file")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GgufError(f"{path.name}: unsupported GGUF version {version}")
        n_tensors, n_kv = reader.count("tensor"), reader.count("metadata")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = reader.string()
            dims = tuple(reader.unpack("<Q") for _ in range(reader.unpack("<I")))
            tensors.append(TensorInfo(name, dims, reader.unpack("<I"), reader.unpack("<Q")))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        end = handle.tell()
        data_offset = (end + alignment - 1) // alignment * alignment
    return GgufHeader(version, metadata, tuple(tensors), data_offset)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs once loaded: weights, KV cache for ``n_ctx``, compute buffer."""

    weights: int
    kv_cache: int
    compute: int
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def _per_layer(value: Any, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n_layer]]
    return [int(value)] * n_layer


def kv_layer_bytes(header: GgufHeader, n_ctx: int) -> list[int]:
    """The F16 KV cache of each layer for ``n_ctx`` tokens (layer order)."""
    n_layer = int(header.arch_value("block_count", 0))
    n_head = _per_layer(header.arch_value("attention.head_count", 1), n_layer)
    n_head_kv = _per_layer(header.arch_value("attention.head_count_kv", n_head), n_layer)
    n_embd = int(header.arch_value("embedding_length", 0))
    out = []
    for heads, kv_heads in zip(n_head, n_head_kv, strict=True):
        head_dim = n_embd // heads if heads else 0
        k = int(header.arch_value("attention.key_length", head_dim))
        v = int(header.arch_value("attention.value_length", head_dim))
        out.append(n_ctx * kv_heads * (k + v) * KV_BYTES)
    return out


def kv_cache_bytes(header: GgufHeader, n_ctx: int) -> int:
    """The F16 KV cache llama.cpp allocates for ``n_ctx`` tokens."""
    return sum(kv_layer_bytes(header, n_ctx))


def effective_n_ctx(header: GgufHeader, wanted: int) -> int:
    """The context llama.cpp gets: ``wanted``, capped at the trained length (as ``load`` does)."""
    trained = int(header.arch_value("context_length", wanted) or wanted)
    return min(wanted, trained)


def estimate(path: Path, n_ctx: int, n_batch: int = 512) -> MemoryEstimate:
    """What loading ``path`` with ``n_ctx`` context costs, from its header alone."""
    header = read_header(path)
    ctx = effective_n_ctx(header, n_ctx)
    n_embd = int(header.arch_value("embedding_length", 0))
    vocab = len(header.metadata.get("tokenizer.ggml.tokens", []))
    # Logits and a few activation rows per token of one micro-batch, in F32.
    ubatch = min(n_batch, UBATCH)
    compute = max(COMPUTE_MIN_BYTES, ubatch * (vocab + 4 * n_embd) * 4)
    return MemoryEstimate(header.weight_bytes, kv_cache_bytes(header, ctx), compute, ctx)
