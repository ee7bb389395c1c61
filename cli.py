"""`python cli.py ...` from a checkout runs the `nsa-bench` command group.

The group itself is `nsa_bench/cli.py`, so that a wheel installs no top-level `cli` module (a name
far too generic to own); the console script `nsa-bench` points there too.
"""
from nsa_bench.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
