"""Console script ``egemma``: serve, config, models, prepare-models, keys, export-embeddings,
export-reranker."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egemma import __version__
from egemma.settings import Settings, load_settings

log = logging.getLogger("egemma")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from egemma.app import create_app
    from egemma.datadir import DataDirError

    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    _setup_logging(settings.server.log_level)
    try:
        app = create_app(settings)
    except DataDirError as exc:
        # One line, like a bad setting: the operator's fix is a chown, not a stack trace.
        print(f"egemma: {exc}", file=sys.stderr)
        return 1
    return serve_app(app, settings)


def serve_app(app: Any, settings: Settings) -> int:
    """Serve ``app`` on Hypercorn until SIGTERM/SIGINT, then drain (reliability.md §4).

    First signal: ``/ready`` turns 503 and new work gets 503 while the listener stays open;
    generations get ``GRACEFUL_TIMEOUT`` seconds, the rest end with ``response.failed``; then
    Hypercorn stops (its own grace is longer, so it never cuts a stream we are ending). A second
    signal skips the rest of the grace. Exit code 0.
    """
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from egemma import hypercorn_errors
    from egemma.lifecycle import STOP_WAIT_SECONDS
    from egemma.state import AppState

    hypercorn_errors.install()
    grace = settings.server.graceful_timeout
    config = Config()
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    config.graceful_timeout = grace + STOP_WAIT_SECONDS + 5.0
    config.accesslog = None  # egemma.access logs one line per request
    config.errorlog = "-"
    config.keep_alive_timeout = 75.0
    # The lifespan loads the models: EmbeddingGemma-300m's 1.2 GB graph alone took over
    # Hypercorn's default 60 s on a busy 2-core machine (the server then never started).
    config.startup_timeout = 900.0

    state: AppState = app.state.egemma

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def drain_then_stop() -> None:
            try:
                await state.drain(grace)
            finally:
                stop.set()

        def on_signal(signum: int) -> None:
            if state.draining:
                log.warning("second signal: stopping in-flight generations now")
                state.stop_now()
                return
            log.info("%s: draining (grace %.1fs)", signal.Signals(signum).name, grace)
            state.draining = True
            task = loop.create_task(drain_then_stop())
            tasks.add(task)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        log.info("eGemma %s serving on http://%s", __version__, config.bind[0])
        await serve(app, config, shutdown_trigger=stop.wait)
        log.info("eGemma stopped")

    asyncio.run(main())
    return 0


def cmd_config(settings: Settings, _: argparse.Namespace) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def _slots(settings: Settings, path: Path) -> dict[str, int]:
    """The batched engine's KV memory for one chat model (CHAT_PARALLEL × CHAT_N_CTX)."""
    from egemma.engines.kvslots import estimate_kv

    parallel, n_ctx = settings.batch.parallel, settings.chat.n_ctx
    return {"parallel": parallel, "n_ctx": n_ctx, "kv_bytes": estimate_kv(path, n_ctx, parallel)}


def cmd_models(settings: Settings, _: argparse.Namespace) -> int:
    from egemma.modelfiles import ModelFileError, resolve

    entries: list[dict[str, Any]] = []
    root = settings.server.models_root
    wanted: list[tuple[str, str, str, bool]] = [
        ("chat", spec, setting, False) for _, spec, setting in settings.chat.models()
    ]
    if settings.summary.model_path:
        wanted.append(("summary", settings.summary.model_path, "SUMMARY_MODEL_PATH", False))
    wanted.append(("embeddings", settings.embedding.model_path, "EMBEDDING_MODEL_PATH", True))
    if settings.rerank.model_path:
        wanted.append(("rerank", settings.rerank.model_path, "RERANK_MODEL_PATH", True))
    for capability, spec, setting, want_dir in wanted:
        entry: dict[str, Any] = {"capability": capability, "setting": setting, "spec": spec}
        try:
            model = resolve(spec, setting, root, want_dir=want_dir)
            entry.update(path=str(model.path), origin=model.origin, status="ok")
            entry.update(_memory_estimate(settings, capability, model.path))
            if capability == "chat" and settings.batch.engine != "single":
                entry["slots"] = _slots(settings, model.path)
        except ModelFileError as exc:
            entry.update(status="error", reason=str(exc))
        entries.append(entry)
    budget, vram_budget = _budgets(settings)
    for entry in entries:
        if "estimated_bytes" in entry:
            entry["fits_memory_budget"] = entry["estimated_bytes"] <= budget
        if vram_budget is not None and "vram_estimated_bytes" in entry:
            entry["fits_vram_budget"] = entry["vram_estimated_bytes"] <= vram_budget
    print(f"memory budget (MODEL_MEMORY_BUDGET): {budget} bytes", file=sys.stderr)
    if vram_budget is not None:
        print(f"GPU memory budget (MODEL_VRAM_BUDGET): {vram_budget} bytes", file=sys.stderr)
    print(json.dumps(entries, indent=2))
    return 0 if all(e["status"] == "ok" for e in entries) else 1


