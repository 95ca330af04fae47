"""Python structure in the original eGemma ``/parse-ast`` JSON, field for field.

Rules (``reference/original-egemma.md`` §4): imports sorted and unique from the whole tree,
``from . import x`` skipped; ``imported_symbols`` maps ``asname or name`` to the module; only
module-level functions and classes; params from ``args.args`` only, methods without defaults;
type strings Name → id, Attribute → dotted, Constant → repr, missing → "None", else "unknown";
instantiations are unique capitalised direct calls, method calls ``[obj, method]`` with duplicates.

Differences that do not change the output: every walk is iterative (a 2,000-term expression chain
parses but breaks recursive visitors), and instantiations keep first-seen order where the original
used ``list(set(...))``, whose order changes with hash randomisation.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from typing import Any

from egemma.services.ast.common import AstSourceError

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _preorder(node: ast.AST) -> Iterator[ast.AST]:
    """Depth-first pre-order in field order, the order ``ast.NodeVisitor`` visits, no recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(ast.iter_child_nodes(current))))


def node_name(node: ast.AST | None) -> str:
    """The original's ``_get_node_name``, iterative over attribute chains."""
    if node is None:
        return "None"
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        head = node.id
    elif isinstance(node, ast.Constant):
        head = repr(node.value)
    else:
        head = "unknown"
    return ".".join([head, *reversed(parts)])


def _imports(tree: ast.Module) -> tuple[list[str], dict[str, str]]:
    modules: set[str] = set()
    symbols: dict[str, str] = {}
    for node in _preorder(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            for alias in node.names:
                symbols[alias.asname or alias.name] = node.module
    return sorted(modules), symbols


def _body_dependencies(func: _FunctionNode) -> dict[str, list[Any]]:
    instantiations: dict[str, None] = {}
    method_calls: list[list[str]] = []
    for node in _preorder(func):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name):
            if node.func.id and node.func.id[0].isupper():
                instantiations.setdefault(node.func.id, None)
        elif isinstance(node.func, ast.Attribute):
            method_calls.append([node_name(node.func.value), node.func.attr])
    return {"instantiations": list(instantiations), "method_calls": method_calls}


def _params(func: _FunctionNode, *, with_defaults: bool) -> list[dict[str, str]]:
    args = func.args.args
    defaults = func.args.defaults
    first_default = len(args) - len(defaults)
    params: list[dict[str, str]] = []
    for index, arg in enumerate(args):
        param = {"name": arg.arg, "type": node_name(arg.annotation)}
        if with_defaults and index >= first_default:
            param["default"] = node_name(defaults[index - first_default])
        params.append(param)
    return params


def _function(func: _FunctionNode, *, with_defaults: bool) -> dict[str, Any]:
    return {
        "name": func.name,
        "docstring": ast.get_docstring(func) or "",
        "params": _params(func, with_defaults=with_defaults),
        "returns": node_name(func.returns),
        "decorators": [node_name(d) for d in func.decorator_list],
        "is_async": isinstance(func, ast.AsyncFunctionDef),
        "body_dependencies": _body_dependencies(func),
    }


def _class(node: ast.ClassDef) -> dict[str, Any]:
    methods = [
        _function(item, with_defaults=False)
        for item in node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return {
        "name": node.name,
        "docstring": ast.get_docstring(node) or "",
        "base_classes": [node_name(b) for b in node.bases],
        "methods": methods,
        "decorators": [node_name(d) for d in node.decorator_list],
    }


def parse_tree(source: str) -> ast.Module:
    """``ast.parse`` with every failure mode turned into :class:`AstSourceError`.

    SyntaxError (incl. IndentationError, NUL bytes), ValueError, and the parser's own
    RecursionError / MemoryError on pathological nesting (reliability.md §6).
    """
    try:
        with warnings.catch_warnings():
            # An uploaded file's invalid escapes are its own business, not the server log's.
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(source)
    except SyntaxError as exc:
        raise AstSourceError(
            f"Python syntax error: {exc.msg}", line=exc.lineno, column=exc.offset
        ) from None
    except (RecursionError, MemoryError) as exc:
        raise AstSourceError("Python source is nested too deeply to parse.", recycle=True) from exc
    except ValueError as exc:
        raise AstSourceError(f"Python source could not be parsed: {exc}") from None


def extract_python(source: str) -> dict[str, Any]:
    """The original ``/parse-ast`` document for ``source``."""
    tree = parse_tree(source)
    imports, imported_symbols = _imports(tree)
    functions: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    exports: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            exports.append(node.name)
            functions.append(_function(node, with_defaults=True))
        elif isinstance(node, ast.ClassDef):
            exports.append(node.name)
            classes.append(_class(node))
    return {
        "language": "python",
        "docstring": ast.get_docstring(tree) or "",
        "imports": imports,
        "imported_symbols": imported_symbols,
        "functions": functions,
        "classes": classes,
        "exports": exports,
    }
