"""All settings, one class per concern; the only reader of ``os.environ``.

Variable names follow the original eGemma (``WORKBENCH_API_KEY``, ``CHAT_MODEL_PATH``,
``CHAT_N_CTX``, …): each group has an ``env_prefix`` that reproduces them, and
``validation_alias`` covers names that do not fit. Model paths accept a filesystem path or
``builtin:<name>`` for a model shipped in a PyPI package (see ``modelfiles.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


def _config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )


class ServerSettings(BaseSettings):
    model_config = _config()

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    data_dir: Path = Field(
        Path("~/.egemma"), description="Holds the generated API key, caches and stores."
    )
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("WORKBENCH_API_KEY"),
        description="Bearer key. Unset: generated on first start and kept in DATA_DIR/api_key.",
    )
    api_key_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("WORKBENCH_API_KEY_FILE"),
        description="File holding the key, shared by replicas (created once, atomically, when "
        "missing); default DATA_DIR/api_key.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_prompts: bool = Field(False, description="Allow prompt text in debug logs.")
    max_file_size_bytes: int = Field(
        5 * 1024 * 1024, ge=1, le=1024**3, description="Largest accepted upload (413 beyond)."
    )
    max_request_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=1024**3, description="Largest request body (413 beyond)."
    )
    request_body_timeout: float = Field(
        60.0, ge=1.0, le=3600.0, description="Seconds a client may take to send a body (408)."
    )
    stream_write_timeout: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="Seconds one write to a streaming client may block before its work stops.",
    )
    stream_keepalive_interval: float = Field(
        10.0,
        ge=0.05,
        le=300.0,
        description="Seconds of silence on a stream (prefill, a model loading) before a "
        "': keep-alive' comment (and, before output starts, a repeated response.in_progress).",
    )
    binary_detection_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of control bytes that makes an upload binary."
    )
    cors_origins: str = Field(
        "", description="Comma-separated allowed CORS origins; empty keeps CORS off."
    )
    graceful_timeout: float = Field(
        30.0, ge=0.0, le=3600.0, description="Seconds in-flight requests get on SIGTERM."
    )
    metrics_require_key: bool = Field(False, description="Require the API key for /metrics.")

    models_dir: Path | None = Field(
        None,
        description="Folder for built-in model files (assembled GGUF, exported ONNX, Harmony "
        "vocabulary); default DATA_DIR/models. Images keep it outside the /data volume.",
    )

    @field_validator("data_dir", "models_dir", "api_key_file")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @property
    def models_root(self) -> Path:
        """Where ``builtin:`` models are prepared and looked up."""
        return self.models_dir or self.data_dir / "models"


class ChatSettings(BaseSettings):
    model_config = _config("CHAT_")

    model_enabled: bool = Field(True, description="Serve the Responses and chat APIs.")
    model_path: str = Field(
        "builtin:smollm2-135m-instruct",
        description="GGUF file of the main chat model, or builtin:<name>.",
    )
    model_name: str = Field("", description="Name the main model is served as (default: derived).")
    extra_models: str = Field(
        "gemma-3-270m=builtin:gemma-3-270m",
        description="More chat models, comma-separated name=path (path may be builtin:<name>).",
    )
    model_aliases: str = Field(
        "", description="Comma-separated alias=model pairs, e.g. gpt-4o=gpt-oss-20b."
    )
    prompt_format: Literal["auto", "harmony", "template"] = Field(
        "auto", description="Prompt family; auto picks Harmony for gpt-oss GGUFs."
    )
    n_ctx: int = Field(8192, ge=256, le=1_048_576, description="Context length per model.")
    n_gpu_layers: int = Field(-1, ge=-1, le=1000, description="Layers offloaded to the GPU.")
    n_batch: int = Field(512, ge=1, le=65536, description="Prompt batch size.")
    n_threads: int = Field(0, ge=0, le=1024, description="CPU threads (0: all cores).")
    use_mmap: bool = Field(True, description="Memory-map the GGUF.")
    flash_attn: bool | None = Field(
        None,
        description="Flash attention: unset lets llama.cpp decide for the batched engine (on "
        "where supported) and keeps it off for the single one.",
    )
    max_tokens: int = Field(
        1024, ge=1, le=1_048_576, description="Default max_output_tokens when a request sets none."
    )
    temperature: float = Field(0.3, ge=0.0, le=2.0, description="Default temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Default top_p.")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="Default min_p.")
    top_k: int = Field(0, ge=0, le=100_000, description="Default top_k (0: off).")
    reasoning_effort: ReasoningEffort = Field(
        "high", description="Default reasoning effort when a request sets none."
    )
    queue_size: int = Field(
        8, ge=0, le=10_000, description="Requests that may wait per model (503 beyond)."
    )
    queue_timeout: float = Field(
        120.0, gt=0.0, le=3600.0, description="Seconds a request may wait for its model."
    )

    @field_validator("extra_models", "model_aliases")
    @classmethod
    def _pairs(cls, value: str) -> str:
        _parse_pairs(value)
        return value

    def models(self) -> list[tuple[str, str, str]]:
        """(served name, path spec, setting) for every configured chat model, main one first."""
        name = self.model_name or _derive_name(self.model_path)
        out = [(name, self.model_path, "CHAT_MODEL_PATH")]
        for extra_name, spec in _parse_pairs(self.extra_models):
            if extra_name not in {n for n, _, _ in out}:
                out.append((extra_name, spec, "CHAT_EXTRA_MODELS"))
        return out

    def aliases(self) -> dict[str, str]:
        return dict(_parse_pairs(self.model_aliases))


class SummarySettings(BaseSettings):
    model_config = _config("SUMMARY_")

    local_enabled: bool = Field(True, description="Summarize with a local llama.cpp model.")
    model_path: str = Field("", description="GGUF for summaries; empty shares the main chat model.")
    max_token: int = Field(300, ge=1, le=32768, description="Default summary length in tokens.")
    temp: float = Field(0.7, ge=0.0, le=2.0, description="Default summary temperature.")
    n_ctx: int = Field(8192, ge=256, le=1_048_576, description="Context of a separate model.")
    personas_dir: Path = Field(
        Path("personas"),
        validation_alias=AliasChoices("PERSONAS_DIR", "SUMMARY_PERSONAS_DIR"),
        description="Directory holding code/ and docs/ persona prompt files.",
    )
    chunk_tokens: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description="Content tokens per map-reduce part (0: what the model's context allows).",
    )
    max_chunks: int = Field(
        16, ge=1, le=10_000, description="Most parts one file may be split into (413 beyond)."
    )
    cache_max_size: int = Field(
        256, ge=0, le=1_000_000, description="Summaries kept in the in-memory LRU."
    )
    disk_cache_bytes: int = Field(
        256 * 1024**2, ge=0, le=1024**4, description="Summary disk cache size (0 disables it)."
    )


class GeminiSettings(BaseSettings):
    model_config = _config("GEMINI_")

    api_key: SecretStr | None = Field(None, description="Gemini API key; unset disables Gemini.")
    default_model: str = Field("gemini-2.5-flash", description="Default Gemini model.")
    flash_model: str = Field("gemini-2.5-flash", description="Fast Gemini model.")
    api_timeout: float = Field(60.0, gt=0.0, le=600.0, description="Seconds per Gemini call.")
    base_url: str = Field("", description="Override the Gemini endpoint (proxies, tests).")
    thinking_budget: int = Field(
        -1,
        ge=-1,
        le=32768,
        description="Gemini thinking tokens: -1 auto (off for gemini-2.5-flash*), 0 off, N a cap.",
    )


class EmbeddingSettings(BaseSettings):
    model_config = _config("EMBEDDING_")

    enabled: bool = Field(True, description="Serve /embed and /v1/embeddings.")
    model_path: str = Field(
        "builtin:all-minilm-l6-v2",
        description="Exported ONNX folder (egemma export-embeddings), or builtin:<name>.",
    )
    model_name: str = Field("", description="Name the embedding model is served as.")
    force_cpu: bool = Field(
        False,
        validation_alias=AliasChoices("FORCE_CPU", "EMBEDDING_FORCE_CPU"),
        description="Use only the CPU execution provider.",
    )
    providers: str = Field(
        "CUDAExecutionProvider,CoreMLExecutionProvider,CPUExecutionProvider",
        description="ONNX Runtime providers in preference order.",
    )
    threads: int = Field(0, ge=0, le=1024, description="Intra-op threads (0: all cores).")
    max_batch_size: int = Field(32, ge=1, le=4096, description="Largest dynamic batch.")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0, description="Batch gathering window.")
    queue_size: int = Field(
        1024, ge=1, le=1_000_000, description="Texts that may wait (also the most per request)."
    )
    max_request_chars: int = Field(
        2_000_000,
        ge=1,
        le=1_000_000_000,
        description="Characters one request may embed in all (400 beyond).",
    )
    pad_dimensions: bool = Field(
        True,
        description="/embed: sizes above the model's, up to 768, are its vector zero-padded.",
    )
    cache_max_size: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        validation_alias=AliasChoices("CACHE_MAX_SIZE", "EMBEDDING_CACHE_MAX_SIZE"),
        description="In-memory LRU entries in front of the disk cache.",
    )
    disk_cache_bytes: int = Field(
        1024**3, ge=0, le=1024**4, description="Disk cache size limit (0 disables it)."
    )


class StoreSettings(BaseSettings):
    """Stored responses and conversations: SQLite in DATA_DIR (STORE_PATH), or one PostgreSQL
    database shared by every replica (STORE_URL)."""

    model_config = _config("STORE_")

    url: SecretStr | None = Field(
        None,
        description="postgresql://user:pass@host:5432/db: a PostgreSQL store shared by replicas "
        "(unset: the embedded SQLite store).",
    )
    pool_size: int = Field(
        10, ge=1, le=1000, description="Most PostgreSQL connections one replica holds."
    )

    path: Path | None = Field(
        None, description="SQLite file of the store (default: DATA_DIR/egemma.db)."
    )
    busy_timeout: float = Field(
        5.0,
        gt=0.0,
        le=600.0,
        description="Seconds a locked (SQLite) or unreachable (PostgreSQL) store is retried "
        "before 503.",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL", description="SQLite synchronous mode: FULL also survives power loss."
    )

    @field_validator("path")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value else None

    @field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("use a postgresql://user:password@host:port/database URL")
        return value


class CacheSettings(BaseSettings):
    """The second level of the summary and embedding caches: a Redis shared by replicas
    (CACHE_URL) instead of each replica's disk cache; the in-process LRU stays in front."""

    model_config = _config("CACHE_")

    url: SecretStr | None = Field(
        None, description="redis://[:password@]host:6379/0 (unset: per-replica disk caches)."
    )
    timeout: float = Field(
        0.25, gt=0.0, le=30.0, description="Seconds one Redis call may take before it is skipped."
    )
    retry_seconds: float = Field(
        5.0, ge=0.0, le=3600.0, description="Seconds Redis is left alone after a failure."
    )
    ttl_seconds: int = Field(
        7 * 86_400, ge=0, le=10 * 365 * 86_400, description="Entry lifetime in Redis (0: none)."
    )

    @field_validator("url")
    @classmethod
    def _redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use a redis://host:port/db (or rediss://, unix://) URL")
        return value