def _budgets(settings: Settings) -> tuple[int, int | None]:
    from egemma.services.models.build import build_registry

    registry = build_registry(settings.models, settings.chat.n_gpu_layers)
    return registry.budget, registry.vram_budget


def _memory_estimate(settings: Settings, capability: str, path: Path) -> dict[str, Any]:
    """What loading the model would take (GGUF header; ONNX folder size), without loading it."""
    from egemma.services.models.build import folder_bytes
    from egemma.services.models.gguf import GgufError, estimate
    from egemma.services.models.vram import split_estimate

    if capability in ("embeddings", "rerank"):
        return {"estimated_bytes": folder_bytes(path)}
    n_ctx = settings.summary.n_ctx if capability == "summary" else settings.chat.n_ctx
    _, vram_budget = _budgets(settings)
    gpu_layers = settings.chat.n_gpu_layers if vram_budget is not None else 0
    try:
        est = estimate(path, n_ctx, settings.chat.n_batch)
        split = split_estimate(path, est, gpu_layers)
    except (GgufError, OSError) as exc:
        return {"estimate_error": str(exc)}
    return {
        "estimated_bytes": split.ram_bytes(),
        "vram_estimated_bytes": split.vram_bytes(),
        "gpu_layers": split.gpu_layers,
        "weights_bytes": est.weights,
        "kv_cache_bytes": est.kv_cache,
        "compute_bytes": est.compute,
        "n_ctx": est.n_ctx,
    }


def cmd_prepare_models(settings: Settings, _: argparse.Namespace) -> int:
    """Install-time preparation of built-in model files (no downloads)."""
    from egemma.modelfiles import prepare_builtin

    _setup_logging("info")
    for path in prepare_builtin(settings.server.models_root):
        print(f"prepared {path}")
    for hook in PREPARE_HOOKS:
        hook(settings)
    return 0


# Other modules register install-time steps here (harmony vocabulary, embedding export).
PREPARE_HOOKS: list[Callable[[Settings], None]] = []


