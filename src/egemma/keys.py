"""Named API keys: the keys file in ``DATA_DIR``, hashed at rest, and the ring the server checks.

Besides the primary key (``WORKBENCH_API_KEY`` or the generated ``DATA_DIR/api_key``, always the
admin named ``admin``), ``DATA_DIR/keys.json`` (owner-only, 0600) holds named keys, each with
its SHA-256 digest (never the key: it is printed once, when created), an admin flag and optional
rate limits per bucket. Keys are 256-bit random tokens, so a plain SHA-256 is as strong as a slow
KDF here and keeps each check a microsecond.

The server re-reads the file when it changes (one ``stat`` per authenticated request), so a
revoked key stops working at its next request without a restart. A file that cannot be read or
parsed fails closed: only the primary key is accepted until it is fixed (logged once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egemma.store.base import Owner

log = logging.getLogger(__name__)

KEYS_FILE = "keys.json"
PRIMARY_NAME = "admin"  # the WORKBENCH_API_KEY / generated key; rows from before scoping
BUCKETS = ("embed", "summarize", "chat", "conversation")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMAT_VERSION = 1


class KeyFileError(Exception):
    """The keys file or a key operation is invalid; the message is for the operator."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Limit:
    calls: int
    seconds: int


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (rate-limit and store identity), never its secret."""

    name: str
    admin: bool = False
    limits: dict[str, Limit] = field(default_factory=dict)  # bucket → override

    @property
    def owner(self) -> Owner:
        return Owner(self.name, admin=self.admin)


@dataclass(frozen=True)
class StoredKey:
    principal: Principal
    sha256: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.principal.name,
            "sha256": self.sha256.hex(),
            "admin": self.principal.admin,
            "limits": {
                b: {"calls": lim.calls, "seconds": lim.seconds}
                for b, lim in sorted(self.principal.limits.items())
            },
            "created_at": self.created_at,
        }


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise KeyFileError(
            f"invalid key name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() == PRIMARY_NAME:
        raise KeyFileError(f"'{PRIMARY_NAME}' is the primary key (WORKBENCH_API_KEY); pick another")
    return name


def _limit(bucket: str, value: Any) -> Limit:
    if bucket not in BUCKETS:
        raise KeyFileError(f"unknown rate-limit bucket {bucket!r}; known: {', '.join(BUCKETS)}")
    calls, seconds = value.get("calls"), value.get("seconds")
    for v in (calls, seconds):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1_000_000:
            raise KeyFileError(f"limit {bucket}: calls and seconds must be integers 1..1000000")
    return Limit(calls, seconds)


def _parse_entry(entry: Any) -> StoredKey:
    if not isinstance(entry, dict):
        raise KeyFileError("each key must be an object")
    name = check_name(str(entry.get("name", "")))
    try:
        sha = bytes.fromhex(str(entry["sha256"]))
    except (KeyError, ValueError):
        raise KeyFileError(f"key {name!r}: sha256 must be 64 hex digits") from None
    if len(sha) != 32:
        raise KeyFileError(f"key {name!r}: sha256 must be 64 hex digits")
    limits = entry.get("limits") or {}
    if not isinstance(limits, dict):
        raise KeyFileError(f"key {name!r}: limits must be an object")
    parsed = {b: _limit(b, v if isinstance(v, dict) else {}) for b, v in limits.items()}
    principal = Principal(name, admin=entry.get("admin") is True, limits=parsed)
    return StoredKey(principal, sha, int(entry.get("created_at") or 0))


def parse_keys(text: str) -> list[StoredKey]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"expected an object with version {FORMAT_VERSION}")
    entries = data.get("keys")
    if not isinstance(entries, list):
        raise KeyFileError("'keys' must be a list")
    keys = [_parse_entry(e) for e in entries]
    names = [k.principal.name for k in keys]
    if len(set(names)) != len(names):
        raise KeyFileError("duplicate key names")
    return keys


def read_keys(path: Path) -> list[StoredKey]:
    """The keys in ``path``; none when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_keys(text)


def write_keys(path: Path, keys: list[StoredKey]) -> None:
    """Replace the file atomically (write, fsync, rename), owner-only from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {"version": FORMAT_VERSION, "keys": [k.to_json() for k in keys]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write between concurrent ``egemma keys`` runs."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_key(
    path: Path, name: str, *, admin: bool = False, limits: dict[str, Limit] | None = None
) -> str:
    """Create a key, store its digest and return the key (the only time it exists in clear)."""
    check_name(name)
    key = "egk-" + secrets.token_urlsafe(32)
    with _locked(path):
        keys = read_keys(path)
        if any(k.principal.name == name for k in keys):
            raise KeyFileError(f"a key named {name!r} exists; revoke it first")
        entry = StoredKey(Principal(name, admin, dict(limits or {})), digest(key), int(time.time()))
        write_keys(path, [*keys, entry])
    return key


def revoke_key(path: Path, name: str) -> bool:
    with _locked(path):
        keys = read_keys(path)
        kept = [k for k in keys if k.principal.name != name]
        if len(kept) == len(keys):
            return False
        write_keys(path, kept)
    return True


class KeyRing:
    """The keys the server accepts, reloaded when the keys file changes."""

    def __init__(self, primary: str, path: Path) -> None:
        self._primary = StoredKey(Principal(PRIMARY_NAME, admin=True), digest(primary), 0)
        self.path = path
        self._keys: list[StoredKey] = []
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) last loaded
        self._problem: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """One ``stat``; re-read only when the file changed (``write_keys`` renames, so every
        save has a new inode)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._seen = [], None
            return
        except OSError as exc:
            self._fail(f"cannot stat: {exc.strerror}")
            return
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen
        if st.st_mode & 0o077:
            log.warning("keys file %s is readable by others; chmod 600 it", self.path)
        try:
            self._keys = read_keys(self.path)
        except (KeyFileError, OSError, UnicodeDecodeError) as exc:
            self._fail(str(exc))
            return
        if self._problem is not None:
            log.warning("keys file %s usable again", self.path)
        self._problem = None
        log.info("keys file %s: %d named key(s)", self.path, len(self._keys))

    def _fail(self, reason: str) -> None:
        self._keys = []  # fail closed: a revoke must never be undone by a broken file
        if self._problem != reason:
            log.error(
                "keys file %s unusable (%s); only the primary key is accepted", self.path, reason
            )
        self._problem = reason

    def lookup(self, token: str) -> Principal | None:
        """The principal whose key is ``token``. Every digest is compared (constant time each),
        so the answer's timing does not depend on which key matched."""
        self.refresh()
        got = digest(token)
        found: Principal | None = None
        for key in (self._primary, *self._keys):
            if hmac.compare_digest(got, key.sha256):
                found = key.principal
        return found
