"""Checks that a user's JSON Schema is valid and that its grammar stays small, before admission.

llama.cpp expands every bounded repetition (``minLength``, ``maxItems``, a pattern's ``{m,n}``)
into that many grammar elements: ``{"minLength": 100000000}`` alone held 2.6 GB. So each bound is
capped, and the repetitions of one schema are summed against a total, counted the way the
compiler expands them (a pattern's nested quantifiers multiply). An invalid schema is a 400 here,
not a failed generation later.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jsonschema
from jsonschema.validators import validator_for

from egemma.errors import InvalidRequestError

# One repetition bound (minLength, maxItems, a pattern's {m,n}) may not exceed this.
MAX_REPEAT = 8192
# Repetitions of one schema, summed (about 26 bytes of grammar each once compiled).
MAX_GRAMMAR_REPEATS = 131_072
# Where a schema sets no upper bound, the grammar uses these (schemas.py): counted the same way.
DEFAULT_MAX_STRING = 512
DEFAULT_MAX_ITEMS = 64

# Checking a pattern compiles it; Python's "possible nested set" FutureWarning about the user's
# regex is not the server's problem and must not reach its log.
warnings.filterwarnings("ignore", category=FutureWarning, module="jsonschema._format")

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def _too_complex(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="schema_too_complex")


def validate_schema(schema: dict[str, Any], *, param: str) -> None:
    """The schema against its draft's metaschema, regexes compiled: a 400 naming the problem."""
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema, format_checker=cls.FORMAT_CHECKER)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        at = f" at '{where}'" if where else ""
        raise InvalidRequestError(
            f"Invalid JSON Schema{at}: {exc.message}", param=param, code="invalid_schema"
        ) from None
    except RecursionError:
        raise _too_complex("The schema is nested too deeply.", param) from None


def _bound(node: dict[str, Any], key: str, param: str) -> int | None:
    value = node.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if value > MAX_REPEAT:
        raise _too_complex(
            f"{key} {value} exceeds the grammar limit of {MAX_REPEAT} repetitions.", param
        )
    return value


def _node_repeats(node: dict[str, Any], param: str) -> int:
    """Grammar elements one schema node expands to (its own bounds, not its children's)."""
    bounds = {key: _bound(node, key, param) for key in _BOUNDS}
    total = 0
    kind = node.get("type")
    stringy = kind == "string" or bounds["minLength"] is not None or bounds["maxLength"] is not None
    if stringy and "enum" not in node and "const" not in node:
        total += max(bounds["minLength"] or 0, bounds["maxLength"] or DEFAULT_MAX_STRING)
    if kind == "array" or bounds["minItems"] is not None or bounds["maxItems"] is not None:
        total += max(bounds["minItems"] or 0, bounds["maxItems"] or DEFAULT_MAX_ITEMS)
    total += max(bounds["minProperties"] or 0, bounds["maxProperties"] or 0)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        total += pattern_repeats(pattern, param)
    return total


def check_grammar_size(schema: Any, *, param: str) -> None:
    """Sum the repetitions of every node, iteratively (a hostile schema cannot blow the stack)."""
    total = 0
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        total += _node_repeats(node, param)
        if total > MAX_GRAMMAR_REPEATS:
            raise _too_complex(
                f"The schema's grammar would need more than {MAX_GRAMMAR_REPEATS} repetitions "
                "(string lengths, array sizes and pattern quantifiers, summed).",
                param,
            )
        stack.extend(v for k, v in node.items() if k not in ("enum", "const", "default"))


def pattern_repeats(pattern: str, param: str) -> int:
    """Elements a regex expands to: atoms count 1, ``{m,n}`` multiplies what it follows by its
    larger bound, groups sum their contents, nested quantifiers multiply."""
    stack: list[int] = [0]  # running cost of each open group
    last = 0  # cost of the atom a quantifier would apply to
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            last, i = 1, i + 2
        elif c == "[":
            i = _class_end(pattern, i)
            last = 1
        elif c == "(":
            stack.append(0)
            last, i = 0, i + 1
            continue
        elif c == ")" and len(stack) > 1:
            last, i = stack.pop(), i + 1
        elif c == "{" and (m := _QUANTIFIER.match(pattern, i)):
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) else low
            n = max(low, high)
            if n > MAX_REPEAT:
                raise _too_complex(
                    f"The pattern quantifier {m.group(0)} exceeds the grammar limit of "
                    f"{MAX_REPEAT} repetitions.",
                    param,
                )
            stack[-1] += last * (n - 1)
            last, i = last * n, m.end()
            if stack[-1] > MAX_GRAMMAR_REPEATS:
                raise _too_complex("The pattern's quantifiers multiply beyond the limit.", param)
            continue
        elif c in "]{}":
            # llama.cpp's converter loops forever on a stray ']' or '}' (Python reads them as
            # literals): the client must escape them.
            raise InvalidRequestError(
                f"The pattern has an unescaped '{c}' at {i}: write '\\{c}' for the literal.",
                param=param,
                code="unsupported_schema",
            )
        else:
            last, i = (0, i + 1) if c in "|^$*+?" else (1, i + 1)
        stack[-1] += last
    return sum(stack)


def _class_end(pattern: str, start: int) -> int:
    """Index after the character class opening at ``start``."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1
