"""Check flake.nix without Nix: parse it with tree-sitter-nix and check its structure.

Nix is not needed on the development machines or in CI (`nix flake check` would fetch the
inputs). This parses the flake with the Nix grammar (PyPI ``tree-sitter-nix``), fails on any
syntax error with its line, and checks what the appliance promises (STYLE.md §12): the uv2nix
inputs with ``follows``, pinned to commits and locked in ``flake.lock``, both systems,
packages/apps/devShells/checks/formatter outputs, explicit GGML flags,
``meta.mainProgram = "egemma"``, local paths that exist, and a ``uv.lock`` that still matches
``pyproject.toml`` (the flake builds from the lock; ``make lock`` refreshes it). Where Nix
happens to be installed, ``nix-instantiate --parse`` runs as well.

Usage: ``python scripts/check_flake.py [flake.nix]``; exit 1 with one line per problem.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import tree_sitter_nix
from tree_sitter import Language, Node, Parser

REQUIRED_INPUTS = ("nixpkgs", "pyproject-nix", "uv2nix", "pyproject-build-systems")
REQUIRED_OUTPUTS = ("packages", "apps", "devShells", "checks", "formatter")
REQUIRED_SYSTEMS = ("aarch64-darwin", "x86_64-linux")
REQUIRED_FLAGS = ("GGML_METAL", "GGML_NATIVE")


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Node | None) -> str:
    return "" if node is None or node.text is None else node.text.decode()


def syntax_errors(root: Node) -> list[str]:
    out = []
    for node in walk(root):
        if node.is_error or node.is_missing:
            line, col = node.start_point
            what = f"missing {node.type}" if node.is_missing else f"unexpected {text(node)[:30]!r}"
            out.append(f"syntax error at line {line + 1}, column {col + 1}: {what}")
    return out


def bindings(attrset: Node | None) -> dict[str, Node]:
    """Dotted attribute paths of an attrset, nested attrsets flattened: {'a.b.c': value}."""
    out: dict[str, Node] = {}
    if attrset is None or attrset.type not in {"attrset_expression", "rec_attrset_expression"}:
        return out
    for binding_set in attrset.named_children:
        for binding in binding_set.named_children:
            if binding.type != "binding":
                continue
            path = text(binding.child_by_field_name("attrpath")).replace('"', "")
            value = binding.child_by_field_name("expression")
            if value is None:
                continue
            out[path] = value
            for sub, node in bindings(value).items():
                out[f"{path}.{sub}"] = node
    return out


def string_value(node: Node | None) -> str | None:
    if node is None or node.type != "string_expression":
        return None
    return "".join(text(c) for c in node.named_children if c.type == "string_fragment")


def body_attrset(function: Node) -> Node | None:
    """The attrset an ``outputs = {...}: let ... in {...}`` function returns."""
    body = function.child_by_field_name("body")
    while body is not None and body.type in {"let_expression", "with_expression"}:
        body = body.child_by_field_name("body")
    return body


def check_inputs(top: dict[str, Node]) -> list[str]:
    problems = []
    names = {key.split(".")[1] for key in top if key.startswith("inputs.") and key.count(".") >= 1}
    for name in REQUIRED_INPUTS:
        if name not in names:
            problems.append(f"input {name!r} is missing")
            continue
        follows = string_value(top.get(f"inputs.{name}.inputs.nixpkgs.follows"))
        if name != "nixpkgs" and follows != "nixpkgs":
            problems.append(f'input {name!r} must set inputs.nixpkgs.follows = "nixpkgs"')
    return problems


PINNED_URL = re.compile(r"^github:[^/]+/[^/]+/[0-9a-f]{40}$")


def check_pins(top: dict[str, Node], flake_dir: Path) -> list[str]:
    """Every input URL names an exact commit and flake.lock exists (issue 15): a branch would
    give each evaluation whatever it points at that day. (Nix itself refuses a lock that no
    longer matches the inputs.)"""
    problems = [] if (flake_dir / "flake.lock").is_file() else ["flake.lock is missing"]
    for name in REQUIRED_INPUTS:
        url = string_value(top.get(f"inputs.{name}.url")) or ""
        if not PINNED_URL.match(url):
            problems.append(f"input {name!r} is not pinned to a commit ({url or 'no url'})")
    return problems


def check_outputs(outputs: Node, flake_dir: Path) -> list[str]:
    problems = []
    if outputs.type != "function_expression":
        return ["outputs must be a function of the inputs"]
    result = bindings(body_attrset(outputs))
    for name in REQUIRED_OUTPUTS:
        if name not in result:
            problems.append(f"outputs.{name} is missing")
    fragments = [text(n) for n in walk(outputs) if n.type == "string_fragment"]
    joined = "\n".join(fragments)
    identifiers = {text(n) for n in walk(outputs) if n.type == "identifier"}
    for system in REQUIRED_SYSTEMS:
        if system not in fragments:
            problems.append(f"system {system!r} is not listed")
    for flag in REQUIRED_FLAGS:
        if flag not in joined:
            problems.append(f"llama.cpp flag {flag} is not passed explicitly")
    if "loadWorkspace" not in identifiers:
        problems.append("the application is not built from the uv workspace (loadWorkspace)")
    main_programs = [
        string_value(b.child_by_field_name("expression"))
        for b in walk(outputs)
        if b.type == "binding" and text(b.child_by_field_name("attrpath")).endswith("mainProgram")
    ]
    if "egemma" not in main_programs:
        problems.append('meta.mainProgram = "egemma" is missing')
    return problems + missing_paths(outputs, flake_dir)


def missing_paths(outputs: Node, flake_dir: Path) -> list[str]:
    return [
        f"line {node.start_point[0] + 1}: {text(node)} does not exist"
        for node in walk(outputs)
        if node.type == "path_expression"
        and text(node).startswith("./")
        and not (flake_dir / text(node)).exists()
    ]


def _pins(requirements: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?", req)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def check_lock(flake_dir: Path) -> list[str]:
    lock_path, project_path = flake_dir / "uv.lock", flake_dir / "pyproject.toml"
    if not lock_path.is_file():
        return ["uv.lock is missing (run make lock)"]
    lock = tomllib.loads(lock_path.read_text())
    project = tomllib.loads(project_path.read_text())["project"]
    locked = {p["name"]: p.get("version") for p in lock.get("package", [])}
    wanted = _pins(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        wanted.update(_pins(extra))
    problems = []
    for name, version in sorted(wanted.items()):
        if name not in locked:
            problems.append(f"uv.lock lacks {name} (run make lock)")
        elif version is not None and locked[name] != version:
            problems.append(f"uv.lock has {name} {locked[name]}, pyproject pins {version}")
    return problems + (["uv.lock is stale: refresh it with `make lock`"] if problems else [])


def nix_parse(path: Path) -> list[str]:
    """The real Nix parser, when it happens to be installed (it is not needed)."""
    nix = shutil.which("nix-instantiate")
    if nix is None:
        return []
    proc = subprocess.run(
        [nix, "--parse", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [] if proc.returncode == 0 else [f"nix-instantiate --parse: {proc.stderr.strip()}"]


def check(path: Path) -> list[str]:
    parser = Parser(Language(tree_sitter_nix.language()))
    root = parser.parse(path.read_bytes()).root_node
    errors = syntax_errors(root) or nix_parse(path)
    if errors:
        return errors
    expr = root.named_children[0] if root.named_children else None
    top = bindings(expr)
    if not top:
        return ["flake.nix must be an attribute set"]
    problems = []
    if string_value(top.get("description")) in (None, ""):
        problems.append("description is missing")
    problems += check_inputs(top) + check_pins(top, path.parent)
    outputs = top.get("outputs")
    problems += ["outputs is missing"] if outputs is None else check_outputs(outputs, path.parent)
    return problems + check_lock(path.parent)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "flake.nix")
    if not path.is_file():
        print(f"{path}: not found", file=sys.stderr)
        return 1
    problems = check(path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: parsed, structure and uv.lock ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
