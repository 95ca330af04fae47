"""Load each capability separately; a broken one is recorded, never fatal.

Each loader fills its engine into ``Engines`` and sets its ``CapabilityStatus`` to ``loaded``,
``disabled`` or ``error`` with a reason that names the setting. Heavy imports happen here,
inside the loader, so a missing extra is a capability error, not a crash.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from egemma.engines.base import CapabilityStatus, ChatEngine
from egemma.modelfiles import ModelFileError, ResolvedModel, check_gguf, resolve
from egemma.runtime import Engines
from egemma.services.models.build import (
    build_registry,
    managed_chat,
    managed_embedding,
    managed_rerank,
    preload,
)
from egemma.services.models.embedding import ManagedEmbeddingEngine
from egemma.services.models.llama import register_llama
from egemma.services.models.registry import ModelRegistry
from egemma.services.models.rerank import ManagedRerankEngine
from egemma.services.prompting.formats import PromptFormats
from egemma.settings import Settings

log = logging.getLogger(__name__)


def _fail(engines: Engines, key: str, reason: str) -> None:
    status = engines.capability(key)
    status.status = "error"
    status.reason = reason
    log.error("%s unavailable: %s", key, reason)


def load_chat(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    status = engines.capability("chat")
    status.name = settings.chat.model_name or settings.chat.models()[0][0]
    if not settings.chat.model_enabled:
        status.status = "disabled"
        return
    registry = _registry(settings, engines)
    errors: list[str] = []
    for name, spec, setting in settings.chat.models():
        try:
            if setting == "CHAT_MODEL_PATH" and settings.upstream.url:
                engine, model = load_remote(name, spec, settings)
            else:
                model = resolve(spec, setting, settings.server.models_root)
                check_gguf(model.path)
                # Registered, not loaded: the registry loads it at startup (CHAT_PRELOAD) or on use.
                engine = register_llama(registry, name, model.path, settings)
        except (ModelFileError, ValueError, OSError) as exc:
            errors.append(f"{name}: {exc}")
            log.error("chat model %s not loaded: %s", name, exc)
            continue
        try:
            # Build the prompt family now: a Harmony vocabulary problem or a broken template is a
            # load-time error for this model, not a 500 on its first request.
            prompts.build(engine)
        except Exception as exc:  # HarmonyVocabError, jinja2 TemplateSyntaxError, …
            prompts.forget(engine)
            engine.close()
            registry.entries.pop(name, None)
            errors.append(f"{name}: {exc}")
            log.error("chat model %s not loaded: %s", name, exc)
            continue
        engines.chat[name] = engine
        engines.chat_default = engines.chat_default or name
        log.info("chat model %s loaded from %s (%s)", name, model.path, model.origin)
    if not engines.chat:
        _fail(engines, "chat", "; ".join(errors) or "no chat model configured")
        return
    default = engines.chat[engines.chat_default or ""]
    status.name = engines.chat_default or status.name
    status.status = "loaded"
    status.context_length = default.n_ctx
    status.reason = "; ".join(errors) or None
    status.detail = {"models": sorted(engines.chat), "path": default.identity}
    watch_remote(engines, status)


def load_remote(name: str, spec: str, settings: Settings) -> tuple[ChatEngine, ResolvedModel]:
    """The main chat model on ``CHAT_UPSTREAM_URL``: its vocabulary and template read locally
    from ``CHAT_UPSTREAM_TOKENIZER`` (default: the ``CHAT_MODEL_PATH`` GGUF, vocab only)."""
    from egemma.engines.remote import RemoteChatEngine

    upstream = settings.upstream
    if upstream.tokenizer:
        spec, setting = upstream.tokenizer, "CHAT_UPSTREAM_TOKENIZER"
    else:
        setting = "CHAT_MODEL_PATH"
    model = resolve(spec, setting, settings.server.models_root)
    check_gguf(model.path)
    engine = RemoteChatEngine.load(name, model.path, settings.chat, upstream)
    if "<|channel|>" in (engine.chat_template or "") or engine.architecture == "gpt-oss":
        engine.close()
        raise ValueError("CHAT_UPSTREAM_URL: Harmony models (gpt-oss) are not supported remotely")
    return engine, model


def watch_remote(engines: Engines, status: CapabilityStatus) -> None:
    """A remote default model: its reachability shows in ``/health`` and flips the capability
    (``error`` while the upstream is unreachable, so ``/ready`` is 503 there too)."""
    from egemma.engines.remote import RemoteChatEngine

    default = engines.chat.get(engines.chat_default or "")
    if not isinstance(default, RemoteChatEngine):
        return
    status.detail.update(
        engine="remote", path=str(default.tokenizer_path), upstream=default.probe.state
    )
    loaded_reason = status.reason

    def changed(reachable: bool, reason: str | None) -> None:
        status.status = "loaded" if reachable else "error"
        status.reason = loaded_reason if reachable else f"upstream unreachable: {reason}"

    default.probe.listener = changed
    if default.probe.reachable is not True:
        changed(False, default.probe.state["reason"])


def load_summary(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    status = engines.capability("local_summarization")
    if not settings.summary.local_enabled:
        status.status = "disabled"
        return
    if not settings.summary.model_path:
        # Shares the main chat model: one loaded model serves both.
        shared = engines.chat.get(engines.chat_default or "")
        if shared is None:
            _fail(engines, "local_summarization", "shares the chat model, which is not loaded")
            return
        engines.summary = shared
    else:
        try:
            model = resolve(
                settings.summary.model_path, "SUMMARY_MODEL_PATH", settings.server.models_root
            )
            check_gguf(model.path)
            chat = settings.chat.model_copy(
                update={"n_ctx": settings.summary.n_ctx, "queue_size": 64}
            )
            summary = managed_chat(
                _registry(settings, engines), Path(model.path).stem, model.path, chat, "summary"
            )
        except (ModelFileError, ValueError, OSError) as exc:
            _fail(engines, "local_summarization", str(exc))
            return
        try:
            prompts.build(summary)
        except Exception as exc:  # as for chat models: a broken format is a load error
            summary.close()
            _fail(engines, "local_summarization", str(exc))
            return
        engines.summary = summary
    status.name = engines.summary.name
    status.status = "loaded"
    status.context_length = engines.summary.n_ctx


def load_gemini(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    status = engines.capability("gemini")
    status.name = settings.gemini.default_model
    status.detail = {"api_key_set": settings.gemini.api_key is not None}
    if settings.gemini.api_key is None:
        status.status = "disabled"
        status.reason = "GEMINI_API_KEY is not set"
        return
    try:
        from egemma.engines.gemini import GeminiBackend
    except ImportError as exc:
        _fail(engines, "gemini", f"Gemini backend unavailable: {exc.name} is not installed")
        return
    engines.gemini = GeminiBackend(settings.gemini)
    status.status = "loaded"


def load_embeddings(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    status = engines.capability("embeddings")
    if not settings.embedding.enabled:
        status.status = "disabled"
        return
    try:
        model = resolve(
            settings.embedding.model_path,
            "EMBEDDING_MODEL_PATH",
            settings.server.models_root,
            want_dir=True,
        )
    except ModelFileError as exc:
        _fail(engines, "embeddings", str(exc))
        return
    try:
        import onnxruntime as ort

        from egemma.engines.onnx import EmbeddingFacts, OnnxEmbeddingEngine, select_providers
    except ImportError as exc:
        _fail(engines, "embeddings", f"ONNX engine unavailable: {exc.name} is not installed")
        return
    try:  # the facts file now; the ONNX session at startup (CHAT_PRELOAD) or on first use
        facts = EmbeddingFacts.read(model.path)
        if not (model.path / facts.onnx_file).is_file():
            raise ValueError(f"{model.path} has no {facts.onnx_file}")
    except (ValueError, OSError) as exc:  # EmbeddingModelError, a malformed facts file
        _fail(engines, "embeddings", f"EMBEDDING_MODEL_PATH: cannot load {model.path.name}: {exc}")
        return
    name = settings.embedding.model_name or facts.name
    engine = managed_embedding(
        _registry(settings, engines),
        name,
        model.path,
        facts,
        lambda: OnnxEmbeddingEngine.load(model.path, settings.embedding),
    )
    engines.embedding = engine
    status.name = engine.name
    status.status = "loaded"
    status.context_length = engine.max_length
    status.detail = {
        "path": str(model.path),
        "dimension": engine.dimension,
        "matryoshka_dims": list(engine.matryoshka_dims),
        "prompts": sorted(engine.prompts),
        "providers": select_providers(settings.embedding, ort.get_available_providers()),
    }


def load_reranker(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    """The cross-encoder for /v1/rerank, only when RERANK_MODEL_PATH is set (else /v1/rerank
    scores by embedding cosine and /health has no rerank entry). Registered like the embedding
    model: its facts file now, the ONNX session at startup (CHAT_PRELOAD) or on first use."""
    rerank = settings.rerank
    if not rerank.model_path:
        return
    status = engines.capability("rerank")
    try:
        model = resolve(
            rerank.model_path, "RERANK_MODEL_PATH", settings.server.models_root, want_dir=True
        )
        import onnxruntime as ort

        from egemma.engines.onnx import select_providers
        from egemma.engines.onnx_rerank import OnnxRerankEngine, RerankFacts
    except ModelFileError as exc:
        _fail(engines, "rerank", str(exc))
        return
    except ImportError as exc:
        _fail(engines, "rerank", f"ONNX engine unavailable: {exc.name} is not installed")
        return
    providers = select_providers(settings.embedding, ort.get_available_providers())
    try:
        facts = RerankFacts.read(model.path)
        for needed in (facts.onnx_file, "tokenizer.json"):
            if not (model.path / needed).is_file():
                raise ValueError(f"{model.path} has no {needed}")
        name = rerank.model_name or facts.name
        engine = managed_rerank(
            _registry(settings, engines),
            name,
            model.path,
            facts,
            lambda: OnnxRerankEngine.load(model.path, providers, rerank.threads, name),
        )
    except (ValueError, OSError, TypeError) as exc:  # RerankModelError, a malformed facts file
        _fail(engines, "rerank", f"RERANK_MODEL_PATH: cannot load {model.path.name}: {exc}")
        return
    engines.reranker = engine
    status.name = engine.name
    status.status = "loaded"
    status.context_length = engine.max_length
    status.detail = {
        "path": str(model.path),
        "scorer": "cross_encoder",
        "score": rerank.score,
        "providers": list(providers),
    }


LOADERS = (load_chat, load_summary, load_gemini, load_embeddings, load_reranker)


async def load_all(settings: Settings, engines: Engines, prompts: PromptFormats) -> None:
    """Run every loader off the event loop, one after the other (they share the CPU)."""
    for loader in LOADERS:
        await anyio.to_thread.run_sync(loader, settings, engines, prompts)
    if engines.registry is not None:
        await preload(settings.models, engines.registry, engines.chat_default)
    _embedding_preload_failed(engines)
    _rerank_preload_failed(engines)
    _report_slots(engines)


def _embedding_preload_failed(engines: Engines) -> None:
    """An embedding model that failed to load at startup is the capability's error (as when
    it was always loaded at startup): /health says why, its routes answer 503."""
    engine = engines.embedding
    if not isinstance(engine, ManagedEmbeddingEngine) or engine.entry.state != "error":
        return
    engines.embedding = None
    _fail(
        engines,
        "embeddings",
        f"EMBEDDING_MODEL_PATH: cannot load {Path(engine.entry.path).name}: {engine.entry.error}",
    )


def _rerank_preload_failed(engines: Engines) -> None:
    """The same for the cross-encoder: /health says why, /v1/rerank answers 503."""
    engine = engines.reranker
    if not isinstance(engine, ManagedRerankEngine) or engine.entry.state != "error":
        return
    engines.reranker = None
    _fail(
        engines,
        "rerank",
        f"RERANK_MODEL_PATH: cannot load {Path(engine.entry.path).name}: {engine.entry.error}",
    )


def _report_slots(engines: Engines) -> None:
    """The batched engine's KV slots in ``/health`` (once the main model is loaded)."""
    default = engines.chat.get(engines.chat_default or "")
    inner = getattr(default, "loaded", None) or default
    report = getattr(inner, "slot_report", None)
    if report is not None:
        engines.capability("chat").detail["slots"] = report()


def _registry(settings: Settings, engines: Engines) -> ModelRegistry:
    if engines.registry is None:
        engines.registry = build_registry(settings.models, settings.chat.n_gpu_layers)
    return engines.registry
