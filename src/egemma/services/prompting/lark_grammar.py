"""Lark grammars → grammar nodes (``grammar_ir``), for custom tools with ``syntax: "lark"``.

The subset real clients send (Codex's ``apply_patch`` grammar is the reference): rules and
terminals (``name: …``, ``NAME: …``, with ``?``/``!`` prefixes and ``.N`` priorities),
alternatives over several lines (``| …``), ``"literals"``, ``"a".."z"`` ranges, ``/regex/``
terminals (flag ``s``), groups ``( … )``, optional ``[ … ]``, ``? * +``, ``~ n`` and
``~ n..m``, aliases (``-> name``, which do not change the language), ``//`` comments and
``%import common.NAME`` for Lark's common terminals. The start rule is ``start``.

Refused with a ``GrammarError`` naming the construct (never silently dropped): ``%ignore``
(it would allow text anywhere between terminals), ``%declare``/``%override``/``%extend``,
templates (``name{…}``), case-insensitive literals (``"…"i``), imports from other modules,
and left recursion (llama.cpp grammars cannot express it).
"""

from __future__ import annotations

import re

from egemma.services.prompting.grammar_ir import Grammar, GrammarError, Node, alt, lit, rep, seq
from egemma.services.prompting.regex_grammar import MAX_NESTING, regex_to_node

MAX_GRAMMAR_CHARS = 64 * 1024

