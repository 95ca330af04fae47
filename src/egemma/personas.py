"""Persona prompt files: an allowlist built once from a directory, read safely on every use.

Layout: ``<dir>/code/<name>.md`` and ``<dir>/docs/<name>.md``. A persona is the system prompt for
``/summarize``; Markdown content uses ``docs/``, everything else ``code/``.

Why so strict (see ``reference/reliability.md`` §6): the name comes from the client. It must
``fullmatch`` ``[a-z0-9_]{1,64}`` and be one of the regular files seen at startup (symlinks never
listed); the file is opened relative to directory descriptors with ``O_NOFOLLOW`` so a symlink
swapped in after startup is refused. The original fell back silently to ``default`` on unknown
names, which hid typos; here an unknown name is an error that lists the available ones.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from egemma.errors import InvalidRequestError

log = logging.getLogger(__name__)

PersonaKind = Literal["code", "docs"]
KINDS: tuple[PersonaKind, ...] = ("code", "docs")
NAME_MAX_LENGTH = 64
DEFAULT_MAX_BYTES = 64 * 1024
SUFFIX = ".md"

_NAME_RE = re.compile(rf"[a-z0-9_]{{1,{NAME_MAX_LENGTH}}}")
# One pass over the template: escaped braces and the known placeholders. Substituted values are
# never re-scanned, so a goal containing braces cannot inject another placeholder.
_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{(language|max_tokens|goal)\}")
_NO_GOAL = "a general understanding of the content"


class PersonaError(InvalidRequestError):
    """A persona could not be used (a 400); ``message`` is safe to show a client (no paths)."""

    default_code = "persona_unavailable"

    def __init__(self, message: str, *, available: list[str] | None = None) -> None:
        super().__init__(message, param="persona")
        self.available = available or []


class UnknownPersonaError(PersonaError):
    """The name is invalid or not in the allowlist."""

    default_code = "unknown_persona"


@dataclass(frozen=True)
class Persona:
    name: str
    kind: PersonaKind


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def kind_for_language(language: str) -> PersonaKind:
    """Markdown goes to ``docs/``, every other language to ``code/`` (as in the original)."""
    return "docs" if language.strip().lower() == "markdown" else "code"


def default_personas_dir() -> Path:
    """The ``personas/`` folder of a source checkout (``src/egemma`` → repository root)."""
    return Path(__file__).resolve().parents[2] / "personas"


def render_template(template: str, *, language: str, max_tokens: int, goal: str | None) -> str:
    """Fill ``{language}``, ``{max_tokens}``, ``{goal}``; ``{{``/``}}`` become literal braces.

    Any other brace text is left as it is (no ``str.format``: no attribute or index lookups, no
    KeyError on a stray brace). Without a ``{goal}`` placeholder a given goal is appended as a
    closing paragraph, so the goal always reaches the model.
    """
    goal_text = (goal or "").strip()
    values = {
        "language": language,
        "max_tokens": str(max_tokens),
        "goal": goal_text or _NO_GOAL,
    }

    def _sub(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return values[match.group(1)]

    has_goal_slot = "{goal}" in template.replace("{{", "").replace("}}", "")
    text = _PLACEHOLDER_RE.sub(_sub, template).rstrip()
    if goal_text and not has_goal_slot:
        text += (
            "\n\n## Reader's goal\n\nThe reader wants this summary for the following goal; "
            "favour what serves it, and say so if the content does not address it:\n\n"
            f"{goal_text}"
        )
    return text


class PersonaRegistry:
    """The personas found at startup; ``lookup`` validates names, ``read`` opens files safely."""

    def __init__(
        self, root: Path, entries: dict[PersonaKind, frozenset[str]], max_bytes: int
    ) -> None:
        self._root = root
        self._entries = entries
        self._max_bytes = max_bytes

    @classmethod
    def from_directory(cls, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PersonaRegistry:
        """Scan ``root/code`` and ``root/docs`` for regular ``<name>.md`` files.

        A missing directory gives an empty registry (logged): personas are then unavailable, the
        server still starts.
        """
        root = Path(os.path.realpath(root))
        entries: dict[PersonaKind, frozenset[str]] = {}
        for kind in KINDS:
            entries[kind] = frozenset(_scan_kind(root / kind, max_bytes))
        if not any(entries.values()):
            log.warning("no personas found under the configured personas directory")
        return cls(root, entries, max_bytes)

    def listing(self) -> list[dict[str, str]]:
        """``[{name, kind}]`` for ``GET /personas``, code first, names sorted."""
        return [
            {"name": name, "kind": kind} for kind in KINDS for name in sorted(self._entries[kind])
        ]

    def names(self) -> list[str]:
        return sorted({name for kind in KINDS for name in self._entries[kind]})

    def lookup(self, name: object, kind: PersonaKind) -> Persona:
        """The persona for ``name``, preferring ``kind``; the other kind if only it has the name.

        (cognition-cli sends docs persona names such as ``security_validator`` for code files.)
        """
        if is_valid_name(name):
            assert isinstance(name, str)
            other: PersonaKind = "docs" if kind == "code" else "code"
            for candidate in (kind, other):
                if name in self._entries.get(candidate, frozenset()):
                    return Persona(name=name, kind=candidate)
        raise self._unknown(name)

    def read(self, persona: Persona) -> str:
        """The file's text, re-checked: no symlink at any level below the root, regular, capped."""
        try:
            return self._read_checked(persona)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("persona %s/%s refused at open: %s", persona.kind, persona.name, type(exc))
            raise PersonaError(
                f"Persona '{persona.name}' is not available.", available=self.names()
            ) from exc

    def render(
        self,
        name: object,
        kind: PersonaKind,
        *,
        language: str,
        max_tokens: int,
        goal: str | None = None,
    ) -> str:
        """Look up, read and fill a persona: the system prompt for one summary."""
        persona = self.lookup(name, kind)
        return render_template(
            self.read(persona), language=language, max_tokens=max_tokens, goal=goal
        )

    def _read_checked(self, persona: Persona) -> str:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        root_fd = os.open(self._root, flags | os.O_DIRECTORY)
        try:
            kind_fd = os.open(persona.kind, flags | os.O_DIRECTORY, dir_fd=root_fd)
            try:
                fd = os.open(persona.name + SUFFIX, flags | os.O_NONBLOCK, dir_fd=kind_fd)
            finally:
                os.close(kind_fd)
        finally:
            os.close(root_fd)
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            data = fh.read(self._max_bytes + 1)
        if len(data) > self._max_bytes:
            raise ValueError("persona file too large")
        return data.decode("utf-8")

    def _unknown(self, name: object) -> UnknownPersonaError:
        shown = repr(name[:NAME_MAX_LENGTH]) if isinstance(name, str) else "(invalid)"
        available = self.names()
        listing = ", ".join(available) if available else "(none configured)"
        return UnknownPersonaError(
            f"Unknown persona {shown}. Available personas: {listing}.", available=available
        )


def _scan_kind(directory: Path, max_bytes: int) -> list[str]:
    """Names of the regular, small, UTF-8 ``*.md`` files directly in ``directory``."""
    if directory.is_symlink() or not directory.is_dir():
        if directory.is_symlink():
            log.warning("persona folder %s is a symlink; skipped", directory.name)
        return []
    found: list[str] = []
    with os.scandir(directory) as it:
        for entry in it:
            stem = entry.name[: -len(SUFFIX)] if entry.name.endswith(SUFFIX) else None
            if stem is None or not is_valid_name(stem):
                continue
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                log.warning("persona %s/%s is not a regular file; skipped", directory.name, stem)
                continue
            if entry.stat(follow_symlinks=False).st_size > max_bytes:
                log.warning(
                    "persona %s/%s exceeds %d bytes; skipped", directory.name, stem, max_bytes
                )
                continue
            try:
                Path(entry.path).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                log.warning("persona %s/%s is not readable UTF-8; skipped", directory.name, stem)
                continue
            found.append(stem)
    return found
