"""Persona registry: allowlist, traversal attempts, symlinks, rendering (reliability.md §6)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest

from egemma.personas import (
    PersonaError,
    PersonaRegistry,
    UnknownPersonaError,
    default_personas_dir,
    kind_for_language,
    render_template,
)

EXPECTED = {
    "code": {
        "ast_analyst",
        "default",
        "developer",
        "log_analyst",
        "parser_generator",
        "sdet",
        "structural_analyst",
        "tool_output_summarizer",
        "security_validator",
    },
    "docs": {
        "assistant",
        "coherence_validator",
        "conversation_memory_assistant",
        "default",
        "knowledge_assistant",
        "lineage_validator",
        "mathematical_validator",
        "mission_validator",
        "operational_validator",
        "proof_validator",
        "query_analyst",
        "security_meta_validator",
        "security_validator",
    },
}

# Every persona cognition-cli asks for (src/cognition-cli/src/config.ts, PERSONA_* constants).
COGNITION_CLI_PERSONAS = [
    "ast_analyst",
    "parser_generator",
    "security_validator",
    "operational_validator",
    "security_meta_validator",
    "mathematical_validator",
    "query_analyst",
    "knowledge_assistant",
    "conversation_memory_assistant",
    "tool_output_summarizer",
]

TRAVERSAL = [
    "../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e",
    "good\x00.md",
    "good/../good",
    "good\\..\\x",
    "GOOD",
    "good.md",
    "good ",
    " good",
    "good\n",
    "ｇｏｏｄ",
    "a" * 65,
    "",
    "con",
    None,
    7,
    ["good"],
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "personas"
    (root / "code").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "code" / "good.md").write_text("Code {language} in {max_tokens} tokens.")
    (root / "docs" / "assistant.md").write_text("Docs {language}.")
    (root / "docs" / "only_docs.md").write_text("Only docs, goal: {goal}. Braces {{x}} {other}")
    return root


def test_shipped_personas_all_load_and_render() -> None:
    registry = PersonaRegistry.from_directory(default_personas_dir())
    found = {
        kind: {p["name"] for p in registry.listing() if p["kind"] == kind} for kind in EXPECTED
    }
    assert found == EXPECTED
    for entry in registry.listing():
        kind = "docs" if entry["kind"] == "docs" else "code"
        text = registry.render(entry["name"], kind, language="Python", max_tokens=123, goal="g{x}")
        assert "{language}" not in text
        assert "{max_tokens}" not in text
        assert "123" in text, entry


def test_query_analyst_renders_valid_json_example() -> None:
    registry = PersonaRegistry.from_directory(default_personas_dir())
    text = registry.render("query_analyst", "docs", language="Markdown", max_tokens=50)
    assert '{"intent": "how_to"' in text
    assert "{{" not in text


@pytest.mark.parametrize("name", TRAVERSAL)
def test_rejects_traversal_and_malformed_names(tree: Path, name: object) -> None:
    (tree / "code" / "con.txt").write_text("not markdown")
    registry = PersonaRegistry.from_directory(tree)
    with pytest.raises(UnknownPersonaError) as info:
        registry.lookup(name, "code")
    assert str(tree) not in info.value.message
    assert "/" not in info.value.message.split("Available personas:")[1]
    assert info.value.available == ["assistant", "good", "only_docs"]


def test_unknown_lists_available_without_paths(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    with pytest.raises(UnknownPersonaError) as info:
        registry.lookup("nope", "code")
    assert info.value.message == (
        "Unknown persona 'nope'. Available personas: assistant, good, only_docs."
    )


def test_lookup_prefers_kind_then_other(tree: Path) -> None:
    (tree / "docs" / "good.md").write_text("docs good")
    registry = PersonaRegistry.from_directory(tree)
    assert registry.lookup("good", "code").kind == "code"
    assert registry.lookup("good", "docs").kind == "docs"
    assert registry.lookup("only_docs", "code").kind == "docs"
    assert registry.lookup("assistant", "code").kind == "docs"


def test_symlink_pointing_outside_is_not_listed(tree: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("SECRET")
    os.symlink(secret, tree / "code" / "leak.md")
    os.symlink(tree / "code" / "good.md", tree / "code" / "alias.md")
    registry = PersonaRegistry.from_directory(tree)
    assert "leak" not in registry.names()
    assert "alias" not in registry.names()
    with pytest.raises(UnknownPersonaError):
        registry.lookup("leak", "code")


def test_symlinked_kind_folder_is_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.md").write_text("x")
    root = tmp_path / "p"
    root.mkdir()
    os.symlink(outside, root / "code")
    registry = PersonaRegistry.from_directory(root)
    assert registry.listing() == []


def test_symlink_swapped_in_after_startup_is_refused(tree: Path, tmp_path: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    secret = tmp_path / "secret.md"
    secret.write_text("SECRET {language}")
    target = tree / "code" / "good.md"
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(PersonaError) as info:
        registry.render("good", "code", language="Python", max_tokens=10)
    assert "SECRET" not in info.value.message
    assert str(tmp_path) not in info.value.message


def test_kind_folder_swapped_for_symlink_is_refused(tree: Path, tmp_path: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "good.md").write_text("EVIL")
    os.rename(tree / "code", tmp_path / "moved")
    os.symlink(outside, tree / "code")
    with pytest.raises(PersonaError):
        registry.render("good", "code", language="Python", max_tokens=10)


def test_oversized_and_non_utf8_files_are_skipped(tree: Path) -> None:
    (tree / "code" / "big.md").write_bytes(b"x" * 100)
    (tree / "code" / "latin.md").write_bytes(b"caf\xe9")
    (tree / "code" / "Upper.md").write_text("x")
    registry = PersonaRegistry.from_directory(tree, max_bytes=64)
    assert registry.names() == ["assistant", "good", "only_docs"]


def test_file_growing_past_cap_after_startup_is_refused(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree, max_bytes=64)
    (tree / "code" / "good.md").write_text("y" * 65)
    with pytest.raises(PersonaError):
        registry.render("good", "code", language="Python", max_tokens=10)


def test_missing_directory_gives_empty_registry(tmp_path: Path) -> None:
    registry = PersonaRegistry.from_directory(tmp_path / "absent")
    assert registry.listing() == []
    with pytest.raises(UnknownPersonaError, match=r"\(none configured\)"):
        registry.lookup("developer", "code")


def test_render_without_goal(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    text = registry.render("good", "code", language="Python", max_tokens=300)
    assert text == "Code Python in 300 tokens."


def test_render_with_goal_appends_when_no_placeholder(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    text = registry.render("good", "code", language="Go", max_tokens=5, goal="find {max_tokens}")
    assert text.startswith("Code Go in 5 tokens.")
    assert text.endswith("find {max_tokens}")


def test_render_goal_placeholder_and_braces(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    text = registry.render("only_docs", "docs", language="Markdown", max_tokens=5, goal="{0} {x")
    assert text == "Only docs, goal: {0} {x. Braces {x} {other}"
    text = registry.render("only_docs", "docs", language="Markdown", max_tokens=5)
    assert text.startswith("Only docs, goal: a general understanding")


def test_render_template_ignores_format_tricks() -> None:
    out = render_template(
        "{language.__class__} {max_tokens!r} {0} {language}", language="x", max_tokens=1, goal=None
    )
    assert out == "{language.__class__} {max_tokens!r} {0} x"


def test_listing_shape(tree: Path) -> None:
    registry = PersonaRegistry.from_directory(tree)
    assert registry.listing() == [
        {"name": "good", "kind": "code"},
        {"name": "assistant", "kind": "docs"},
        {"name": "only_docs", "kind": "docs"},
    ]


@pytest.mark.parametrize(
    ("language", "kind"), [("Markdown", "docs"), ("Python", "code"), ("Log File", "code")]
)
def test_kind_for_language(language: str, kind: str) -> None:
    assert kind_for_language(language) == kind


@pytest.mark.parametrize("name", COGNITION_CLI_PERSONAS)
@pytest.mark.parametrize("kind", ["code", "docs"])
def test_every_cognition_cli_persona_exists(name: str, kind: Literal["code", "docs"]) -> None:
    registry = PersonaRegistry.from_directory(default_personas_dir())
    prompt = registry.render(name, kind, language="TypeScript", max_tokens=500)
    assert len(prompt) > 200
    assert "{language}" not in prompt
    assert "{max_tokens}" not in prompt


def test_ast_analyst_asks_for_cognition_clis_structural_json() -> None:
    prompt = PersonaRegistry.from_directory(default_personas_dir()).render(
        "ast_analyst", "code", language="Python", max_tokens=800
    )
    # The keys of StructuralData, which cognition-cli JSON.parses the summary into.
    for key in ("imports", "classes", "functions", "interfaces", "exports", "dependencies"):
        assert f'"{key}"' in prompt
    assert '"language": "Python"' in prompt
