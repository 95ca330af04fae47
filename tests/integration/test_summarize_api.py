"""``POST /summarize`` through the app: Gemini via the real ``google-genai`` SDK against a local
fake endpoint, upload checks, personas, cache, and the status of every failure."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from egemma.engines.gemini import GeminiBackend
from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes import gemini_server as gs
from tests.fakes.gemini_server import FakeGemini
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio

GEMINI = "gemini-2.5-flash"
SOURCE = b'"""Tools."""\n\ndef add(a: int, b: int) -> int:\n    return a + b\n'


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def settings(fake: FakeGemini) -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        SUMMARIZE_RATE_LIMIT_CALLS=1000,
        MAX_FILE_SIZE_BYTES=4096,
        GEMINI_API_KEY="gemini-test-key",
        GEMINI_BASE_URL=fake.base_url,
        GEMINI_API_TIMEOUT=10,
    )


@pytest.fixture
def engines(settings: Settings) -> Iterator[Engines]:
    engines = Engines(gemini=GeminiBackend(settings.gemini))
    engines.capability("gemini").status = "loaded"
    yield engines
    engines.close()


async def _post(
    client: httpx.AsyncClient,
    content: bytes = SOURCE,
    filename: str = "tools.py",
    **form: str,
) -> httpx.Response:
    data = {"model_name": GEMINI, **form}
    return await client.post(
        "/summarize", files={"file": (filename, content)}, data=data, headers=AUTH
    )


async def test_gemini_summary_and_request_sent(client: httpx.AsyncClient, fake: FakeGemini) -> None:
    fake.script(gs.success("Adds two integers."))
    r = await _post(client, max_tokens="120", temperature="0.2", goal="find the math helpers")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "language": "Python",
        "summary": "Adds two integers.",
        "model": GEMINI,
        "cached": False,
        "chunks": 1,
    }
    [sent] = fake.received
    assert sent.path.endswith(f"models/{GEMINI}:generateContent")
    assert sent.headers.get("x-goog-api-key") == "gemini-test-key"
    system = sent.body["systemInstruction"]["parts"][0]["text"]
    assert system.startswith("# Developer")
    assert "reading a Python file" in system
    assert "about 120 tokens" in system
    assert "find the math helpers" in system
    user = sent.body["contents"][0]["parts"][0]["text"]
    assert user == "Here is the Python content:\n\n" + SOURCE.decode()
    config = sent.body["generationConfig"]
    assert config["maxOutputTokens"] == 120
    assert config["temperature"] == pytest.approx(0.2)
    assert "safetySettings" not in sent.body
    # 2.5 Flash would spend max_tokens on thinking: it is turned off for summaries.
    assert list(config["thinkingConfig"].values()) == [0]


async def test_other_models_keep_their_thinking_default(
    client: httpx.AsyncClient, fake: FakeGemini
) -> None:
    r = await _post(client, model_name="gemini-2.5-pro")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "gemini-2.5-pro"
    assert fake.received[0].path.endswith("models/gemini-2.5-pro:generateContent")
    assert "thinkingConfig" not in fake.received[0].body["generationConfig"]


async def test_slow_gemini_is_a_502_timeout(settings: Settings, fake: FakeGemini) -> None:
    slow = settings.gemini.model_copy(update={"api_timeout": 1.0})
    backend = GeminiBackend(slow)
    fake.script(gs.Reply(body=gs.success().body, delay=3.0))
    from egemma.engines.gemini import GeminiRequest
    from egemma.errors import UpstreamError

    with pytest.raises(UpstreamError) as info:
        await backend.generate(GeminiRequest(GEMINI, "s", "u", 10, 0.0))
    backend.close()
    assert (info.value.status_code, info.value.code) == (502, "upstream_timeout")


async def test_safety_settings_when_asked(client: httpx.AsyncClient, fake: FakeGemini) -> None:
    r = await _post(client, enable_safety="true")
    assert r.status_code == 200, r.text
    settings = fake.received[0].body["safetySettings"]
    assert {s["category"] for s in settings} == {
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    }
    assert {s["threshold"] for s in settings} == {"BLOCK_LOW_AND_ABOVE"}


async def test_cache_hit_makes_no_call(client: httpx.AsyncClient, fake: FakeGemini) -> None:
    first = await _post(client)
    second = await _post(client)
    assert first.status_code == second.status_code == 200
    assert (first.json()["cached"], second.json()["cached"]) == (False, True)
    assert first.json()["summary"] == second.json()["summary"]
    assert len(fake.received) == 1
    # Any parameter change is a different entry.
    await _post(client, temperature="0.1")
    await _post(client, persona="sdet")
    await _post(client, enable_safety="true")
    assert len(fake.received) == 4


async def test_cache_survives_restart_on_disk(settings: Settings, fake: FakeGemini) -> None:
    from asgi_lifespan import LifespanManager

    from egemma.app import create_app

    for expected in (False, True):
        engines = Engines(gemini=GeminiBackend(settings.gemini))
        app = create_app(settings, engines=engines)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                r = await _post(http)
        engines.close()
        assert r.json()["cached"] is expected
    assert len(fake.received) == 1


async def test_quota_is_429_with_retry_after_and_not_cached(
    client: httpx.AsyncClient, fake: FakeGemini
) -> None:
    fake.script(gs.quota("38.4s"))
    r = await _post(client)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "39"
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error"
    match = re.search(r"Try again in (\d+) seconds", error["message"])
    assert match
    assert match.group(1) == "39"
    ok = await _post(client)
    assert ok.status_code == 200
    assert ok.json()["cached"] is False
    assert len(fake.received) == 2


async def test_quota_without_retry_info_still_has_retry_after(
    client: httpx.AsyncClient, fake: FakeGemini
) -> None:
    fake.script(gs.quota(None))
    r = await _post(client)
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (gs.overloaded(), 503, "upstream_overloaded"),
        (gs.prompt_blocked(), 502, "upstream_blocked"),
        (gs.finish_safety(), 502, "upstream_blocked"),
        (gs.no_candidates(), 502, "upstream_empty"),
        (gs.bad_request(), 502, "upstream_error"),
    ],
)
async def test_upstream_failures_have_real_statuses(
    client: httpx.AsyncClient, fake: FakeGemini, reply: gs.Reply, status: int, code: str
) -> None:
    fake.script(reply)
    r = await _post(client)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "summary" not in r.json()
    if status == 503:
        assert int(r.headers["Retry-After"]) >= 1
    # Never cached: the next identical request reaches Gemini again.
    assert (await _post(client)).json()["cached"] is False
    assert len(fake.received) == 2


async def test_unknown_persona_lists_available_without_a_call(
    client: httpx.AsyncClient, fake: FakeGemini
) -> None:
    for name in ("nope", "../etc/passwd", "GOOD", "good.md", "developer\x00"):
        r = await _post(client, persona=name)
        assert r.status_code == 400, name
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("unknown_persona", "persona")
        assert "developer" in error["message"]
        assert "assistant" in error["message"]
        assert "/personas" not in error["message"]
    assert fake.received == []


async def test_markdown_defaults_to_assistant_and_docs_names_work_for_code(
    client: httpx.AsyncClient, fake: FakeGemini
) -> None:
    r = await _post(client, b"# Title\n\nSome prose.\n", "README.md")
    assert r.json()["language"] == "Markdown"
    assert fake.received[0].body["systemInstruction"]["parts"][0]["text"].startswith("# Assistant")
    r = await _post(client, persona="query_analyst")
    assert r.status_code == 200, r.text


async def test_log_files_are_condensed(client: httpx.AsyncClient, fake: FakeGemini) -> None:
    lines = [f"[2024-05-01 10:00:{i:02d}] INFO heartbeat ok id={i}" for i in range(20)]
    lines.insert(5, "[2024-05-01 10:00:05] ERROR disk full")
    r = await _post(client, "\n".join(lines).encode(), "server.log")
    assert r.status_code == 200
    assert r.json()["language"] == "Log File"
    user = fake.received[0].body["contents"][0]["parts"][0]["text"]
    assert "(Repeated 20 times between 2024-05-01 10:00:00 and 2024-05-01 10:00:19)" in user
    assert "ERROR disk full" in user
    assert user.count("heartbeat") == 1


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"\x00\x01\x02binary\x00", 400, "binary_file"),
        (b"%PDF-1.7\n\x01\x02\x03\x04\x05\x06\x07\x0e\x0f\x10", 400, "binary_file"),
        (b"\xff\xfeh\x00i\x00", 400, "binary_file"),
        (b"caf\xe9 au lait", 400, "invalid_encoding"),
        (b"", 400, "empty_input"),
        (b"  \n\t \n", 400, "empty_input"),
        (b"x" * 4097, 413, "payload_too_large"),
    ],
)
async def test_bad_uploads(
    client: httpx.AsyncClient, fake: FakeGemini, content: bytes, status: int, code: str
) -> None:
    r = await _post(client, content)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert fake.received == []


async def test_size_limit_is_inclusive_and_filename_never_a_path(
    client: httpx.AsyncClient,
) -> None:
    r = await _post(client, b"x" * 4096, "../../etc/passwd.py")
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "Python"
    r = await _post(client, b"hello", "notes.unknownext")
    assert r.json()["language"] == "code"


@pytest.mark.parametrize(
    "form",
    [
        {"max_tokens": "0"},
        {"max_tokens": "-1"},
        {"max_tokens": "1.5"},
        {"temperature": "nan"},
        {"temperature": "inf"},
        {"temperature": "3"},
        {"goal": "g" * 4001},
    ],
)
async def test_bad_parameters_are_400(client: httpx.AsyncClient, form: dict[str, str]) -> None:
    r = await _post(client, **form)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_requires_key(client: httpx.AsyncClient) -> None:
    r = await client.post("/summarize", files={"file": ("a.py", SOURCE)})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("env", "form", "status", "code"),
    [
        ({"SUMMARY_LOCAL_ENABLED": "false"}, {}, 400, "local_summarization_disabled"),
        ({}, {}, 503, "model_not_loaded"),
        # No Gemini key: the local model answers, so it being absent is a 503 …
        ({}, {"model_name": "gemini-2.5-pro"}, 503, "model_not_loaded"),
        # … and with local summaries off, Gemini not being configured is the answer.
        (
            {"SUMMARY_LOCAL_ENABLED": "false"},
            {"model_name": "gemini-2.5-pro"},
            400,
            "gemini_not_configured",
        ),
    ],
)
async def test_unavailable_backends(
    env: dict[str, str], form: dict[str, str], status: int, code: str
) -> None:
    from asgi_lifespan import LifespanManager

    from egemma.app import create_app

    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, **env)
    app = create_app(settings, engines=Engines())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.post(
                "/summarize", files={"file": ("a.py", SOURCE)}, data=form, headers=AUTH
            )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    if code == "local_summarization_disabled":
        assert r.json()["error"]["message"] == (
            "Local summarization is disabled. Please specify a Gemini model "
            "(e.g., model_name='gemini-2.5-flash')."
        )
    if status == 503:
        assert "Retry-After" in r.headers


async def test_rate_limit_phrase(fake: FakeGemini) -> None:
    from asgi_lifespan import LifespanManager

    from egemma.app import create_app

    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY, GEMINI_API_KEY="k", GEMINI_BASE_URL=fake.base_url
    )
    engines = Engines(gemini=GeminiBackend(settings.gemini))
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            codes = [(await _post(http)).status_code for _ in range(3)]
            r = await _post(http)
    engines.close()
    assert codes == [200, 200, 429]
    assert re.search(r"Try again in \d+ seconds", r.json()["error"]["message"])
    assert int(r.headers["Retry-After"]) >= 1


def test_real_server_on_loopback(live_server: LiveServer, fake: FakeGemini) -> None:
    fake.script(gs.success("Loopback summary."), gs.quota("7s"))
    with httpx.Client(base_url=live_server.base_url, headers=AUTH, timeout=30) as http:
        ok = http.post(
            "/summarize", files={"file": ("a.go", b"package main\n")}, data={"model_name": GEMINI}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["language"] == "Go"
        assert ok.json()["summary"] == "Loopback summary."
        limited = http.post(
            "/summarize", files={"file": ("b.go", b"package b\n")}, data={"model_name": GEMINI}
        )
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
        assert "X-Request-Id" in limited.headers


@pytest.mark.parametrize("filename", ["a\x00.py", "a\r\nX-Evil: 1.py", "../../../../etc/passwd"])
async def test_hostile_filenames_are_only_names(client: httpx.AsyncClient, filename: str) -> None:
    r = await _post(client, SOURCE, filename)
    assert r.status_code == 200, r.text
    assert r.json()["language"] in {"Python", "code"}
    assert "X-Evil" not in r.headers


async def test_too_many_multipart_parts_is_400(client: httpx.AsyncClient) -> None:
    fields = [(f"f{i}", "x") for i in range(1001)]
    r = await client.post(
        "/summarize", files={"file": ("a.py", SOURCE)}, data=dict(fields), headers=AUTH
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
