"""Smoke test of `pdl-ext bench`: a tiny quick run writes a JSON and a PNG whose content holds together.

Timings are not checked against any target (the machine is shared); what is checked is computed here
independently: medians of the stored times, throughput, speedups and ratios from the stored medians,
and peak memory at least x.grad's own size (4 bytes per float32 element).
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import statistics
import sys
import types

import pytest
import torch

import pdl_ext
from pdl_ext.apps import bench, cli

SHAPES = [(128, 1024), (512, 64)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    argv = ["bench", "--quick", "--shapes", ",".join(f"{r}x{n}" for r, n in SHAPES), "--repeats", "2",
            "--threads", "1", "--json", str(out / "r.json"), "--plot", str(out / "r.png")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(argv)
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "threads_before": threads,
            "threads_after": torch.get_num_threads(), "data": json.loads((out / "r.json").read_text())}


def test_exit_code_and_threads_restored(quick_run):
    assert quick_run["code"] == 0
    assert quick_run["threads_after"] == quick_run["threads_before"]
    assert quick_run["data"]["machine"]["torch_threads"] == 1


def test_header_names_machine_and_versions(quick_run):
    text, machine = quick_run["stdout"], quick_run["data"]["machine"]
    assert "machine:" in text and f"torch {torch.__version__}" in text and "Melem/s" in text
    assert machine["torch"] == torch.__version__
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["extension_info"]["compiled"] == pdl_ext.extension_info()["compiled"]
    datetime.datetime.fromisoformat(machine["date"])


def test_timings_are_consistent(quick_run):
    data = quick_run["data"]
    records = data["results"]
    base = {(r["rows"], r["n"], r["impl"]): r for r in records if r["variant"] == "float32 p=1"}
    # the default implementations that can run here: POT's rows when it is installed
    installed = [i for i in bench.DEFAULT_IMPLS if bench.unavailable_reason(i) is None]
    assert {"fused", "torch"} <= set(installed)
    assert set(base) == {(r, n, i) for r, n in SHAPES for i in installed}
    for (rows, n, impl), r in base.items():
        assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
        assert r["median_s"] == pytest.approx(statistics.median(r["times_s"]))
        assert r["melem_per_s"] == pytest.approx(rows * n / r["median_s"] / 1e6)
        assert r["speedup_vs_torch"] == pytest.approx(base[(rows, n, "torch")]["median_s"] / r["median_s"])
    assert base[(128, 1024, "fused")]["target_speedup"] == 10.0
    assert base[(512, 64, "fused")]["target_speedup"] == 4.0
    variants = [r for r in records if r["variant"] != "float32 p=1"]
    assert {(r["rows"], r["n"], r["variant"]) for r in variants} == {
        (r, n, v.name) for r, n in SHAPES for v in bench.VARIANTS.values()}
    for r in variants:
        assert r["impl"] == "fused"
        assert r["ratio_vs_base"] == pytest.approx(r["median_s"] / base[(r["rows"], r["n"], "fused")]["median_s"])
        if r["variant"].startswith("N!=M"):
            assert r["m"] == round(0.75 * r["n"])
        if r["variant"] == "float64":
            assert r["dtype"] == "float64"
    assert any("pot" in note for note in data["notes"]) == (bench.unavailable_reason("pot") is not None)
    for (rows, n, impl), r in base.items():  # every implementation computes what the pure-PyTorch one does
        if impl != "torch":
            assert r["max_rel_diff_vs_torch"] < 1e-4, (impl, rows, n, r["max_rel_diff_vs_torch"])


def test_peak_memory_counts_at_least_the_gradient(quick_run):
    data = quick_run["data"]
    if bench.memory_supported() is not None:
        pytest.skip(bench.memory_supported())
    assert "VmHWM" in data["memory_method"]
    for r in data["results"]:
        if r["variant"] != "float32 p=1":  # --quick measures the memory targets only
            assert "peak_extra_bytes_per_elem" not in r
            continue
        # x.grad alone (4 bytes per float32 element) is alive after the step; RSS counts whole pages.
        assert 4 * 0.9 <= r["peak_extra_bytes_per_elem"] < 200, r
        assert 4 <= r["alloc_peak_bytes_per_elem"] < 200, r
    # The pure-PyTorch step keeps sorted copies and int64 indices of x: more than the gradient alone.
    torch_rows = [r for r in data["results"] if r["impl"] == "torch"]
    assert all(r["alloc_peak_bytes_per_elem"] >= 4 + 8 for r in torch_rows)


def test_pdl_section_runs_or_is_skipped_with_a_reason(quick_run):
    pdl = quick_run["data"]["pdl"]
    assert "error" not in pdl, f"bench and pdl_ext.losses.pdl disagree on the PDLLoss API: {pdl['error']}"
    if "skipped" in pdl:
        assert "pdl_ext.losses.pdl" in pdl["skipped"] and "skipped" in quick_run["stdout"]
    else:
        assert pdl["whole_s"] == pytest.approx(statistics.median(pdl["whole_times_s"]))
        assert pdl["backbone_s"] == pytest.approx(statistics.median(pdl["backbone_times_s"]))
        assert pdl["distance_s"] == pytest.approx(pdl["whole_s"] - pdl["backbone_s"])
        assert "PDLLoss" in quick_run["stdout"] and "backbone" in quick_run["stdout"]


def test_plot_is_a_png_with_content(quick_run):
    from PIL import Image

    with Image.open(quick_run["out"] / "r.png") as im:
        assert im.format == "PNG" and im.size == (1200, 450)  # figsize 12 x 4.5 at 100 dpi
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # bars, lines and text, not blank


def test_pdl_section_splits_backbone_and_distance(monkeypatch):
    # A stand-in pdl_ext.losses.pdl with the expected API: the split must subtract the backbone's own time.
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, img):
            return [self.conv(img), self.conv(img)[:, :, ::2, ::2]]

    class PDLLoss(torch.nn.Module):
        def __init__(self, backbone="vgg16", pretrained=True):
            super().__init__()
            assert backbone == "vgg16" and pretrained is False  # the bench must never download
            self.backbone = Backbone()

        def forward(self, x, y):
            fx = self.backbone(x)
            with torch.no_grad():
                fy = self.backbone(y)
            return sum(pdl_ext.wasserstein_1d(a.flatten(2), b.flatten(2)).mean() for a, b in zip(fx, fy))

    monkeypatch.setitem(sys.modules, "pdl_ext.losses.pdl", types.SimpleNamespace(PDLLoss=PDLLoss))
    res = bench.run_pdl(batch=2, size=16, warmup=1, repeats=2)
    assert "error" not in res and "skipped" not in res, res
    assert res["whole_s"] > 0 and res["backbone_s"] > 0
    assert res["distance_s"] == pytest.approx(res["whole_s"] - res["backbone_s"])
    assert res["feature_elements"] == 2 * 4 * (16 * 16 + 8 * 8)


def test_pdl_section_reports_api_mismatch(monkeypatch):
    def wrong_api(**kwargs):
        raise TypeError("unexpected keyword 'pretrained'")

    monkeypatch.setitem(sys.modules, "pdl_ext.losses.pdl", types.SimpleNamespace(PDLLoss=wrong_api))
    assert "pretrained" in bench.run_pdl(batch=1, size=16, warmup=0, repeats=1)["error"]


def test_bad_arguments_exit_with_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--shapes", "12by4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--impls", "fused,scipy"])
    assert exc.value.code == 2


def test_unwritable_outputs_fail_before_any_timing(tmp_path, monkeypatch, capsys):
    # --json under a regular file: refused (exit 2, one line) before the first timing, not after it
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(bench, "run_table", lambda *a, **k: pytest.fail("the bench timed before checking --json"))
    code = cli.main(["bench", "--quick", "--no-memory", "--no-pdl", "--json", str(tmp_path / "afile" / "r.json"),
                     "--plot", str(tmp_path / "r.png")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"pdl-ext bench: error: --json '{tmp_path / 'afile' / 'r.json'}': "
                                        f"'{tmp_path / 'afile'}' is a file, not a directory"]


def test_bad_values_exit_with_status_2(capsys):
    assert cli.main(["bench", "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pdl-ext bench: error: --repeats must be >= 1 and --warmup >= 0, got 0 and 1"]
