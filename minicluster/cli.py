"""The `minicluster` command (also `python -m minicluster`).

Runs in its own process, separate from any driver.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="minicluster",
        description="Ray Core's API and fault tolerance on one machine.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a short self-explaining job (a DAG with one worker crash)")
    demo.add_argument("--nodes", type=int, default=2, help="virtual nodes to start (default 2)")
    demo.add_argument("--cpus", type=int, default=2, help="CPUs per node (default 2)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        if args.nodes < 1 or args.cpus < 1:
            parser.error("--nodes and --cpus must be at least 1")
        return run(args.nodes, args.cpus)
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
