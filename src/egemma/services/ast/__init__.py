"""AST extraction for ``POST /parse-ast``: Python by ``ast`` (the original's JSON), JavaScript,
TypeScript, Go, Rust and Java by tree-sitter, each parse in a bounded worker process."""

from egemma.services.ast.common import (
    SUPPORTED_LANGUAGES,
    AstSourceError,
    UnsupportedLanguageError,
    normalize_language,
)
from egemma.services.ast.runner import (
    AstInternalError,
    AstLimits,
    AstService,
    AstSourceTooLargeError,
    AstUnavailableError,
    decode_source,
)

__all__ = [
    "SUPPORTED_LANGUAGES",
    "AstInternalError",
    "AstLimits",
    "AstService",
    "AstSourceError",
    "AstSourceTooLargeError",
    "AstUnavailableError",
    "UnsupportedLanguageError",
    "decode_source",
    "normalize_language",
]
