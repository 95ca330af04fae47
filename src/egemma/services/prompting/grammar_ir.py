"""A small grammar form shared by the Lark and regex readers: GBNF out, and a recognizer.

Custom tools (``{"type": "custom", "format": {"type": "grammar", "syntax": "lark" | "regex"}}``)
constrain their input with a grammar. Both syntaxes are read into these nodes
(``lark_grammar.py``, ``regex_grammar.py``), which are then

- written as llama.cpp GBNF, so decoding can only produce matching input, and
- matched directly (``Grammar.matches``), so an unconstrained call (``tool_choice: auto``) is
  checked against the same grammar before it reaches the client.

Nodes are plain tuples: ``("lit", text)``, ``("cls", negated, ((lo, hi), ...))`` for one
character, ``("seq", items)``, ``("alt", options)``, ``("rep", node, min, max | None)`` and
``("ref", name)``. The language is the context-free one (what OpenAI's own grammar engine
constrains to), not what a particular Lark lexer would tokenize.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Node = tuple[Any, ...]
EMPTY: Node = ("seq", ())
MAX_CHECK_CHARS = 64 * 1024
MAX_RUN = 256
# Repetition counts are expanded into rules by llama.cpp: the grammar's size once they are.
MAX_EXPANDED = 100_000


class GrammarError(ValueError):
    """The grammar uses something that cannot be converted faithfully; the message says what."""


def lit(text: str) -> Node:
    return ("lit", text)


def seq(items: list[Node]) -> Node:
    flat: list[Node] = []
    for item in items:
        flat.extend(item[1] if item[0] == "seq" else (item,))
    return flat[0] if len(flat) == 1 else ("seq", tuple(flat))


def alt(options: list[Node]) -> Node:
    return options[0] if len(options) == 1 else ("alt", tuple(options))


def rep(node: Node, low: int, high: int | None) -> Node:
    return ("rep", node, low, high)


# --------------------------------------------------------------------------------------------
# GBNF
# --------------------------------------------------------------------------------------------

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _char(c: str, specials: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c in specials:
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{ord(c):02X}"
    return c


def _class_gbnf(negated: bool, ranges: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for lo, hi in ranges:
        a = _char(lo, "]^-[")
        parts.append(a if lo == hi else f"{a}-{_char(hi, ']^-[')}")
    return "[" + ("^" if negated else "") + "".join(parts) + "]"


def _gbnf(node: Node, names: dict[str, str]) -> str:
    kind = node[0]
    if kind == "lit":
        return '"' + "".join(_char(c, '"') for c in node[1]) + '"'
    if kind == "cls":
        return _class_gbnf(node[1], node[2])
    if kind == "ref":
        return names[node[1]]
    if kind == "seq":
        return " ".join(_grouped(i, names) for i in node[1]) if node[1] else '""'
    if kind == "alt":
        return " | ".join(_gbnf(o, names) for o in node[1])
    inner = _grouped(node[1], names, atomic=True)
    low, high = node[2], node[3]
    if high is None and node[1][0] == "cls":
        # A run of free characters (`/(.+)/`) is bounded for decoding, like JSON strings
        # (schemas.py): small models otherwise run on to the token cap. Every bounded input
        # is still in the grammar's language; ``matches`` checks the unbounded one.
        high = max(low, MAX_RUN)
    if (low, high) == (0, None):
        return inner + "*"
    if (low, high) == (1, None):
        return inner + "+"
    if (low, high) == (0, 1):
        return inner + "?"
    return (
        inner
        + "{"
        + str(low)
        + ("," if high != low else "")
        + (str(high) if high not in (None, low) else "")
        + "}"
    )


def _grouped(node: Node, names: dict[str, str], atomic: bool = False) -> str:
    text = _gbnf(node, names)
    composite = node[0] == "alt" or (atomic and node[0] in ("seq", "rep"))
    return f"({text})" if composite else text


# --------------------------------------------------------------------------------------------
# The grammar
# --------------------------------------------------------------------------------------------


@dataclass
class Grammar:
    """Named rules and a start rule; ``validate`` before use."""

    rules: dict[str, Node]
    start: str
    _memo: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict, repr=False)

    def validate(self) -> Grammar:
        missing = sorted({n for r in self.rules.values() for n in _refs(r)} - set(self.rules))
        if missing:
            raise GrammarError(f"undefined rule or terminal: {', '.join(missing)}")
        if self.start not in self.rules:
            raise GrammarError(f"the start rule '{self.start}' is not defined")
        if sum(_expanded(node) for node in self.rules.values()) > MAX_EXPANDED:
            raise GrammarError(
                f"the grammar has more than {MAX_EXPANDED} elements once repetitions are expanded"
            )
        self._check_left_recursion()
        return self

    # -- GBNF ---------------------------------------------------------------------------------

    def to_gbnf(self) -> str:
        """llama.cpp GBNF text with ``root`` as the start rule (names prefixed ``g-``)."""
        names = {
            name: "g-" + "".join(c if c.isalnum() else "-" for c in name) for name in self.rules
        }
        if len(set(names.values())) != len(names):
            raise GrammarError("two rule names differ only in punctuation")
        lines = [f"root ::= {names[self.start]}"]
        lines += [f"{names[n]} ::= {_gbnf(node, names)}" for n, node in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- recognizer ---------------------------------------------------------------------------

    def matches(self, text: str) -> bool:
        """Whether ``text`` is in the grammar's language (inputs over 64 Ki characters are
        refused). Every (node, position) is computed once."""
        if len(text) > MAX_CHECK_CHARS:
            return False
        self._memo = {}
        try:
            return len(text) in self._ends(("ref", self.start), 0, text)
        except RecursionError:
            return False
        finally:
            self._memo = {}

    def _ends(self, node: Node, pos: int, text: str) -> frozenset[int]:
        """Every position where a match of ``node`` starting at ``pos`` can end."""
        kind = node[0]
        if kind == "lit":
            return frozenset((pos + len(node[1]),)) if text.startswith(node[1], pos) else _NONE
        if kind == "cls":
            inside = pos < len(text) and _in_class(node, text[pos])
            return frozenset((pos + 1,)) if inside else _NONE
        key = (id(node), pos)
        found = self._memo.get(key)
        if found is None:
            found = self._compute(node, pos, text)
            self._memo[key] = found
        return found

    def _compute(self, node: Node, pos: int, text: str) -> frozenset[int]:
        kind = node[0]
        if kind == "ref":
            return self._ends(self.rules[node[1]], pos, text)
        if kind == "seq":
            current = frozenset((pos,))
            for item in node[1]:
                current = self._many(item, current, text)
                if not current:
                    break
            return current
        if kind == "alt":
            return frozenset().union(*(self._ends(o, pos, text) for o in node[1]))
        return self._repeat(node, pos, text)

    def _many(self, node: Node, starts: frozenset[int], text: str) -> frozenset[int]:
        return frozenset().union(*(self._ends(node, p, text) for p in starts))

    def _repeat(self, node: Node, pos: int, text: str) -> frozenset[int]:
        _, inner, low, high = node
        result: set[int] = {pos} if low == 0 else set()
        frontier, expanded = frozenset((pos,)), {pos}
        count = 0
        while frontier and (high is None or count < high):
            count += 1
            frontier = self._many(inner, frontier, text)
            if count >= low:
                result |= frontier
                # A position reached again with more repetitions used can only do less.
                frontier = frontier - expanded
                expanded |= frontier
        return frozenset(result)

    # -- checks -------------------------------------------------------------------------------

    def _nullable(self) -> set[str]:
        nullable: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, node in self.rules.items():
                if name not in nullable and _is_nullable(node, nullable):
                    nullable.add(name)
                    changed = True
        return nullable

    def _check_left_recursion(self) -> None:
        nullable = self._nullable()
        corners = {name: _left_refs(node, nullable) for name, node in self.rules.items()}
        for name in self.rules:
            seen: set[str] = set()
            stack = list(corners[name])
            while stack:
                current = stack.pop()
                if current == name:
                    raise GrammarError(
                        f"rule '{name}' is left-recursive; rewrite it with repetition "
                        '(e.g. `a: b ("+" b)*`)'
                    )
                if current not in seen:
                    seen.add(current)
                    stack.extend(corners.get(current, ()))


_NONE: frozenset[int] = frozenset()


def _in_class(node: Node, c: str) -> bool:
    inside = any(lo <= c <= hi for lo, hi in node[2])
    return inside != bool(node[1])


def _expanded(node: Node) -> int:
    kind = node[0]
    if kind in ("seq", "alt"):
        return max(1, sum(_expanded(n) for n in node[1]))
    if kind == "rep":
        high: int = node[3] if node[3] is not None else max(node[2], 1)
        return _expanded(node[1]) * max(high, 1)
    return 1


def _refs(node: Node) -> set[str]:
    kind = node[0]
    if kind == "ref":
        return {node[1]}
    if kind in ("seq", "alt"):
        return set().union(*(_refs(n) for n in node[1])) if node[1] else set()
    if kind == "rep":
        return _refs(node[1])
    return set()


def _is_nullable(node: Node, nullable: set[str]) -> bool:
    kind = node[0]
    if kind == "lit":
        return bool(node[1] == "")
    if kind == "cls":
        return False
    if kind == "ref":
        return node[1] in nullable
    if kind == "seq":
        return all(_is_nullable(n, nullable) for n in node[1])
    if kind == "alt":
        return any(_is_nullable(n, nullable) for n in node[1])
    return bool(node[2] == 0 or _is_nullable(node[1], nullable))


def _left_refs(node: Node, nullable: set[str]) -> set[str]:
    """Rules that can start ``node`` (its left corner)."""
    kind = node[0]
    if kind == "ref":
        return {node[1]}
    if kind == "alt":
        return set().union(*(_left_refs(n, nullable) for n in node[1]))
    if kind == "rep":
        return _left_refs(node[1], nullable)
    if kind == "seq":
        out: set[str] = set()
        for item in node[1]:
            out |= _left_refs(item, nullable)
            if not _is_nullable(item, nullable):
                break
        return out
    return set()
