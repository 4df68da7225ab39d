"""The `pdl-ext` command line (also `python -m pdl_ext`).

Each subcommand lives in the module of its idea, which provides `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import List, Optional

# name -> (module, one-line help)
COMMANDS = {
    "info": ("pdl_ext.apps.cli", "print what this installation holds (compiled kernels, CUDA, versions)"),
    "bench": ("pdl_ext.apps.bench", "benchmark the fused op and the losses against pure PyTorch"),
    "demo": ("pdl_ext.apps.demo", "train a restoration network with pixel and distribution losses and compare"),
    "convert-mdf": ("pdl_ext.io.mdf_pickle", "convert published MDF .pth discriminators to safetensors, safely"),
    "train-mdf": ("pdl_ext.train.mdf", "train an MDF loss (a discriminator series) on one image"),
    "train-nima": ("pdl_ext.train.nima", "train a NIMA quality model on rating histograms"),
}


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
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