def cmd_export_embeddings(_: Settings, args: argparse.Namespace) -> int:
    """Export a local sentence-transformers folder to ONNX (needs the `export` extra)."""
    from pathlib import Path

    from egemma.export import ExportError, ExportOptions, export_embeddings

    _setup_logging("info")
    dims = tuple(int(d) for d in args.matryoshka_dims.split(",")) if args.matryoshka_dims else None
    opts = ExportOptions(
        quantize=args.int8,
        min_cosine=args.min_cosine,
        matryoshka_dims=dims,
        name=args.name,
        force=args.force,
    )
    try:
        facts = export_embeddings(Path(args.src), Path(args.dest), opts)
    except ExportError as exc:
        print(f"egemma: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts, indent=2))
    return 0


def cmd_export_reranker(_: Settings, args: argparse.Namespace) -> int:
    """Export a local sequence-classification folder to ONNX (needs the `export` extra)."""
    from pathlib import Path

    from egemma.export import ExportError
    from egemma.export_reranker import RerankExportOptions, export_reranker

    _setup_logging("info")
    opts = RerankExportOptions(name=args.name, force=args.force)
    try:
        facts = export_reranker(Path(args.src), Path(args.dest), opts)
    except ExportError as exc:
        print(f"egemma: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts, indent=2))
    return 0


def _prepare_embeddings(settings: Settings) -> None:
    from egemma.export import ExportError, prepare_default

    try:
        path = prepare_default(settings.server.models_root)
    except ExportError as exc:
        raise SystemExit(f"egemma: embedding export failed: {exc}") from None
    if path is not None:
        print(f"prepared {path}")


PREPARE_HOOKS.append(_prepare_embeddings)


def _prepare_harmony_vocab(settings: Settings) -> None:
    # openai-harmony would download o200k_base.tiktoken at first use; convert quicktok's copy.
    from egemma.services.prompting.harmony_vocab import (
        VOCAB_FILENAME,
        HarmonyVocabError,
        ensure_harmony_vocab,
    )

    try:
        vocab_dir = ensure_harmony_vocab(settings.server.models_root)
    except HarmonyVocabError as exc:
        raise SystemExit(f"egemma: harmony vocabulary: {exc}") from None
    print(f"prepared {vocab_dir / VOCAB_FILENAME}")


PREPARE_HOOKS.append(_prepare_harmony_vocab)


def _parse_limits(args: argparse.Namespace) -> dict[str, Any]:
    from egemma.keys import BUCKETS, KeyFileError, Limit

    limits: dict[str, Limit] = {}
    if args.rpm is not None:
        limits = {bucket: Limit(args.rpm, 60) for bucket in BUCKETS}
    for spec in args.limit or []:
        bucket, _, rest = spec.partition("=")
        calls, _, seconds = rest.partition("/")
        if bucket not in BUCKETS or not calls.isdigit() or not seconds.isdigit():
            raise KeyFileError(
                f"--limit {spec!r}: use BUCKET=CALLS/SECONDS, BUCKET one of {', '.join(BUCKETS)}"
            )
        if not (0 < int(calls) <= 1_000_000 and 0 < int(seconds) <= 1_000_000):
            raise KeyFileError(f"--limit {spec!r}: calls and seconds must be 1..1000000")
        limits[bucket] = Limit(int(calls), int(seconds))
    return limits


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Manage the named keys of ``DATA_DIR/keys.json``; a running server picks changes up at
    its next request."""
    from egemma.keys import KEYS_FILE, KeyFileError, add_key, read_keys, revoke_key

    path = settings.server.data_dir / KEYS_FILE
    try:
        if args.action == "add":
            key = add_key(path, args.name, admin=args.admin, limits=_parse_limits(args))
            print(key)
            print(
                f"egemma: key '{args.name}' created; it is shown only now, store it safely.",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            if not revoke_key(path, args.name):
                print(f"egemma: no key named '{args.name}'", file=sys.stderr)
                return 1
            print(f"egemma: key '{args.name}' revoked", file=sys.stderr)
        else:
            listed = [{"name": "admin", "admin": True, "limits": {}, "source": "primary"}]
            for stored in read_keys(path):
                entry = stored.to_json()
                del entry["sha256"]
                listed.append({**entry, "source": KEYS_FILE})
            print(json.dumps(listed, indent=2))
    except (KeyFileError, OSError) as exc:
        print(f"egemma: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage named API keys (DATA_DIR/keys.json)")
    actions = keys.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a key and print it (once)")
    add.add_argument("name", help="key name: who it is for (letters, digits, . _ -)")
    add.add_argument("--admin", action="store_true", help="sees every stored response")
    add.add_argument("--rpm", type=int, help="calls per minute in every bucket for this key")
    add.add_argument(
        "--limit",
        action="append",
        metavar="BUCKET=CALLS/SECONDS",
        help="this key's limit for one bucket (embed, summarize, chat, conversation); repeatable",
    )
    actions.add_parser("list", help="list keys (never their secrets)")
    revoke = actions.add_parser("revoke", help="delete a key; a running server stops accepting it")
    revoke.add_argument("name")
    keys.set_defaults(func=cmd_keys)


def _add_export_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export-embeddings", help="export a sentence-transformers folder to ONNX (offline)"
    )
    export.add_argument("src", help="local sentence-transformers / Hugging Face folder")
    export.add_argument("dest", help="output folder (EMBEDDING_MODEL_PATH points here)")
    export.add_argument("--name", help="served model name (default: the folder name)")
    export.add_argument(
        "--matryoshka-dims",
        help="comma-separated trained Matryoshka sizes (default: known for EmbeddingGemma)",
    )
    export.add_argument(
        "--int8", action="store_true", help="per-channel dynamic int8, kept if it passes the gate"
    )
    export.add_argument(
        "--min-cosine", type=float, default=0.99, help="int8 gate: min cosine vs fp32"
    )
    export.add_argument("--force", action="store_true", help="replace an existing DEST")
    export.set_defaults(func=cmd_export_embeddings)
    rerank = sub.add_parser(
        "export-reranker", help="export a Hugging Face cross-encoder folder to ONNX (offline)"
    )
    rerank.add_argument("src", help="local sequence-classification folder (one label)")
    rerank.add_argument("dest", help="output folder (RERANK_MODEL_PATH points here)")
    rerank.add_argument("--name", help="served model name (default: the folder name)")
    rerank.add_argument("--force", action="store_true", help="replace an existing DEST")
    rerank.set_defaults(func=cmd_export_reranker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egemma", description="eGemma AI workbench")
    parser.add_argument("--version", action="version", version=f"egemma {__version__}")
    parser.add_argument("--env-file", default=".env", help="settings file (default .env)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="address (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PORT or 8000)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("config", help="print effective settings, secrets redacted").set_defaults(
        func=cmd_config
    )
    sub.add_parser("models", help="show which model files were resolved").set_defaults(
        func=cmd_models
    )
    sub.add_parser("prepare-models", help="assemble built-in model files").set_defaults(
        func=cmd_prepare_models
    )
    _add_keys_parser(sub)
    _add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = load_settings(args.env_file)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
