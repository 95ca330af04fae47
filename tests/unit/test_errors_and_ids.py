from __future__ import annotations

import re

from egemma.errors import RateLimitError, UnavailableError
from egemma.ids import new_id


def test_ids_have_openai_prefixes_and_are_unique() -> None:
    ids = {new_id("resp") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"resp_[0-9a-f]{48}", i) for i in ids)
    assert new_id("chatcmpl").startswith("chatcmpl-")


def test_rate_limit_error_keeps_the_phrase_clients_parse() -> None:
    err = RateLimitError(7)
    assert re.search(r"Try again in (\d+) seconds", err.message).group(1) == "7"  # type: ignore[union-attr]
    assert err.headers["Retry-After"] == "7"
    assert err.body()["error"]["type"] == "rate_limit_error"


def test_unavailable_has_retry_after() -> None:
    err = UnavailableError("queue full")
    assert err.status_code == 503
    assert err.headers["Retry-After"] == "1"


def test_validation_param_names_a_body_field_called_query() -> None:
    from egemma.api.errors import _param_from_loc

    assert _param_from_loc(("body", "query")) == "query"  # /v1/rerank's own field
    assert _param_from_loc(("body", "documents", 3)) == "documents[3]"
    assert _param_from_loc(("query", "dimensions")) == "dimensions"
    assert _param_from_loc(("body",)) is None
