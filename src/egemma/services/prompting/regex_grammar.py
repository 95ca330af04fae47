"""Regular expressions → grammar nodes (``grammar_ir``): Lark's ``/.../`` terminals and custom
tools with ``syntax: "regex"``.

The subset real grammars use: literals and escapes, ``.``, classes (``[a-z]``, ``[^\\n]``,
``\\d \\w \\s``), groups (capturing, ``(?:…)``, ``(?P<name>…)``), ``|``, and the quantifiers
``* + ? {n} {n,} {n,m}`` (lazy forms mean the same language). The whole input must match, so
a leading ``^`` and a trailing ``$`` are accepted. Lookarounds, backreferences, word
boundaries and inline flags cannot be expressed as a context-free grammar: they are refused
(``GrammarError``), never dropped.
"""

from __future__ import annotations

from egemma.services.prompting.grammar_ir import GrammarError, Node, alt, lit, rep, seq

_DIGIT = (("0", "9"),)
_WORD = (("0", "9"), ("A", "Z"), ("_", "_"), ("a", "z"))
_SPACE = ((" ", " "), ("\t", "\r"))
_CLASSES = {
    "d": (False, _DIGIT),
    "D": (True, _DIGIT),
    "w": (False, _WORD),
    "W": (True, _WORD),
    "s": (False, _SPACE),
    "S": (True, _SPACE),
}
_CONTROL = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0", "a": "\a"}
_REFUSED = {
    "b": "word boundaries (\\b)",
    "B": "word boundaries (\\B)",
    "A": "\\A",
    "Z": "\\Z",
    "z": "\\z",
    "G": "\\G",
}
MAX_REPEAT = 1000
MAX_NESTING = 64


def regex_to_node(pattern: str, *, dotall: bool = False) -> Node:
    """Convert ``pattern`` (matched as a whole) into a grammar node."""
    return _Reader(pattern, dotall).read()


class _Reader:
    def __init__(self, pattern: str, dotall: bool) -> None:
        self.src = pattern
        self.pos = 0
        self.dotall = dotall
        self.depth = 0

    def fail(self, what: str) -> GrammarError:
        return GrammarError(f"regex /{self.src}/: {what} (at position {self.pos})")

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def read(self) -> Node:
        if self.src.startswith("^"):
            self.pos = 1
        node = self._alternation()
        if self.peek() == "$" and self.pos == len(self.src) - 1:
            self.pos += 1
        if self.pos != len(self.src):
            raise self.fail(f"unexpected {self.peek()!r}")
        return node

    def _alternation(self) -> Node:
        options = [self._sequence()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self._sequence())
        return alt(options)

    def _sequence(self) -> Node:
        items: list[Node] = []
        while self.peek() and self.peek() not in "|)":
            if self.peek() == "$" and self.pos == len(self.src) - 1:
                break
            items.append(self._quantified(self._atom()))
        return seq(items) if items else ("seq", ())

    def _quantified(self, atom: Node) -> Node:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and self._looks_like_count():
            bounds = self._count()
        else:
            return atom
        if self.peek() in ("?", "+"):  # lazy or possessive: the same language
            self.pos += 1
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("a quantifier cannot follow a quantifier")
        return rep(atom, *bounds)

    def _looks_like_count(self) -> bool:
        end = self.src.find("}", self.pos)
        body = self.src[self.pos + 1 : end] if end > 0 else ""
        return (
            bool(body)
            and all(p.isdigit() or p == "" for p in body.split(",", 1))
            and (body[0].isdigit())
        )

    def _count(self) -> tuple[int, int | None]:
        end = self.src.index("}", self.pos)
        body = self.src[self.pos + 1 : end]
        self.pos = end + 1
        low_text, _, high_text = body.partition(",")
        low = int(low_text)
        high = low if "," not in body else (int(high_text) if high_text else None)
        if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
            raise self.fail(f"repetition counts must be ordered and at most {MAX_REPEAT}")
        return low, high

    def _atom(self) -> Node:
        c = self.peek()
        self.pos += 1
        if c == "(":
            return self._group()
        if c == "[":
            return self._class()
        if c == ".":
            return (
                ("cls", False, (("\0", "\U0010ffff"),))
                if self.dotall
                else ("cls", True, (("\n", "\n"),))
            )
        if c == "\\":
            return self._escape()
        if c in "*+?{":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c in "^$":
            raise self.fail(f"anchors ({c}) inside a pattern cannot be expressed")
        return lit(c)

    def _group(self) -> Node:
        if self.src.startswith("?:", self.pos):
            self.pos += 2
        elif self.src.startswith("?P<", self.pos) or self.src.startswith("?<", self.pos):
            close = self.src.find(">", self.pos)
            name = self.src[self.pos + 3 if self.src[self.pos + 1] == "P" else self.pos + 2 : close]
            if close < 0 or not name.isidentifier():
                raise self.fail("lookbehind assertions cannot be expressed")
            self.pos = close + 1
        elif self.peek() == "?":
            raise self.fail("lookarounds, inline flags and conditionals cannot be expressed")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"groups are nested deeper than {MAX_NESTING}")
        node = self._alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return node

    def _escape(self) -> Node:
        c = self.peek()
        self.pos += 1
        if not c:
            raise self.fail("a pattern cannot end with '\\'")
        if c in _CLASSES:
            negated, ranges = _CLASSES[c]
            return ("cls", negated, ranges)
        return lit(self._escaped_char(c))

    def _escaped_char(self, c: str) -> str:
        if c in _CONTROL:
            return _CONTROL[c]
        if c in _REFUSED:
            raise self.fail(f"{_REFUSED[c]} cannot be expressed")
        if c.isdigit():
            raise self.fail("backreferences cannot be expressed")
        if c in "xu":
            width = 2 if c == "x" else 4
            digits = self.src[self.pos : self.pos + width]
            try:
                value = int(digits, 16)
            except ValueError:
                raise self.fail(f"bad \\{c} escape") from None
            self.pos += width
            return chr(value)
        if c.isalpha():
            raise self.fail(f"unknown escape \\{c}")
        return c

    def _class(self) -> Node:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise self.fail("missing ']'")
            if c == "]" and not first:
                self.pos += 1
                break
            first = False
            ranges.extend(self._class_item())
        return ("cls", negated, tuple(ranges))

    def _class_item(self) -> list[tuple[str, str]]:
        lo = self._class_char()
        if isinstance(lo, tuple):
            return list(lo)
        if self.peek() == "-" and self.src[self.pos + 1 : self.pos + 2] not in ("]", ""):
            self.pos += 1
            hi = self._class_char()
            if isinstance(hi, tuple) or hi < lo:
                raise self.fail("bad character range")
            return [(lo, hi)]
        return [(lo, lo)]

    def _class_char(self) -> str | tuple[tuple[str, str], ...]:
        c = self.peek()
        self.pos += 1
        if c != "\\":
            if c == "[" and self.peek() == ":":
                raise self.fail("POSIX classes ([:alpha:]) are not supported")
            return c
        e = self.peek()
        self.pos += 1
        if e in _CLASSES:
            negated, ranges = _CLASSES[e]
            if negated:
                raise self.fail(f"\\{e} inside a character class is not supported")
            return ranges
        if e == "b":
            return "\b"
        return self._escaped_char(e)
