"""gpt-oss benchmark: streamed decode of the tiny random-weight gpt-oss GGUF
(``build_tiny_gpt_oss.py``, cached) through the server against native llama-cpp-python on the
same file, the same prompt tokens and the same Harmony grammar, in the same run.

The answer is a ``json_schema`` object with one fixed-length string, so both sides decode the
same number of grammar-constrained tokens (greedy) whatever the random weights prefer.
Goal (issue 14): decode ≥ 0.95× native."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from benchlib import Server, decode_rate, log, median, row, stream_timings  # noqa: E402

from egemma.engines.llamacpp import LlamaChatEngine, _splice  # noqa: E402
from egemma.services.prompting.formats import PromptFormats  # noqa: E402
from egemma.services.prompting.types import NO_TOOLS, Turn  # noqa: E402
from egemma.settings import Settings  # noqa: E402

MODEL = "tiny-gpt-oss"
RUNS = 6  # medians over alternating runs; the first of each side is a warm-up
LENGTH = 48  # characters of the answer's one string
SCHEMA = {
    "type": "object",
    "properties": {"s": {"type": "string", "minLength": LENGTH, "maxLength": LENGTH}},
    "required": ["s"],
    "additionalProperties": False,
}
TEXT = {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA}}


def build() -> Path:
    log("building (or finding) the tiny gpt-oss GGUF")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(HERE / "build_tiny_gpt_oss.py")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    log(f"tiny gpt-oss ready in {time.monotonic() - started:.1f} s")
    return Path(out.strip().splitlines()[-1])


def native(engine: LlamaChatEngine, tokens: list[int], gbnf: str, stops: set[int]) -> float:
    from llama_cpp.llama_grammar import LlamaGrammar

    grammar = LlamaGrammar.from_string(gbnf, verbose=False)
    stamps: list[float] = []
    for token in engine.llm.generate(tokens, temp=0.0, grammar=grammar, reset=True):
        if token in stops or engine.is_eog(token):
            break
        stamps.append(time.perf_counter())
        if len(stamps) >= 4 * LENGTH:
            break
    return decode_rate(stamps)


def main() -> int:
    path = build()
    settings = Settings(env_file=None)
    settings.chat.n_ctx = 2048
    log("loading the native baseline model")
    engine = LlamaChatEngine.load(MODEL, str(path), settings.chat)
    prompter = PromptFormats("auto", settings.server.models_root).build(engine)
    server = Server(
        CHAT_MODEL_PATH=str(path), CHAT_MODEL_NAME=MODEL, CHAT_N_CTX="2048", CHAT_EXTRA_MODELS=""
    )
    try:
        native_rate, server_rate = [], []
        for i in range(RUNS + 1):
            question = f"Question {i}: answer in JSON."
            plan = prompter.plan(
                [Turn("user", question)],
                instructions=None,
                tool_mode=NO_TOOLS,
                effort="low",
                text=TEXT,
            )
            assert plan.gbnf is not None
            gbnf = _splice(plan.gbnf, plan.grammar_parts)
            r = native(engine, plan.tokens, gbnf, set(plan.stop_token_ids))
            timing = stream_timings(
                server.url,
                {
                    "model": MODEL,
                    "input": question,
                    "max_output_tokens": 4 * LENGTH,
                    "temperature": 0,
                    "text": TEXT,
                    "reasoning": {"effort": "low"},
                    "store": False,
                },
            )
            if i == 0:
                continue
            native_rate.append(r)
            server_rate.append(decode_rate(timing["stamps"]))
            log(f"run {i}: native {r:.1f} tok/s | server {server_rate[-1]:.1f} tok/s")
    finally:
        server.stop()
        engine.close()
    n_rate, s_rate = median(native_rate), median(server_rate)
    rows = [
        row(
            "tiny gpt-oss: streamed decode through the server vs native",
            s_rate,
            n_rate,
            s_rate / n_rate,
            ">= 0.95",
            "tokens/s",
        )
    ]
    print(json.dumps({"name": "gpt-oss", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
