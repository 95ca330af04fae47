"""The worker pool: pathological inputs end in a clean error and the pool keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from egemma.services.ast import (
    AstLimits,
    AstService,
    AstSourceError,
    AstSourceTooLargeError,
    UnsupportedLanguageError,
)

SMALL = b"def f(a: int = 1) -> int:\n    return a\n"
# ~250 KB of ordinary code: ~85 MB peak and about a second to parse on CPython 3.11.
BIG = "".join(
    f"def f{i}(a, b=1):\n    return a.b(c) + [x for x in range({i})]\n" for i in range(4000)
).encode()


@pytest.fixture(scope="module")
def service() -> Iterator[AstService]:
    svc = AstService(AstLimits(workers=2, timeout_seconds=20))
    yield svc
    svc.close()


def _ok(service: AstService) -> None:
    assert service.parse_sync(SMALL, "python")["functions"][0]["name"] == "f"


@pytest.mark.parametrize(
    "source",
    [
        b"-" * 100000 + b"1",  # MemoryError in the parser stack
        b"a" + b".b" * 100000,  # RecursionError building the AST
        b"1" + b"+1" * 100000,  # RecursionError
        b"(" * 201,  # too many nested parentheses
        b"if 1:\n" + b"".join(b" " * i + b"if 1:\n" for i in range(1, 101)),  # IndentationError
        b"x = 1\x00",  # NUL
        b"x = " + b"9" * 5000,  # 5,000-digit int
    ],
    ids=["minus", "attr-chain", "plus-chain", "parens", "indent", "nul", "bigint"],
)
def test_pathological_python_is_a_clean_error(service: AstService, source: bytes) -> None:
    with pytest.raises(AstSourceError):
        service.parse_sync(source, "python")
    _ok(service)


def test_syntax_error_carries_position(service: AstService) -> None:
    with pytest.raises(AstSourceError) as info:
        service.parse_sync(b"def f(:\n  pass\n", "python")
    assert (info.value.line, info.value.column) == (1, 7)


def test_invalid_utf8_is_an_error_with_position(service: AstService) -> None:
    with pytest.raises(AstSourceError) as info:
        service.parse_sync(b"x = 1\ny = 'caf\xe9'\n", "python")
    assert (info.value.line, info.value.column) == (2, 9)


def test_bom_is_accepted(service: AstService) -> None:
    assert service.parse_sync(b"\xef\xbb\xbf" + SMALL, "python")["exports"] == ["f"]


def test_size_cap() -> None:
    svc = AstService(AstLimits(max_source_bytes=16))
    try:
        assert svc.parse_sync(b"x = 1\n" * 2 + b"y=1", "python")["imports"] == []
        with pytest.raises(AstSourceTooLargeError):
            svc.parse_sync(b"x = 1\n" * 3, "python")
    finally:
        svc.close()


def test_unsupported_language(service: AstService) -> None:
    with pytest.raises(UnsupportedLanguageError, match="cobol"):
        service.parse_sync(b"x", "cobol")


def test_timeout_kills_worker_and_pool_recovers() -> None:
    svc = AstService(AstLimits(workers=1, timeout_seconds=0.05))
    try:
        with pytest.raises(AstSourceError, match="longer than"):
            svc.parse_sync(BIG, "python")
    finally:
        svc.close()
    svc = AstService(AstLimits(workers=1, timeout_seconds=20))
    try:
        _ok(svc)
    finally:
        svc.close()


def test_memory_limit_is_a_clean_error_and_pool_recovers() -> None:
    svc = AstService(AstLimits(workers=1, memory_bytes=48 * 1024 * 1024, timeout_seconds=20))
    try:
        with pytest.raises(AstSourceError):
            svc.parse_sync(BIG, "python")
        _ok(svc)
    finally:
        svc.close()


def test_big_file_within_limits_parses(service: AstService) -> None:
    assert len(service.parse_sync(BIG, "python")["functions"]) == 4000


@pytest.mark.anyio
async def test_async_parse(service: AstService) -> None:
    result = await service.parse(SMALL, "Python")
    assert result["language"] == "python"


def test_closed_service_refuses() -> None:
    svc = AstService(AstLimits(workers=1))
    svc.close()
    with pytest.raises(RuntimeError):
        svc.parse_sync(SMALL, "python")


def test_concurrent_parses_share_the_pool(service: AstService) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sources = [f"def f{i}():\n    return {i}\n".encode() for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda s: service.parse_sync(s, "python"), sources))
    assert [r["exports"] for r in results] == [[f"f{i}"] for i in range(8)]


def test_worker_environment_carries_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers get a minimal environment: keys in the server's environment stay there."""
    monkeypatch.setenv("WORKBENCH_API_KEY", "sentinel-key")
    svc = AstService(AstLimits(workers=1))
    try:
        _ok(svc)
        proc = svc._all[0]._proc
        assert proc is not None
        environ = Path(f"/proc/{proc.pid}/environ")
        if environ.exists():
            assert b"sentinel-key" not in environ.read_bytes()
    finally:
        svc.close()


@pytest.mark.anyio
async def test_waiting_for_a_worker_holds_no_shared_thread() -> None:
    """Uploads waiting for a busy worker wait on the event loop: the default thread pool (the
    store's, the tokenizer's) stays free however many wait."""
    import anyio
    import anyio.to_thread

    exports = "".join(f"export const a{i} = {i};\n" for i in range(20_000)).encode()
    svc = AstService(AstLimits(workers=1, timeout_seconds=60, max_source_bytes=2_000_000))
    shared = anyio.to_thread.current_default_thread_limiter()
    seen: list[float] = []
    try:
        async with anyio.create_task_group() as group:
            results: list[int] = []

            async def one() -> None:
                doc = await svc.parse(exports, "javascript")
                results.append(len(doc["exports"]))

            for _ in range(8):
                group.start_soon(one)
            await anyio.sleep(0.5)
            seen.append(shared.borrowed_tokens)
        assert results == [20_000] * 8
        assert seen == [0]
    finally:
        svc.close()


def test_empty_source_is_400(service: AstService) -> None:
    from egemma.errors import InvalidRequestError

    for empty in (b"", b"  \n", b"\xef\xbb\xbf"):
        with pytest.raises(InvalidRequestError) as info:
            service.parse_sync(empty, "python")
        assert info.value.code == "empty_input"
