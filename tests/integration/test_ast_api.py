"""``POST /parse-ast`` through the app: the original JSON, other languages, and clean 4xx errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ast"


async def _post(
    client: httpx.AsyncClient, data: bytes, language: str, name: str = "f.txt"
) -> httpx.Response:
    return await client.post(
        "/parse-ast",
        files={"file": (name, data, "text/plain")},
        data={"language": language},
        headers=AUTH,
    )


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.anyio
async def test_python_fixture_full_json(client: httpx.AsyncClient) -> None:
    source = (FIXTURES / "inventory.py.txt").read_bytes()
    resp = await _post(client, source, "python", "inventory.py")
    assert resp.status_code == 200
    expected = json.loads((FIXTURES / "inventory.expected.json").read_text())
    assert resp.json() == expected
    assert list(resp.json()) == list(expected)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("language", "fixture"),
    [
        ("javascript", "sample.js"),
        ("typescript", "sample.ts"),
        ("go", "sample.go"),
        ("rust", "sample.rs"),
        ("java", "Sample.java"),
    ],
)
async def test_other_languages(client: httpx.AsyncClient, language: str, fixture: str) -> None:
    resp = await _post(client, (FIXTURES / fixture).read_bytes(), language, fixture)
    assert resp.status_code == 200
    body = resp.json()
    assert body["language"] == language
    assert list(body) == [
        "language",
        "docstring",
        "imports",
        "imported_symbols",
        "functions",
        "classes",
        "exports",
    ]
    assert body["classes"] or body["functions"]


@pytest.mark.anyio
async def test_syntax_error_is_400_with_position(client: httpx.AsyncClient) -> None:
    resp = await _post(client, b"def f(:\n    pass\n", "python")
    assert resp.status_code == 400
    error = _error(resp)
    assert error["code"] == "syntax_error"
    assert error["param"] == "file"
    assert "line 1, column 7" in str(error["message"])


@pytest.mark.anyio
async def test_treesitter_syntax_error(client: httpx.AsyncClient) -> None:
    resp = await _post(client, b"package x\nfunc f() {", "go")
    assert resp.status_code == 400
    assert "line 2" in str(_error(resp)["message"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "source",
    [b"-" * 100000 + b"1", b"a" + b".b" * 100000, b"(" * 201, b"x\x00", b"caf\xe9 = 1"],
    ids=["memory", "recursion", "parens", "nul", "utf8"],
)
async def test_pathological_python_is_400_and_server_keeps_serving(
    client: httpx.AsyncClient, source: bytes
) -> None:
    resp = await _post(client, source, "python")
    assert resp.status_code == 400
    assert _error(resp)["type"] == "invalid_request_error"
    ok = await _post(client, b"import os\n", "python")
    assert ok.status_code == 200
    assert ok.json()["imports"] == ["os"]


@pytest.mark.anyio
async def test_unsupported_language_is_400(client: httpx.AsyncClient) -> None:
    resp = await _post(client, b"x", "cobol")
    assert resp.status_code == 400
    error = _error(resp)
    assert (error["param"], error["code"]) == ("language", "unsupported_language")
    assert "python" in str(error["message"])


@pytest.mark.anyio
async def test_size_cap_is_413(client: httpx.AsyncClient) -> None:
    resp = await _post(client, b"#" * (256 * 1024 + 1), "python")
    assert resp.status_code == 413
    assert _error(resp)["code"] == "payload_too_large"
    at_limit = await _post(client, b"#" * (256 * 1024), "python")
    assert at_limit.status_code == 200


@pytest.mark.anyio
async def test_missing_fields_are_400(client: httpx.AsyncClient) -> None:
    resp = await client.post("/parse-ast", data={"language": "python"}, headers=AUTH)
    assert resp.status_code == 400
    resp = await client.post("/parse-ast", files={"file": ("a.py", b"x=1")}, headers=AUTH)
    assert resp.status_code == 400


@pytest.mark.anyio
async def test_requires_key(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/parse-ast", files={"file": ("a.py", b"x = 1")}, data={"language": "python"}
    )
    assert resp.status_code == 401
