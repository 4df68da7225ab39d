"""`pdl-ext` exit status and messages: 0 success, 2 a user error printed as one line
`pdl-ext <cmd>: error: ...` without a traceback, 130 on Ctrl-C, 1 (with the traceback) for anything
unexpected. Every output path is checked before any work: a command that would fail to write its
result fails at once, not after the training.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pdl_ext
from pdl_ext.apps import cli
from pdl_ext.io.weights import check_output_path

ROOT = Path(__file__).resolve().parents[1]


def _user_error(capsys, argv, command):
    """Runs `pdl-ext argv` in this process; asserts exit status 2 and one error line; returns it."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith(f"pdl-ext {command}: error: "), captured.err
    return lines[0]


def _run(args, env=None, cwd=None, timeout=240):
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pdl_ext", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture
def a_file(tmp_path):
    """A regular file: nothing can be written under it, whoever runs the tests (root included)."""
    path = tmp_path / "afile"
    path.write_text("not a directory")
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Any training started fails the test: errors must come before the work."""
    import pdl_ext.apps.demo.runner as runner
    import pdl_ext.train.mdf as train_mdf_module

    def fail(*args, **kwargs):
        pytest.fail("the work started before the error was found")

    monkeypatch.setattr(train_mdf_module, "pyramid_sizes", fail)
    monkeypatch.setattr(train_mdf_module, "load_image", fail)
    monkeypatch.setattr(runner, "_run", fail)


# ---------------------------------------------------------------------------------------------
# train-mdf
# ---------------------------------------------------------------------------------------------
def test_train_mdf_missing_image(tmp_path, capsys):
    line = _user_error(capsys, ["train-mdf", "--image", str(tmp_path / "missing.png"), "--task", "sr",
                                "--out", str(tmp_path / "d.safetensors")], "train-mdf")
    assert "missing.png" in line and "neither a bundled image" in line


def test_train_mdf_iters_zero(tmp_path, capsys, no_training):
    line = _user_error(capsys, ["train-mdf", "--image", "chelsea", "--task", "sr", "--iters", "0",
                                "--out", str(tmp_path / "d.safetensors")], "train-mdf")
    assert line == "pdl-ext train-mdf: error: train_mdf: iters must be a positive int, got 0"


def test_train_mdf_unwritable_out_fails_before_training(a_file, capsys, no_training):
    out = a_file / "sub" / "d.safetensors"
    line = _user_error(capsys, ["train-mdf", "--image", "chelsea", "--task", "sr", "--out", str(out)], "train-mdf")
    assert line == f"pdl-ext train-mdf: error: --out '{out}': '{a_file}' is a file, not a directory"
    # the function checks it too, before loading the image
    from pdl_ext.train.mdf import train_mdf

    with pytest.raises(NotADirectoryError, match=r"train_mdf: out '.*afile/sub/d\.safetensors': .* is a file"):
        train_mdf("chelsea", "sr", out=out)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_train_mdf_out_under_proc_fails_before_training(capsys, no_training):
    line = _user_error(capsys, ["train-mdf", "--image", "chelsea", "--task", "sr", "--out", "/proc/x/y.safetensors"],
                       "train-mdf")
    assert line.startswith("pdl-ext train-mdf: error: --out '/proc/x/y.safetensors': cannot create the directory '/proc/x'")


def test_train_mdf_unknown_device(tmp_path, capsys, no_training):
    line = _user_error(capsys, ["train-mdf", "--image", "chelsea", "--task", "sr", "--device", "foo",
                                "--out", str(tmp_path / "d.safetensors")], "train-mdf")
    assert line == "pdl-ext train-mdf: error: --device must be cpu, cuda or cuda:N (a torch device), got 'foo'"


def test_train_nima_unwritable_out_fails_first(tmp_path, a_file, capsys):
    out = a_file / "nima.safetensors"
    line = _user_error(capsys, ["train-nima", "--ratings", str(tmp_path / "AVA.txt"), "--out", str(out)], "train-nima")
    assert line == f"pdl-ext train-nima: error: --out '{out}': '{a_file}' is a file, not a directory"


# ---------------------------------------------------------------------------------------------
# convert-mdf
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def good_pth(tmp_path):
    from pdl_ext.losses.mdf import MDFDiscriminator

    torch.manual_seed(0)
    torch.save([MDFDiscriminator(32).eval() for _ in range(2)], tmp_path / "good.pth")
    return tmp_path / "good.pth"


def test_convert_mdf_unwritable_destination(good_pth, a_file, capsys, monkeypatch):
    import pdl_ext.io.mdf_pickle as mdf_pickle

    dst = a_file / "o.safetensors"
    monkeypatch.setattr(mdf_pickle, "load_pickled_modules",
                        lambda *a: pytest.fail("the source was read before the destination was checked"))
    line = _user_error(capsys, ["convert-mdf", str(good_pth), str(dst)], "convert-mdf")
    assert line == f"pdl-ext convert-mdf: error: dst '{dst}': '{a_file}' is a file, not a directory"
    with pytest.raises(NotADirectoryError, match=r"^convert_mdf: dst '.*afile/o\.safetensors': .* is a file"):
        mdf_pickle.convert_mdf(good_pth, dst)


def test_convert_mdf_creates_a_missing_folder(good_pth, tmp_path, capsys):
    dst = tmp_path / "new" / "deeper" / "o.safetensors"
    assert cli.main(["convert-mdf", str(good_pth), str(dst)]) == 0
    assert dst.is_file() and "wrote 2 discriminators" in capsys.readouterr().out
    assert [p.name for p in dst.parent.iterdir()] == ["o.safetensors"]  # no probe file left behind


def test_convert_mdf_refused_file_is_a_user_error(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a pickle at all")
    line = _user_error(capsys, ["convert-mdf", str(tmp_path / "junk.pth"), str(tmp_path / "o.safetensors")],
                       "convert-mdf")
    assert "junk.pth" in line and "not a torch.save file" in line


def test_convert_mdf_missing_source(tmp_path, capsys):
    line = _user_error(capsys, ["convert-mdf", str(tmp_path / "nope.pth"), str(tmp_path / "o.safetensors")],
                       "convert-mdf")
    assert line == f"pdl-ext convert-mdf: error: convert_mdf: no such file '{tmp_path / 'nope.pth'}'"


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def test_demo_unknown_device(tmp_path, capsys, no_training):
    line = _user_error(capsys, ["demo", "--device", "foo", "--out", str(tmp_path / "d")], "demo")
    assert line == "pdl-ext demo: error: demo: --device must be cpu, cuda or cuda:N (a torch device), got 'foo'"


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_demo_cuda_without_a_gpu(tmp_path, capsys, no_training):
    line = _user_error(capsys, ["demo", "--device", "cuda", "--out", str(tmp_path / "d")], "demo")
    assert line == "pdl-ext demo: error: demo: --device 'cuda' was asked for but CUDA is not available"


def test_demo_unwritable_out_fails_before_any_work(a_file, capsys, no_training):
    out = a_file / "demo_out"
    line = _user_error(capsys, ["demo", "--out", str(out)], "demo")
    assert line == f"pdl-ext demo: error: --out '{out}': '{a_file}' is a file, not a directory"
    from pdl_ext.apps.demo import run_demo

    with pytest.raises(NotADirectoryError, match=r"^demo: --out '.*afile/demo_out': .* is a file, not a directory"):
        run_demo(out=str(out), progress=False, log=lambda m: None)


def test_demo_out_naming_a_file(a_file, capsys, no_training):
    line = _user_error(capsys, ["demo", "--out", str(a_file)], "demo")
    assert line == f"pdl-ext demo: error: --out '{a_file}': exists and is not a directory"


# ---------------------------------------------------------------------------------------------
# info, exit statuses 0, 1 and 130
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not pdl_ext.extension_info()["compiled"], reason="the C++ extension reads PDL_EXT_CPU_SORT")
def test_info_with_a_bad_cpu_sort_setting():
    run = _run(["info"], env=dict(os.environ, PDL_EXT_CPU_SORT="bogus"))
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "pdl-ext info: error: PDL_EXT_CPU_SORT must be auto, avx512, avx2 or radix, got 'bogus'"]
    assert run.stdout == ""


def test_info_succeeds(capsys):
    assert cli.main(["info"]) == 0
    assert '"compiled"' in capsys.readouterr().out


def test_ctrl_c_exits_with_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)  # `info`'s run
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "pdl-ext info: interrupted"


@pytest.mark.parametrize("kind", [ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError,
                                  IsADirectoryError])
def test_every_documented_user_error_exits_with_2(monkeypatch, capsys, kind):
    def fails(args):
        raise kind("a message\nover two lines")

    monkeypatch.setattr(cli, "run", fails)
    assert _user_error(capsys, ["info"], "info") == "pdl-ext info: error: a message over two lines"


def test_unexpected_failures_propagate_with_their_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info"])
    # as a process: Python prints the traceback and exits with 1
    code = ("import sys; from pdl_ext.apps import cli\n"
            "def bug(args): raise RuntimeError('a bug')\n"
            "cli.run = bug; sys.exit(cli.main(['info']))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 1 and "Traceback" in run.stderr and "RuntimeError: a bug" in run.stderr


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train-mdf", "--task", "sr"])  # --image and --out missing: argparse's usage error
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------
# The helper itself
# ---------------------------------------------------------------------------------------------
def test_check_output_path(tmp_path, a_file):
    assert check_output_path(tmp_path / "a" / "b" / "w.safetensors", "--out") == tmp_path / "a" / "b" / "w.safetensors"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    assert check_output_path(tmp_path / "dir", "--out", directory=True).is_dir()
    with pytest.raises(IsADirectoryError, match=r"^--out '.*dir': is a directory; expected a file name$"):
        check_output_path(tmp_path / "dir", "--out")
    with pytest.raises(NotADirectoryError, match=r"exists and is not a directory"):
        check_output_path(a_file, "--out", directory=True)
    with pytest.raises(NotADirectoryError, match=r"is a file, not a directory"):
        check_output_path(a_file / "x" / "y.json", "--json")
