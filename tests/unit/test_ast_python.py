"""Python extraction: the original /parse-ast JSON field for field (original-egemma.md §4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egemma.services.ast.common import AstSourceError
from egemma.services.ast.python_ast import extract_python

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ast"


def test_fixture_matches_full_expected_json() -> None:
    source = (FIXTURES / "inventory.py.txt").read_text()
    expected = json.loads((FIXTURES / "inventory.expected.json").read_text())
    result = extract_python(source)
    assert result == expected
    # Key order is part of the shape clients see.
    assert json.dumps(result) == json.dumps(expected)


def test_original_example() -> None:
    """The original test_parse_ast_python_success input, asserted completely."""
    source = (
        '"""A test module for parsing."""\n'
        "import os\n"
        "from typing import List\n\n"
        "class MyClass:\n"
        '    """A simple example class."""\n'
        "    def __init__(self):\n"
        "        pass\n\n"
        "    def my_method(self, arg1: int) -> int:\n"
        "        return arg1 * 2\n\n"
        "def my_function(param1, param2) -> int:\n"
        '    """A standalone function."""\n'
        "    return param1 + param2\n"
    )
    empty = {"instantiations": [], "method_calls": []}
    assert extract_python(source) == {
        "language": "python",
        "docstring": "A test module for parsing.",
        "imports": ["os", "typing"],
        "imported_symbols": {"List": "typing"},
        "functions": [
            {
                "name": "my_function",
                "docstring": "A standalone function.",
                "params": [{"name": "param1", "type": "None"}, {"name": "param2", "type": "None"}],
                "returns": "int",
                "decorators": [],
                "is_async": False,
                "body_dependencies": empty,
            }
        ],
        "classes": [
            {
                "name": "MyClass",
                "docstring": "A simple example class.",
                "base_classes": [],
                "methods": [
                    {
                        "name": "__init__",
                        "docstring": "",
                        "params": [{"name": "self", "type": "None"}],
                        "returns": "None",
                        "decorators": [],
                        "is_async": False,
                        "body_dependencies": empty,
                    },
                    {
                        "name": "my_method",
                        "docstring": "",
                        "params": [
                            {"name": "self", "type": "None"},
                            {"name": "arg1", "type": "int"},
                        ],
                        "returns": "int",
                        "decorators": [],
                        "is_async": False,
                        "body_dependencies": empty,
                    },
                ],
                "decorators": [],
            }
        ],
        "exports": ["MyClass", "my_function"],
    }


def test_empty_source() -> None:
    assert extract_python("") == {
        "language": "python",
        "docstring": "",
        "imports": [],
        "imported_symbols": {},
        "functions": [],
        "classes": [],
        "exports": [],
    }


def test_syntax_error_has_line_and_column() -> None:
    with pytest.raises(AstSourceError) as info:
        extract_python("x = 1\ndef f(:\n    pass\n")
    assert info.value.line == 2
    assert info.value.column == 7
    assert info.value.message.startswith("Python syntax error:")
    assert "line 2, column 7" in info.value.describe()


def test_long_expression_chain_is_walked_without_recursion() -> None:
    """2,000-term chains parse but break recursive visitors (reliability.md §6)."""
    chain = "obj" + ".a" * 2000
    source = f"def f():\n    {chain}.go()\n    return " + "+".join(["x"] * 2000) + "\n"
    result = extract_python(source)
    calls = result["functions"][0]["body_dependencies"]["method_calls"]
    assert calls == [[chain, "go"]]


def test_instantiations_unique_in_first_seen_order() -> None:
    source = "def f():\n    B(); A(); B(); a(); x.Y()\n"
    deps = extract_python(source)["functions"][0]["body_dependencies"]
    assert deps == {"instantiations": ["B", "A"], "method_calls": [["x", "Y"]]}