class LimitSettings(BaseSettings):
    model_config = _config()

    embed_rate_limit_calls: int = Field(5, ge=1, le=1_000_000, description="Embed calls/window.")
    embed_rate_limit_seconds: int = Field(10, ge=1, le=86_400, description="Embed window.")
    summarize_rate_limit_calls: int = Field(2, ge=1, le=1_000_000, description="Summaries/window.")
    summarize_rate_limit_seconds: int = Field(60, ge=1, le=86_400, description="Summary window.")
    chat_rate_limit_calls: int = Field(100, ge=1, le=1_000_000, description="Chat calls/window.")
    chat_rate_limit_seconds: int = Field(60, ge=1, le=86_400, description="Chat window.")
    conversation_rate_limit_calls: int = Field(
        100, ge=1, le=1_000_000, description="Conversation calls/window."
    )
    conversation_rate_limit_seconds: int = Field(
        60, ge=1, le=86_400, description="Conversation window."
    )
    rate_limit_storage_uri: str = Field(
        "async+memory://", description="`limits` storage URI, e.g. async+redis://host:6379."
    )

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _async_storage(cls, value: str) -> str:
        if not value.startswith("async+"):
            raise ValueError("use an async storage URI such as async+memory:// or async+redis://")
        return value


class AstSettings(BaseSettings):
    """``/parse-ast``: parsing runs in worker processes under these bounds (reliability.md §6)."""

    model_config = _config("AST_")

    max_source_bytes: int = Field(
        256 * 1024, ge=1, le=16 * 1024 * 1024, description="Largest source file (413 beyond)."
    )
    timeout_seconds: float = Field(
        10.0, gt=0.0, le=600.0, description="Wall-clock seconds per parse (400 beyond)."
    )
    memory_mb: int = Field(
        1024, ge=0, le=1024 * 1024, description="Address-space limit per worker in MiB (0: none)."
    )
    workers: int = Field(2, ge=1, le=64, description="Parser worker processes.")
    max_jobs_per_worker: int = Field(
        500, ge=1, le=1_000_000, description="Parses before a worker is replaced."
    )


