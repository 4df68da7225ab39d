#!/usr/bin/env bash
# CI stage: build pdl_ext._C with its CUDA kernels (FORCE_CUDA=1; no GPU needed) outside the source
# tree, import the built library, and check that every op with a CPU kernel has a CUDA kernel.
# A CUDA source that does not compile or link fails this stage.
#
#   bash .ci/build_cuda.sh                       # after .ci/setup.sh (uses .venv/bin/python)
#   PDL_PYTHON=/path/to/venv/bin/python bash .ci/build_cuda.sh
#
# Environment: PDL_PYTHON (default: .venv/bin/python when present, else python3), CUDA_HOME
# (default: /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default: "8.0;9.0"), MAX_JOBS (default: 2),
# PDL_CUDA_BUILD_DIR (default: a fresh temporary directory, removed afterwards; set it to keep the
# build and rebuild incrementally).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export FORCE_CUDA=1

if [[ -n "${PDL_CUDA_BUILD_DIR:-}" ]]; then
  WORK="$PDL_CUDA_BUILD_DIR"
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdl_cuda_ci.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
fi

if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "FAIL: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME to the CUDA toolkit)"
  exit 1
fi
echo "== CUDA build: nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), archs $TORCH_CUDA_ARCH_LIST, into $WORK"
start=$(date +%s)
# Never in place: the source tree's pdl_ext/_C*.so (the CPU build) stays untouched.
if ! (cd "$ROOT" && "$PYTHON" setup.py build_ext --build-temp "$WORK/temp" --build-lib "$WORK/lib") \
    > "$WORK/build.log" 2>&1; then
  tail -n 200 "$WORK/build.log"
  echo "FAIL: the CUDA build failed (log above)"
  exit 1
fi
end=$(date +%s)
echo "CUDA build time: $((end - start)) s"

# Import the built library through a copy of the package, from outside the source tree.
rm -rf "$WORK/pkg"
mkdir -p "$WORK/pkg"
cp -r "$ROOT/pdl_ext" "$WORK/pkg/"
rm -f "$WORK"/pkg/pdl_ext/_C*.so
cp "$WORK"/lib/pdl_ext/_C*.so "$WORK/pkg/pdl_ext/"
(cd "$WORK" && PYTHONPATH="$WORK/pkg" "$PYTHON" -c "
import pdl_ext, sys
assert pdl_ext.__file__.startswith(sys.argv[1]), f'imported {pdl_ext.__file__}, not the CUDA build'
assert pdl_ext.extension_info()['compiled'], pdl_ext.extension_info()
" "$WORK/pkg")
(cd "$WORK" && PYTHONPATH="$WORK/pkg" "$PYTHON" "$ROOT/.ci/check_cuda_registration.py")
