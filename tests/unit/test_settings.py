from __future__ import annotations

import json
import subprocess
import sys

import pytest

from egemma.settings import Settings, SettingsError
from tests.conftest import make_settings


def test_defaults_use_original_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_N_CTX", "2048")
    monkeypatch.setenv("EMBED_RATE_LIMIT_CALLS", "7")
    monkeypatch.setenv("FORCE_CPU", "true")
    monkeypatch.setenv("CACHE_MAX_SIZE", "5")
    s = Settings(env_file=None)
    assert s.chat.n_ctx == 2048
    assert s.limits.embed_rate_limit_calls == 7
    assert s.embedding.force_cpu is True
    assert s.embedding.cache_max_size == 5


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CHAT_N_CTX", "12"),
        ("PORT", "70000"),
        ("CHAT_TEMPERATURE", "nan"),
        ("CHAT_REASONING_EFFORT", "extreme"),
        ("EMBED_RATE_LIMIT_SECONDS", "0"),
        ("CHAT_EXTRA_MODELS", "no-equals-sign"),
        ("FORCE_CPU", "maybe"),
        ("RATE_LIMIT_STORAGE_URI", "memory://"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=f"invalid setting {var}"):
        Settings(env_file=None)


def test_cli_exits_with_one_line_naming_the_variable(tmp_path: object) -> None:
    env = {"PATH": "/usr/bin:/bin", "CHAT_N_CTX": "abc", "DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", "/nonexistent", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "CHAT_N_CTX" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_redacts_secrets(tmp_path: object) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WORKBENCH_API_KEY": "sekrit-sentinel",
        "GEMINI_API_KEY": "gem-sentinel",
        "DATA_DIR": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", "/nonexistent", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sentinel" not in proc.stdout
    data = json.loads(proc.stdout)
    assert data["server"]["api_key"] == "***"
    assert data["gemini"]["api_key"] == "***"


def test_env_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    env_file = Path(str(tmp_path)) / "custom.env"
    env_file.write_text("CHAT_N_CTX=1024\nSUMMARIZE_RATE_LIMIT_CALLS=9\n")
    s = Settings(env_file=env_file)
    assert s.chat.n_ctx == 1024
    assert s.limits.summarize_rate_limit_calls == 9


def test_chat_models_and_aliases() -> None:
    s = make_settings(
        CHAT_MODEL_PATH="/models/gpt-oss-20b-F16.gguf",
        CHAT_EXTRA_MODELS="tiny=builtin:gemma-3-270m",
        CHAT_MODEL_ALIASES="gpt-4o=gpt-oss-20b-F16",
    )
    assert s.chat.models() == [
        ("gpt-oss-20b-F16", "/models/gpt-oss-20b-F16.gguf", "CHAT_MODEL_PATH"),
        ("tiny", "builtin:gemma-3-270m", "CHAT_EXTRA_MODELS"),
    ]
    assert s.chat.aliases() == {"gpt-4o": "gpt-oss-20b-F16"}