class ModelSettings(BaseSettings):
    """The model registry: which models load at startup, idle unload, the memory budgets."""

    model_config = _config()

    chat_preload: str = Field(
        "chat,embedding,rerank",
        description="Models loaded at startup, comma-separated: served model names, or chat "
        "(the main chat model), summary, embedding, rerank, all, none. Others load on first "
        "use.",
    )
    model_idle_ttl: float = Field(
        0.0,
        ge=0.0,
        le=30 * 86_400.0,
        description="Seconds an unused model stays loaded before it is unloaded (0: never).",
    )
    model_memory_budget: str = Field(
        "",
        description="RAM the loaded models may use, e.g. 12GiB, 800MB or bytes; empty: the "
        "machine's RAM minus a margin (10%, at least 1 GiB).",
    )
    model_vram_budget: str = Field(
        "",
        description="GPU memory the offloaded layers (weights and KV cache) may use, e.g. "
        "15GiB; empty: the visible NVIDIA GPUs' memory minus a margin (10%, at least 512 MiB) "
        "when llama.cpp offloads (CHAT_N_GPU_LAYERS not 0), else no VRAM budget.",
    )
    model_load_timeout: float = Field(
        300.0,
        gt=0.0,
        le=3600.0,
        description="Seconds a request waits for its model to load, including waiting for "
        "models in use to finish before one can be evicted (503 + Retry-After beyond).",
    )

    @field_validator("model_memory_budget", "model_vram_budget")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_bytes(value)
        return value

    def preload(self) -> set[str]:
        return {p.strip() for p in self.chat_preload.split(",") if p.strip()}


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_bytes(value: str) -> int | None:
    """``12GiB``, ``800MB``, ``1.5G`` or a byte count → bytes; empty → None (automatic)."""
    text = value.strip().lower().replace(" ", "")
    if not text:
        return None
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit {unit!r} (use B, KB, MB, GB, KiB, MiB, GiB)")
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 12GiB or 800MB, got {value!r}") from None
    if not 0 <= amount < 1e18:
        raise ValueError("a size must be a positive number")
    return int(amount * _UNITS[unit])


