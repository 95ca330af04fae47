"""Uploaded files as text: one set of rules for every multipart endpoint.

Over the size cap → 413; binary (NUL anywhere, or more than ``BINARY_DETECTION_THRESHOLD`` of the
first 8 KiB are control bytes) → 400; not UTF-8 → 400; empty or whitespace only → 400.
"""

from __future__ import annotations

from egemma.errors import InvalidRequestError, PayloadTooLargeError

_TEXT_CONTROL = frozenset({0x08, 0x09, 0x0A, 0x0C, 0x0D, 0x1B})
_BINARY_SAMPLE = 8192


def looks_binary(data: bytes, threshold: float) -> bool:
    """NUL anywhere, or more than ``threshold`` of the first 8 KiB are control bytes."""
    if b"\x00" in data:
        return True
    sample = data[:_BINARY_SAMPLE]
    if not sample:
        return False
    control = sum(1 for b in sample if (b < 32 and b not in _TEXT_CONTROL) or b == 127)
    return control / len(sample) > threshold


def decode_upload(data: bytes, *, max_bytes: int, binary_threshold: float) -> str:
    """The upload as text, or the 4xx that says why not (``data`` may hold one extra byte)."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"The file is larger than {max_bytes} bytes.", param="file")
    if looks_binary(data, binary_threshold):
        raise InvalidRequestError(
            "The file looks binary; upload UTF-8 text.", param="file", code="binary_file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "The file is not valid UTF-8 text.", param="file", code="invalid_encoding"
        ) from None
    if not text.strip():
        raise InvalidRequestError("The file is empty.", param="file", code="empty_input")
    return text
