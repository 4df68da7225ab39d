"""The `pdl-ext` command line (also `python -m pdl_ext`).

Each subcommand lives in the module of its idea, which provides `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported.

Exit status, the same for every command (``main`` handles it in one place; commands need no ``try``):

- 0: success (or what the command's ``run`` returns).
- 2: a user error: bad arguments (argparse's usage message), or a ``ValueError``, ``TypeError``,
  ``FileNotFoundError``, ``PermissionError``, ``NotADirectoryError`` or ``IsADirectoryError``
  (``USER_ERRORS``, the documented errors of bad input; see docs/errors.md) raised by the command,
  printed as one line ``pdl-ext <cmd>: error: <message>`` on stderr, without a traceback. A command's
  ``SystemExit("message")`` is a user error too.
- 130: interrupted by Ctrl-C (one line on stderr).
- 1: anything else is an unexpected failure (a bug, or the machine: out of memory, ...). ``main``
  lets it propagate, so Python prints its full traceback and exits with 1.

Before a command runs, every path it will write (``OUTPUTS``) is checked with
``pdl_ext.io.weights.check_output_path``: its folder is created and a probe file written and removed
there, so an unwritable output fails at once, never after the training.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Iterator, List, Optional, Tuple

# name -> (module, one-line help)
COMMANDS = {
    "info": ("pdl_ext.apps.cli", "print what this installation holds (compiled kernels, CUDA, versions)"),
    "bench": ("pdl_ext.apps.bench", "benchmark the fused op and the losses against pure PyTorch"),
    "demo": ("pdl_ext.apps.demo", "train a restoration network with pixel and distribution losses and compare"),
    "convert-mdf": ("pdl_ext.io.mdf_pickle", "convert published MDF .pth discriminators to safetensors, safely"),
    "train-mdf": ("pdl_ext.train.mdf", "train an MDF loss (a discriminator series) on one image"),
    "train-nima": ("pdl_ext.train.nima", "train a NIMA quality model on rating histograms"),
}


# The documented user-error types: main prints them as one line and exits with 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)

# command -> the paths it writes: (argument attribute, option name, a directory?, written when). None
# values are skipped (an output not asked for); "when" says whether the path is used at all.
OUTPUTS: dict = {
    "demo": (("out", "--out", True, None),),
    "train-mdf": (("out", "--out", False, None),),
    "train-nima": (("out", "--out", False, None),),
    "convert-mdf": (("dst", "dst", False, None),),
    "bench": (("json", "--json", False, None), ("plot", "--plot", False, None),
              # the default place of whichever of --json/--plot is not given
              ("out", "--out", True, lambda a: getattr(a, "json", None) is None or getattr(a, "plot", None) is None)),
}


def _outputs(name: str, args: argparse.Namespace) -> Iterator[Tuple[Any, str, bool]]:
    for attr, option, directory, when in OUTPUTS.get(name, ()):
        value = getattr(args, attr, None)
        if value is not None and (when is None or when(args)):
            yield value, option, directory


def check_outputs(name: str, args: argparse.Namespace) -> None:
    """Checks every output path of command ``name`` before it runs (see the module docstring)."""
    from ..io.weights import check_output_path

    for value, option, directory in _outputs(name, args):
        check_output_path(value, option, directory=directory)


def check_device(device: object, what: str) -> "torch.device":
    """``torch.device(device)``, or a ValueError naming ``what`` (e.g. ``"--device"``) for a device
    torch does not know or CUDA this machine lacks."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what} must be cpu, cuda or cuda:N (a torch device), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {device!r} was asked for but CUDA is not available")
    return dev


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def add_arguments(parser: argparse.ArgumentParser) -> None:  # for `info`
    pass


def run(args: argparse.Namespace) -> int:  # `info`
    from ..extension import extension_info

    print(json.dumps(extension_info(), indent=2))
    return 0


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdl-ext", description="Perceptual training losses (PDL, MDF, NIMA).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0 if argv else 2
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"pdl-ext {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])  # bad arguments: usage, exit status 2
    try:
        check_outputs(name, args)
        return int(module.run(args) or 0)
    except USER_ERRORS as e:
        print(f"pdl-ext {name}: error: {_one_line(e) or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npdl-ext {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # a command's SystemExit("message") is a user error
        if isinstance(e.code, str):
            text = _one_line(e.code)
            text = text[len(f"pdl-ext {name}: "):] if text.startswith(f"pdl-ext {name}: ") else text
            print(f"pdl-ext {name}: error: {text}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