def _parse_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"expected name=value pairs separated by commas, got {item!r}")
        pairs.append((name.strip(), target.strip()))
    return pairs


def _derive_name(spec: str) -> str:
    if spec.startswith("builtin:"):
        return spec.removeprefix("builtin:")
    stem = Path(spec).name
    for suffix in (".gguf", ".GGUF"):
        stem = stem.removesuffix(suffix)
    return stem or "chat"


class UpstreamSettings(BaseSettings):
    """A remote chat engine: the main chat model served by an OpenAI-compatible model server
    (llama.cpp's llama-server, llama-cpp-python's ``llama_cpp.server``) instead of in-process."""

    model_config = _config("CHAT_UPSTREAM_")

    url: str = Field(
        "",
        max_length=2048,
        pattern=r"^(https?://\S+)?$",
        description="Base URL of the model server (e.g. http://gpu-box:8080); empty: local.",
    )
    api_key: SecretStr | None = Field(None, description="Bearer key the model server expects.")
    model: str = Field(
        "", max_length=256, description="Model name sent upstream (default: the served name)."
    )
    tokenizer: str = Field(
        "",
        max_length=4096,
        description="GGUF whose vocabulary and chat template are read locally (vocab only, "
        "no weights); empty: CHAT_MODEL_PATH.",
    )
    timeout: float = Field(
        300.0, gt=0.0, le=3600.0, description="Seconds the upstream may take between two tokens."
    )
    connect_timeout: float = Field(
        5.0, gt=0.0, le=300.0, description="Seconds to open a connection to the upstream."
    )
    probe_path: str = Field(
        "/health",
        max_length=256,
        pattern=r"^/\S*$",
        description="Path probed for reachability: any answer below HTTP 500 counts as up.",
    )
    probe_interval: float = Field(
        10.0, ge=0.1, le=3600.0, description="Seconds between reachability probes of the upstream."
    )
    concurrency: int = Field(
        4, ge=1, le=1024, description="Generations this replica sends upstream at once."
    )


