"""Named keys on a real Hypercorn on 127.0.0.1 with the real SQLite store (issue 18, item 16):
keys made with the ``egemma keys`` CLI, rows scoped to the key that made them (another key gets
the very 404 of a missing id), admins see all, a revoke takes effect without a restart, and
every key has its own rate-limit windows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from egemma.__main__ import main
from egemma.app import create_app
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.servers import LiveServer


def cli_add(capsys: pytest.CaptureFixture[str], name: str, *flags: str) -> dict[str, str]:
    assert main(["--env-file", "/nonexistent", "keys", "add", name, *flags]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("egk-")
    return {"Authorization": f"Bearer {key}"}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--env-file", "/nonexistent", "keys", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def server(clean_env: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    env: dict[str, Any] = getattr(request, "param", {})
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, DATA_DIR=str(clean_env), **env)
    live = LiveServer(create_app(settings, engines=fake_engines(FakeChatEngine("fake"))))
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


def _same_404(got: httpx.Response, missing: httpx.Response, real_id: str, fake_id: str) -> None:
    """Another key's row answers exactly like an id that never existed."""
    assert got.status_code == missing.status_code == 404, got.text
    assert _error(got) == {
        k: (v.replace(fake_id, real_id) if isinstance(v, str) else v)
        for k, v in _error(missing).items()
    }


def test_rows_are_scoped_to_their_key(
    server: LiveServer, capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    alice = cli_add(capsys, "alice")
    bob = cli_add(capsys, "bob")
    carol = cli_add(capsys, "carol", "--admin")
    keys_file = clean_env / "keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    for headers in (alice, bob, carol):
        assert headers["Authorization"].split()[1] not in keys_file.read_text()  # hashed at rest

    http = httpx.Client(base_url=server.base_url, timeout=30)
    resp = http.post("/v1/responses", json={"input": "hi"}, headers=alice).json()
    rid, out_item = resp["id"], resp["output"][0]["id"]
    conv = http.post(
        "/v1/conversations",
        json={"items": [{"role": "user", "content": "alice's secret", "id": "msg_alice1"}]},
        headers=alice,
    ).json()
    cid = conv["id"]
    follow = http.post(
        "/v1/responses", json={"input": "more", "previous_response_id": rid}, headers=alice
    )
    assert follow.status_code == 200

    fake_r, fake_c = "resp_" + "0" * 48, "conv_" + "0" * 48
    # Bob: every route answers as if the ids did not exist.
    for method, path in (
        ("GET", "/v1/responses/{r}"),
        ("DELETE", "/v1/responses/{r}"),
        ("GET", "/v1/responses/{r}/input_items"),
    ):
        _same_404(
            http.request(method, path.format(r=rid), headers=bob),
            http.request(method, path.format(r=fake_r), headers=bob),
            rid,
            fake_r,
        )
    for method, path, body in (
        ("GET", "/v1/conversations/{c}", None),
        ("POST", "/v1/conversations/{c}", {"metadata": {"k": "v"}}),
        ("DELETE", "/v1/conversations/{c}", None),
        ("GET", "/v1/conversations/{c}/items", None),
        ("POST", "/v1/conversations/{c}/items", {"items": [{"role": "user", "content": "x"}]}),
        ("GET", "/v1/conversations/{c}/items/msg_alice1", None),
        ("DELETE", "/v1/conversations/{c}/items/msg_alice1", None),
    ):
        _same_404(
            http.request(method, path.format(c=cid), json=body, headers=bob),
            http.request(method, path.format(c=fake_c), json=body, headers=bob),
            cid,
            fake_c,
        )
    for field, real, fake in (("previous_response_id", rid, fake_r), ("conversation", cid, fake_c)):
        _same_404(
            http.post("/v1/responses", json={"input": "x", field: real}, headers=bob),
            http.post("/v1/responses", json={"input": "x", field: fake}, headers=bob),
            real,
            fake,
        )
    _same_404(
        http.post(
            "/v1/responses/input_tokens",
            json={"input": "x", "previous_response_id": rid},
            headers=bob,
        ),
        http.post(
            "/v1/responses/input_tokens",
            json={"input": "x", "previous_response_id": fake_r},
            headers=bob,
        ),
        rid,
        fake_r,
    )
    assert (
        http.post(
            "/v1/responses/input_tokens",
            json={"input": "x", "previous_response_id": rid},
            headers=alice,
        ).status_code
        == 200
    )
    # An item reference cannot pull another key's item into a prompt.
    ref = http.post(
        "/v1/responses",
        json={"input": [{"type": "item_reference", "id": out_item}], "store": False},
        headers=bob,
    )
    missing_ref = http.post(
        "/v1/responses",
        json={"input": [{"type": "item_reference", "id": "msg_nope"}], "store": False},
        headers=bob,
    )
    assert ref.status_code == missing_ref.status_code != 200
    assert http.get("/v1/conversations", headers=bob).json()["data"] == []

    # Bob's attempts changed nothing; Alice still sees hers; both admins see everything.
    for who in (alice, AUTH, carol):
        assert http.get(f"/v1/responses/{rid}", headers=who).status_code == 200
        assert http.get(f"/v1/conversations/{cid}/items", headers=who).json()["data"]
        listed = {c["id"] for c in http.get("/v1/conversations", headers=who).json()["data"]}
        assert cid in listed
    assert http.get(f"/v1/conversations/{cid}", headers=alice).json()["metadata"] == {}

    # The official client sees the same 404 as for a missing id.
    sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key=bob["Authorization"][7:])
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(rid)

    # Revoked: the running server refuses the key at its next request.
    assert cli(capsys, "revoke", "alice")[0] == 0
    gone = http.get(f"/v1/responses/{rid}", headers=alice)
    assert gone.status_code == 401
    assert _error(gone)["code"] == "invalid_api_key"
    assert http.get(f"/v1/responses/{rid}", headers=carol).status_code == 200
    code, listing = cli(capsys, "list")
    assert code == 0
    assert "alice" not in listing
    assert "sha256" not in listing
    http.close()


