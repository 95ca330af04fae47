"""Upload checks, language table, log condensing, token chunking and Gemini error parsing."""

from __future__ import annotations

import pytest

from egemma.engines.gemini import retry_delay
from egemma.errors import InvalidRequestError, PayloadTooLargeError
from egemma.services.summarize.input import (
    EXTENSION_TO_LANGUAGE,
    condense_log,
    language_for,
    split_by_tokens,
)
from egemma.services.uploads import decode_upload, looks_binary


def _words(text: str) -> int:
    return len(text.split()) + text.count("\n")


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("a.py", "Python"),
        ("A.PY", "Python"),
        ("x/y/z.rs", "Rust"),
        ("run.sh", "Shell script"),
        ("ci.yml", "YAML"),
        ("ci.yaml", "code"),
        ("README.md", "Markdown"),
        ("server.log", "Log File"),
        ("Makefile", "code"),
        ("..\\..\\evil.ts", "TypeScript"),
        ("", "code"),
        (None, "code"),
        (".py", "Python"),
    ],
)
def test_language_for(name: str | None, language: str) -> None:
    assert language_for(name) == language


def test_original_extension_table() -> None:
    assert len(EXTENSION_TO_LANGUAGE) == 17
    assert EXTENSION_TO_LANGUAGE["cpp"] == "C++"


def test_decode_upload_accepts_text_and_strips_bom() -> None:
    assert decode_upload(b"\xef\xbb\xbfhello\n", max_bytes=10, binary_threshold=0.1) == "hello\n"
    assert decode_upload(b"tab\tand\x1b[0mcolour", max_bytes=100, binary_threshold=0.1)


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"0123456789X", PayloadTooLargeError, "payload_too_large"),
        (b"a\x00b", InvalidRequestError, "binary_file"),
        (b"\x01\x02\x03abc", InvalidRequestError, "binary_file"),
        (b"\xc3\x28", InvalidRequestError, "invalid_encoding"),
        (b"", InvalidRequestError, "empty_input"),
        (b" \r\n", InvalidRequestError, "empty_input"),
    ],
)
def test_decode_upload_rejects(data: bytes, error: type[Exception], code: str) -> None:
    with pytest.raises(error) as info:
        decode_upload(data, max_bytes=10, binary_threshold=0.1)
    assert getattr(info.value, "code", None) == code


def test_binary_threshold_is_a_share_of_control_bytes() -> None:
    data = b"\x01" * 5 + b"a" * 95
    assert not looks_binary(data, 0.1)
    assert looks_binary(data, 0.04)


def test_condense_log_collapses_repeats_with_span_and_keeps_order() -> None:
    lines = ["2024-01-02T03:04:05Z start"]
    lines += [f"2024-01-02T03:04:{10 + i:02d}Z GET /health 200 in {i}ms" for i in range(6)]
    lines += ["2024-01-02T03:05:00Z stop", "", "no timestamp"]
    lines += [f"Jan  2 03:06:0{i} host sshd[{100 + i}]: Failed password" for i in range(5)]
    out = condense_log("\n".join(lines)).splitlines()
    assert out == [
        "2024-01-02T03:04:05Z start",
        "2024-01-02T03:04:10Z GET /health 200 in 0ms "
        "(Repeated 6 times between 2024-01-02T03:04:10Z and 2024-01-02T03:04:15Z)",
        "2024-01-02T03:05:00Z stop",
        "",
        "no timestamp",
        "Jan  2 03:06:00 host sshd[100]: Failed password "
        "(Repeated 5 times between Jan  2 03:06:00 and Jan  2 03:06:04)",
    ]


def test_condense_log_leaves_rare_lines_and_counts_untimed_repeats() -> None:
    text = "\n".join(["a 1", "a 2", "a 3", "a 4", "b", "b", "b", "b", "b"])
    out = condense_log(text).splitlines()
    assert out == ["a 1", "a 2", "a 3", "a 4", "b (Repeated 5 times)"]


def test_split_by_tokens_cuts_on_lines_within_budget() -> None:
    text = "".join(f"line {i} has five words\n" for i in range(40))
    parts = split_by_tokens(text, _words, 20)
    assert "".join(parts) == text
    assert all(_words(p) <= 20 for p in parts)
    assert all(p.endswith("\n") for p in parts)
    assert len(parts) == 14  # 6 tokens a line, 3 lines a part


def test_split_by_tokens_cuts_an_overlong_line() -> None:
    text = "short\n" + " ".join(f"w{i}" for i in range(100)) + "\ntail\n"
    parts = split_by_tokens(text, _words, 30)
    assert "".join(parts) == text
    assert all(_words(p) <= 30 for p in parts)
    assert len(parts) >= 4


def test_split_by_tokens_one_part_when_it_fits() -> None:
    assert split_by_tokens("a\nb\n", _words, 100) == ["a\nb\n"]


@pytest.mark.parametrize(
    ("details", "seconds"),
    [
        ({"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "38s"}]}}, 38),
        ({"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "0.2s"}]}}, 1),
        ([{"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "2.5s"}]}}], 3),
        ({"error": {"details": [{"@type": "x.QuotaFailure"}]}}, None),
        ({"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "soon"}]}}, None),
        ("not json", None),
    ],
)
def test_retry_delay(details: object, seconds: int | None) -> None:
    assert retry_delay(details) == seconds
