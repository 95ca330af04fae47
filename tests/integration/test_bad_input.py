"""The bad-input catalogue of reliability.md §6 (JSON and numbers, context, tool schemas,
metadata, SSE injection, templates, uploads): each gets its 4xx, never a 5xx, and the server
keeps serving. Auth variants live in ``test_auth.py``, persona names in ``test_personas*.py``,
AST inputs in ``test_ast_api.py``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio

N_CTX = 256
INJECTION = 'a\rb\r\nc\u2028d\n\ndata: {"type":"response.completed"}\n\nevent: error\n'


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        CHAT_RATE_LIMIT_CALLS=100_000,
        CONVERSATION_RATE_LIMIT_CALLS=100_000,
        EMBED_RATE_LIMIT_CALLS=100_000,
        MAX_FILE_SIZE_BYTES=1000,
    )


@pytest.fixture
def engines() -> Engines:
    engines = fake_engines(
        FakeChatEngine("fake"),
        FakeChatEngine("tiny", n_ctx=N_CTX),
        FakeChatEngine("inject", script=INJECTION, words=False),
        FakeChatEngine("evil", script="x").with_template("{{ ''.__class__.__mro__ }}"),
        FakeChatEngine("loop", script="x").with_template(
            "{% for x in range(10**9) %}x{% endfor %}"
        ),
    )
    engines.embedding = FakeEmbeddingEngine(dimension=16)
    engines.capability("embeddings").status = "loaded"
    return engines


def check_400(resp: httpx.Response, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    return error


async def still_serving(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/responses", json={"input": "hi"}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["status"] == "completed"


# -- JSON and numbers ---------------------------------------------------------------------------

RAW_BODIES = {
    "nesting bomb": b"[" * 100_000,
    "object nesting bomb": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "5000-digit integer": b'{"input":"hi","max_output_tokens":' + b"9" * 5000 + b"}",
    "5000-digit integer in an item": b'{"input":[' + b"1" * 5000 + b"]}",
    "invalid utf-8 in a string": b'{"input":"\xff\xfe"}',
    "truncated": b'{"input":"hi"',
    "not json": b"input=hi",
    "empty": b"",
}


@pytest.mark.parametrize("body", RAW_BODIES.values(), ids=RAW_BODIES.keys())
@pytest.mark.parametrize(
    "path", ["/v1/responses", "/v1/chat/completions", "/v1/conversations", "/v1/embeddings"]
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, path: str, body: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await client.post(path, content=body, headers=headers)
    if path == "/v1/conversations" and body == b"":
        assert resp.status_code == 200  # the body is optional there
        return
    check_400(resp)
    await still_serving(client)


FIELDS = [
    ("max_output_tokens", 0),
    ("max_output_tokens", -1),
    ("max_output_tokens", 2**31),
    ("max_output_tokens", 1.5),
    ("max_output_tokens", True),
    ("max_output_tokens", "10"),
    ("temperature", "0.5"),
    ("top_logprobs", False),
    ("temperature", "NaN"),
    ("temperature", "1e999"),
    ("temperature", 3),
    ("top_p", "-Infinity"),
    ("top_p", 0),
    ("stream", 0),
    ("stream", "true"),
    ("store", 1),
    ("truncation", "sometimes"),
    ("reasoning", {"effort": "extreme"}),
]


@pytest.mark.parametrize(("field", "value"), FIELDS)
async def test_bad_field_values_are_400(client: httpx.AsyncClient, field: str, value: Any) -> None:
    if isinstance(value, str) and value in ("NaN", "1e999", "-Infinity"):
        body = f'{{"input": "hi", "{field}": {value}}}'.encode()
    else:
        body = json.dumps({"input": "hi", field: value}).encode()
    resp = await client.post(
        "/v1/responses", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    error = check_400(resp)
    assert error["param"] == field or error["param"].startswith(f"{field}.")


async def test_a_float_that_is_an_integer_is_accepted(client: httpx.AsyncClient) -> None:
    # No model-wide strict mode: 16.0 is a fine token budget (schemathesis ST202).
    resp = await client.post(
        "/v1/responses", json={"input": "hi", "max_output_tokens": 16.0}, headers=AUTH
    )
    assert resp.status_code == 200


async def test_duplicate_keys_last_wins(client: httpx.AsyncClient) -> None:
    body = b'{"input": "hi", "stream": true, "stream": false}'
    resp = await client.post(
        "/v1/responses", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")


async def test_ten_thousand_stop_strings_are_400(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": ["x"] * 10_000}
    check_400(await client.post("/v1/chat/completions", json=body, headers=AUTH))


# -- context -----------------------------------------------------------------------------------


async def _prompt_tokens(client: httpx.AsyncClient, text: str) -> int:
    body = {"model": "tiny", "input": text}
    resp = await client.post("/v1/responses/input_tokens", json=body, headers=AUTH)
    assert resp.status_code == 200
    tokens: int = resp.json()["input_tokens"]
    return tokens


@pytest.mark.parametrize("text", ["hello", "é" * 40, "🙂" * 40])
async def test_context_edge_n_ctx_and_n_ctx_plus_one(client: httpx.AsyncClient, text: str) -> None:
    room = N_CTX - await _prompt_tokens(client, text)
    assert room > 1
    body = {"model": "tiny", "input": text, "max_output_tokens": room}
    assert (await client.post("/v1/responses", json=body, headers=AUTH)).status_code == 200
    body["max_output_tokens"] = room + 1
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    assert check_400(resp, "context_length_exceeded")["param"] == "input"


async def test_prompt_beyond_the_context_is_400(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "input": "é" * (N_CTX * 4)}
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    check_400(resp, "context_length_exceeded")


async def test_stored_history_beyond_the_context_is_400(client: httpx.AsyncClient) -> None:
    first = await client.post(
        "/v1/responses", json={"model": "tiny", "input": "x" * 150}, headers=AUTH
    )
    assert first.status_code == 200
    body = {"model": "tiny", "input": "y" * 150, "previous_response_id": first.json()["id"]}
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    check_400(resp, "context_length_exceeded")


# -- tool schemas ------------------------------------------------------------------------------


def _tool(name: str = "f", **parameters: Any) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": parameters or {"type": "object"}}


def _deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


NESTED = "((a{20}){99}){99}"  # 196,020 repetitions once expanded
TOOLS: dict[str, tuple[list[dict[str, Any]], str | None]] = {
    "1000 tools": ([_tool(f"f{i}") for i in range(1000)], "too_many_tools"),
    "1 MB description": (
        [{"type": "function", "name": "f", "description": "d" * 1_000_000}],
        "tools_too_large",
    ),
    "depth 40": ([_tool(**_deep(40))], "schema_too_deep"),
    "depth 400": ([_tool(**_deep(400))], "schema_too_deep"),
    "$ref cycle": ([_tool(**{"$ref": "#"})], "unsupported_schema"),
    "huge pattern": (
        [_tool(type="object", properties={"a": {"type": "string", "pattern": "(" * 60_000}})],
        "schema_too_complex",
    ),
    "huge enum": (
        [_tool(type="object", properties={"a": {"enum": list(range(5000))}})],
        "schema_too_complex",
    ),
    "minLength bomb": (
        [_tool(type="object", properties={"a": {"type": "string", "minLength": 100_000_000}})],
        "schema_too_complex",
    ),
    "maxItems bomb": ([_tool(type="array", maxItems=10**9)], "schema_too_complex"),
    "nested quantifiers": (
        [_tool(type="object", properties={"a": {"type": "string", "pattern": NESTED}})],
        "schema_too_complex",
    ),
    "many long strings": (
        [
            _tool(
                type="object",
                properties={f"p{i}": {"type": "string", "maxLength": 8000} for i in range(20)},
            )
        ],
        "schema_too_complex",
    ),
    "long strings across tools": (
        [
            _tool(f"f{i}", type="object", properties={"a": {"type": "string", "maxLength": 8000}})
            for i in range(20)
        ],
        "schema_too_complex",
    ),
    "bogus type": ([_tool(type="bogus")], "invalid_schema"),
    "broken pattern": (
        [_tool(type="object", properties={"a": {"type": "string", "pattern": "[a-"}})],
        "invalid_schema",
    ),
    "name with newline": ([_tool("a\nb")], None),
    "name with quote": ([_tool('a"b')], None),
    "name with tag": ([_tool("</tool>")], None),
    "empty name": ([_tool("")], None),
    "duplicate names": ([_tool("f"), _tool("f")], None),
    "not an object": (["f"], None),
    "grammar with %ignore": (
        [
            {
                "type": "custom",
                "name": "c",
                "format": {
                    "type": "grammar",
                    "syntax": "lark",
                    "definition": 'start: "a"\n%ignore " "',
                },
            }
        ],
        "unsupported_grammar",
    ),
    "regex with lookahead": (
        [
            {
                "type": "custom",
                "name": "c",
                "format": {"type": "grammar", "syntax": "regex", "definition": "a(?=b)"},
            }
        ],
        "unsupported_grammar",
    ),
    "namespace without tools": ([{"type": "namespace", "name": "n", "tools": []}], None),
    "schema not an object": ([{"type": "function", "name": "f", "parameters": [1]}], None),
}


@pytest.mark.parametrize(("tools", "code"), TOOLS.values(), ids=TOOLS.keys())
async def test_bad_tools_are_400(
    client: httpx.AsyncClient, tools: list[dict[str, Any]], code: str | None
) -> None:
    body = {"input": "hi", "tools": tools}
    check_400(await client.post("/v1/responses", json=body, headers=AUTH), code)
    chat = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    check_400(await client.post("/v1/chat/completions", json=chat, headers=AUTH), code)


@pytest.mark.parametrize(
    ("schema", "code"),
    [
        (_deep(40), "schema_too_deep"),
        ({"$ref": "#"}, "unsupported_schema"),
        ({"type": "string", "pattern": "(" * 60_000}, "schema_too_complex"),
        ({"type": "string", "minLength": 100_000_000}, "schema_too_complex"),
        ({"type": "bogus"}, "invalid_schema"),
        ({"type": "string", "pattern": "[a-"}, "invalid_schema"),
    ],
)
async def test_bad_text_format_schema_is_400(
    client: httpx.AsyncClient, schema: dict[str, Any], code: str
) -> None:
    fmt = {"type": "json_schema", "name": "out", "schema": schema}
    body = {"input": "hi", "text": {"format": fmt}}
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    assert check_400(resp, code)["param"] == "text.format.schema"


async def test_unknown_text_format_type_is_400(client: httpx.AsyncClient) -> None:
    body = {"input": "hi", "text": {"format": {"type": "yaml"}}}
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    assert check_400(resp)["param"] == "text.format.type"


@pytest.mark.parametrize("json_schema", ["x", 1, ["schema"]])
async def test_chat_json_schema_not_an_object_is_400(
    client: httpx.AsyncClient, json_schema: Any
) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": json_schema},
    }
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert check_400(resp)["param"] == "response_format.json_schema"


@pytest.mark.parametrize(
    "choice",
    ["sometimes", {"type": "function", "name": "missing"}, "required", {"type": "allowed_tools"}],
)
async def test_bad_tool_choice_is_400(client: httpx.AsyncClient, choice: Any) -> None:
    tools = [_tool("f")] if choice != "required" else []
    body = {"input": "hi", "tools": tools, "tool_choice": choice}
    check_400(await client.post("/v1/responses", json=body, headers=AUTH))


# -- metadata ----------------------------------------------------------------------------------

METADATA = {
    "17 pairs": {f"k{i}": "v" for i in range(17)},
    "65-char key": {"k" * 65: "v"},
    "513-char value": {"k": "v" * 513},
    "non-string value": {"k": 1},
    "not an object": ["k", "v"],
}


@pytest.mark.parametrize("metadata", METADATA.values(), ids=METADATA.keys())
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/conversations"])
async def test_bad_metadata_is_400(client: httpx.AsyncClient, path: str, metadata: Any) -> None:
    error = check_400(
        await client.post(path, json={"input": "hi", "metadata": metadata}, headers=AUTH)
    )
    assert error["param"].startswith("metadata")


# -- SSE injection and templates ---------------------------------------------------------------


async def test_model_text_cannot_forge_sse_events(client: httpx.AsyncClient) -> None:
    body = {"model": "inject", "input": "hi", "stream": True}
    resp = await client.post("/v1/responses", json=body, headers=AUTH)
    assert resp.status_code == 200
    frames = [f for f in resp.text.split("\n\n") if f]
    text = ""
    for frame in frames:
        lines = frame.split("\n")
        assert len(lines) == 2, frame
        event, data = lines
        payload = json.loads(data.removeprefix("data: "))
        assert event == f"event: {payload['type']}"
        if payload["type"] == "response.output_text.delta":
            text += payload["delta"]
    assert text == INJECTION
    terminals = [f for f in frames if f.startswith("event: response.completed")]
    assert len(terminals) == 1


@pytest.mark.parametrize("model", ["evil", "loop"])
async def test_hostile_chat_templates_are_refused(client: httpx.AsyncClient, model: str) -> None:
    resp = await client.post("/v1/responses", json={"model": model, "input": "hi"}, headers=AUTH)
    check_400(resp, "template_error")
    await still_serving(client)


# -- uploads -----------------------------------------------------------------------------------


async def test_upload_at_the_limit_and_one_past(client: httpx.AsyncClient) -> None:
    ok = await client.post("/embed", files={"file": ("a.txt", b"a" * 1000)}, headers=AUTH)
    assert ok.status_code == 200
    over = await client.post("/embed", files={"file": ("a.txt", b"a" * 1001)}, headers=AUTH)
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "a\x00b.txt", "a\r\nX-Injected: 1.txt", "/abs/path.txt"]
)
async def test_upload_filenames_are_never_paths(client: httpx.AsyncClient, filename: str) -> None:
    resp = await client.post("/embed", files={"file": (filename, b"hello")}, headers=AUTH)
    assert resp.status_code in (200, 400)
    assert "x-injected" not in resp.headers
    assert "etc/passwd" not in resp.text


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe",
        "\ufeffhello".encode("utf-16"),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n\x00\x00",
        b"\x00" * 64 + b"text",
        b"",
        b" \n\t ",
    ],
    ids=["ff-fe", "utf-16", "pdf", "nul-heavy", "empty", "whitespace"],
)
async def test_bad_upload_content_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    resp = await client.post("/embed", files={"file": ("a.txt", content)}, headers=AUTH)
    check_400(resp)


async def test_multipart_with_a_thousand_parts_is_4xx(client: httpx.AsyncClient) -> None:
    boundary = "b0undary"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'
        for i in range(1000)
    )
    body = (parts + f"--{boundary}--\r\n").encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = await client.post("/embed", content=body, headers=headers)
    assert 400 <= resp.status_code < 500


async def test_multipart_with_huge_part_headers_is_4xx(client: httpx.AsyncClient) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        f"X-Junk: {'j' * 200_000}\r\n\r\nhello\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = await client.post("/embed", content=body, headers=headers)
    assert 400 <= resp.status_code < 500
