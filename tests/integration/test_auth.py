"""Authentication through the app in-process and on a real Hypercorn."""

from __future__ import annotations

import socket

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute

from egemma.app import create_app
from egemma.runtime import Engines
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.servers import LiveServer

PUBLIC = {"/", "/docs", "/openapi.json", "/health", "/ready", "/rate-limits", "/metrics"}

BAD_HEADERS = [
    None,
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Basic {TEST_KEY}",
    f"Bearer {TEST_KEY}\x00",
    f"Bearer {TEST_KEY.upper()}",
    f"Bearer {TEST_KEY[:-1]}",
    f"Bearer {TEST_KEY}x",
    f"Token {TEST_KEY}",
]


def _check_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"
    assert TEST_KEY not in resp.text


@pytest.mark.anyio
@pytest.mark.parametrize("header", BAD_HEADERS)
async def test_bad_credentials_are_401(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    try:
        resp = await client.get("/v1/models", headers=headers)
    except (httpx.LocalProtocolError, ValueError):
        pytest.skip("client refuses to send this header")
    _check_401(resp)


@pytest.mark.anyio
async def test_key_in_query_is_not_accepted(client: httpx.AsyncClient) -> None:
    _check_401(await client.get(f"/v1/models?api_key={TEST_KEY}"))


@pytest.mark.anyio
@pytest.mark.parametrize("header", [f"bearer {TEST_KEY}", f"  Bearer   {TEST_KEY}  "])
async def test_lenient_scheme_case_and_whitespace(client: httpx.AsyncClient, header: str) -> None:
    resp = await client.get("/v1/models", headers={"Authorization": header})
    assert resp.status_code == 200


@pytest.mark.anyio
async def test_public_routes_need_no_key(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/rate-limits", "/openapi.json", "/docs"):
        resp = await client.get(path)
        assert resp.status_code in (200, 503), path
    assert (await client.get("/")).status_code == 307


def route_table(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path template, methods) of every route, including routers FastAPI mounts lazily."""
    table: list[tuple[str, set[str]]] = []
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for item in contexts() if contexts else [route]:
            if isinstance(item, WebSocketRoute | APIWebSocketRoute) or (
                not getattr(item, "methods", None) and not getattr(item, "path_format", "")
            ):
                continue  # a WebSocket route; its upgrade's auth: tests/e2e/test_responses_ws.py
            path = getattr(item, "path_format", "") or getattr(item, "path", "")
            table.append((path, set(getattr(item, "methods", None) or ())))
    return table


def _raw_status(port: int, method: str, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def _variants(path: str) -> list[str]:
    """The path as a prefix-scoped guard might miss it (vLLM #18893, #42591, #58144)."""
    head, _, tail = path.lstrip("/").partition("/")
    out = [path + "/", "/" + path, f"/{head}/../{head}/{tail}" if tail else "/./" + head]
    if tail:
        out += [f"/{head}%2F{tail}", f"/{head}%2f{tail}"]
    return out


def test_every_non_public_route_requires_the_key(settings: object, engines: object) -> None:
    """Built from the route table, so a new router cannot ship unauthenticated."""
    app = create_app(settings, engines=engines)  # type: ignore[arg-type]
    table = route_table(app)
    protected = [(p, m) for p, m in table if p not in PUBLIC and not p.startswith("/docs")]
    assert len(protected) >= 20, "the route table looks empty"
    assert {p for p, _ in table} >= {"/v1/responses", "/v1/conversations", "/embed"}
    server = LiveServer(app)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url) as http:
            for route_path, methods in protected:
                path = route_path.replace("{", "x").replace("}", "")
                for method in sorted(methods | {"HEAD", "OPTIONS", "PUT", "PATCH"}):
                    for headers in ({}, {"Authorization": "Bearer no"}):
                        resp = http.request(method, path, headers=headers)
                        if method == "HEAD":  # no body to read
                            assert resp.status_code == 401, path
                            assert resp.headers["www-authenticate"] == "Bearer"
                        else:
                            _check_401(resp)
                for tricky in ("/./" + path.lstrip("/"), path.replace("/", "/x/../", 1)):
                    # Raw: HTTP clients normalise dot segments before sending.
                    for method in sorted(methods):
                        assert _raw_status(server.port, method, tricky) in (401, 404), tricky
                for tricky in _variants(path):
                    for method in sorted(methods):
                        # A full URL, so the client keeps "//x" as a path, not a host.
                        resp = http.request(method, server.base_url + tricky)
                        assert resp.status_code in (401, 404), (method, tricky)
            for tricky in ("/v1/models/", "//v1/models", "/v1/../v1/models", "/v1%2Fmodels"):
                resp = http.get(tricky)
                assert resp.status_code in (401, 404), tricky
                assert resp.status_code != 200
    finally:
        server.stop()


def test_cors_is_off_by_default(live_server: LiveServer) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with httpx.Client(base_url=live_server.base_url) as http:
        resp = http.options("/v1/responses", headers=preflight)
        assert "access-control-allow-origin" not in resp.headers
        # A "simple" cross-origin POST (text/plain, no key) still needs the key.
        post = http.post(
            "/v1/responses",
            content=b'{"input":"hi"}',
            headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        _check_401(post)
        assert "access-control-allow-origin" not in post.headers


@pytest.mark.anyio
async def test_cors_allows_only_configured_origins() -> None:
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, CORS_ORIGINS="https://app.example")
    app = create_app(settings, engines=Engines())
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
                resp = await http.options(
                    "/v1/responses",
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization",
                    },
                )
                got = resp.headers.get("access-control-allow-origin")
                assert got == (origin if allowed else None)
                assert "*" not in (got or "")
            ok = await http.get("/v1/models", headers={**AUTH, "Origin": "https://app.example"})
            assert ok.headers["access-control-allow-origin"] == "https://app.example"


def test_real_server_auth(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        _check_401(http.get("/v1/models"))
        ok = http.get("/v1/models", headers=AUTH)
        assert ok.status_code == 200
        assert ok.json()["object"] == "list"
        assert ok.headers["x-request-id"].startswith("req_")


DUPLICATES = [
    [f"Bearer {TEST_KEY}", "Bearer wrong"],
    ["Bearer wrong", f"Bearer {TEST_KEY}"],
    [f"Bearer {TEST_KEY}", f"Bearer {TEST_KEY}"],
]


def test_two_authorization_headers_are_refused_on_every_protected_route(
    settings: object, engines: object
) -> None:
    """Issue 18 item 13: the first header alone used to decide; now any repeat is a 401, on the
    wire (httpx sends each tuple as its own header line) and on every protected route."""
    app = create_app(settings, engines=engines)  # type: ignore[arg-type]
    protected = [
        (p, m) for p, m in route_table(app) if p not in PUBLIC and not p.startswith("/docs")
    ]
    server = LiveServer(app)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url) as http:
            assert http.get("/v1/models", headers=AUTH).status_code == 200
            for route_path, methods in protected:
                path = route_path.replace("{", "x").replace("}", "")
                for method in sorted(methods | {"PUT"}):  # PUT: routing's 405 path
                    for values in DUPLICATES:
                        headers = [("Authorization", v) for v in values]
                        resp = http.request(method, path, headers=headers)
                        _check_401(resp)
                        if method in methods - {"HEAD"}:
                            assert "exactly one" in resp.json()["error"]["message"]
    finally:
        server.stop()
