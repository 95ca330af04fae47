"""Authentication through the app in-process and on a real Hypercorn."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute

from egemma.app import create_app
from tests.conftest import AUTH, TEST_KEY
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


def test_every_non_public_route_requires_the_key(settings: object, engines: object) -> None:
    """Built from the route table, so a new router cannot ship unauthenticated."""
    app = create_app(settings, engines=engines)  # type: ignore[arg-type]
    server = LiveServer(app)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url) as http:
            for route in app.routes:
                if not isinstance(route, APIRoute) or route.path in PUBLIC:
                    continue
                path = route.path.replace("{", "x").replace("}", "")
                for method in route.methods:
                    _check_401(http.request(method, path))
                    _check_401(http.request(method, path, headers={"Authorization": "Bearer no"}))
            for tricky in ("/v1/models/", "//v1/models", "/v1/../v1/models", "/v1%2Fmodels"):
                resp = http.get(tricky)
                assert resp.status_code in (401, 404), tricky
                assert resp.status_code != 200
    finally:
        server.stop()


def test_real_server_auth(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        _check_401(http.get("/v1/models"))
        ok = http.get("/v1/models", headers=AUTH)
        assert ok.status_code == 200
        assert ok.json()["object"] == "list"
        assert ok.headers["x-request-id"].startswith("req_")
