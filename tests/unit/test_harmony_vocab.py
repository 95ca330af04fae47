"""The Harmony vocabulary is produced offline from quicktok's data file."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from egemma.services.prompting.harmony_vocab import (
    VOCAB_FILENAME,
    VOCAB_SHA256,
    HarmonyVocabError,
    convert_quicktok_vocab,
    ensure_harmony_vocab,
)


def _blob(entries: list[tuple[bytes, int]]) -> bytes:
    out = struct.pack("<I", len(entries))
    for token, rank in entries:
        out += struct.pack("<H", len(token)) + token + struct.pack("<I", rank)
    return out


def test_convert_sorts_by_rank_and_base64_encodes() -> None:
    blob = _blob([(b"b", 1), (b"\xff\x00", 2), (b"a", 0)])
    assert convert_quicktok_vocab(blob) == b"YQ== 0\nYg== 1\n/wA= 2\n"


@pytest.mark.parametrize("cut", [3, 7, -1])
def test_convert_rejects_truncated_data(cut: int) -> None:
    blob = _blob([(b"abc", 0), (b"d", 1)])
    with pytest.raises(HarmonyVocabError):
        convert_quicktok_vocab(blob[:cut])


def test_convert_rejects_trailing_bytes() -> None:
    with pytest.raises(HarmonyVocabError):
        convert_quicktok_vocab(_blob([(b"a", 0)]) + b"\x00")


def test_ensure_writes_verified_file_once(tmp_path: Path) -> None:
    vocab_dir = ensure_harmony_vocab(tmp_path)
    target = vocab_dir / VOCAB_FILENAME
    assert hashlib.sha256(target.read_bytes()).hexdigest() == VOCAB_SHA256
    assert target.stat().st_size == 3_613_922
    assert target.stat().st_mode & 0o777 == 0o644
    stamp = target.stat().st_mtime_ns
    assert ensure_harmony_vocab(tmp_path) == vocab_dir
    assert target.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in vocab_dir.iterdir()) == [VOCAB_FILENAME]


def test_ensure_replaces_a_corrupt_file(tmp_path: Path) -> None:
    target = tmp_path / "harmony" / VOCAB_FILENAME
    target.parent.mkdir()
    target.write_bytes(b"garbage\n")
    ensure_harmony_vocab(tmp_path)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == VOCAB_SHA256


def test_render_works_without_network(tmp_path: Path) -> None:
    """A fresh process with every proxy pointing at a dead port and an empty download cache."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.pop("TIKTOKEN_ENCODINGS_BASE", None)
    dead = "http://127.0.0.1:9"
    env.update(
        HTTP_PROXY=dead,
        HTTPS_PROXY=dead,
        ALL_PROXY=dead,
        http_proxy=dead,
        https_proxy=dead,
        TIKTOKEN_RS_CACHE_DIR=str(cache),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from egemma.services.prompting.types import Turn
        from egemma.services.prompting.harmony import (
            ensure_harmony_vocab, load_encoding, render_prompt,
        )
        enc = load_encoding(ensure_harmony_vocab(Path({str(tmp_path)!r})))
        tokens = render_prompt([Turn("user", "hi")], [], instructions=None, effort="low",
                               encoding=enc, conversation_start_date="2025-01-01")
        print(enc.decode(tokens))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("<|start|>user<|message|>hi<|end|><|start|>assistant")
    assert list(cache.iterdir()) == []
