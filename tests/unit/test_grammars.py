"""Lark and regex grammars → llama.cpp GBNF, and the recognizer for the same language
(custom tools, issue 13). The GBNF is also compiled by llama.cpp's own grammar parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egemma.services.prompting.grammar_ir import Grammar, GrammarError
from egemma.services.prompting.lark_grammar import lark_to_grammar
from egemma.services.prompting.regex_grammar import regex_to_node

APPLY_PATCH = next(
    t["format"]["definition"]
    for t in json.loads(
        (Path(__file__).resolve().parent.parent / "fixtures" / "codex_request.json").read_text()
    )["tools"]
    if t.get("name") == "apply_patch"
)
PATCHES = [
    "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch\n",
    "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch",
    "*** Begin Patch\n*** Delete File: old.py\n*** End Patch\n",
    "*** Begin Patch\n*** Update File: src/app.py\n*** Move to: src/main.py\n@@ def main():\n"
    "-    pass\n+    return 0\n \n*** End of File\n*** Add File: b\n+\n*** End Patch\n",
    "*** Begin Patch\n*** Update File: x\n*** End Patch\n",
]
NOT_PATCHES = [
    "",
    "*** Begin Patch\n*** End Patch\n",  # hunk+ needs one
    "*** Begin Patch\n*** Add File: a.txt\n*** End Patch\n",  # add_line+ needs one
    "*** Begin Patch\n*** Add File: \n+x\n*** End Patch\n",  # filename needs a character
    "*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\n\n",
    "*** Begin Patch\n*** Update File: x\nno prefix\n*** End Patch\n",
    "```\n*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\n```",
]


def _llama_compiles(gbnf: str) -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    assert llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False) is not None


def test_codex_apply_patch_grammar_converts_exactly() -> None:
    gbnf = lark_to_grammar(APPLY_PATCH).to_gbnf()
    lines = gbnf.splitlines()
    assert lines[0] == "root ::= g-start"
    assert "g-start ::= g-begin-patch g-hunk+ g-end-patch" in lines
    assert 'g-end-patch ::= "*** End Patch" g-LF?' in lines
    assert "g-filename ::= [^\\n]{1,256}" in lines  # /(.+)/: no newline, bounded run
    assert 'g-change-context ::= ("@@" | "@@ " [^\\n]{1,256}) g-LF' in lines
    assert 'g-change-line ::= ("+" | "-" | " ") [^\\n]{0,256} g-LF' in lines
    assert 'g-LF ::= "\\n"' in lines
    _llama_compiles(gbnf)


@pytest.mark.parametrize("patch", PATCHES)
def test_apply_patch_inputs_match(patch: str) -> None:
    assert lark_to_grammar(APPLY_PATCH).matches(patch)


@pytest.mark.parametrize("text", NOT_PATCHES)
def test_other_inputs_do_not_match(text: str) -> None:
    assert not lark_to_grammar(APPLY_PATCH).matches(text)


def test_lark_constructs_real_grammars_use() -> None:
    grammar = lark_to_grammar(
        "// a comment\n"
        '?start: call (";" call)* [";"]\n'
        'call: NAME "(" args? ")"   -> invocation\n'
        'args: value ("," value)~0..3\n'
        '     | "*"\n'
        'value: SIGNED_NUMBER | ESCAPED_STRING | "a".."c"\n'
        "NAME.2: /[a-z_]+/\n"
        "%import common (SIGNED_NUMBER, ESCAPED_STRING)\n"
    )
    for ok in ("f()", 'f(1);g(-2.5,"x\\"y",b);', "h(*)", "f(1,2,3,4)"):
        assert grammar.matches(ok), ok
    for bad in ("f(1,2,3,4,5)", "F()", "f(d)", "f();;"):
        assert not grammar.matches(bad), bad
    _llama_compiles(grammar.to_gbnf())


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ('start: "a"\n%ignore " "', "%ignore"),
        ('start: "a"i', "case-insensitive"),
        ('start: x\nx: x "a" | "a"', "left-recursive"),
        ("start: missing", "undefined"),
        ('start: "a"\n%import common.NOPE', "common.NOPE"),
        ('start: "a"\n%import other.X', "%import common.NAME"),
        ("start: list{x}\n", "templates"),
        ("start: /a(?=b)/", "lookarounds"),
        ("start: /(a)\\1/", "backreferences"),
        ("start: /\\bword/", "word boundaries"),
        ("start: /abc/i", "flags"),
        ("rule", "expected 'name: expansion'"),
        ('nostart: "a"', "start rule"),
    ],
)
def test_what_cannot_be_converted_is_refused(definition: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=problem):
        lark_to_grammar(definition)


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^\d{3}-\d{4}$", ["555-1234"], ["5551234", "555-12345", "55a-1234"]),
        (r"(?:yes|no)(, (?P<why>[a-z ]+))?", ["yes", "no, because"], ["maybe", "yes,"]),
        (r"[A-Fa-f0-9]{2,}", ["ff", "0a9B"], ["f", "fg"]),
        (r"[^\s]+\.py", ["a.py", "pkg/mod.py"], ["a b.py", ".py", "a.pyc"]),
        (r"\x41\u00e9\t.", ["Aé\t!"], ["Aé\t\n", "Ae\t!"]),
        (r"a*?b+?", ["b", "aab"], ["a", ""]),
    ],
)
def test_regex_grammars(pattern: str, good: list[str], bad: list[str]) -> None:
    grammar = Grammar({"start": regex_to_node(pattern)}, "start").validate()
    assert all(grammar.matches(g) for g in good)
    assert not any(grammar.matches(b) for b in bad)
    _llama_compiles(grammar.to_gbnf())


def test_gbnf_escapes_literals() -> None:
    grammar = lark_to_grammar('start: "say \\"hi\\"\\n" /[\\]\\\\^-]/ "\\\\"')
    gbnf = grammar.to_gbnf()
    assert 'g-start ::= "say \\"hi\\"\\n" [\\]\\\\\\^\\-] "\\\\"' in gbnf
    assert grammar.matches('say "hi"\n]\\')
    assert grammar.matches('say "hi"\n-\\')
    _llama_compiles(gbnf)


def test_recognizer_refuses_huge_inputs_instead_of_hanging() -> None:
    grammar = lark_to_grammar("start: /a*/")
    assert grammar.matches("a" * 1000)
    assert not grammar.matches("a" * (256 * 1024 + 1))


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ("start: " + "(" * 100 + '"a"' + ")" * 100, "nested deeper"),
        ("start: /" + "(" * 100 + "a" + ")" * 100 + "/", "nested deeper"),
        ('start: ("a"~1000)~1000', "once repetitions are expanded"),
        ("start: /(a{1000}){1000}/", "once repetitions are expanded"),
    ],
)
def test_hostile_grammars_are_refused_not_compiled(definition: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=problem):
        lark_to_grammar(definition)