_FLOAT = r"[0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
# Lark's ``common.lark`` terminals, as regular expressions over the same language.
COMMON = {
    "LF": r"\n",
    "CR": r"\r",
    "NEWLINE": r"(\r?\n)+",
    "WS": r"[ \t\f\r\n]+",
    "WS_INLINE": r"[ \t]+",
    "DIGIT": r"[0-9]",
    "HEXDIGIT": r"[a-fA-F0-9]",
    "INT": r"[0-9]+",
    "SIGNED_INT": r"[+-]?[0-9]+",
    "DECIMAL": r"[0-9]+\.[0-9]*|\.[0-9]+",
    "FLOAT": _FLOAT,
    "NUMBER": f"{_FLOAT}|[0-9]+",
    "SIGNED_NUMBER": f"[+-]?({_FLOAT}|[0-9]+)",
    "LCASE_LETTER": r"[a-z]",
    "UCASE_LETTER": r"[A-Z]",
    "LETTER": r"[A-Za-z]",
    "WORD": r"[A-Za-z]+",
    "CNAME": r"[A-Za-z_][A-Za-z0-9_]*",
    "ESCAPED_STRING": r'"([^"\\]|\\.)*"',
    "SH_COMMENT": r"#[^\n]*",
    "CPP_COMMENT": r"//[^\n]*",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regex>/(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<arrow>->)
  | (?P<range>\.\.)
  | (?P<number>\d+)
  | (?P<name>[?!]?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>[()\[\]|?*+~{}])
    """,
    re.X,
)
_DEFINITION = re.compile(r"^\s*([?!]?)([A-Za-z_][A-Za-z0-9_]*)(\.-?\d+)?\s*:(.*)$")
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "f": "\f", "0": "\0"}


def lark_to_grammar(text: str) -> Grammar:
    """Read a Lark grammar; raises ``GrammarError`` for anything that cannot be converted."""
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"the grammar is longer than {MAX_GRAMMAR_CHARS} characters")
    definitions, imports = _split(text)
    rules: dict[str, Node] = {}
    for name in imports:
        rules[name] = regex_to_node(COMMON[name])
    for name, body in definitions:
        if name in rules:
            raise GrammarError(f"'{name}' is defined twice")
        rules[name] = _Expansions(name, body).read()
    return Grammar(rules, "start").validate()


def _split(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Definitions (name, body text) and the common terminals imported."""
    definitions: list[tuple[str, str]] = []
    imports: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        stripped = line.strip()
        if stripped.startswith("%"):
            imports += _directive(stripped, number)
        elif stripped.startswith("|") and definitions:
            name, body = definitions[-1]
            definitions[-1] = (name, f"{body}\n{stripped}")
        else:
            match = _DEFINITION.match(line)
            if match is None:
                raise GrammarError(f"line {number}: expected 'name: expansion', got {stripped!r}")
            definitions.append((match.group(2), match.group(4)))
    return definitions, imports


def _strip_comment(line: str) -> str:
    """``line`` without a ``//`` comment (one outside strings and regexes)."""
    out, pos = [], 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        if match is None:
            out.append(line[pos])
            pos += 1
            continue
        if match.lastgroup == "comment":
            break
        out.append(match.group())
        pos = match.end()
    return "".join(out)


def _directive(line: str, number: int) -> list[str]:
    match = re.fullmatch(r"%import\s+common\s*(?:\.\s*(\w+)|\(\s*([\w\s,]+)\))\s*(->\s*\w+)?", line)
    if match is None:
        word = line.split()[0]
        if word == "%import":
            raise GrammarError(f"line {number}: only '%import common.NAME' is supported")
        raise GrammarError(f"line {number}: {word} is not supported")
    if match.group(3):
        raise GrammarError(f"line {number}: renaming imports is not supported")
    names = [match.group(1)] if match.group(1) else re.split(r"[\s,]+", match.group(2).strip())
    for name in names:
        if name not in COMMON:
            raise GrammarError(f"line {number}: common.{name} is not a known common terminal")
    return names


class _Expansions:
    """Recursive descent over one definition's body."""

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.tokens = self._tokenize(body)
        self.pos = 0
        self.depth = 0

    def fail(self, what: str) -> GrammarError:
        return GrammarError(f"rule '{self.name}': {what}")

    def _tokenize(self, body: str) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(body):
            match = _TOKEN.match(body, pos)
            if match is None:
                raise self.fail(f"unexpected {body[pos]!r}")
            pos = match.end()
            kind = match.lastgroup or ""
            if kind not in ("ws", "comment"):
                tokens.append((kind, match.group()))
        return tokens

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def read(self) -> Node:
        node = self._alternatives()
        if self.peek()[0] != "end":
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def _alternatives(self) -> Node:
        options = [self._aliased()]
        while self.peek() == ("op", "|"):
            self.take()
            options.append(self._aliased())
        return alt(options)

    def _aliased(self) -> Node:
        items: list[Node] = []
        while self.peek()[0] in ("string", "regex", "name") or self.peek() in (
            ("op", "("),
            ("op", "["),
        ):
            items.append(self._repeated(self._atom()))
        if self.peek()[0] == "arrow":  # an alias names the tree node; the language is unchanged
            self.take()
            if self.take()[0] != "name":
                raise self.fail("'->' must be followed by a name")
        return seq(items) if items else ("seq", ())

    def _repeated(self, atom: Node) -> Node:
        kind, value = self.peek()
        if (kind, value) in (("op", "?"), ("op", "*"), ("op", "+")):
            self.take()
            return rep(atom, *{"?": (0, 1), "*": (0, None), "+": (1, None)}[value])
        if (kind, value) == ("op", "~"):
            self.take()
            low = self._number()
            high = low
            if self.peek()[0] == "range":
                self.take()
                high = self._number()
            if high < low:
                raise self.fail("'~ n..m' needs n <= m")
            return rep(atom, low, high)
        return atom

    def _number(self) -> int:
        kind, value = self.take()
        if kind != "number" or int(value) > 1000:
            raise self.fail("'~' needs a count of at most 1000")
        return int(value)

    def _atom(self) -> Node:
        kind, value = self.take()
        if (kind, value) in (("op", "("), ("op", "[")):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.fail(f"groups are nested deeper than {MAX_NESTING}")
            inner = self._alternatives()
            self.depth -= 1
            close = ")" if value == "(" else "]"
            if self.take() != ("op", close):
                raise self.fail(f"missing '{close}'")
            return inner if value == "(" else rep(inner, 0, 1)
        if kind == "string":
            return self._string(value)
        if kind == "regex":
            return self._regex(value)
        if value[0] in "?!":
            raise self.fail(f"unexpected {value!r}")
        if self.peek() == ("op", "{"):
            raise self.fail("templates (name{...}) are not supported")
        return ("ref", value)

    def _string(self, token: str) -> Node:
        if token.endswith("i"):
            raise self.fail(f"case-insensitive literals ({token}) are not supported")
        text = _unescape(token[1:-1])
        if self.peek()[0] != "range":
            return lit(text)
        self.take()
        kind, other = self.take()
        high = _unescape(other[1:-1]) if kind == "string" else ""
        if len(text) != 1 or len(high) != 1 or high < text:
            raise self.fail('a range needs two single characters in order ("a".."z")')
        return ("cls", False, ((text, high),))

    def _regex(self, token: str) -> Node:
        end = token.rindex("/")
        flags = set(token[end + 1 :])
        if flags - {"s"}:
            raise self.fail(f"regex flags {''.join(sorted(flags - {'s'}))} are not supported")
        return regex_to_node(token[1:end].replace("\\/", "/"), dotall="s" in flags)


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _STRING_ESCAPES:
                out.append(_STRING_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "xu":
                width = 2 if nxt == "x" else 4
                out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
                i += 2 + width
                continue
        out.append(c)
        i += 1
    return "".join(out)
