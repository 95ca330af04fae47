"""Background mode with the shipped model through openai-python: poll to completed, cancel,
and resume a stream with ``starting_after`` (issue 13)."""

from __future__ import annotations

import time

import pytest
from openai import OpenAI

from tests.e2e.conftest import SMOL

pytestmark = pytest.mark.slow


def poll(oai: OpenAI, rid: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = oai.responses.retrieve(rid).status
        if status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.2)


def test_background_polls_to_completed(oai: OpenAI) -> None:
    created = oai.responses.create(
        model=SMOL, input="Say hello.", max_output_tokens=16, temperature=0, background=True
    )
    assert created.background is True
    assert created.status in ("queued", "in_progress")
    assert created.output == []
    assert poll(oai, created.id) in ("completed", "incomplete")
    done = oai.responses.retrieve(created.id)
    assert done.background is True
    assert done.output_text
    assert done.usage is not None
    assert done.usage.output_tokens > 0


def test_background_cancel(oai: OpenAI) -> None:
    created = oai.responses.create(
        model=SMOL,
        input="Write a very long story about the sea.",
        max_output_tokens=1500,
        background=True,
    )
    cancelled = oai.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    time.sleep(1.0)  # a generation still running would store itself as completed
    assert oai.responses.retrieve(created.id).status == "cancelled"
    assert oai.responses.cancel(created.id).status == "cancelled"  # idempotent


def test_stream_resumes_after_a_sequence_number(oai: OpenAI) -> None:
    stream = oai.responses.create(
        model=SMOL,
        input="Count from one to five.",
        max_output_tokens=24,
        temperature=0,
        background=True,
        stream=True,
    )
    first = []
    for event in stream:
        first.append(event)
        if len(first) == 4:
            break
    stream.close()
    rid = first[0].response.id  # type: ignore[union-attr]
    assert [e.sequence_number for e in first] == [0, 1, 2, 3]
    resumed = list(oai.responses.retrieve(rid, stream=True, starting_after=3))
    assert [e.sequence_number for e in resumed] == list(range(4, 4 + len(resumed)))
    assert resumed[-1].type in ("response.completed", "response.incomplete")
    whole = list(oai.responses.retrieve(rid, stream=True))
    assert [e.model_dump() for e in whole[:4]] == [e.model_dump() for e in first]
    assert [e.model_dump() for e in whole[4:]] == [e.model_dump() for e in resumed]
    final = oai.responses.retrieve(rid)
    assert final.output_text == resumed[-1].response.output_text  # type: ignore[union-attr]