@pytest.mark.parametrize("server", [{"CONVERSATION_RATE_LIMIT_CALLS": 3}], indirect=True)
def test_limits_are_per_key(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    dave = cli_add(capsys, "dave")
    erin = cli_add(capsys, "erin")
    fay = cli_add(capsys, "fay", "--limit", "conversation=1/3600")
    gus = cli_add(capsys, "gus", "--rpm", "5")
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        statuses = [http.get("/v1/conversations", headers=dave).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        # Dave's window is his alone: the others still have theirs.
        assert http.get("/v1/conversations", headers=erin).status_code == 200
        assert http.get("/v1/conversations", headers=AUTH).status_code == 200
        # A key's own limit replaces the configured one, lower or higher.
        fay_statuses = [http.get("/v1/conversations", headers=fay).status_code for _ in range(2)]
        assert fay_statuses == [200, 429]
        over = http.get("/v1/conversations", headers=fay)
        assert over.headers["Retry-After"]
        assert "Rate limit exceeded" in _error(over)["message"]
        gus_statuses = [http.get("/v1/conversations", headers=gus).status_code for _ in range(6)]
        assert gus_statuses == [200] * 5 + [429]


def test_cli_refuses_bad_names_and_duplicates(
    capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    cli_add(capsys, "alice")
    for args in (
        ("add", "alice"),
        ("add", "admin"),
        ("add", "bad name"),
        ("add", "x", "--limit", "nope=1/1"),
        ("revoke", "nobody"),
    ):
        code, out = cli(capsys, *args)
        assert code == 1, args
        assert out == ""
    names = [entry["name"] for entry in json.loads(cli(capsys, "list")[1])]
    assert names == ["admin", "alice"]
