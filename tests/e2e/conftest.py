"""One real server per session with the shipped chat models (SmolLM2-135M-Instruct, the default,
and Gemma 3 270M), reached through the official clients on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from egemma.app import create_app
from egemma.settings import Settings
from tests.servers import LiveServer

KEY = "e2e-key-0123456789"
SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"


def real_settings(data_dir: Path, **env: str) -> Settings:
    base = {
        "WORKBENCH_API_KEY": KEY,
        "DATA_DIR": str(data_dir),
        "EMBEDDING_ENABLED": "false",
        "CHAT_N_CTX": "2048",
        "CHAT_MODEL_ALIASES": f"gpt-4o={SMOL}",
        "CHAT_RATE_LIMIT_CALLS": "100000",
        "CONVERSATION_RATE_LIMIT_CALLS": "100000",
    }
    base.update(env)
    saved = {k: os.environ.get(k) for k in base}
    os.environ.update(base)
    try:
        return Settings(env_file=None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("e2e-data")
    server = LiveServer(create_app(real_settings(data)))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture
def oai(chat_server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{chat_server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
