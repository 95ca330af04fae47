"""JavaScript, TypeScript, Go, Rust and Java through tree-sitter grammars from PyPI.

Each grammar wheel (``tree-sitter-javascript`` …) ships a compiled parser; ``tree-sitter`` binds
it. Tree-sitter always returns a tree and marks what it could not parse with ERROR / MISSING
nodes; any such node makes the file a syntax error, reported at the first one's line and column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tree_sitter import Language, Node, Parser

from egemma.services.ast import ts_go, ts_java, ts_javascript, ts_rust
from egemma.services.ast.common import AstSourceError
from egemma.services.ast.ts_common import text

_DISPLAY = {
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "go": "Go",
    "rust": "Rust",
    "java": "Java",
}
_EXTRACTORS: dict[str, Callable[[Node, str], dict[str, Any]]] = {
    "javascript": ts_javascript.extract,
    "typescript": ts_javascript.extract,
    "go": ts_go.extract,
    "rust": ts_rust.extract,
    "java": ts_java.extract,
}
_languages: dict[str, Language] = {}


def _load(grammar: str) -> Language:
    """The compiled grammar, imported on first use (each is its own wheel)."""
    if grammar not in _languages:
        if grammar == "javascript":
            import tree_sitter_javascript as mod

            capsule = mod.language()
        elif grammar in ("typescript", "tsx"):
            import tree_sitter_typescript as ts_mod

            capsule = ts_mod.language_tsx() if grammar == "tsx" else ts_mod.language_typescript()
        elif grammar == "go":
            import tree_sitter_go as go_mod

            capsule = go_mod.language()
        elif grammar == "rust":
            import tree_sitter_rust as rust_mod

            capsule = rust_mod.language()
        elif grammar == "java":
            import tree_sitter_java as java_mod

            capsule = java_mod.language()
        else:
            raise KeyError(grammar)
        _languages[grammar] = Language(capsule)
    return _languages[grammar]


def first_error(root: Node) -> Node | None:
    """The first ERROR or MISSING node in source order, descending only into erroneous subtrees."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            return node
        stack.extend(reversed([c for c in node.children if c.has_error or c.is_missing]))
    return None


def _syntax_error(node: Node, source: bytes, display: str) -> AstSourceError:
    row, byte_col = node.start_point
    line_start = node.start_byte - byte_col
    column = len(source[line_start : node.start_byte].decode("utf-8", errors="replace")) + 1
    if node.is_missing:
        message = f"{display} syntax error: missing '{node.type}'"
    else:
        snippet = text(node).strip().splitlines()[0][:30] if text(node).strip() else ""
        message = (
            f"{display} syntax error: unexpected '{snippet}'"
            if snippet
            else (f"{display} syntax error")
        )
    return AstSourceError(message, line=row + 1, column=column)


def extract_treesitter(language: str, grammar: str, source: str) -> dict[str, Any]:
    """The document for ``source`` in ``language`` (parsed with ``grammar``, e.g. ``tsx``)."""
    data = source.encode("utf-8")
    tree = Parser(_load(grammar)).parse(data)
    root = tree.root_node
    if root.has_error:
        bad = first_error(root) or root
        raise _syntax_error(bad, data, _DISPLAY[language])
    return _EXTRACTORS[language](root, language)
