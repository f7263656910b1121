"""The `s2d` command. Each area registers its own sub-commands through a `register(subparsers)`
function in its `cli.py` (data, metrics, training, hub), so this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> the sub-commands it adds (listed here so `s2d --help` stays cheap: modules load lazily)
_AREAS = (
    "s2d_align.data.cli",  # prepare
    "s2d_align.metrics.cli",  # label, eval
    "s2d_align.training.cli",  # demo
    "s2d_align.generation",  # generate
    "s2d_align.hub",  # push
    "s2d_align.build",  # build
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2d", description="S2D-Align radiology report generation")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # the area is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"s2d {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
