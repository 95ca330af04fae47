"""Shared pieces of AST extraction: the "bad source" error and the language names."""

from __future__ import annotations

from typing import Any

from egemma.errors import InvalidRequestError, error_body

# Canonical names answered in the document's "language" field, in the order we document them.
SUPPORTED_LANGUAGES: tuple[str, ...] = ("python", "javascript", "typescript", "go", "rust", "java")

_ALIASES = {
    "py": "python",
    "js": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "ts": "typescript",
    "golang": "go",
    "rs": "rust",
}
# Grammar variants: TSX needs its own grammar but answers as "typescript".
GRAMMAR_VARIANTS = {"tsx": "tsx"}


class AstSourceError(InvalidRequestError):
    """The source cannot be turned into a document: syntax error, too large, too deep, too slow.

    ``line`` and ``column`` are 1-based when known. ``recycle`` tells the worker process to exit
    after answering (its interpreter state may be degraded after MemoryError/RecursionError).
    """

    default_code = "invalid_source"

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        recycle: bool = False,
    ) -> None:
        super().__init__(message, param="file", code="syntax_error" if line is not None else None)
        self.line = line
        self.column = column
        self.recycle = recycle

    def body(self) -> dict[str, Any]:
        return error_body(self.describe(), self.error_type, self.param, self.code)

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "line": self.line, "column": self.column}

    def describe(self) -> str:
        """The message with its position, as shown to clients."""
        if self.line is None:
            return self.message
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{self.message} ({where})"


class UnsupportedLanguageError(InvalidRequestError):
    """The requested language has no extractor (a 400)."""

    default_code = "unsupported_language"

    def __init__(self, language: str) -> None:
        shown = language[:40]
        super().__init__(
            f"Language '{shown}' not supported. Supported: {', '.join(SUPPORTED_LANGUAGES)}.",
            param="language",
        )


def normalize_language(language: str) -> tuple[str, str]:
    """``(canonical, grammar)`` for a client's language name, case-insensitive.

    >>> normalize_language("TSX")
    ('typescript', 'tsx')
    """
    key = language.strip().lower()
    if key in GRAMMAR_VARIANTS:
        return "typescript", GRAMMAR_VARIANTS[key]
    key = _ALIASES.get(key, key)
    if key not in SUPPORTED_LANGUAGES:
        raise UnsupportedLanguageError(language)
    return key, key
