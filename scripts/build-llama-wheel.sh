#!/usr/bin/env bash
# Build llama-cpp-python once into $WHEELHOUSE (keyed by version + CMAKE_ARGS + Python tag + LLAMA_CFLAGS) and reuse it.
# A cold build takes 8-19 minutes on 2 cores; progress is shown as ninja's [n/N] steps.
# LLAMA_WHEEL_FROM (a folder or URL for pip --find-links) supplies a prebuilt wheel instead.
set -euo pipefail
: "${LLAMA_VERSION:?}" "${WHEELHOUSE:?}" "${PYTHON:?}"
if compgen -G "$WHEELHOUSE/llama_cpp_python-$LLAMA_VERSION-*.whl" >/dev/null; then
  echo "==> llama-cpp-python $LLAMA_VERSION: reusing $(ls "$WHEELHOUSE"/llama_cpp_python-*.whl)"
  exit 0
fi
mkdir -p "$WHEELHOUSE"
if [ -n "${LLAMA_WHEEL_FROM:-}" ]; then
  # A wheel built elsewhere with the same CMAKE_ARGS (the image test passes the host's in).
  echo "==> llama-cpp-python $LLAMA_VERSION: taking the wheel from $LLAMA_WHEEL_FROM instead of compiling"
  "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary llama-cpp-python \
    --no-index --find-links "$LLAMA_WHEEL_FROM" -d "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
  exit 0
fi
log="$WHEELHOUSE/build.log"
echo "==> building llama-cpp-python $LLAMA_VERSION (CMAKE_ARGS='${CMAKE_ARGS:-}', LLAMA_CFLAGS='${LLAMA_CFLAGS:-}'), once; log: $log"
start=$(date +%s)
# CMake takes CFLAGS/CXXFLAGS as its initial C/C++ flags (LLAMA_CFLAGS: the Makefile, AMX off on x86-64);
# a compiler too old to know them (GCC before 11) has no AMX kernels to leave out either.
# shellcheck disable=SC2086  # LLAMA_CFLAGS is a list of flags
if [ -n "${LLAMA_CFLAGS:-}" ] && ! echo 'int x;' | "${CC:-cc}" ${LLAMA_CFLAGS} -x c -c -o /dev/null - 2>/dev/null; then
  echo "==> ${CC:-cc} does not take LLAMA_CFLAGS='${LLAMA_CFLAGS}'; building without them"
  LLAMA_CFLAGS=
fi
export CFLAGS="${LLAMA_CFLAGS:-} ${CFLAGS:-}" CXXFLAGS="${LLAMA_CFLAGS:-} ${CXXFLAGS:-}"
export CMAKE_ARGS="${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$PYTHON" -m pip wheel --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
      --no-cache-dir -v -w "$tmp" "llama-cpp-python==$LLAMA_VERSION" 2>&1 \
    | tee "$log" \
    | awk '/^ *\[[0-9]+\/[0-9]+\]/ { n++; if (n % 10 == 0) { match($0, /\[[0-9]+\/[0-9]+\]/); printf "    compiling %s\n", substr($0, RSTART, RLENGTH); fflush() } }'; then
  echo "llama-cpp-python build failed; last lines of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
mv "$tmp"/llama_cpp_python-*.whl "$WHEELHOUSE"/
echo "==> llama-cpp-python built in $(( $(date +%s) - start )) s: $(ls "$WHEELHOUSE"/llama_cpp_python-*.whl)"
