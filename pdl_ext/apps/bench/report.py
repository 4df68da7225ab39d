"""The benchmark's outputs: the printed tables and the plot of the speedups."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


from .cases import BASE, MEMORY_METHOD, VARIANTS


# ----------------------------------------------------------------------------------------------
# Output


def _print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _check(ok: Optional[bool]) -> str:
    return "" if ok is None else ("ok" if ok else "MISS")


def print_report(records: List[Dict[str, Any]], pdl: Optional[Dict[str, Any]],
                 notes: List[str], settings: Dict[str, Any], memory_only: Sequence[Dict[str, Any]] = ()) -> None:
    base = [r for r in records if r["variant"] == BASE.name]
    rows = []
    for r in base:
        sp, target = r.get("speedup_vs_torch"), r.get("target_speedup")
        mem = r.get("peak_extra_bytes_per_elem")
        ok = None if sp is None or target is None else sp >= target
        mem_ok = None if mem is None or "target_bytes_per_elem" not in r else mem <= r["target_bytes_per_elem"]
        rows.append([
            f"{r['rows']}x{r['n']}", r["impl"], _fmt(r["median_s"] * 1e3, ".2f"), _fmt(r["melem_per_s"], ".1f"),
            _fmt(sp, ".2f", "x"), _fmt(target, ".0f", "x") + (" " + _check(ok) if ok is not None else ""),
            _fmt(mem, ".1f") + (" " + _check(mem_ok) if mem_ok is not None else ""),
            _fmt(r.get("alloc_peak_bytes_per_elem"), ".1f"),
        ])
    _print_table(
        f"wasserstein_1d forward+backward, float32, p=1 (median of {settings['repeats']})",
        ["rows x N", "impl", "ms", "Melem/s", "vs torch", "target", "peak B/el", "alloc B/el"], rows,
    )
    rows = []
    for r in records:
        if r["variant"] == BASE.name:
            continue
        ratio, target = r.get("ratio_vs_base"), r["target_ratio"]
        ok = None if ratio is None else ratio <= target
        rows.append([
            f"{r['rows']}x{r['n']}", r["variant"], _fmt(r["median_s"] * 1e3, ".2f"), _fmt(r["melem_per_s"], ".1f"),
            _fmt(ratio, ".2f", "x"), _fmt(target, ".1f", "x") + " " + _check(ok),
            _fmt(r.get("peak_extra_bytes_per_elem"), ".1f"),
        ])
    if rows:
        _print_table("fused variants: time / fused float32 p=1 of the same shape",
                     ["rows x N", "variant", "ms", "Melem/s", "ratio", "target", "peak B/el"], rows)
    rows = []
    for r in memory_only:
        mem = r.get("peak_extra_bytes_per_elem")
        ok = None if mem is None else mem <= r["target_bytes_per_elem"]
        rows.append([f"{r['rows']}x{r['n']}", r["impl"], _fmt(mem, ".1f") + (" " + _check(ok) if ok is not None else ""),
                     _fmt(r.get("alloc_peak_bytes_per_elem"), ".1f")])
    if rows:
        _print_table("peak memory only (not timed), forward+backward, float32, p=1",
                     ["rows x N", "impl", "peak B/el", "alloc B/el"], rows)
    print("\nMelem/s = rows*N / median time; peak B/el: " + MEMORY_METHOD)
    if pdl is not None:
        print("\nPDLLoss (VGG16, random weights), forward+backward:")
        if "skipped" in pdl or "error" in pdl:
            print(f"  skipped: {pdl.get('skipped') or 'error: ' + pdl['error']}")
        else:
            print(f"  batch {pdl['batch']} of {pdl['size']}x{pdl['size']}: whole {pdl['whole_s'] * 1e3:.1f} ms = "
                  f"backbone {pdl['backbone_s'] * 1e3:.1f} ms + distance {pdl['distance_s'] * 1e3:.1f} ms "
                  f"({100 * pdl['distance_fraction']:.1f}% of the step; "
                  f"{pdl['feature_elements'] / 1e6:.2f} M feature elements of x)")
    for note in notes:
        print(f"note: {note}")


def write_plot(path: Path, records: List[Dict[str, Any]], subtitle: str = "") -> None:
    """Bar plots: fused speedup over pure PyTorch by shape, and the variants' time ratios, with targets."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, touches no global backend

    base = [r for r in records if r["impl"] == "fused" and r["variant"] == BASE.name]
    shapes = [f"{r['rows']}x{r['n']}" for r in base]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    pos = list(range(len(base)))
    speedups = [r.get("speedup_vs_torch", 0.0) for r in base]
    ax1.bar(pos, speedups, color="tab:blue", label="fused / pure PyTorch")
    for i, r in enumerate(base):
        ax1.hlines(r["target_speedup"], i - 0.4, i + 0.4, colors="tab:red", linestyles="--",
                   label="speedup target" if i == 0 else None)
        ax1.annotate(f"{speedups[i]:.1f}x", (i, speedups[i]), ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(pos, shapes, rotation=30)
    ax1.set_ylabel("speedup, forward+backward")
    ax1.set_title("fused wasserstein_1d vs pure PyTorch (float32, p=1)")
    ax1.legend(loc="upper right", fontsize=8)

    shown = [v for v in VARIANTS.values() if any(r["variant"] == v.name for r in records)]
    width = 0.8 / max(1, len(shown))
    for k, var in enumerate(shown):
        ratios = {(r["rows"], r["n"]): r.get("ratio_vs_base", 0.0) for r in records if r["variant"] == var.name}
        xs = [i + (k - (len(shown) - 1) / 2) * width for i in pos]
        ax2.bar(xs, [ratios.get((r["rows"], r["n"]), 0.0) for r in base], width, label=var.name)
    for target in sorted({v.target for v in shown}):
        which = ", ".join(v.name for v in shown if v.target == target)
        ax2.axhline(target, color="tab:red", linestyle="--", linewidth=1)
        ax2.annotate(f"target {which}: {target}x", (-0.5, target), va="bottom", fontsize=7, color="tab:red")
    ax2.set_xticks(pos, shapes, rotation=30)
    ax2.set_ylabel("time / fused float32 p=1")
    ax2.set_title("fused variants (lower is better)")
    ax2.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


