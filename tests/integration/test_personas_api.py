"""``GET /personas`` and the persona error mapping."""

from __future__ import annotations

import httpx
import pytest

from egemma.personas import PersonaError, PersonaRegistry, default_personas_dir
from tests.conftest import AUTH


@pytest.mark.anyio
async def test_lists_shipped_personas_with_kind(client: httpx.AsyncClient) -> None:
    resp = await client.get("/personas", headers=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    entries = {(p["name"], p["kind"]) for p in body["data"]}
    assert ("developer", "code") in entries
    assert ("security_validator", "code") in entries
    assert ("security_validator", "docs") in entries
    assert ("query_analyst", "docs") in entries
    assert len(entries) == 22


@pytest.mark.anyio
async def test_requires_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/personas")).status_code == 401


def test_unknown_persona_maps_to_400_listing_names() -> None:
    registry = PersonaRegistry.from_directory(default_personas_dir())
    with pytest.raises(PersonaError) as info:
        registry.lookup("../etc/passwd", "code")
    error = info.value  # a PersonaError is the client's 400 itself
    assert error.status_code == 400
    assert (error.param, error.code) == ("persona", "unknown_persona")
    assert "developer" in error.message
    assert "/" not in error.message.split("Available personas:")[1]
