#!/usr/bin/env bash
# GPU check: build pdl_ext._C in place with its CUDA kernels for the visible GPU, then, each stage with
# its own time limit, (1) the op test-suite on cuda, (2) the losses on cuda against the CPU,
# (3) compute-sanitizer memcheck (and racecheck on the short-row kernel), (4) the demo on cuda,
# (5) the GPU benchmark. Writes OUTDIR/report.md (updated after every stage, so a killed run keeps what
# it did), OUTDIR/bench.json, the logs, and OUTDIR/gpu_check.tar.gz (report, logs, junit xml, bench
# json, demo metrics: one file to copy back).
#
#   bash .ci/gpu_check.sh OUTDIR
#
# Needs a GPU, nvcc, and a python with a CUDA build of torch >= 2.9, pytest, numpy, scipy,
# scikit-image (no network, no virtual environment). Without a GPU or nvcc, or when the build fails,
# it prints one line saying why and exits 1 (the build log stays in OUTDIR).
#
# Environment:
#   PDL_PYTHON               the python (default python3)
#   CUDA_HOME                default: the parent of the directory of the nvcc on PATH
#   TORCH_CUDA_ARCH_LIST     default: the visible GPU's compute capability (nvidia-smi, else torch)
#   MAX_JOBS                 default: nproc
#   GPU_CHECK_BUDGET_S       seconds for all stages together (default 470: the whole run within 8 min)
#   GPU_CHECK_SKIP_BUILD=1   use the in-place build already there
#   GPU_CHECK_SKIP_TESTS=1, GPU_CHECK_SKIP_LOSSES=1, GPU_CHECK_SKIP_SANITIZER=1, GPU_CHECK_SKIP_DEMO=1,
#   GPU_CHECK_SKIP_BENCH=1   leave a stage out
#   GPU_CHECK_QUICK_BENCH=1  benchmarks/bench_cuda.py --quick
#   GPU_CHECK_<STAGE>_S      a stage's own limit in seconds (BUILD 210, TESTS 150, LOSSES 60,
#                            SANITIZER 75, DEMO 60, BENCH 120); the budget cuts later stages short
#   HYPOTHESIS_PROFILE       of tests/test_properties.py (default fast)
#
# Exit status: 0 when every stage that ran passed (skipped ones do not count), 1 otherwise, 2 on usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: bash .ci/gpu_check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || { echo "gpu_check: cannot create $1"; exit 2; }
OUT="$(cd "$1" && pwd)"
PY="${PDL_PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pdl_gpu_check.XXXXXX")"
STAGES="$WORK/stages.tsv"  # name, status, seconds, counts, detail (tab-separated)
: > "$STAGES"
INFO="$WORK/info.txt"      # lines "key<TAB>value" for the report's header
: > "$INFO"
# What a previous run left would be read as this run's.
rm -f "$OUT/report.md" "$OUT/gpu_check.tar.gz" "$OUT/bench.json" "$OUT"/{build,tests,losses,sanitizer,demo,bench}.log \
  "$OUT"/{tests,losses}.xml

info() { printf '%s\t%s\n' "$1" "$2" >> "$INFO"; }

# ----------------------------------------------------------------------------------------------
# The report (python's standard library only; rewritten after every stage)
cat > "$WORK/report.py" <<'PYEOF'
import html, json, os, subprocess, sys, xml.etree.ElementTree as ET

out, work, final = sys.argv[1], sys.argv[2], sys.argv[3] == "final"
info = {}
for line in open(os.path.join(work, "info.txt")):
    k, _, v = line.rstrip("\n").partition("\t")
    info[k] = v
stages = [line.rstrip("\n").split("\t") for line in open(os.path.join(work, "stages.tsv")) if line.strip()]

def junit(path):
    """(passed, failed, errors, skipped, [first lines of failures]) from a pytest junit xml, or None."""
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    firsts = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                firsts.append(f"{name}: {msg[0][:300] if msg else tag}")
    return tests - failed - errors - skipped, failed, errors, skipped, firsts

