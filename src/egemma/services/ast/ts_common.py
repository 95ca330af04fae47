"""Helpers shared by the tree-sitter extractors: node text, comments as docs, the JSON records.

The records mirror the Python document (``python_ast.py``) so clients read every language the
same way; classes carry an extra ``kind`` (class, interface, struct, enum, trait, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tree_sitter import Node

_NAMEISH = re.compile(r"[A-Za-z_$][\w$]*(?:(?:\.|::|\?\.)[A-Za-z_$][\w$]*)*")
_MAX_NAME_BYTES = 256


def text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", errors="replace")


def preorder(node: Node) -> Iterator[Node]:
    """Every node below ``node`` (itself first), source order, no recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def named(node: Node, *types: str) -> list[Node]:
    """Named children of ``node`` whose type is one of ``types`` (all named children if none)."""
    return [c for c in node.named_children if not types or c.type in types]


def simple_name(node: Node | None) -> str:
    """A dotted / ``::`` name as written (``this.repo``, ``std::io``), else ``"unknown"``.

    Mirrors the original's rule for Python, where only names and attribute chains have a name.
    """
    if node is None or node.end_byte - node.start_byte > _MAX_NAME_BYTES:
        return "unknown"
    compact = re.sub(r"\s+", "", text(node))
    return compact if _NAMEISH.fullmatch(compact) else "unknown"


def type_text(node: Node | None, *, strip_colon: bool = False) -> str:
    """A type annotation as written (``None`` when absent, as in the Python document)."""
    if node is None:
        return "None"
    value = " ".join(text(node).split())
    if strip_colon:
        value = value.removeprefix(":").strip()
    return value or "None"


def clean_comment(raw: str) -> str:
    """Comment markers removed: ``/** */``, ``/*! */``, leading ``*``, ``///``, ``//!``, ``//``."""
    raw = raw.strip()
    if raw.startswith("/*"):
        raw = re.sub(r"^/\*[*!]?", "", raw)
        raw = re.sub(r"\*/$", "", raw)
        lines = [re.sub(r"^\s*\*? ?", "", line) for line in raw.splitlines()]
    else:
        lines = [re.sub(r"^//[/!]? ?", "", line.strip()) for line in raw.splitlines()]
    return "\n".join(line.rstrip() for line in lines).strip()


DocFilter = Callable[[str], bool]


def _any_comment(_: str) -> bool:
    return True


def doc_before(
    node: Node,
    *,
    is_doc: DocFilter = _any_comment,
    skip: Iterable[str] = (),
) -> str:
    """The comments directly above ``node`` (no blank line between), cleaned and joined.

    ``skip`` names sibling types that may sit between the comment and the node (attributes,
    decorators).
    """
    skip_types = set(skip)
    parts: list[str] = []
    top_row = node.start_point.row
    sibling = node.prev_named_sibling
    while sibling is not None:
        if sibling.type in skip_types:
            top_row = sibling.start_point.row
            sibling = sibling.prev_named_sibling
            continue
        if "comment" not in sibling.type or sibling.end_point.row < top_row - 1:
            break
        raw = text(sibling)
        if not is_doc(raw):
            break
        parts.append(clean_comment(raw))
        top_row = sibling.start_point.row
        sibling = sibling.prev_named_sibling
    return "\n".join(reversed(parts)).strip()


def leading_comments(root: Node, *, is_doc: DocFilter = _any_comment) -> tuple[list[Node], Node]:
    """The comment nodes at the top of the file and the first non-comment node after them."""
    comments: list[Node] = []
    for child in root.named_children:
        if "comment" not in child.type:
            return comments, child
        if not is_doc(text(child)):
            break
        comments.append(child)
    return comments, root


def join_comments(comments: list[Node]) -> str:
    return "\n".join(clean_comment(text(c)) for c in comments).strip()


def function_record(
    *,
    name: str,
    docstring: str,
    params: list[dict[str, str]],
    returns: str,
    decorators: list[str],
    is_async: bool,
    dependencies: dict[str, list[Any]],
) -> dict[str, Any]:
    return {
        "name": name,
        "docstring": docstring,
        "params": params,
        "returns": returns,
        "decorators": decorators,
        "is_async": is_async,
        "body_dependencies": dependencies,
    }


def class_record(
    *,
    name: str,
    kind: str,
    docstring: str,
    base_classes: list[str],
    decorators: list[str],
) -> dict[str, Any]:
    return {
        "name": name,
        "docstring": docstring,
        "base_classes": base_classes,
        "methods": [],
        "decorators": decorators,
        "kind": kind,
    }


NO_DEPENDENCIES: dict[str, list[Any]] = {"instantiations": [], "method_calls": []}


class Dependencies:
    """Collects ``instantiations`` (unique, first seen) and ``method_calls`` (all, in order)."""

    def __init__(self) -> None:
        self._new: dict[str, None] = {}
        self.calls: list[list[str]] = []

    def instantiation(self, name: str) -> None:
        name = name.split("<", 1)[0].strip()
        if name and name != "unknown":
            self._new.setdefault(name, None)

    def call(self, obj: Node | None, method: str) -> None:
        if method:
            self.calls.append([simple_name(obj), method])

    def result(self) -> dict[str, list[Any]]:
        return {"instantiations": list(self._new), "method_calls": self.calls}


class Document:
    """The top-level document being built for one file."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.docstring = ""
        self.imports: set[str] = set()
        self.imported_symbols: dict[str, str] = {}
        self.functions: list[dict[str, Any]] = []
        self.classes: dict[str, dict[str, Any]] = {}
        self.exports: list[str] = []
        self._exported: set[str] = set()  # membership for add_export: 46,000 exports were O(n²)

    def add_import(self, module: str, symbol: str | None = None) -> None:
        module = module.strip()
        if not module:
            return
        self.imports.add(module)
        if symbol:
            self.imported_symbols[symbol] = module

    def add_export(self, name: str) -> None:
        if name and name not in self._exported:
            self._exported.add(name)
            self.exports.append(name)

    def add_class(self, record: dict[str, Any]) -> dict[str, Any]:
        """Register a class (or merge into one seen earlier, e.g. a Rust ``impl`` block)."""
        existing = self.classes.get(record["name"])
        if existing is None:
            self.classes[record["name"]] = record
            return record
        if existing["kind"] == "impl" and record["kind"] != "impl":
            record["methods"] = existing["methods"] + record["methods"]
            record["base_classes"] = existing["base_classes"] + record["base_classes"]
            self.classes[record["name"]] = record
            return record
        return existing

    def as_dict(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "docstring": self.docstring,
            "imports": sorted(self.imports),
            "imported_symbols": self.imported_symbols,
            "functions": self.functions,
            "classes": list(self.classes.values()),
            "exports": self.exports,
        }
