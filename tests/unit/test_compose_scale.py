"""compose.scale.yaml and deploy/nginx.conf: the scaled setup's files say what the README says
(no Docker here: parsed with PyYAML; `docker compose -f compose.scale.yaml config` where it is)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.scale.yaml").read_text())
    return data


def test_two_replicas_share_store_cache_key_and_upstream() -> None:
    services = compose()["services"]
    assert {"egemma-1", "egemma-2", "nginx", "postgres", "redis", "llama"} <= set(services)
    envs = [services[name]["environment"] for name in ("egemma-1", "egemma-2")]
    assert envs[0] == envs[1]
    env = envs[0]
    assert env["STORE_URL"].startswith("postgresql://")
    assert env["CACHE_URL"].startswith("redis://")
    assert env["CHAT_UPSTREAM_URL"] == "http://llama:8080"
    # The key must be given: a replica never generates its own (":?" makes compose refuse).
    assert re.fullmatch(r"\$\{WORKBENCH_API_KEY:\?.+\}", env["WORKBENCH_API_KEY"])


def test_official_images_for_the_proxy_and_the_databases() -> None:
    services = compose()["services"]
    assert services["nginx"]["image"].startswith("nginx:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["llama"]["image"].startswith("ghcr.io/ggml-org/llama.cpp:server")
    mounts = services["nginx"]["volumes"]
    assert any(m.startswith("./deploy/nginx.conf:") for m in mounts)


def test_nginx_streams_sse_to_both_replicas() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"server egemma-1:8000\b", conf)
    assert re.search(r"server egemma-2:8000\b", conf)
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)
    read = re.search(r"^\s*proxy_read_timeout (\d+)s;", conf, re.M)
    assert read is not None
    assert int(read.group(1)) >= 600
    assert re.search(r"^\s*proxy_http_version 1\.1;", conf, re.M)
