"""State benchmark: second-turn time to first token with ``previous_response_id`` (the first
turn's KV prefix reused) against the same full prompt sent cold, in the same run.

Goal (issue 4): warm / cold ≤ 0.3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Server, log, median, row, stream_timings  # noqa: E402

MODEL = "smollm2-135m-instruct"
RUNS = 5


def document(i: int) -> str:
    lines = [
        f"Line {n} of report {i}: sensor {n % 7} read {n * 13 % 97} units at dawn."
        for n in range(40)
    ]
    return "Here is a field report.\n" + "\n".join(lines) + "\nSummarise it."


def main() -> int:
    server = Server(CHAT_N_CTX="4096", CHAT_EXTRA_MODELS="")
    warm, cold = [], []
    try:
        for i in range(RUNS):
            first = stream_timings(
                server.url,
                {"model": MODEL, "input": document(i), "max_output_tokens": 16, "temperature": 0},
            )
            prev = first["response"]
            follow = "And the second half?"
            second = stream_timings(
                server.url,
                {
                    "model": MODEL,
                    "previous_response_id": prev["id"],
                    "input": follow,
                    "max_output_tokens": 4,
                    "temperature": 0,
                    "store": False,
                },
            )
            cached = second["response"]["usage"]["input_tokens_details"]["cached_tokens"]
            # Evict the KV cache with an unrelated prompt, then send the same context cold.
            stream_timings(
                server.url,
                {
                    "model": MODEL,
                    "input": f"Unrelated {i}.",
                    "max_output_tokens": 2,
                    "store": False,
                },
            )
            replay = [
                {"role": "user", "content": document(i)},
                *prev["output"],
                {"role": "user", "content": follow},
            ]
            third = stream_timings(
                server.url,
                {
                    "model": MODEL,
                    "input": replay,
                    "max_output_tokens": 4,
                    "temperature": 0,
                    "store": False,
                },
            )
            warm.append(second["ttft"] * 1000)
            cold.append(third["ttft"] * 1000)
            log(f"run {i}: warm {warm[-1]:.1f} ms ({cached} cached tokens), cold {cold[-1]:.1f} ms")
    finally:
        server.stop()
    w, c = median(warm), median(cold)
    rows = [
        row(
            "second-turn TTFT with previous_response_id vs the same prompt cold",
            w,
            c,
            w / c,
            "<= 0.3",
            "ms",
        )
    ]
    print(json.dumps({"name": "state", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
