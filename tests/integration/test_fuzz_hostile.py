"""Property tests with hostile strategies (issue 18 items 3–6): lone surrogates anywhere, deep
nesting inside call arguments, schema-valid-but-hostile and invalid JSON Schemas. Whatever the
input: no 5xx, and no success-shaped failure (a 200 whose response ``failed`` on our side)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egemma.app import create_app
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text that is mostly ordinary, with lone surrogates, control tokens and quotes mixed in.
hostile_text = st.lists(
    st.one_of(
        st.characters(categories=["Cs"]),
        st.characters(codec="utf-8"),
        st.sampled_from(["<|im_end|>", "<|im_start|>", '"', "\\", "\n", "\u2028"]),
    ),
    max_size=20,
).map("".join)

bounds = st.one_of(st.integers(-5, 10), st.integers(0, 10**10), st.booleans(), st.text(max_size=3))
patterns = st.text(alphabet="a()[]{}|^$*+?.\\,0123456789:-", max_size=24)
leaf_schema = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "array", "object", "number", "bogus", 7])},
    optional={
        "minLength": bounds,
        "maxLength": bounds,
        "minItems": bounds,
        "maxItems": bounds,
        "pattern": patterns,
        "enum": st.lists(st.integers(), max_size=3),
        "minimum": bounds,
    },
)
schemas = st.recursive(
    leaf_schema,
    lambda children: (
        st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(st.text("abc", min_size=1, max_size=3), children),
            }
        )
        | st.fixed_dictionaries({"type": st.just("array"), "items": children})
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    unlimited = "1000000"
    app_settings = make_settings(
        DATA_DIR=str(tmp_path_factory.mktemp("fuzz-data")),
        WORKBENCH_API_KEY=TEST_KEY,
        CHAT_RATE_LIMIT_CALLS=unlimited,
        EMBED_RATE_LIMIT_CALLS=unlimited,
        CONVERSATION_RATE_LIMIT_CALLS=unlimited,
    )
    engines = fake_engines(FakeChatEngine("fake", script='{"a": "x"}', words=False))
    engines.embedding = FakeEmbeddingEngine(dimension=8)
    engines.capability("embeddings").status = "loaded"
    live = LiveServer(create_app(app_settings, engines=engines))
    live.start()
    yield live
    live.stop()


def _post(server: LiveServer, path: str, body: Any) -> httpx.Response:
    raw = json.dumps(body).encode()  # ensure_ascii: surrogates go out as \\udXXX escapes
    headers = {**AUTH, "Content-Type": "application/json"}
    return httpx.post(f"{server.base_url}{path}", content=raw, headers=headers, timeout=30)


def _no_server_failure(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code == 200 and resp.headers["content-type"].startswith("application/json"):
        body = resp.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert not (body.get("status") == "failed" and error), error


@FUZZ
@given(text=hostile_text, where=st.sampled_from(["instructions", "metadata", "input", "conv"]))
def test_hostile_text_anywhere(server: LiveServer, text: str, where: str) -> None:
    body: dict[str, Any] = {"input": "hi"}
    if where == "metadata":
        body["metadata"] = {"k": text}
    elif where == "conv":
        body["conversation"] = text or "x"
    else:
        body[where] = text or "x"
    _no_server_failure(_post(server, "/v1/responses", body))
    _no_server_failure(_post(server, "/v1/conversations", {"metadata": {"k": text}}))
    _no_server_failure(_post(server, "/v1/embeddings", {"input": [text or "x"], "model": "m"}))


@FUZZ
@given(depth=st.integers(0, 6000), opener=st.sampled_from(["[", "{", '{"a":[']))
def test_nested_arguments(server: LiveServer, depth: int, opener: str) -> None:
    arguments = opener * depth
    body = {
        "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "f"}],
    }
    _no_server_failure(_post(server, "/v1/responses", body))


@FUZZ
@given(schema=schemas, required=st.booleans())
def test_hostile_schemas(server: LiveServer, schema: dict[str, Any], required: bool) -> None:
    tool = {"type": "function", "name": "f", "parameters": schema}
    body: dict[str, Any] = {"input": "hi", "tools": [tool]}
    if required:
        body["tool_choice"] = "required"
    _no_server_failure(_post(server, "/v1/responses", body))
    fmt = {"type": "json_schema", "name": "o", "schema": schema}
    _no_server_failure(_post(server, "/v1/responses", {"input": "hi", "text": {"format": fmt}}))
