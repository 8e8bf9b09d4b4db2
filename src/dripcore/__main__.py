"""Command line: ``python -m dripcore demo | run | status``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence as Seq

from .adapters.memory import MemoryStore
from .demo import run_demo


def main(argv: Seq[str] | None = None) -> int:
    """Entry point of ``python -m dripcore``."""
    parser = argparse.ArgumentParser(prog="python -m dripcore", description="dripcore command line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the prefab sequences for a few contacts on a simulated clock")
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(MemoryStore())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
