"""``/v1/rerank`` by a cross-encoder (``RERANK_MODEL_PATH``) through the real server.

The model is a tiny random-weight ``BertForSequenceClassification`` with the shipped MiniLM
tokenizer (``tests/e2e/tiny_reranker.py``), exported by ``egemma export-reranker``. Random
weights rank nothing meaningfully, so the served scores are compared with the same model's
PyTorch logits (pairs tokenized by the Hugging Face tokenizer), and the order with theirs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from egemma.app import create_app
from egemma.protocol.rerank import MAX_DOCUMENTS
from tests.e2e import tiny_reranker
from tests.e2e.conftest import KEY, real_settings
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

QUERY = "how do I reset my password?"
DOCS = [
    "Open Settings, choose Account, then Reset password.",
    "Tokyo is the capital of Japan.",
    "OK",
    # Longer than the model's 128 positions with the query: truncated alike on both sides.
    "A server answers 429 with a Retry-After header when a client sends too much. " * 12,
    "def add(a: int, b: int) -> int:\n    return a + b",
    "東京は日本の首都です。",
]


@pytest.fixture(scope="module")
def source() -> Path:
    return tiny_reranker.source_folder()


@pytest.fixture(scope="module")
def exported(source: Path) -> Path:
    return tiny_reranker.onnx_folder(source)


@pytest.fixture(scope="module")
def reference(source: Path) -> tuple[np.ndarray, list[int]]:
    """The PyTorch model's logits for (QUERY, doc) and each pair's token count."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(source), local_files_only=True)
    model.eval()
    batch = tok(
        [QUERY] * len(DOCS),
        DOCS,
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits[:, 0].numpy()
    return logits.astype(np.float64), [int(n) for n in batch["attention_mask"].sum(dim=1)]


def _start(tmp: Path, **env: str) -> LiveServer:
    base = {
        "CHAT_MODEL_ENABLED": "false",
        "SUMMARY_LOCAL_ENABLED": "false",
        "EMBEDDING_ENABLED": "false",  # the cross-encoder needs no embedding model
        "EMBED_RATE_LIMIT_CALLS": "100000",
    }
    server = LiveServer(create_app(real_settings(tmp, **{**base, **env})))
    server.start(timeout=300)
    return server


@pytest.fixture(scope="module")
def http(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = _start(tmp_path_factory.mktemp("rerank-data"), RERANK_MODEL_PATH=str(exported))
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as client:
        yield client
    server.stop()


def _rerank(http: httpx.Client, path: str = "/v1/rerank", **body: Any) -> httpx.Response:
    body.setdefault("query", QUERY)
    body.setdefault("documents", DOCS)
    return http.post(path, json=body)


def test_scores_are_the_pytorch_logits_in_their_order(
    http: httpx.Client, reference: tuple[np.ndarray, list[int]]
) -> None:
    logits, tokens = reference
    assert float(np.ptp(logits)) > 0.05, logits  # the fixture's scores do differ
    r = _rerank(http, model="anything")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scorer"] == "cross_encoder"
    assert body["model"] == "tiny-cross-encoder"
    assert body["object"] == "list"
    assert body["id"].startswith("rerank_")
    results = body["results"]
    assert [x["index"] for x in results] == [int(i) for i in np.argsort(-logits, kind="stable")]
    for x in results:
        assert x["relevance_score"] == pytest.approx(logits[x["index"]], abs=1e-4)
        assert x["document"] == {"text": DOCS[x["index"]]}
    assert body["usage"] == {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}


def test_top_n_objects_and_the_short_path(
    http: httpx.Client, reference: tuple[np.ndarray, list[int]]
) -> None:
    logits, _ = reference
    docs = [{"text": d} for d in DOCS]
    r = _rerank(http, "/rerank", documents=docs, top_n=2, return_documents=False)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [int(i) for i in np.argsort(-logits)[:2]]
    assert all(x.get("document") is None for x in results)
    one = _rerank(http, documents=[DOCS[1]], top_n=50).json()["results"]
    assert len(one) == 1
    assert one[0]["relevance_score"] == pytest.approx(logits[1], abs=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": []}, "documents"),
        ({"documents": ["fine", "  "]}, "documents[1]"),
        ({"documents": ["x"] * (MAX_DOCUMENTS + 1)}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": "2"}, "top_n"),
        ({"top_n": 1.5}, "top_n"),
        ({"query": ""}, "query"),
        ({"query": None}, "query"),
        ({"documents": [3]}, "documents"),
        ({"return_documents": "yes"}, "return_documents"),
    ],
)
def test_bad_input_is_an_openai_400(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    r = _rerank(http, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert str(error["param"]).startswith(param), error
    assert _rerank(http).status_code == 200  # still serving


def test_health_names_the_cross_encoder_and_embeddings_stay_off(http: httpx.Client) -> None:
    health = http.get("/health").json()
    entry = health["rerank_model"]
    assert entry["status"] == "loaded"
    assert entry["name"] == "tiny-cross-encoder"
    assert entry["scorer"] == "cross_encoder"
    assert entry["context_length"] == 128
    assert health["embedding_model"]["status"] == "disabled"
    assert http.get("/ready").status_code == 200
    r = http.post("/v1/embeddings", json={"input": "x", "model": "m"})
    assert r.status_code == 503


def test_sigmoid_scores(
    exported: Path, tmp_path: Path, reference: tuple[np.ndarray, list[int]]
) -> None:
    logits, _ = reference
    server = _start(tmp_path, RERANK_MODEL_PATH=str(exported), RERANK_SCORE="sigmoid")
    try:
        r = httpx.post(
            f"{server.base_url}/v1/rerank",
            json={"query": QUERY, "documents": DOCS},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    for x in r.json()["results"]:
        assert x["relevance_score"] == pytest.approx(
            1 / (1 + np.exp(-logits[x["index"]])), abs=1e-5
        )


def test_a_broken_reranker_is_a_503_never_cosine(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "egemma-reranker.json").write_text(
        json.dumps({"format_version": 1, "name": "b", "max_seq_length": 8}), encoding="utf-8"
    )
    (broken / "model.onnx").write_bytes(b"not a graph")
    server = _start(tmp_path / "data", RERANK_MODEL_PATH=str(broken))
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        health = httpx.get(f"{server.base_url}/health").json()
        ready = httpx.get(f"{server.base_url}/ready")
        r = httpx.post(
            f"{server.base_url}/v1/rerank",
            json={"query": "q", "documents": ["d"]},
            headers=headers,
            timeout=60,
        )
        models = httpx.get(f"{server.base_url}/v1/models", headers=headers)
    finally:
        server.stop()
    assert health["rerank_model"]["status"] == "error"
    assert "RERANK_MODEL_PATH" in health["rerank_model"]["reason"]
    assert ready.status_code == 503
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_not_loaded"
    assert models.status_code == 200  # the rest serves


def test_export_refuses_a_model_with_two_labels(tmp_path: Path) -> None:
    from egemma.export import ExportError
    from egemma.export_reranker import export_reranker

    src = tmp_path / "two-labels"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"model_type": "bert", "id2label": {"0": "no", "1": "yes"}}), encoding="utf-8"
    )
    with pytest.raises(ExportError, match="one output label"):
        export_reranker(src, tmp_path / "out")