lines = []
gpu = info.get("gpu", "no GPU")
lines.append(f"# GPU check: {gpu}")
lines.append("")
meta = [f"{k}: {info[k]}" for k in ("date", "torch", "nvcc", "arch", "python", "commit") if k in info]
if meta:
    lines.append("; ".join(meta))
    lines.append("")
ran = [s for s in stages if s[1] not in ("skipped",)]
failed = [s for s in stages if s[1] not in ("passed", "skipped")]
if info.get("fatal"):
    verdict = f"**FAILED**: {info['fatal']}"
elif not final:
    verdict = "**RUNNING** (or killed): the stages below are those finished so far"
else:
    verdict = "**PASSED**" if not failed else "**FAILED**: " + ", ".join(s[0] for s in failed)
lines.append(f"Result: {verdict} (total {info.get('elapsed', '?')} s)")
lines.append("")
if stages:
    lines.append("| stage | status | counts | seconds | detail |")
    lines.append("|---|---|---|---:|---|")
failures = []
for name, status, seconds, counts, detail, *rest in [s + [""] * (5 - len(s)) for s in stages]:
    xml = rest[0] if rest else ""
    if xml:
        j = junit(os.path.join(out, xml))
        if j is None:
            counts = counts or "no junit xml (killed?)"
        else:
            p, f, e, sk, firsts = j
            counts = f"{p} passed, {f} failed, {e} errors, {sk} skipped"
            failures += [(name, x) for x in firsts]
    lines.append(f"| {name} | {status} | {counts} | {seconds} | {detail} |")
lines.append("")
firsts_file = os.path.join(work, "firsts.txt")
if os.path.exists(firsts_file):
    failures += [tuple(l.rstrip("\n").split("\t", 1)) for l in open(firsts_file) if "\t" in l]
if failures:
    lines.append("## Failures (first lines)")
    lines.append("")
    for stage, text in failures[:40]:
        lines.append(f"- {stage}: `{text}`")
    if len(failures) > 40:
        lines.append(f"- ... {len(failures) - 40} more (see the logs)")
    lines.append("")
bench_md = os.path.join(work, "bench.md")
if os.path.exists(bench_md):
    lines.append("## Benchmark")
    lines.append("")
    lines.append(open(bench_md).read().rstrip())
    lines.append("")
notes = [v for k, v in sorted(info.items()) if k.startswith("note")]
if notes:
    lines.append("## Notes")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines.append("")
if stages:
    lines.append("Logs: build.log, tests.log (+ tests.xml), losses.log (+ losses.xml), sanitizer.log, demo.log, "
                 "bench.log; all of them in gpu_check.tar.gz.")
open(os.path.join(out, "report.md"), "w").write("\n".join(lines) + "\n")
PYEOF

report() {  # report [final]
  info elapsed "$(( $(date +%s) - START ))"
  if ! "$PY" "$WORK/report.py" "$OUT" "$WORK" "${1:-partial}" 2>> "$WORK/report.err"; then
    { echo "# GPU check"; echo
      echo "Result: **FAILED**: $(grep -m 1 '^fatal' "$INFO" | cut -f2-)"
      echo; echo "(The full report could not be generated: $PY failed: $(tail -n 1 "$WORK/report.err").)"
      echo; cat "$STAGES"; } > "$OUT/report.md"
  fi
}

