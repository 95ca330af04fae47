#!/usr/bin/env bash
# make loadtest: start `egemma serve` on a free loopback port with a throwaway DATA_DIR and a known
# key, wait for /ready, run Locust headless (loadtests/locustfile.py, gate in thresholds.toml), stop
# the server and exit with Locust's code (3 = a threshold was breached).
#
# Environment: EGEMMA, PYTHON (the app's venv), LOCUST (.venv-load), LOAD_USERS, LOAD_SPAWN_RATE,
# LOAD_TIME, LOAD_READY_TIMEOUT (s, default 300). Rate limits are lifted for the run (the gate measures
# capacity; 429s would only measure the limiter); any other setting can be passed in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${EGEMMA:?}" "${PYTHON:?}" "${LOCUST:?}"
users=${LOAD_USERS:-10} rate=${LOAD_SPAWN_RATE:-5} duration=${LOAD_TIME:-60s}
ready_timeout=${LOAD_READY_TIMEOUT:-300}

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data_dir=$(mktemp -d "${TMPDIR:-/tmp}/egemma-load.XXXXXX")
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p results
log="results/loadtest-$stamp-server.log"
key="load-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')"

# Reuse the models `make install` prepared (assembled GGUF, exported ONNX, Harmony vocabulary).
models_root=$("$EGEMMA" config | "$PYTHON" -c 'import json, sys; s = json.load(sys.stdin)["server"]; print(s["models_dir"] or s["data_dir"] + "/models")')

server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$data_dir"
}
trap cleanup EXIT

echo "==> starting egemma on 127.0.0.1:$port (DATA_DIR=$data_dir, log $log)"
DATA_DIR="$data_dir" MODELS_DIR="$models_root" WORKBENCH_API_KEY="$key" \
  EMBED_RATE_LIMIT_CALLS=1000000 SUMMARIZE_RATE_LIMIT_CALLS=1000000 \
  CHAT_RATE_LIMIT_CALLS=1000000 CONVERSATION_RATE_LIMIT_CALLS=1000000 \
  "$EGEMMA" serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server_pid=$!

echo "==> waiting for /ready (up to ${ready_timeout}s)"
if ! "$PYTHON" - "$port" "$ready_timeout" "$server_pid" <<'EOF'
import os, sys, time, urllib.error, urllib.request
port, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited before it was ready")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    time.sleep(1)
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        print(r.read().decode(), file=sys.stderr)
except (urllib.error.URLError, OSError) as exc:
    print(f"/health: {exc}", file=sys.stderr)
sys.exit("the server did not become ready")
EOF
then
  echo "--- last lines of $log" >&2
  tail -n 30 "$log" >&2
  exit 1
fi

echo "==> locust: $users users, spawn $rate/s, $duration"
rc=0
LOAD_API_KEY="$key" LOAD_GATE_REPORT="results/loadtest-$stamp-gate.txt" "$LOCUST" -f loadtests/locustfile.py --headless \
  -u "$users" -r "$rate" -t "$duration" --host "http://127.0.0.1:$port" \
  --csv "results/loadtest-$stamp" --html "results/loadtest-$stamp.html" \
  --only-summary --exit-code-on-error 0 --stop-timeout 10 || rc=$?

if grep -q "Traceback" "$log"; then
  echo "==> the server logged tracebacks during the run (see $log):" >&2
  grep -m 5 -A 3 "Traceback" "$log" >&2 || true
fi
if [[ -f "results/loadtest-$stamp-gate.txt" ]]; then echo; cat "results/loadtest-$stamp-gate.txt"; fi
echo "==> locust exit code $rc; report results/loadtest-$stamp.html, server log $log"
exit "$rc"
