"""Token-id ``input`` on ``/v1/embeddings`` means OpenAI's tokens: cl100k_base.

OpenAI's embedding models read cl100k_base ids, and clients send them: LangChain's
``OpenAIEmbeddings`` tokenizes with tiktoken by default and posts the id arrays. Read as our
model's own ids they would silently become other text (issue 13). So ids are decoded as
cl100k_base and the text is embedded.

The vocabulary never comes from tiktoken's download host: ``quicktok-v1`` (a model package
already installed for Harmony's o200k file) ships ``quicktok/data/cl100k.vocab``, which
converts byte for byte into ``cl100k_base.tiktoken``; the sha256 is the one tiktoken itself
checks. tiktoken decodes. Both load on the first token-array request, never at import.

A chunk cut at a token boundary (LangChain splits long texts every 8191 tokens) can end or
start inside a multi-byte character: such partial bytes at either end are dropped, since the
neighbouring chunk carries the rest. Invalid UTF-8 anywhere else is a 400.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from egemma.errors import InvalidRequestError

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)

ENCODING_NAME = "cl100k_base"
# The hash tiktoken checks for cl100k_base.tiktoken (tiktoken_ext/openai_public.py).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
MAX_PARTIAL = 3  # a UTF-8 character is at most 4 bytes: at most 3 of them dangle at an edge


class TokenVocabularyError(RuntimeError):
    """The cl100k_base vocabulary cannot be loaded (a package is missing or its file is bad)."""


def quicktok_cl100k_path() -> Path:
    """``quicktok/data/cl100k.vocab``, located without importing quicktok's extension."""
    spec = importlib.util.find_spec("quicktok")
    if spec is None or not spec.submodule_search_locations:
        raise TokenVocabularyError(
            "package quicktok-v1 is not installed; it carries the cl100k_base vocabulary"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cl100k.vocab"
    if not path.is_file():
        raise TokenVocabularyError(f"quicktok's cl100k vocabulary is missing: {path}")
    return path


def cl100k_tiktoken_file() -> bytes:
    """The exact bytes of tiktoken's ``cl100k_base.tiktoken`` (hash verified)."""
    from egemma.services.prompting.harmony_vocab import HarmonyVocabError, convert_quicktok_vocab

    source = quicktok_cl100k_path()
    try:
        content = convert_quicktok_vocab(source.read_bytes())
    except HarmonyVocabError as exc:
        raise TokenVocabularyError(f"{source}: {exc}") from None
    actual = hashlib.sha256(content).hexdigest()
    if actual != CL100K_SHA256:
        raise TokenVocabularyError(
            f"{source} converts to sha256 {actual}, expected {CL100K_SHA256}"
        )
    return content


def _load_encoding() -> tiktoken.Encoding:
    try:
        import tiktoken
    except ImportError:
        raise TokenVocabularyError("package tiktoken is not installed") from None
    ranks: dict[bytes, int] = {}
    for line in cl100k_tiktoken_file().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=CL100K_SPECIAL,
    )


def _trim_partial(data: bytes) -> bytes:
    """Drop a character cut in two at either end (continuation bytes first, a lead last)."""
    start = 0
    while start < min(MAX_PARTIAL, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1
    end = len(data)
    for back in range(1, min(MAX_PARTIAL, end - start) + 1):
        byte = data[end - back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # a lead byte: is its character complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < need:
                end -= back
            break
    return data[start:end]


_SPECIAL_IDS = frozenset(CL100K_SPECIAL.values())
_FIRST_SPECIAL = 100256  # 100256 and 100261..100275 are unassigned


def is_cl100k_id(token: int) -> bool:
    return 0 <= token < _FIRST_SPECIAL or token in _SPECIAL_IDS


class OpenAITokenDecoder:
    """cl100k_base ids → text, loaded once on first use (thread-safe)."""

    def __init__(self) -> None:
        self._encoding: tiktoken.Encoding | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def _get(self) -> tiktoken.Encoding:
        with self._lock:
            if self._encoding is None and self._error is None:
                try:
                    self._encoding = _load_encoding()
                    log.info("loaded the %s vocabulary for token-id embedding input", ENCODING_NAME)
                except TokenVocabularyError as exc:
                    self._error = str(exc)
                    log.error("token-id embedding input is unavailable: %s", exc)
            if self._encoding is None:
                raise InvalidRequestError(
                    f"Token-id input cannot be decoded on this server ({self._error}); "
                    "send the text instead.",
                    param="input",
                    code="token_input_unavailable",
                )
            return self._encoding

    def decode(self, arrays: Sequence[Sequence[int]], params: Sequence[str]) -> list[str]:
        """Blocking (off the event loop for large inputs): one text per id array."""
        encoding = self._get()
        texts = []
        for ids, param in zip(arrays, params, strict=True):
            for j, token in enumerate(ids):
                if not is_cl100k_id(token):
                    raise InvalidRequestError(
                        f"{param}[{j}]: {token} is not a {ENCODING_NAME} token id "
                        f"(token ids are read as OpenAI's {ENCODING_NAME}).",
                        param=param,
                        code="invalid_token_id",
                    )
            data = _trim_partial(encoding.decode_bytes(list(ids)))
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(
                    f"{param}: the {ENCODING_NAME} tokens decode to invalid UTF-8 "
                    f"({exc.reason} at byte {exc.start}).",
                    param=param,
                    code="invalid_token_sequence",
                ) from None
        return texts
