""".ci/gpu_check.sh and benchmarks/bench_cuda.py where there is no GPU: both fail at once with one line
saying why (the script's report.md says it too), the benchmark's --help and --summarize work, and its
whole measuring loop runs on the CPU with torch.cuda's timers and allocator statistics stood in for.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu_check.sh"
BENCH = ROOT / "benchmarks" / "bench_cuda.py"

gpu_here = pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
                              reason="a GPU is visible here: the script would build and run for minutes")


def _run_script(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT)


@gpu_here
def test_gpu_check_fails_at_once_with_one_line_without_a_gpu(tmp_path):
    out = tmp_path / "gc"
    t0 = time.monotonic()
    r = _run_script(out, PDL_PYTHON=sys.executable)
    seconds = time.monotonic() - t0
    lines = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("no GPU visible: "), lines[0]
    assert "torch.cuda.is_available() is False" in lines[0]
    assert seconds < 60  # at once: no build was started
    report = (out / "report.md").read_text()
    assert "**FAILED**" in report and lines[0] in report
    assert not (out / "build.log").exists()


@gpu_here
def test_gpu_check_without_a_usable_python_still_says_why(tmp_path):
    out = tmp_path / "gc"
    r = _run_script(out, PDL_PYTHON=str(tmp_path / "no-such-python"))
    lines = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("no GPU visible: ")
    report = (out / "report.md").read_text()
    assert "FAILED" in report and "no GPU visible" in report


def test_gpu_check_usage():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage: bash .ci/gpu_check.sh OUTDIR" in r.stderr


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, timeout=30).returncode == 0


# ----------------------------------------------------------------------------------------------
# benchmarks/bench_cuda.py


def _bench_module():
    spec = importlib.util.spec_from_file_location("pdl_bench_cuda", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_help_without_a_gpu():
    r = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--quick" in r.stdout and "--json" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_bench_fails_with_one_line_without_a_gpu(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(tmp_path / "b.json")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("bench_cuda: no GPU visible")
    assert not (tmp_path / "b.json").exists()


class _Event:
    """torch.cuda.Event stood in for by the wall clock."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_Event") -> float:
        return (end.t - self.t) * 1e3


def test_bench_measures_and_reports_on_the_cpu(tmp_path, monkeypatch, capsys):
    bench = _bench_module()
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "unavailable", lambda: None)
    monkeypatch.setattr(bench, "machine", lambda: {"gpu": "CPU stand-in", "compute_capability": "0.0",
                                                   "multiprocessors": 1, "torch": torch.__version__,
                                                   "torch_cuda": None, "date": "today"})
    monkeypatch.setattr(bench, "copy_bandwidth", lambda warmup, repeats: {"gb_per_s": 10.0, "median_ms": 1.0})
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 1000 + 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = tmp_path / "b.json"
    rc = bench.main(["--shapes", "16x64,8x300", "--repeats", "2", "--warmup", "0", "--no-compile",
                     "--pdl-batch", "1", "--pdl-size", "32", "--json", str(out), "--markdown", str(tmp_path / "b.md")])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(r["rows"], r["n"], r["dtype"]) for r in data["table"]] == [
        (16, 64, "float32"), (8, 300, "float32"), (16, 64, "bfloat16"), (8, 300, "bfloat16")]
    for rec in data["table"] + data["normalized"]:
        assert set(rec["impls"]) == {"fused", "torch"}
        for r in rec["impls"].values():
            assert "error" not in r, r
            assert len(r["times_ms"]) == 2 and r["median_ms"] > 0
            assert r["peak_extra_bytes"] == 3 * 2**20
            assert r["max_rel_diff_vs_float64"] < (1e-4 if rec["dtype"] == "float32" else 2e-2)
        elem = 4 if rec["dtype"] == "float32" else 2
        assert rec["min_bytes"] == 3 * elem * rec["elements"]
        assert rec["speedup_vs_torch"] == pytest.approx(rec["impls"]["torch"]["median_ms"] / rec["impls"]["fused"]["median_ms"])
    assert [(r["batch"], r["channels"], r["n"]) for r in data["normalized"][:2]] == [(8, 2, 64), (8, 1, 300)]
    assert data["pdl"]["batch"] == 1 and data["pdl"]["whole_ms"] > 0 and len(data["pdl"]["feature_shapes"]) == 5
    table = (tmp_path / "b.md").read_text()
    assert "| 16x64 | float32 |" in table and "| 8x2x64 | bfloat16 |" in table and "PDLLoss" in table
    # --summarize renders the saved run the same way, without a GPU
    capsys.readouterr()
    assert bench.main(["--summarize", str(out)]) == 0
    assert capsys.readouterr().out == table
