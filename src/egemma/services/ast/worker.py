"""The AST worker process: ``python -m egemma.services.ast.worker MEMORY_BYTES``.

Reads one JSON request per line on stdin (``{"language", "grammar", "source"}``), answers one JSON
line on stdout (``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {...}}``). It runs
under ``RLIMIT_AS`` and a per-job ``RLIMIT_CPU`` so a pathological file ends in an error or in the
death of this process, never in a stuck or bloated server. It exits on EOF, and after any job that
hit MemoryError or RecursionError (``"recycle": true``) so the next job starts clean.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from typing import Any

from egemma.services.ast.common import AstSourceError
from egemma.services.ast.python_ast import extract_python

log = logging.getLogger("egemma.services.ast.worker")

_TOO_COMPLEX = "Source is too large or too deeply nested to analyse."


def extract(language: str, grammar: str, source: str) -> dict[str, Any]:
    """The document for ``source``; Python by ``ast``, the rest by tree-sitter."""
    if language == "python":
        return extract_python(source)
    from egemma.services.ast.treesitter import extract_treesitter

    return extract_treesitter(language, grammar, source)


def _set_memory_limit(limit: int) -> None:
    if limit <= 0:
        return
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIMIT_AS: the timeout still holds
        log.warning("could not set the AST worker memory limit: %s", exc)


def _arm_cpu_limit(seconds: float) -> None:
    """A hard backstop behind the parent's wall-clock timeout: SIGXCPU ends this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    budget = int(usage.ru_utime + usage.ru_stime + max(1.0, seconds) * 2) + 1
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            budget = min(budget, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (budget, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not set the AST worker CPU limit: %s", exc)


def handle(line: bytes) -> tuple[bytes, bool]:
    """One request line → (reply line, exit afterwards)."""
    try:
        request = json.loads(line)
        _arm_cpu_limit(float(request.get("timeout", 10.0)))
        result = extract(request["language"], request["grammar"], request["source"])
        return json.dumps({"ok": True, "result": result}).encode() + b"\n", False
    except AstSourceError as exc:
        reply = {"ok": False, "error": exc.to_dict(), "recycle": exc.recycle}
        return json.dumps(reply).encode() + b"\n", exc.recycle
    except (RecursionError, MemoryError):
        error = {"message": _TOO_COMPLEX, "line": None, "column": None}
        reply = {"ok": False, "error": error, "recycle": True}
        return json.dumps(reply).encode() + b"\n", True
    except Exception:  # a bug in an extractor: report it, answer "internal", keep serving
        log.exception("AST extraction failed")
        return b'{"ok": false, "internal": true, "recycle": true}\n', True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _set_memory_limit(int(args[0]) if args else 0)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b'{"ready": true}\n')
    stdout.flush()
    while True:
        line = stdin.readline()
        if not line:
            return 0
        reply, leave = handle(line)
        stdout.write(reply)
        stdout.flush()
        if leave:
            return 0


if __name__ == "__main__":
    sys.exit(main())
