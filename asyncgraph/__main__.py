"""The ``asyncgraph`` command (also ``python -m asyncgraph``).

Subcommands import what they need when they run, so ``import asyncgraph`` stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo_main

    return demo_main()


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="asyncgraph",
        description="Run dependency graphs of functions and coroutines.",
    )
    parser.add_argument("--version", action="version", version=f"asyncgraph {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a small mixed IO/CPU graph in which one task fails on purpose",
        description=(
            "Run a graph of IO coroutines, a thread and CPU tasks in 2 worker processes. "
            "One task fails on purpose and its descendants are skipped, while an "
            "independent branch finishes; the status table is printed. Exits 0: the "
            "failure is the point of the demo."
        ),
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asyncgraph`` and ``python -m asyncgraph``; returns the exit code."""
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
