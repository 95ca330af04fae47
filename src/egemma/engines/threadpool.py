"""A persistent ggml CPU threadpool for a llama.cpp context.

A context with no threadpool attached gets a disposable one from ggml on every graph compute: a
build without OpenMP (ours, ``Makefile``: ``-DGGML_OPENMP=OFF``) then starts and joins its
worker threads on every ``llama_decode``, once per generated token. llama.cpp's own tools attach
a pool made once (``common_threadpools``); llama-cpp-python binds neither call, so this goes to
the libraries it loaded through ctypes. The pool's workers are started by the thread that makes
it and inherit that thread's priority (``CHAT_DECODE_NICE``). Where a symbol is missing (another
build of the bindings), the context keeps the disposable pools: slower, never wrong.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ``struct ggml_threadpool_params`` is 512 bools and four scalars (ggml.h); the buffer is larger
# so that a build with a bigger GGML_MAX_N_THREADS cannot write past it.
_PARAMS_BYTES = 8192
_MAX_THREADS = 512  # GGML_MAX_N_THREADS: the cpumask, then n_threads, prio, poll
_DEFAULT_POLL = 50


class CpuThreadpool:
    """One ggml threadpool of ``n_threads`` attached to ``ctx`` (decode and batch alike)."""

    def __init__(self, pool: int, free: Any, detach: Any, ctx: Any) -> None:
        self._pool = pool
        self._free = free
        self._detach = detach
        self._ctx = ctx

    @classmethod
    def attach(cls, llama_cpp: Any, ctx: Any, n_threads: int, poll: int) -> CpuThreadpool | None:
        """Make a pool and attach it to ``ctx``; None (and a debug line) where the loaded
        libraries do not offer the calls. ``poll`` is ggml's polling level (``_set_poll``)."""
        try:
            from llama_cpp._ctypes_extensions import load_shared_library

            # Where llama-cpp-python loaded libllama from (LLAMA_CPP_LIB_PATH or its own lib/),
            # so these are the copies of ggml already in the process, never a second one.
            libdir = Path(llama_cpp.llama_cpp._base_path)
            base = load_shared_library("ggml-base", libdir)
            cpu = load_shared_library("ggml-cpu", libdir)
            llama = llama_cpp.llama_cpp._lib
            base.ggml_threadpool_params_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
            base.ggml_threadpool_params_init.restype = None
            cpu.ggml_threadpool_new.argtypes = [ctypes.c_void_p]
            cpu.ggml_threadpool_new.restype = ctypes.c_void_p
            cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
            cpu.ggml_threadpool_free.restype = None
            llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p] * 3
            llama.llama_attach_threadpool.restype = None
            llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
            llama.llama_detach_threadpool.restype = None
        except (AttributeError, OSError, FileNotFoundError, RuntimeError, ImportError) as exc:
            log.debug("no persistent ggml threadpool (%s): llama.cpp makes one per decode", exc)
            return None
        params = ctypes.create_string_buffer(_PARAMS_BYTES)
        base.ggml_threadpool_params_init(params, max(n_threads, 1))
        _set_poll(params, max(n_threads, 1), poll)
        pool = cpu.ggml_threadpool_new(params)
        if not pool:
            log.warning("ggml could not start a threadpool of %d threads", n_threads)
            return None
        llama.llama_attach_threadpool(ctx, pool, pool)
        return cls(pool, cpu.ggml_threadpool_free, llama.llama_detach_threadpool, ctx)

    def close(self) -> None:
        """Detach from the context (still alive) and stop the workers; once."""
        pool, self._pool = self._pool, 0
        if pool:
            self._detach(self._ctx)
            self._free(pool)


def _set_poll(params: Any, n_threads: int, poll: int) -> None:
    """Set ``poll`` in the initialised params: how many rounds (``poll`` x 131,072) a worker
    spins for its next graph before it sleeps on a condition variable. Spinning starts the next
    decode at once; at llama.cpp's 50 it also keeps a core busy for about 0.2 s after every
    decode, which on a small box takes it from the event loop, other models and whatever the
    box runs beside. Written only where the fields read back as ggml.h lays them out."""
    fields = (ctypes.c_int32 * 3).from_buffer(params, _MAX_THREADS)
    if fields[0] != n_threads or fields[2] != _DEFAULT_POLL:
        log.debug("unexpected ggml_threadpool_params layout: polling left at its default")
        return
    fields[2] = poll
