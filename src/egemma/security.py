"""Bearer-key authentication: key provisioning and the one auth dependency.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` so neither content nor length
leaks through timing. The key is never logged or echoed. Which keys exist is ``keys.KeyRing``'s
business (the primary key plus the named keys of ``DATA_DIR/keys.json``); a request's
``Principal`` (name, admin, limits) lands on ``request.state.principal``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

from fastapi import Request
from fastapi.security import HTTPBearer

from egemma.datadir import DataDirError
from egemma.errors import AuthenticationError
from egemma.keys import KeyRing, Principal, digest

log = logging.getLogger(__name__)

KEY_FILE = "api_key"

# Declares the scheme in OpenAPI; we parse the header ourselves so every failure is our 401.
bearer_scheme = HTTPBearer(
    auto_error=False, description="WORKBENCH_API_KEY or a key made with `egemma keys add`"
)


__all__ = ["digest", "is_admin", "principal_of", "provision_key", "require_api_key"]


class KeyProvisionError(DataDirError):
    """No key may be generated here (a shared store without a shared key); one line."""


def provision_key(
    configured: str | None,
    data_dir: Path,
    key_file: Path | None = None,
    *,
    shared_store: bool = False,
) -> tuple[str, bool]:
    """Return the server key and whether it was generated now.

    The rule (README "Scaling out"): ``WORKBENCH_API_KEY`` wins. Otherwise the key file
    (``WORKBENCH_API_KEY_FILE``, default ``DATA_DIR/api_key``) is read; when it is missing a new
    key is generated and published there atomically (written aside, then hard-linked into place),
    so replicas starting together on one shared file agree on the first writer's key. Replicas
    of a shared store (``STORE_URL``) never generate a key of their own in their private
    ``DATA_DIR``: without ``WORKBENCH_API_KEY``, ``WORKBENCH_API_KEY_FILE`` or an existing
    ``DATA_DIR/api_key`` they refuse to start (``KeyProvisionError``).
    """
    if configured:
        return configured, False
    path = key_file or data_dir / KEY_FILE
    stored = _read_key(path)
    if stored:
        return stored, False
    if shared_store and key_file is None:
        raise KeyProvisionError(
            "STORE_URL is shared by replicas: set WORKBENCH_API_KEY or WORKBENCH_API_KEY_FILE "
            "(one key for every replica) instead of a key generated per replica"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = "egk-" + secrets.token_urlsafe(32)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(aside, path)  # atomic publish: fails if another replica was first
        except FileExistsError:
            winner = _read_key(path)
            if not winner:
                raise KeyProvisionError(f"{path} exists but holds no key; remove it") from None
            return winner, False
    finally:
        aside.unlink(missing_ok=True)
    os.chmod(path, 0o600)
    return key, True


def _read_key(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyProvisionError(f"cannot read the API key file {path}: {exc.strerror}") from None


def announce_generated_key(key: str, path: Path) -> None:
    """The one-time first-run banner: the only place the key is ever printed."""
    print(
        "\n    eGemma generated an API key (stored owner-only in "
        f"{path}):\n\n        {key}\n\n"
        "    Send it as 'Authorization: Bearer <key>'. Set WORKBENCH_API_KEY to choose your own.\n",
        file=sys.stderr,
        flush=True,
    )


def authorization_headers(request: Request) -> list[str]:
    """Every ``Authorization`` field the client sent, read from the ASGI scope's raw header list.

    ``request.headers.get`` returns only the first of several; a second ``Bearer wrong`` (or a
    second valid key) would then pass unseen, and a proxy that reads the last one would disagree
    with us about who is calling (issue 18, item 13).
    """
    raw: list[tuple[bytes, bytes]] = request.scope.get("headers") or []
    return [value.decode("latin-1") for name, value in raw if name.lower() == b"authorization"]


def presented_key(request: Request) -> str | None:
    """The bearer token of the request, or None when the header is missing, repeated or
    malformed."""
    headers = authorization_headers(request)
    if len(headers) != 1:
        return None
    header = headers[0]
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(ord(c) < 33 for c in token):
        return None
    return token


def _ring(request: Request) -> KeyRing:
    ring: KeyRing = request.app.state.egemma.keys
    return ring


def principal_of(request: Request) -> Principal | None:
    """The caller's principal, or None when the request carries no single, known key."""
    token = presented_key(request)
    return None if token is None else _ring(request).lookup(token)


async def require_api_key(request: Request) -> Principal:
    """FastAPI dependency: 401 unless the request carries one known key. Returns its principal."""
    token = presented_key(request)
    if token is None:
        if len(authorization_headers(request)) > 1:
            raise AuthenticationError("Send exactly one Authorization header.")
        raise AuthenticationError("Missing or malformed Authorization header; use 'Bearer <key>'.")
    principal = _ring(request).lookup(token)
    if principal is None:
        raise AuthenticationError("Invalid API key.")
    request.state.principal = principal
    return principal


def denies(request: Request) -> bool:
    """True when the matched route is not public and the request lacks a known key. Used where
    routing fails before dependencies run (405 for HEAD/OPTIONS/PUT on a protected path), so an
    unauthenticated caller learns nothing about which methods exist. Deny by default."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None or path in request.app.state.egemma.public_paths:
        return False
    return principal_of(request) is None


def is_admin(request: Request) -> bool:
    """For public routes that show more to an operator: True when the request carries an admin
    key. Never raises; a missing or wrong key is simply not an admin."""
    principal = principal_of(request)
    return principal is not None and principal.admin
