"""cl100k_base decoding of token-id embedding input, with the shipped vocabulary (quicktok-v1)."""

from __future__ import annotations

import hashlib

import pytest

from egemma.errors import InvalidRequestError
from egemma.services.embeddings.openai_tokens import (
    CL100K_SHA256,
    OpenAITokenDecoder,
    cl100k_tiktoken_file,
    is_cl100k_id,
)

TEXTS = [
    "hello world",
    "Le chat dort sur le canapé depuis ce matin.",
    "🙂 emoji and symbols: ±∞ ≠ ≈ 漢字",
    "Москва — столица России.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
]


@pytest.fixture(scope="module")
def decoder() -> OpenAITokenDecoder:
    return OpenAITokenDecoder()


def test_the_file_is_tiktokens_own() -> None:
    data = cl100k_tiktoken_file()
    assert hashlib.sha256(data).hexdigest() == CL100K_SHA256
    assert len(data.splitlines()) == 100256


def test_round_trip_of_tiktoken_ids(decoder: OpenAITokenDecoder) -> None:
    import tiktoken

    # The same encoding built by tiktoken itself from the same bytes, as a client would have it.
    enc = decoder._get()
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.encode_ordinary("hello world") == [15339, 1917]  # OpenAI's published ids
    arrays = [enc.encode_ordinary(t) for t in TEXTS]
    assert decoder.decode(arrays, [f"input[{i}]" for i in range(len(TEXTS))]) == TEXTS


def test_a_character_cut_between_chunks_is_dropped_at_the_edges(
    decoder: OpenAITokenDecoder,
) -> None:
    enc = decoder._get()
    for text in TEXTS:
        ids = enc.encode_ordinary(text)
        for cut in range(1, len(ids)):
            head, tail = decoder.decode([ids[:cut], ids[cut:]], ["a", "b"])
            whole = enc.decode_bytes(ids)
            # Each side is a whole-character prefix / suffix of the text; nothing is invented.
            assert text.startswith(head)
            assert text.endswith(tail)
            assert len(whole) - len(head.encode()) - len(tail.encode()) <= 4  # one character


def test_invalid_utf8_inside_is_a_400(decoder: OpenAITokenDecoder) -> None:
    enc = decoder._get()
    lone = enc.encode_single_token(b"\xff")
    ids = [*enc.encode_ordinary("before"), lone, *enc.encode_ordinary(" after")]
    with pytest.raises(InvalidRequestError) as err:
        decoder.decode([ids], ["input[3]"])
    assert err.value.param == "input[3]"
    assert err.value.code == "invalid_token_sequence"


@pytest.mark.parametrize("token", [-1, 100256, 100261, 100275, 100277, 10**9])
def test_ids_outside_cl100k_are_a_400(decoder: OpenAITokenDecoder, token: int) -> None:
    assert not is_cl100k_id(token)
    with pytest.raises(InvalidRequestError) as err:
        decoder.decode([[15339, token]], ["input"])
    assert err.value.param == "input"
    assert err.value.code == "invalid_token_id"
    assert f"input[1]: {token}" in err.value.message


def test_special_tokens_decode_to_their_text(decoder: OpenAITokenDecoder) -> None:
    assert decoder.decode([[100257], [100276]], ["a", "b"]) == ["<|endoftext|>", "<|endofprompt|>"]


def test_a_missing_vocabulary_is_a_clear_400(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "quicktok" else real(name, *a)
    )
    broken = OpenAITokenDecoder()
    for _ in range(2):  # the failure is remembered, not retried per request
        with pytest.raises(InvalidRequestError) as err:
            broken.decode([[15339]], ["input"])
        assert err.value.code == "token_input_unavailable"
        assert "quicktok-v1" in err.value.message
