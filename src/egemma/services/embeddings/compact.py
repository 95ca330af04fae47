"""Compact vectors for ``encoding_format``: int8/uint8 and packed sign bits (binary/ubinary).

Names as Cohere's ``embedding_types`` and sentence-transformers' ``quantize_embeddings``
precisions. Without a calibration set, int8 scales each vector by its own largest component
(``round(127 · x / max|x|)``): the direction is kept, so compare int8 vectors by cosine, not by
raw dot product. ``uint8`` is the same value + 128. ``binary`` keeps one sign bit per
component (1 when > 0), packed 8 per byte, first component in the high bit, as
``numpy.packbits``; ``binary`` reads the bytes as signed (value − 128, Cohere's convention),
``ubinary`` as unsigned. Compare packed bits by Hamming distance. The ranking each keeps
against float is measured in ``scripts/bench_embeddinggemma.py``, not assumed.
"""

from __future__ import annotations

import numpy as np

COMPACT_FORMATS = ("int8", "uint8", "binary", "ubinary")


def to_int8(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float → (n, d) int8, each row scaled so its largest |component| is 127."""
    peak = np.abs(vectors).max(axis=1, keepdims=True)
    np.maximum(peak, 1e-12, out=peak)
    out: np.ndarray = np.rint(vectors / peak * 127.0).astype(np.int8)
    return out


def to_bits(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float → (n, ceil(d/8)) uint8 of packed sign bits (the last byte zero-padded)."""
    out: np.ndarray = np.packbits(vectors > 0, axis=1)
    return out


def compact(vectors: np.ndarray, encoding_format: str) -> np.ndarray:
    """The integer rows for one of ``COMPACT_FORMATS``."""
    if encoding_format == "int8":
        return to_int8(vectors).astype(np.int16)
    if encoding_format == "uint8":
        return to_int8(vectors).astype(np.int16) + 128
    if encoding_format == "binary":
        return to_bits(vectors).astype(np.int16) - 128
    if encoding_format == "ubinary":
        return to_bits(vectors)
    raise ValueError(f"not a compact format: {encoding_format}")


def hamming_similarity(query_bits: np.ndarray, doc_bits: np.ndarray) -> np.ndarray:
    """Bits that agree between one packed query row and each packed document row."""
    differ = np.unpackbits(np.bitwise_xor(doc_bits, query_bits[None, :]), axis=1).sum(axis=1)
    out: np.ndarray = doc_bits.shape[1] * 8 - differ
    return out
