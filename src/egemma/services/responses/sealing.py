"""``encrypted_content`` for reasoning items: stateless clients keep their chain of thought.

With ``store: false`` and ``include: ["reasoning.encrypted_content"]`` (what Codex CLI sends on
every turn, issue 13) nothing is kept on the server, so the reasoning of a turn can only come
back if the client replays it. Each reasoning item then carries ``encrypted_content``: the
reasoning text, compressed, with an HMAC-SHA256 tag under a key kept in
``DATA_DIR/reasoning_key`` (created owner-only, 0600). A replayed item is verified and read
back; a tampered value or one sealed by another server is a 400 naming the item.

The value is authenticated, not secret (no cipher library is a dependency): it holds the same
text the item already shows in ``content[].reasoning_text``. What the tag guarantees is that a
replayed ``encrypted_content`` is reasoning this server produced; its text replaces whatever
``content`` the replayed item carries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

from egemma.errors import InvalidRequestError, UnavailableError

log = logging.getLogger(__name__)

KEY_FILE = "reasoning_key"
PREFIX = "egr1."
INCLUDE = "reasoning.encrypted_content"
MAX_SEALED_CHARS = 4 * 1024 * 1024
MAX_TEXT_BYTES = 8 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(data_dir: Path) -> bytes:
    """The server's sealing key, generated on first use and stored owner-only."""
    path = data_dir / KEY_FILE
    if path.is_file():
        stored = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(stored) >= 32:
            return stored
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    os.chmod(path, 0o600)
    return key


class ReasoningSeal:
    """Seals reasoning text into ``encrypted_content`` and opens it again. The key is read
    (or created) on first use, so a server that never seals never writes it."""

    def __init__(self, key: bytes | None = None, data_dir: Path | None = None) -> None:
        self._key = key
        self._data_dir = data_dir

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ReasoningSeal:
        return cls(data_dir=data_dir)

    def _secret(self) -> bytes:
        if self._key is None:
            if self._data_dir is None:
                raise ValueError("ReasoningSeal needs a key or a data directory")
            try:
                self._key = load_key(self._data_dir)
            except (OSError, ValueError):
                log.exception("cannot read or create %s", self._data_dir / KEY_FILE)
                raise UnavailableError(
                    "The server cannot read or create its reasoning key.",
                    code="reasoning_key_unavailable",
                    retry_after=30,
                ) from None
        return self._key

    def _tag(self, body: str) -> str:
        mac = hmac.new(self._secret(), (PREFIX + body).encode("ascii"), hashlib.sha256)
        return _b64(mac.digest())

    def seal(self, text: str, *, purpose: str = "reasoning") -> str:
        """``purpose`` is sealed with the text, so a reasoning value can never be replayed as a
        compaction summary or the other way round (compaction.py)."""
        fields = {"text": text} if purpose == "reasoning" else {"text": text, "purpose": purpose}
        payload = json.dumps(fields, ensure_ascii=False).encode("utf-8")
        body = _b64(zlib.compress(payload, 6))
        return f"{PREFIX}{body}.{self._tag(body)}"

    def open(self, sealed: str, *, param: str, purpose: str = "reasoning") -> str:
        """The reasoning text of ``sealed``; a 400 when it is not a value this server sealed."""
        body, tag = self._split(sealed, param)
        if not hmac.compare_digest(tag, self._tag(body)):
            raise _invalid(param)
        try:
            decompressor = zlib.decompressobj()
            payload = decompressor.decompress(_unb64(body), MAX_TEXT_BYTES)
            value: Any = json.loads(payload)
        except (ValueError, zlib.error, binascii.Error):
            raise _invalid(param) from None
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            raise _invalid(param)
        if value.get("purpose", "reasoning") != purpose:
            raise _invalid(param)
        return str(value["text"])

    def _split(self, sealed: str, param: str) -> tuple[str, str]:
        if len(sealed) > MAX_SEALED_CHARS or not sealed.startswith(PREFIX):
            raise _invalid(param)
        body, dot, tag = sealed[len(PREFIX) :].partition(".")
        if not dot or not body or not tag:
            raise _invalid(param)
        return body, tag

    def open_items(self, new_items: list[dict[str, Any]]) -> None:
        """Give every replayed reasoning item carrying ``encrypted_content`` its sealed text
        back, in place. Only the request's own input is checked: items from the store are this
        server's already (and stay readable if the key file is ever replaced)."""
        for index, item in enumerate(new_items):
            sealed = item.get("encrypted_content")
            if item.get("type") == "compaction" and isinstance(sealed, str):
                # Verified here with the request's own index; expanded by turns.py.
                self.open(sealed, param=f"input[{index}].encrypted_content", purpose="compaction")
                continue
            if item.get("type") != "reasoning" or not isinstance(sealed, str):
                continue
            text = self.open(sealed, param=f"input[{index}].encrypted_content")
            item["content"] = [{"type": "reasoning_text", "text": text}]


def _invalid(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        "encrypted_content could not be verified: it was changed, or sealed by another "
        "server. Send reasoning items back exactly as this server returned them.",
        param=param,
        code="invalid_encrypted_content",
    )
