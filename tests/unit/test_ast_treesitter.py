"""JavaScript, TypeScript, Go, Rust and Java through tree-sitter, in the Python document's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from egemma.services.ast import AstService, AstSourceError, normalize_language
from egemma.services.ast.treesitter import extract_treesitter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ast"
TOP_KEYS = [
    "language",
    "docstring",
    "imports",
    "imported_symbols",
    "functions",
    "classes",
    "exports",
]
FUNC_KEYS = [
    "name",
    "docstring",
    "params",
    "returns",
    "decorators",
    "is_async",
    "body_dependencies",
]
NO_DEPS = {"instantiations": [], "method_calls": []}


def _extract(language: str, name: str) -> dict[str, Any]:
    canonical, grammar = normalize_language(language)
    return extract_treesitter(canonical, grammar, (FIXTURES / name).read_text())


def _by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def _check_shape(doc: dict[str, Any]) -> None:
    assert list(doc) == TOP_KEYS
    assert doc["imports"] == sorted(set(doc["imports"]))
    for func in doc["functions"] + [m for c in doc["classes"] for m in c["methods"]]:
        assert list(func) == FUNC_KEYS
        assert set(func["body_dependencies"]) == {"instantiations", "method_calls"}


def test_javascript_full_document() -> None:
    doc = _extract("javascript", "sample.js")
    assert doc == {
        "language": "javascript",
        "docstring": "Cart helpers for the storefront.\nShared by the web and worker bundles.",
        "imports": ["./format", "events"],
        "imported_symbols": {"EventEmitter": "events", "fmt": "./format"},
        "functions": [
            {
                "name": "total",
                "docstring": "Sum of line totals.\n@param {Array} lines",
                "params": [
                    {"name": "lines", "type": "None"},
                    {"name": "taxRate", "type": "None", "default": "0.2"},
                ],
                "returns": "None",
                "decorators": [],
                "is_async": False,
                "body_dependencies": {
                    "instantiations": [],
                    "method_calls": [["lines", "reduce"], ["fmt", "money"]],
                },
            },
            {
                "name": "clear",
                "docstring": "",
                "params": [{"name": "cart", "type": "None"}],
                "returns": "None",
                "decorators": [],
                "is_async": False,
                "body_dependencies": {
                    "instantiations": [],
                    "method_calls": [["cart.items", "clear"]],
                },
            },
        ],
        "classes": [
            {
                "name": "Cart",
                "docstring": "",
                "base_classes": ["EventEmitter"],
                "methods": [
                    {
                        "name": "constructor",
                        "docstring": "",
                        "params": [{"name": "owner", "type": "None"}],
                        "returns": "None",
                        "decorators": [],
                        "is_async": False,
                        "body_dependencies": {"instantiations": ["Map"], "method_calls": []},
                    },
                    {
                        "name": "add",
                        "docstring": "Adds an item.",
                        "params": [
                            {"name": "item", "type": "None"},
                            {"name": "qty", "type": "None"},
                        ],
                        "returns": "None",
                        "decorators": [],
                        "is_async": True,
                        "body_dependencies": {
                            "instantiations": [],
                            "method_calls": [["this.items", "set"], ["this", "emit"]],
                        },
                    },
                ],
                "decorators": [],
                "kind": "class",
            }
        ],
        "exports": ["total", "Cart", "clear"],
    }


def test_typescript() -> None:
    doc = _extract("typescript", "sample.ts")
    _check_shape(doc)
    assert doc["docstring"] == "Module doc."
    assert doc["imports"] == ["./y", "fs", "lodash", "path"]
    assert doc["imported_symbols"] == {
        "fs": "fs",
        "rf": "fs",
        "b": "fs",
        "path": "path",
        "x": "lodash",
    }
    add = _by_name(doc["functions"], "add")
    assert add["docstring"] == "Adds."
    assert add["params"] == [
        {"name": "a", "type": "number"},
        {"name": "b", "type": "None", "default": "2"},
        {"name": "...rest", "type": "string[]"},
    ]
    assert add["returns"] == "Promise<number>"
    assert add["is_async"] is True
    assert add["body_dependencies"] == {
        "instantiations": ["Foo"],
        "method_calls": [["unknown", "then"], ["obj", "method"]],
    }
    svc = _by_name(doc["classes"], "Svc")
    assert svc["base_classes"] == ["Base", "I1", "I2"]
    assert svc["decorators"] == ["Component"]
    run = _by_name(svc["methods"], "run")
    assert run["decorators"] == ["Dec"]
    assert run["docstring"] == "run it"
    assert run["params"] == [{"name": "p", "type": "string"}]
    shape = _by_name(doc["classes"], "Shape")
    assert shape["kind"] == "interface"
    assert [m["name"] for m in shape["methods"]] == ["area"]
    assert doc["exports"] == ["y", "add", "Svc", "arrow"]


def test_tsx_grammar() -> None:
    doc = extract_treesitter("typescript", "tsx", "export const A = (p: P) => <div>{p.x}</div>;")
    assert doc["exports"] == ["A"]
    assert doc["functions"][0]["params"] == [{"name": "p", "type": "P"}]


def test_go() -> None:
    doc = _extract("go", "sample.go")
    _check_shape(doc)
    assert doc["docstring"] == "Package demo does things."
    assert doc["imports"] == ["embed", "fmt", "os", "strings"]
    assert doc["imported_symbols"] == {"fmt": "fmt", "str": "strings", "os": "os"}
    new = _by_name(doc["functions"], "NewServer")
    assert new["docstring"] == "NewServer makes one."
    assert new["params"] == [
        {"name": "a", "type": "int"},
        {"name": "b", "type": "int"},
        {"name": "opts", "type": "...string"},
    ]
    assert new["returns"] == "(*Server, error)"
    assert new["body_dependencies"] == {
        "instantiations": ["Server"],
        "method_calls": [["fmt", "Println"], ["str", "ToUpper"]],
    }
    server = _by_name(doc["classes"], "Server")
    assert (server["kind"], server["docstring"], server["base_classes"]) == (
        "struct",
        "Server serves.",
        ["Base"],
    )
    start = _by_name(server["methods"], "Start")
    assert start["params"][0] == {"name": "s", "type": "*Server"}
    assert start["body_dependencies"]["method_calls"] == [["s", "listen"]]
    runner = _by_name(doc["classes"], "Runner")
    assert runner["kind"] == "interface"
    assert runner["methods"][0]["body_dependencies"] == NO_DEPS
    assert doc["exports"] == ["Server", "Runner", "ID", "NewServer"]


def test_rust() -> None:
    doc = _extract("rust", "sample.rs")
    _check_shape(doc)
    assert doc["docstring"] == "Crate docs.\nMore."
    assert doc["imported_symbols"] == {
        "HashMap": "std::collections",
        "*": "std::io::prelude",
        "R": "std::io",
        "io": "std",
    }
    assert {"alloc", "serde", "std::collections"} <= set(doc["imports"])
    point = _by_name(doc["classes"], "Point")
    assert point["docstring"] == "A point."
    assert point["decorators"] == ["derive(Debug, Clone)"]
    assert point["base_classes"] == ["Shape"]
    new = _by_name(point["methods"], "new")
    assert new["is_async"] is True
    assert new["docstring"] == "Make."
    assert new["body_dependencies"] == {
        "instantiations": ["Point", "Some"],
        "method_calls": [["p", "go"], ["Self", "helper"], ["Foo", "new"]],
    }
    assert _by_name(point["methods"], "area")["params"] == [{"name": "self", "type": "&self"}]
    assert _by_name(doc["classes"], "Shape")["kind"] == "trait"
    assert doc["exports"] == ["Point", "E", "Shape"]
    assert [f["name"] for f in doc["functions"]] == ["private"]


def test_java() -> None:
    doc = _extract("java", "Sample.java")
    _check_shape(doc)
    assert doc["functions"] == []
    assert doc["imports"] == ["java.util", "org.junit.Assert"]
    assert doc["imported_symbols"] == {
        "List": "java.util",
        "*": "java.util",
        "assertEquals": "org.junit.Assert",
    }
    user = _by_name(doc["classes"], "UserService")
    assert user["docstring"] == "A service."
    assert user["decorators"] == ["Service"]
    assert user["base_classes"] == ["Base", "Runnable", "Closeable"]
    ctor, find = user["methods"]
    assert ctor["docstring"] == "Builds it."
    assert ctor["params"] == [{"name": "repo", "type": "Repo"}, {"name": "ids", "type": "int..."}]
    assert find["returns"] == "List<User>"
    assert find["decorators"] == ["Override"]
    assert find["body_dependencies"]["instantiations"] == ["User"]
    assert find["body_dependencies"]["method_calls"][-1] == ["repo", "findAll"]
    kinds = {c["name"]: c["kind"] for c in doc["classes"]}
    assert kinds == {
        "UserService": "class",
        "Shape": "interface",
        "Color": "enum",
        "Pair": "record",
    }
    assert doc["exports"] == ["UserService"]


@pytest.mark.parametrize(
    ("language", "source", "line", "column"),
    [
        ("javascript", "const a = 1;\nfunction f( {\n}", 2, 1),
        ("typescript", "let x: = 5;", 1, 6),
        ("go", "package x\nfunc f() {", 2, 10),
        ("rust", "fn main() { let x = ; }", 1, 19),
        ("java", "class A {\n  void f() { int x = } }", 2, 14),
        ("javascript", "const s = 'éé'; let = ;", 1, 21),
    ],
)
def test_syntax_errors_have_line_and_column(
    language: str, source: str, line: int, column: int
) -> None:
    canonical, grammar = normalize_language(language)
    with pytest.raises(AstSourceError) as info:
        extract_treesitter(canonical, grammar, source)
    assert (info.value.line, info.value.column) == (line, column)
    assert "syntax error" in info.value.message


@pytest.fixture(scope="module")
def service() -> Any:
    svc = AstService()
    yield svc
    svc.close()


@pytest.mark.parametrize(
    ("language", "fixture"),
    [
        ("javascript", "sample.js"),
        ("typescript", "sample.ts"),
        ("go", "sample.go"),
        ("rust", "sample.rs"),
        ("java", "Sample.java"),
    ],
)
def test_through_worker(service: AstService, language: str, fixture: str) -> None:
    doc = service.parse_sync((FIXTURES / fixture).read_bytes(), language)
    assert doc == _extract(language, fixture)


@pytest.mark.parametrize(
    ("language", "source"),
    [
        ("javascript", b"(" * 100000),
        ("rust", b"fn f() {" + b"{" * 50000 + b"}" * 50000 + b"}"),
        ("java", b"class A { int x = " + b"1+" * 50000 + b"1; }"),
        ("go", b"package x\nvar x = " + b"a." * 100000 + b"b\n"),
        ("typescript", b"let x = " + b"[" * 100000),
    ],
)
def test_pathological_inputs_end_cleanly(service: AstService, language: str, source: bytes) -> None:
    try:
        doc = service.parse_sync(source, language)
    except AstSourceError:
        pass
    else:
        _check_shape(doc)
    assert service.parse_sync(b"let a = 1;", "javascript")["language"] == "javascript"