bundle() {
  (cd "$OUT" && tar -czf "$WORK/gpu_check.tar.gz" --exclude='*.png' --exclude='*.safetensors' --exclude='*.pt' \
      $(ls -d report.md bench.json ./*.log ./*.xml demo 2>/dev/null) 2>/dev/null) && mv "$WORK/gpu_check.tar.gz" "$OUT/"
}

cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# A fatal condition before or during the build: one line, a report that says it, exit 1.
fatal() {
  echo "$1"
  info fatal "$1"
  report final
  bundle
  exit 1
}

# ----------------------------------------------------------------------------------------------
# Preflight: a GPU, a CUDA build of torch, nvcc
info date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
info commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
SMI_LINE=""
if command -v nvidia-smi > /dev/null 2>&1; then
  SMI_LINE="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
fi
# One line from python: "OK|torch|cuda|cap|name|python" or "FAIL|reason".
TORCH_LINE="$("$PY" - 2> "$WORK/preflight.err" <<'PYEOF' | tail -n 1
import sys
try:
    import torch
except Exception as exc:
    print(f"FAIL|{sys.executable} cannot import torch ({type(exc).__name__}: {exc})".replace("\n", " "))
    raise SystemExit
py = ".".join(map(str, sys.version_info[:3]))
version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
if version < (2, 9):
    print(f"FAIL|torch {torch.__version__} is older than 2.9 (pdl-ext needs torch >= 2.9)")
elif torch.version.cuda is None:
    print(f"FAIL|torch {torch.__version__} is a CPU-only build (python {py})")
elif not torch.cuda.is_available():
    print(f"FAIL|torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (torch.cuda.is_available() is False)")
else:
    major, minor = torch.cuda.get_device_capability(0)
    print(f"OK|{torch.__version__}|{torch.version.cuda}|{major}.{minor}|{torch.cuda.get_device_name(0)}|{py}")
PYEOF
)"
[[ -n "$TORCH_LINE" ]] || TORCH_LINE="FAIL|$PY did not run: $(tail -n 1 "$WORK/preflight.err" | cut -c1-200)"
if [[ "$TORCH_LINE" != OK\|* ]]; then
  reason="${TORCH_LINE#FAIL|}"
  if [[ -z "$SMI_LINE" ]]; then
    smi="nvidia-smi not found"
    command -v nvidia-smi > /dev/null 2>&1 && smi="nvidia-smi lists no GPU"
    fatal "no GPU visible: $smi; $reason"
  fi
  fatal "GPU ${SMI_LINE%%,*} visible to nvidia-smi, but not usable from python: $reason"
fi
IFS='|' read -r _ TORCH_VERSION TORCH_CUDA CAP GPU_NAME PY_VERSION <<< "$TORCH_LINE"
info gpu "$GPU_NAME (compute capability $CAP)${SMI_LINE:+; nvidia-smi: $SMI_LINE}"
info torch "$TORCH_VERSION (CUDA $TORCH_CUDA)"
info python "$PY_VERSION ($PY)"
if [[ -n "$SMI_LINE" ]]; then
  smi_cap="$(echo "$SMI_LINE" | cut -d, -f2 | tr -d ' ')"
  [[ "$smi_cap" =~ ^[0-9]+\.[0-9]+$ ]] && CAP="$smi_cap"
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAP}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [[ -z "${CUDA_HOME:-}" ]]; then
  NVCC="$(command -v nvcc || true)"
  [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
  [[ -n "$NVCC" ]] || fatal "no nvcc: none on PATH and none at /usr/local/cuda/bin (set CUDA_HOME)"
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
fi
export CUDA_HOME
[[ -x "$CUDA_HOME/bin/nvcc" ]] || fatal "no nvcc at $CUDA_HOME/bin/nvcc (CUDA_HOME=$CUDA_HOME)"
NVCC_VERSION="$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
info nvcc "$NVCC_VERSION at $CUDA_HOME"
info arch "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS"
if [[ "${NVCC_VERSION%%.*}" != "${TORCH_CUDA%%.*}" ]]; then
  info note1 "nvcc $NVCC_VERSION and torch's CUDA $TORCH_CUDA differ in their major version: torch's cpp_extension refuses such builds"
fi
echo "gpu_check: $GPU_NAME (sm $CAP), torch $TORCH_VERSION (CUDA $TORCH_CUDA), nvcc $NVCC_VERSION; budget ${BUDGET}s; out $OUT"
report

# ----------------------------------------------------------------------------------------------
# Stages

# limit_for CAP: seconds a stage may take (its cap, cut to what is left of the budget).
limit_for() {
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( left < $1 )) && echo "$left" || echo "$1"
}

# stage NAME CAP LOG XML DETAIL -- command...: runs it under timeout (SIGINT first: pytest and the
# benchmark then write what they have), records passed / failed (exit N) / timed out.
stage() {
  local name="$1" cap="$2" log="$3" xml="$4" detail="$5"
  shift 6
  local limit
  limit="$(limit_for "$cap")"
  if (( limit < 20 )); then
    printf '%s\tskipped\t0\t\tno time left in the budget (GPU_CHECK_BUDGET_S=%s)\t%s\n' "$name" "$BUDGET" "$xml" >> "$STAGES"
    echo "== $name: skipped (no time left)"
    report
    return 0
  fi
  echo "== $name (limit ${limit}s) ..."
  local t0 rc status
  t0=$(date +%s)
  (cd "$ROOT" && timeout -s INT -k 20 "$limit" "$@") > "$OUT/$log" 2>&1
  rc=$?
  local secs=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    status=passed
  elif (( rc == 124 || rc == 137 )) || (( secs >= limit )); then
    status="timed out"
    detail="killed after ${limit}s; $detail"
  else
    status="failed (exit $rc)"
  fi
  printf '%s\t%s\t%s\t\t%s\t%s\n' "$name" "$status" "$secs" "$detail" "$xml" >> "$STAGES"
  echo "== $name: $status in ${secs}s"
  if [[ "$status" != passed && ( -z "$xml" || ! -s "$OUT/$xml" ) ]]; then
    # No junit xml to read the failures from: the log's last error line (or its last line).
    local line
    line="$(grep -E 'Error|error:|FAIL|Traceback|bench_cuda:' "$OUT/$log" | tail -n 1)"
    [[ -n "$line" ]] || line="$(grep -v '^[[:space:]]*$' "$OUT/$log" | tail -n 1)"
    printf '%s\t%s\n' "$name" "${line:0:300}" >> "$WORK/firsts.txt"
  fi
  report
}

skip() {  # skip NAME REASON
  printf '%s\tskipped\t0\t\t%s\t\n' "$1" "$2" >> "$STAGES"
  echo "== $1: skipped ($2)"
  report
}

# 0. Build in place (fails fast)
if [[ "${GPU_CHECK_SKIP_BUILD:-0}" == 1 ]]; then
  skip build "GPU_CHECK_SKIP_BUILD=1: the in-place build already there"
else
  limit="$(limit_for "${GPU_CHECK_BUILD_S:-210}")"
  echo "== build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, limit ${limit}s) ..."
  t0=$(date +%s)
  (cd "$ROOT" && FORCE_CUDA=1 timeout -k 20 "$limit" "$PY" setup.py build_ext --inplace) > "$OUT/build.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  if (( rc != 0 )); then
    first="$(grep -m 1 -E '(^|[^-])error:|Error:|FAILED:' "$OUT/build.log" | cut -c1-240)"
    (( rc == 124 || rc == 137 )) && first="killed after ${limit}s${first:+; first error: $first}"
    printf 'build\tfailed (exit %s)\t%s\t\tbuild.log\t\n' "$rc" "$secs" >> "$STAGES"
    fatal "build failed (exit $rc after ${secs}s, log $OUT/build.log): ${first:-see the log}"
  fi
  printf 'build\tpassed\t%s\t\tin place, build.log\t\n' "$secs" >> "$STAGES"
  echo "== build: passed in ${secs}s"
fi
# The build must hold CUDA kernels for every op with a CPU kernel, and load from this tree.
if ! (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" .ci/check_cuda_registration.py) >> "$OUT/build.log" 2>&1; then
  fatal "the build has no usable CUDA kernels: $(grep -m 1 -E 'FAIL|Error' "$OUT/build.log" | cut -c1-240) (log $OUT/build.log)"
fi
report

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-fast}"
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE --durations=10)
if "$PY" -c "import pytest_timeout" > /dev/null 2>&1; then
  PYTEST+=(--timeout 120)  # one hung test must not take the whole stage
fi

# 1. The op test-suite on cuda (the [cuda] cases of the device-parametrized tests, test_cuda*.py)
if [[ "${GPU_CHECK_SKIP_TESTS:-0}" == 1 ]]; then
  skip "op tests on cuda" "GPU_CHECK_SKIP_TESTS=1"
else
  stage "op tests on cuda" "${GPU_CHECK_TESTS_S:-150}" tests.log tests.xml "\`pytest tests -k cuda -m 'not gpu_losses'\`" -- \
    "${PYTEST[@]}" tests -k cuda -m "not gpu_losses" --junitxml "$OUT/tests.xml"
fi

# 2. The normalized op and the losses on cuda against the CPU
if [[ "${GPU_CHECK_SKIP_LOSSES:-0}" == 1 ]]; then
  skip "losses on cuda vs cpu" "GPU_CHECK_SKIP_LOSSES=1"
else
  stage "losses on cuda vs cpu" "${GPU_CHECK_LOSSES_S:-60}" losses.log losses.xml "\`pytest tests -m gpu_losses\`" -- \
    "${PYTEST[@]}" tests -m gpu_losses --junitxml "$OUT/losses.xml"
fi

# 3. compute-sanitizer over a small script of every kernel path
cat > "$WORK/sanitize_workload.py" <<'PYEOF'
"""Every CUDA path of pdl_ext once, small: `short` = block_row_kernel only (for racecheck), `all` = every path."""
import sys

import torch

import pdl_ext

assert pdl_ext.extension_info()["cuda"], pdl_ext.extension_info()
mode = sys.argv[1]
fwd, nfwd, nbwd = (torch.ops.pdl_ext.wasserstein_1d_fwd, torch.ops.pdl_ext.normalized_wasserstein_1d_fwd,
                   torch.ops.pdl_ext.normalized_wasserstein_1d_bwd)
g = torch.Generator().manual_seed(0)


def pair(rows, n, m, dtype):
    x = torch.randn(rows, n, generator=g, dtype=torch.float64)
    y = torch.randn(rows, m, generator=g, dtype=torch.float64)
    x[:, ::5] = 0.5  # ties
    return x.to(dtype).cuda(), y.to(dtype).cuda()


# (n, m): the tiles 128, 512, 2048 (and 4096 for 32-bit keys), equal and unequal sizes
short = [(1, 1), (1, 9), (100, 128), (129, 129), (512, 300), (2048, 2048), (1000, 2047), (4096, 4096), (3000, 4096)]
for dtype in (torch.float32, torch.float64, torch.bfloat16):
    for n, m in short:
        if dtype == torch.float64 and max(n, m) > 2048:
            continue
        x, y = pair(2, n, m, dtype)
        fwd(x, y, 1, True, True)
        fwd(x, y, 2, True, False)
x, y = pair(3, 300, 200, torch.float32)
x[1, 7] = float("nan")
fwd(x, y, 1, True, True)
f = torch.relu(torch.randn(2, 3, 300, generator=g)).cuda()
nfwd(f, f[..., :200].contiguous(), 1, True, True)
if mode == "all":
    for dtype, (n, m) in ((torch.float32, (4097, 4097)), (torch.float32, (5000, 3001)), (torch.float32, (70000, 50000)),
                          (torch.float64, (3000, 3000)), (torch.float16, (5000, 5000))):
        x, y = pair(2, n, m, dtype)
        x[0, 3] = float("nan")
        fwd(x, y, 1, True, True)
        fwd(x, y, 2, False, False)
    fwd(torch.empty(0, 5, device="cuda"), torch.empty(0, 3, device="cuda"), 1, True, True)
    f = torch.relu(torch.randn(1, 4, 5000, generator=g)).cuda()
    h = torch.relu(torch.randn(1, 4, 4000, generator=g)).cuda()
    w, dx, dy, nx, ny = nfwd(f, h, 1, True, True)
    nbwd(torch.ones(1, 4, device="cuda"), dx, f, nx)
    x = torch.randn(2, 6, 50, generator=g).cuda().transpose(0, 1)[..., ::2]  # strided
    pdl_ext.wasserstein_1d(x.requires_grad_(), torch.randn(6, 2, 40).cuda(), 1).sum().backward()
torch.cuda.synchronize()
print(f"sanitize workload {mode}: ok")
PYEOF
if [[ "${GPU_CHECK_SKIP_SANITIZER:-0}" == 1 ]]; then
  skip "compute-sanitizer" "GPU_CHECK_SKIP_SANITIZER=1"
else
  SANITIZER="$(command -v compute-sanitizer || true)"
  for c in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
    [[ -z "$SANITIZER" && -x "$c" ]] && SANITIZER="$c"
  done
  if [[ -z "$SANITIZER" ]]; then
    skip "compute-sanitizer" "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
  else
    # No caching allocator: memcheck then sees the real bounds of every tensor.
    cat > "$WORK/sanitize.sh" <<EOF
set -u
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
echo "== memcheck, every path"
"$SANITIZER" --tool memcheck --error-exitcode 99 --print-limit 20 "$PY" "$WORK/sanitize_workload.py" all
m=\$?
echo "== racecheck, short rows (block_row_kernel)"
"$SANITIZER" --tool racecheck --error-exitcode 99 --print-limit 20 "$PY" "$WORK/sanitize_workload.py" short
r=\$?
echo "== exit codes: memcheck \$m, racecheck \$r"
(( m == 0 && r == 0 ))
EOF
    stage "compute-sanitizer" "${GPU_CHECK_SANITIZER_S:-75}" sanitizer.log "" "memcheck (all paths), racecheck (short rows)" -- \
      bash "$WORK/sanitize.sh"
    if grep -q -E "Device not supported|Unable to find injection library|error 999" "$OUT/sanitizer.log"; then
      sed -i '$d' "$STAGES"
      printf 'compute-sanitizer\tskipped\t0\t\tthe tool refused this machine (%s)\t\n' \
        "$(grep -m 1 -E 'Device not supported|Unable to find injection library|error 999' "$OUT/sanitizer.log" | cut -c1-160)" >> "$STAGES"
      report
    else
      summaries="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tr '\n' ';' | sed 's/========= //g')"
      [[ -n "$summaries" ]] && info note2 "compute-sanitizer: $summaries"
      grep -m 5 -E '^========= (Invalid|Error|Race|Barrier|Program hit)' "$OUT/sanitizer.log" \
        | sed 's/^/compute-sanitizer\t/' >> "$WORK/firsts.txt"
      report
    fi
  fi
fi

# 4. The demo on cuda
if [[ "${GPU_CHECK_SKIP_DEMO:-0}" == 1 ]]; then
  skip demo "GPU_CHECK_SKIP_DEMO=1"
else
  stage demo "${GPU_CHECK_DEMO_S:-60}" demo.log "" "\`pdl-ext demo --device cuda --steps 100 --losses l1,l1+0.05*pdl\`; demo/metrics.md" -- \
    "$PY" -m pdl_ext demo --device cuda --steps 100 --losses "l1,l1+0.05*pdl" --quiet --out "$OUT/demo"
  if [[ -f "$OUT/demo/metrics.md" ]]; then
    info note3 "demo (demo/metrics.md): $(grep -m 1 -F 'l1+0.05*pdl' "$OUT/demo/metrics.md" | tr -s ' ' | cut -c1-200)"
    report
  fi
fi

# 5. The GPU benchmark
if [[ "${GPU_CHECK_SKIP_BENCH:-0}" == 1 ]]; then
  skip benchmark "GPU_CHECK_SKIP_BENCH=1"
else
  quick=()
  [[ "${GPU_CHECK_QUICK_BENCH:-0}" == 1 ]] && quick=(--quick)
  stage benchmark "${GPU_CHECK_BENCH_S:-120}" bench.log "" "\`benchmarks/bench_cuda.py${quick[*]:+ ${quick[*]}}\`; bench.json" -- \
    "$PY" benchmarks/bench_cuda.py "${quick[@]}" --json "$OUT/bench.json"
  if [[ -f "$OUT/bench.json" ]]; then
    "$PY" "$ROOT/benchmarks/bench_cuda.py" --summarize "$OUT/bench.json" > "$WORK/bench.md" 2>> "$OUT/bench.log"
  fi
fi

report final
bundle
if grep -q -v -P '\t(passed|skipped)\t' "$STAGES"; then
  echo "gpu_check: FAILED after $(( $(date +%s) - START ))s: $(grep -v -P '\t(passed|skipped)\t' "$STAGES" | cut -f1,2 | tr '\t\n' ' ;') report $OUT/report.md"
  exit 1
fi
echo "gpu_check: passed in $(( $(date +%s) - START ))s; report $OUT/report.md"
exit 0