class BatchSettings(BaseSettings):
    """The batched llama.cpp engine (issue 12): several sequences decoded together."""

    model_config = _config("CHAT_")

    engine: Literal["auto", "single", "batched"] = Field(
        "auto",
        description="llama.cpp engine: batched slots (CHAT_PARALLEL sequences decoded together), "
        "one context per generation (single), or auto: batched for each model whose weights and "
        "slots fit MODEL_MEMORY_BUDGET, single for the others.",
    )
    parallel: int = Field(
        4, ge=1, le=64, description="Sequences decoded together per model (batched engine)."
    )
    step_tokens: int = Field(
        256,
        ge=16,
        le=65536,
        description="Prompt tokens prefilled per decode step beside the running streams.",
    )
    kv_disk_bytes: int = Field(
        1 << 30,
        ge=0,
        le=1 << 40,
        description="Disk budget for evicted KV slot state files in DATA_DIR/kv-slots (0: off).",
    )
    decode_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="Linux: how much lower than the server's own the CPU priority of the decode "
        "thread and llama.cpp's workers is, so the event loop (new requests, stream events) is "
        "not queued behind them when they take every core (0: the same).",
    )


class RerankSettings(BaseSettings):
    """The cross-encoder behind ``/v1/rerank`` (issue 14); unset: the embedding model's cosine."""

    model_config = _config("RERANK_")

    model_path: str = Field(
        "",
        description="Exported cross-encoder ONNX folder (egemma export-reranker); empty: "
        "/v1/rerank scores by embedding cosine.",
    )
    model_name: str = Field("", description="Name the reranker is served as.")
    score: Literal["logit", "sigmoid"] = Field(
        "logit",
        description="relevance_score: the model's raw logit, or its sigmoid in (0, 1).",
    )
    threads: int = Field(0, ge=0, le=1024, description="Intra-op threads (0: all cores).")
    max_request_chars: int = Field(
        2_000_000,
        ge=1,
        le=1_000_000_000,
        description="Characters of query × documents one rerank request may score (400 beyond).",
    )


GROUPS: dict[str, type[BaseSettings]] = {
    "server": ServerSettings,
    "chat": ChatSettings,
    "batch": BatchSettings,
    "summary": SummarySettings,
    "gemini": GeminiSettings,
    "embedding": EmbeddingSettings,
    "rerank": RerankSettings,
    "store": StoreSettings,
    "limits": LimitSettings,
    "ast": AstSettings,
    "cache": CacheSettings,
    "upstream": UpstreamSettings,
    "models": ModelSettings,
}


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


class Settings:
    """The effective settings: one instance per process, built in ``__main__`` and passed down."""

    def __init__(self, env_file: str | Path | None = ".env", **groups: BaseSettings) -> None:
        for key, cls in GROUPS.items():
            value = groups.get(key)
            if value is None:
                value = _build(cls, env_file)
            setattr(self, key, value)

    server: ServerSettings
    chat: ChatSettings
    batch: BatchSettings
    summary: SummarySettings
    gemini: GeminiSettings
    embedding: EmbeddingSettings
    rerank: RerankSettings
    store: StoreSettings
    limits: LimitSettings
    ast: AstSettings
    cache: CacheSettings
    upstream: UpstreamSettings
    models: ModelSettings

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Every group as JSON-ready data with secrets replaced by ``***``."""
        out: dict[str, dict[str, Any]] = {}
        for key in GROUPS:
            group: BaseSettings = getattr(self, key)
            data = group.model_dump(mode="json")
            for name, value in data.items():
                if isinstance(getattr(group, name), SecretStr):
                    data[name] = "***" if value else None
            out[key] = data
        return out


def env_name(cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable a user sets for ``field_name`` of ``cls``."""
    info = cls.model_fields[field_name]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    if isinstance(alias, str):
        return alias.upper()
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field_name}".upper()


def _build(cls: type[BaseSettings], env_file: str | Path | None) -> BaseSettings:
    try:
        return cls(_env_file=env_file)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else ""
        name = loc.upper()
        for field_name, info in cls.model_fields.items():
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else ()
            if loc == field_name or loc.upper() in {str(c).upper() for c in choices}:
                name = env_name(cls, field_name)
        raise SettingsError(f"invalid setting {name}: {err['msg']}") from None


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Build the settings or exit with one line naming the bad variable."""
    try:
        return Settings(env_file=env_file)
    except SettingsError as exc:
        print(f"egemma: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
