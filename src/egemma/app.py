"""``create_app(settings, engines=None)`` and the lifespan that loads every capability."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

from egemma import __version__
from egemma.api import (
    ast,
    chat,
    conversations,
    embeddings,
    metrics,
    model_admin,
    models,
    personas,
    public,
    rerank,
    responses,
    responses_ws,
    stored_responses,
    summarize,
)
from egemma.api.deps import refuse_when_draining
from egemma.api.errors import install_handlers
from egemma.datadir import prepare_data_dir
from egemma.keys import KEYS_FILE, KeyRing
from egemma.loaders import load_all
from egemma.middleware.body_check import BodyCheckMiddleware
from egemma.middleware.body_limit import BodyLimitMiddleware
from egemma.middleware.observe import ObserveMiddleware
from egemma.middleware.request_id import RequestIdMiddleware
from egemma.openapi import install_openapi
from egemma.ratelimit import RateLimiter
from egemma.runtime import Engines
from egemma.security import announce_generated_key, provision_key, require_api_key
from egemma.services.prompting.formats import PromptFormats
from egemma.services.responses.background import reap
from egemma.settings import Settings
from egemma.state import AppState
from egemma.store.base import Store, StoreUnavailableError
from egemma.store.factory import store_from_settings

log = logging.getLogger(__name__)

# Routers that need the key; auth is attached once, when they are mounted (deny by default).
PROTECTED: tuple[APIRouter, ...] = (
    models.router,
    model_admin.router,
    responses.router,
    chat.router,
    conversations.router,
    stored_responses.router,
    embeddings.router,
    rerank.router,
    summarize.router,
    ast.router,
    personas.router,
)


def create_app(
    settings: Settings, engines: Engines | None = None, *, store: Store | None = None
) -> FastAPI:
    """Build the app. Production passes no engines: the lifespan loads them from settings.

    Raises ``DataDirError`` when DATA_DIR cannot be created or written (``egemma serve`` prints
    its one line and exits 1).

    The store (stored responses, conversations) is built from settings unless one is passed;
    the app closes only a store it built.
    """
    injected = engines is not None
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: AppState = app.state.egemma
        # A broken store is logged once by the store itself (one line, no traceback); the
        # server serves everything else and /health, /ready and /metrics say so.
        with contextlib.suppress(StoreUnavailableError):
            await state.store.open()
        try:  # background responses a dead process left running: failed, not hanging
            await reap(state.store)
        except Exception as exc:
            log.warning("could not check for abandoned background responses: %s", exc)
        if not injected:
            await load_all(settings, state.engines, state.prompts)
        state.build_services()
        state.started = True
        try:
            yield
        finally:
            state.draining = True
            await state.close_services()
            if not injected:
                state.engines.close()
            if own_store:
                await state.store.close()

    app = FastAPI(
        title="eGemma",
        version=__version__,
        description="Self-hosted OpenAI-shaped APIs over local models.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        redirect_slashes=False,
    )
    # Before anything writes there: created 0700, or one clear line if it cannot be written.
    prepare_data_dir(settings.server.data_dir)
    key, generated = provision_key(
        settings.server.api_key.get_secret_value() if settings.server.api_key else None,
        settings.server.data_dir,
        settings.server.api_key_file,
        shared_store=settings.store.url is not None,
    )
    if generated:
        announce_generated_key(
            key, settings.server.api_key_file or settings.server.data_dir / "api_key"
        )
    state = AppState(
        settings=settings,
        engines=engines if engines is not None else Engines(),
        store=store if store is not None else store_from_settings(settings),
        rate_limiter=RateLimiter(settings.limits),
        prompts=PromptFormats(settings.chat.prompt_format, settings.server.models_root),
        keys=KeyRing(key, settings.server.data_dir / KEYS_FILE),
        started_at=int(time.time()),
    )
    app.state.egemma = state

    install_handlers(app)
    app.include_router(public.router)
    app.include_router(responses_ws.router)  # authenticates its own upgrade (bearer header)
    # Auth first, then refuse new work while draining (lifecycle.py).
    guards = [Depends(require_api_key), Depends(refuse_when_draining)]
    for router in PROTECTED:
        app.include_router(router, dependencies=guards)
    if settings.server.metrics_require_key:
        app.include_router(metrics.router, dependencies=[Depends(require_api_key)])
    else:
        app.include_router(metrics.router)
    # Everything else needs the key, even when routing answers before dependencies run (405).
    state.public_paths = frozenset(
        [r.path for r in public.router.routes if isinstance(r, APIRoute)]
        + ([] if settings.server.metrics_require_key else ["/metrics"])
        + [p for p in (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url) if p]
    )
    install_openapi(app, state.public_paths)

    app.add_middleware(BodyCheckMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.server.max_request_body_bytes,
        timeout=settings.server.request_body_timeout,
    )
    origins = [o.strip() for o in settings.server.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
        )
    # Outside the body limit and CORS so their answers are logged and counted too.
    app.add_middleware(
        ObserveMiddleware, metrics=state.metrics, log_prompts=settings.server.log_prompts
    )
    app.add_middleware(RequestIdMiddleware)
    return app
