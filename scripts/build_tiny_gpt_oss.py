"""Build (once, cached) a tiny random-weight gpt-oss GGUF with the real o200k_harmony vocabulary.

A test and benchmark fixture, never shipped: ``transformers``' ``GptOssForCausalLM`` with two
layers, width 64 and four experts (fixed seed), saved and converted by llama.cpp's own
``convert_hf_to_gguf.py`` + ``gguf-py`` taken from the llama-cpp-python sdist eGemma pins. The
Hugging Face tokenizer is written from the o200k vocabulary openai-harmony already resolves
offline (``harmony_vocab.py``), with Harmony's special tokens at their real ids.

    python scripts/build_tiny_gpt_oss.py            # prints the GGUF path (last line)

Cache: ``~/.cache/egemma/models/tiny-gpt-oss-<key>/`` keyed by this file, the llama-cpp-python,
transformers and torch versions and the vocabulary hash (``EGEMMA_CACHE_DIR`` moves the root).
Needs the ``export`` extra (torch CPU, transformers); never imported by the server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

LLAMA_VERSION = "0.3.36"
SEED = 1234
VOCAB_SIZE = 201088  # gpt-oss-20b's embedding rows: o200k (199,998) + Harmony's special range
CONFIG = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"],
    "max_position_embeddings": 4096,
    "initial_context_length": 4096,
}
# o200k's pre-tokenizer (tiktoken's ``o200k_base`` pattern), a fact of the encoding.
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
GGUF_NAME = "tiny-gpt-oss.gguf"


def log(message: str) -> None:
    print(f"[tiny-gpt-oss] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("EGEMMA_CACHE_DIR") or str(Path.home() / ".cache" / "egemma")
    return Path(base)


def cache_key(vocab_sha: str) -> str:
    parts = [
        Path(__file__).read_bytes().hex(),
        LLAMA_VERSION,
        metadata.version("transformers"),
        metadata.version("torch"),
        vocab_sha,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# llama.cpp's converter, from the pinned sdist
# --------------------------------------------------------------------------------------------


def sdist() -> Path:
    folder = cache_root() / "sdist"
    found = folder / f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"
    if found.is_file():
        return found
    log(f"downloading the llama-cpp-python {LLAMA_VERSION} sdist (once)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_VERSION}",
            "-d",
            str(folder),
        ],
        check=True,
    )
    return found


def extract_converter(target: Path) -> Path:
    """``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/`` from the sdist."""
    prefix = f"llama_cpp_python-{LLAMA_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
    with tarfile.open(sdist()) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)
        ]
        tar.extractall(target, members=members, filter="data")
    return target / prefix


# --------------------------------------------------------------------------------------------
# The Hugging Face model folder
# --------------------------------------------------------------------------------------------


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def read_ranks(vocab_file: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in vocab_file.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merges_for(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to tiktoken's ranks: every split of a token into two tokens, ordered
    by the merged token's rank, then by the parts' ranks."""
    found: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None and lr < rank and rr < rank:
                found.append((rank, lr, rr, left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def write_tokenizer(folder: Path, vocab_file: Path, special: dict[int, str]) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    ranks = read_ranks(vocab_file)
    chars = _byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in merges_for(ranks)]
    tokenizer = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added in id order right after the base vocabulary, so each lands on its real id.
    first = len(ranks)
    names = [special[i] for i in range(first, VOCAB_SIZE)]
    tokenizer.add_special_tokens([AddedToken(n, normalized=False, special=True) for n in names])
    tokenizer.save(str(folder / "tokenizer.json"))
    check = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for token_id in (first, VOCAB_SIZE - 1, *(i for i in special if i < VOCAB_SIZE)):
        if check.token_to_id(special[token_id]) != token_id:
            raise SystemExit(f"special token {special[token_id]} did not land on id {token_id}")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|return|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": CONFIG["max_position_embeddings"],
            }
        )
    )


def harmony_specials(data_dir: Path) -> tuple[Path, dict[int, str]]:
    from egemma.services.prompting.harmony_vocab import (
        VOCAB_FILENAME,
        ensure_harmony_vocab,
        load_encoding,
    )

    vocab_dir = ensure_harmony_vocab(data_dir)
    encoding = load_encoding(vocab_dir)
    special = {encoding.encode(t, allowed_special="all")[0]: t for t in encoding.special_tokens_set}
    return vocab_dir / VOCAB_FILENAME, special


def write_model(folder: Path, special: dict[int, str]) -> None:
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    ids = {name: i for i, name in special.items()}
    config = GptOssConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=ids["<|startoftext|>"],
        eos_token_id=ids["<|return|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **CONFIG,
    )
    torch.manual_seed(SEED)
    model = GptOssForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Blocks write small updates, so the residual stream stays close to the embedding.
            small = "o_proj" in name or "down_proj" in name
            param.normal_(0.0, 0.02 if small else 0.5)
        favour_turn_ends(model, ids)
    model.save_pretrained(folder, safe_serialization=True)


def favour_turn_ends(model: object, ids: dict[str, int]) -> None:
    """Give every hidden state one constant direction that only <|end|>, <|return|> and <|call|>
    read, so they win wherever the grammar allows them: a random-weight turn then ends after a
    few tokens instead of running to the token cap (the tests stay fast, the structure real)."""
    embed = model.model.embed_tokens.weight  # type: ignore[attr-defined]
    head = model.lm_head.weight  # type: ignore[attr-defined]
    embed[:, 0] = 5.0
    model.model.norm.weight[0] = 1.0  # type: ignore[attr-defined]  # keep its sign
    head[:, 0] = 0.0
    for token, weight in (("<|end|>", 3.2), ("<|return|>", 3.2), ("<|call|>", 3.0)):
        head[ids[token]] = 0.0
        head[ids[token], 0] = weight


# --------------------------------------------------------------------------------------------


def build(out_dir: Path) -> Path:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiny-gpt-oss-") as tmp:
        work = Path(tmp)
        vocab_file, special = harmony_specials(work / "data")
        key = cache_key(hashlib.sha256(vocab_file.read_bytes()).hexdigest())
        target = out_dir / f"tiny-gpt-oss-{key}" / GGUF_NAME
        if target.is_file():
            return target
        log(f"building {target} (cold: sdist, tokenizer, model, conversion)")
        converter = extract_converter(work / "llama.cpp")
        hf = work / "hf"
        hf.mkdir()
        write_tokenizer(hf, vocab_file, special)
        log(f"tokenizer.json written ({time.monotonic() - started:.1f} s)")
        write_model(hf, special)
        log(f"random-weight model saved ({time.monotonic() - started:.1f} s)")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        env = {
            **os.environ,
            "PYTHONPATH": str(converter / "gguf-py"),
            "HF_HUB_OFFLINE": "1",
            "NO_LOCAL_GGUF": "",
        }
        done = subprocess.run(
            [
                sys.executable,
                str(converter / "convert_hf_to_gguf.py"),
                str(hf),
                "--outfile",
                str(partial),
                "--outtype",
                "f16",
            ],
            env=env,
            cwd=converter,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"convert_hf_to_gguf.py failed with exit code {done.returncode}")
        os.replace(partial, target)
    log(f"built {target} in {time.monotonic() - started:.1f} s")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="cache root for the model")
    args = parser.parse_args()
    out = args.out_dir or cache_root() / "models"
    print(build(out))


if __name__ == "__main__":
    main()
