#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the CPU op test-suite.
#
# Builds pdl_ext._C with PDL_EXT_SANITIZE=1 (-fsanitize=address,undefined, CPU only) outside the
# source tree, copies the package and the tests to a temporary directory with that library, and runs
# the op tests there with the gcc ASan runtime preloaded (python itself is not instrumented).
# Any sanitizer report fails the run: UBSan halts on the first finding, ASan aborts on the first error.
#
#   bash .ci/sanitize.sh                  # after .ci/setup.sh (uses .venv/bin/python)
#   PDL_PYTHON=/work/venv/bin/python bash .ci/sanitize.sh [extra pytest args]
#
# Environment: PDL_PYTHON (default: .venv/bin/python when present, else python3), MAX_JOBS
# (default: 2), PDL_ASAN_BUILD (default /tmp/pdl_asan_build) and PDL_ASAN_LIB (default
# /tmp/pdl_asan_lib): the build directories, kept for incremental rebuilds;
# HYPOTHESIS_PROFILE (default: sanitize, a short property run; "deep" for a long one).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
BUILD_TEMP="${PDL_ASAN_BUILD:-/tmp/pdl_asan_build}"
BUILD_LIB="${PDL_ASAN_LIB:-/tmp/pdl_asan_lib}"
export MAX_JOBS="${MAX_JOBS:-2}"

start=$(date +%s)
echo "== sanitizer build (ASan + UBSan, CPU only) into $BUILD_TEMP, $BUILD_LIB"
# Never in place: the source tree's pdl_ext/_C*.so stays untouched.
if ! (cd "$ROOT" && FORCE_CUDA=0 PDL_EXT_SANITIZE=1 "$PYTHON" setup.py build_ext \
        --build-temp "$BUILD_TEMP" --build-lib "$BUILD_LIB") > "$BUILD_TEMP.log" 2>&1; then
  tail -n 60 "$BUILD_TEMP.log"
  echo "sanitize: the build failed (log: $BUILD_TEMP.log)" >&2
  exit 1
fi
SO="$(ls "$BUILD_LIB"/pdl_ext/_C*.so)"
echo "== built $SO in $(( $(date +%s) - start )) s"
# The library must really be instrumented (a stale uninstrumented build would pass silently).
syms="$(nm -D --undefined-only "$SO")"
grep -q '__asan_report' <<<"$syms" || { echo "sanitize: $SO has no ASan instrumentation" >&2; exit 1; }
grep -q '__ubsan_handle' <<<"$syms" || { echo "sanitize: $SO has no UBSan instrumentation" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdl_asan_run.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# The package with the instrumented library, and the tests beside it (run from there, so that
# `import pdl_ext` cannot pick up the source tree's uninstrumented build).
mkdir -p "$WORK/pdl_ext" "$WORK/tests"
find "$ROOT/pdl_ext" -maxdepth 1 -name '*.py' -exec cp {} "$WORK/pdl_ext/" \;
cp "$SO" "$WORK/pdl_ext/"
cp "$ROOT"/tests/*.py "$WORK/tests/"
cp "$ROOT"/tests/*.md "$WORK/tests/" 2>/dev/null || true
cp "$ROOT/pyproject.toml" "$WORK/"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
CXX_LIB="$(gcc -print-file-name=libstdc++.so.6)"
[[ -f "$ASAN_LIB" ]] || { echo "sanitize: libasan.so not found (gcc -print-file-name=libasan.so)" >&2; exit 1; }
# libstdc++ right after the ASan runtime: python does not link it, and ASan's __cxa_throw interceptor
# needs the real one at start-up (else the first C++ exception, e.g. in triton's import, aborts).
# libubsan comes in as a dependency of the instrumented library.
export LD_PRELOAD="$ASAN_LIB:$CXX_LIB"
# Python and torch leak by design at exit; the CUDA runtime torch links needs the shadow gap open.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:abort_on_error=1:halt_on_error=1:print_stacktrace=1:log_path=$WORK/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$WORK/ubsan"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-sanitize}"
export PYTHONPATH="$WORK"
export PYTHONDONTWRITEBYTECODE=1

cd "$WORK"
"$PYTHON" - <<'EOF'
import os, pdl_ext, pdl_ext._C as c
assert pdl_ext.extension.COMPILED
assert os.path.dirname(c.__file__) == os.path.join(os.environ["PYTHONPATH"], "pdl_ext"), c.__file__
print("== instrumented library loaded:", c.__file__)
EOF

# Canary: the runtime must catch a heap overflow in this environment, or a clean run means nothing.
if ("$PYTHON" -c "
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
ctypes.memset(libc.malloc(16), 0, 32)
") > /dev/null 2>&1; then
  echo "sanitize: ASan did not catch a deliberate heap overflow; is LD_PRELOAD honoured?" >&2
  exit 1
fi
rm -f "$WORK"/asan.*
echo "== canary heap overflow caught: ASan is live"

status=0
test_start=$(date +%s)
"$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_wasserstein_1d.py tests/test_normalized_wasserstein.py tests/test_properties.py tests/test_cpu_sort_paths.py \
    "$@" || status=$?
echo "== tests under the sanitizers took $(( $(date +%s) - test_start )) s"

reports=$(ls "$WORK"/asan.* "$WORK"/ubsan.* 2>/dev/null || true)
if [[ -n "$reports" ]]; then
  for f in $reports; do echo "---- $f"; cat "$f"; done
  echo "sanitize: FAILED: sanitizer reports above" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "sanitize: FAILED: pytest exited with $status (no sanitizer report was written)" >&2
  exit "$status"
fi
echo "== sanitize passed (no ASan/UBSan report) in $(( $(date +%s) - start )) s"
