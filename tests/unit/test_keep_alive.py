"""``keep_alive`` parsing and what the registry does with it; a load outlives a waiter that
leaves. Fake engines: these are the registry's rules, the e2e tests run them on real models."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from egemma.errors import InvalidRequestError, UnavailableError
from egemma.services.models.keep_alive import parse_keep_alive
from egemma.services.models.registry import GIB, ModelEntry, ModelRegistry

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (" 10M ", 600.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-5m", math.inf),
    ],
)
def test_accepted_values(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "",
        "soon",
        "5 minutes",
        "5d",
        "m",
        "1h-5m",
        "--1",
        "nan",
        "inf",
        [5],
        {"s": 1},
        float("nan"),
        float("inf"),
        31 * 86_400,
        "800h",
    ],
)
def test_rejected_values_are_400_naming_the_field(value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_keep_alive(value)
    assert caught.value.param == "keep_alive"
    assert caught.value.code == "invalid_keep_alive"
    assert caught.value.status_code == 400


class FakeEngine:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def entry(model_id: str = "m", load: Any = FakeEngine) -> ModelEntry:
    return ModelEntry(id=model_id, kind="chat", path="/m.gguf", estimate=GIB, load=load)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def wait_for_state(e: ModelEntry, state: str, seconds: float = 5.0) -> bool:
    """Poll: the registry has no event to wait on for a state (the reaper is a timer)."""
    deadline = time.monotonic() + seconds
    while e.state != state and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return e.state == state


def test_zero_unloads_as_soon_as_the_last_user_leaves() -> None:
    async def scenario() -> None:
        reg = ModelRegistry(8 * GIB, 0.0, 5.0)  # MODEL_IDLE_TTL=0: never, unless told
        e = reg.add(entry())
        await reg.use(e)
        await reg.use(e)
        reg.release(e, 0.0)
        await asyncio.sleep(0.1)
        assert e.state == "loaded"  # another request still uses it
        reg.release(e, 0.0)
        assert await wait_for_state(e, "configured")
        assert reg.unloads == 1

    run(scenario())


def test_forever_outlives_the_idle_ttl_and_the_next_request_resets_it() -> None:
    async def scenario() -> None:
        reg = ModelRegistry(8 * GIB, 0.2, 5.0)
        reg.start()
        try:
            e = reg.add(entry())
            await reg.use(e)
            reg.release(e, math.inf)
            assert e.describe()["keep_alive"] == -1.0
            await asyncio.sleep(0.8)
            assert e.state == "loaded"
            await reg.use(e)
            reg.release(e, None)  # a request without keep_alive: MODEL_IDLE_TTL again
            assert await wait_for_state(e, "configured")
        finally:
            await reg.aclose()

    run(scenario())


def test_a_load_runs_to_its_end_when_its_waiter_leaves() -> None:
    gate = threading.Event()

    def slow_load() -> FakeEngine:
        gate.wait(10)
        return FakeEngine()

    async def scenario() -> None:
        reg = ModelRegistry(8 * GIB, 0.0, 5.0)
        e = reg.add(entry(load=slow_load))
        waiter = asyncio.create_task(reg.use(e))
        assert await wait_for_state(e, "loading")
        waiter.cancel()
        await asyncio.sleep(0.05)
        assert e.users == 0  # the waiter is gone, the load goes on
        gate.set()
        assert await wait_for_state(e, "loaded")
        assert not reg._lock.locked()
        await reg.use(e)  # the next request finds it loaded; nothing waits on a stale lock
        assert reg.loads == 1

    run(scenario())


def test_a_use_that_never_ran_leaves_keep_alive_as_it_was() -> None:
    def broken() -> FakeEngine:
        raise OSError("weights gone")

    async def scenario() -> None:
        reg = ModelRegistry(8 * GIB, 0.0, 5.0)
        e = reg.add(entry(load=broken))
        e.keep_alive = math.inf
        with pytest.raises(UnavailableError) as caught:
            await reg.use(e)
        assert caught.value.code == "model_load_failed"
        assert (e.state, e.users, e.keep_alive) == ("error", 0, math.inf)

    run(scenario())
