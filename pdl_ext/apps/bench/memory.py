"""Peak memory of one step, measured in a worker process (RSS high-water mark and torch's allocator)."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

import torch


from .cases import BASE, IMPLEMENTATIONS, MEMORY_TARGET, _log, make_inputs, step

# ----------------------------------------------------------------------------------------------
# Peak memory, in a worker process


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _allocator_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()`` above what it held before."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _memory_job(job: Dict[str, Any]) -> Dict[str, Any]:
    fn = IMPLEMENTATIONS[job["impl"]][1]
    dtype = getattr(torch, job["dtype"])
    p = job["p"]
    # Warm-up at a tiny size: thread pools and lazy initialisation must not count as the step's memory.
    wx, wy = make_inputs(4, 64, max(1, round(64 * job["m"] / job["n"])), dtype)
    step(fn, wx, wy, p)
    x, y = make_inputs(job["rows"], job["n"], job["m"], dtype)
    del wx, wy
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    step(fn, x, y, p)
    rss_peak = _proc_status_bytes("VmHWM") - before
    x.grad = None  # else freeing it inside the profiled step would offset the allocator's count
    alloc_peak = _allocator_peak(lambda: step(fn, x, y, p))
    return {"rss_bytes": max(0, rss_peak), "alloc_bytes": alloc_peak, "elements": x.numel()}


def _memory_worker() -> int:
    """Entry of the worker process: jobs as JSON on stdin, one JSON result per line on stdout."""
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    for job in spec["jobs"]:
        try:
            result = _memory_job(job)
        except Exception as exc:  # one failing implementation must not lose the others' numbers
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


def memory_supported() -> Optional[str]:
    """None when peak RSS can be reset and read here, else why not."""
    if not (os.path.exists("/proc/self/status") and os.access("/proc/self/clear_refs", os.W_OK)):
        return "peak memory needs Linux /proc/self/clear_refs and VmHWM; not available here"
    return None


def measure_memory(jobs: List[Dict[str, Any]], threads: int, timeout: float = 900.0) -> List[Dict[str, Any]]:
    """Runs the memory jobs in one fresh worker process; returns one result dict per job."""
    if not jobs:
        return []
    env = dict(os.environ)
    # A fixed threshold disables glibc's adaptive one, under which freed large buffers stay resident.
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    # The worker imports the pdl_ext this process runs (a source checkout or an install) by its sys.path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = "import sys; from pdl_ext.apps.bench.memory import _memory_worker; sys.exit(_memory_worker())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps({"threads": threads, "jobs": jobs}),
            capture_output=True, text=True, env=env, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return [{"error": f"memory worker timed out after {timeout:.0f} s"} for _ in jobs]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) < len(jobs):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        results += [{"error": f"memory worker died: {tail[0]}"} for _ in range(len(jobs) - len(results))]
    return results


def attach_memory(records: List[Dict[str, Any]], threads: int, notes: List[str]) -> None:
    """Adds extra peak bytes per element of x (RSS and torch allocator) to the given records."""
    reason = memory_supported()
    if reason:
        notes.append(reason)
        return
    jobs = [{k: r[k] for k in ("impl", "rows", "n", "m", "dtype", "p")} for r in records]
    _log(f"  measuring peak memory of {len(jobs)} steps in a worker process ...")
    for rec, res in zip(records, measure_memory(jobs, threads)):
        if "error" in res:
            notes.append(f"memory {rec['impl']} {rec['rows']}x{rec['n']} {rec['variant']}: {res['error']}")
            continue
        rec["peak_extra_bytes_per_elem"] = res["rss_bytes"] / res["elements"]
        rec["alloc_peak_bytes_per_elem"] = res["alloc_bytes"] / res["elements"]
        if rec["impl"] == "fused" and rec["variant"] == BASE.name:
            rec["target_bytes_per_elem"] = MEMORY_TARGET


