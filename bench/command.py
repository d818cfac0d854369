"""`sentchat bench ...`: the load suite's command, registered with the `sentchat` tool under
the entry-point group ``sentchat.commands`` (pyproject.toml) so the product never imports
the bench. Also `python -m bench ...`.

This module stays light: the tool loads it for `sentchat --help`; a suite is imported only
when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: sentchat bench {saturate,idle} [options]

the operators' load suite (bench/README.md):
  saturate   N connections, publications at one or more rates; latency, loss, CPU, memory
             (and with --reference the same load against a bare websockets server)
  idle       memory per idle connection and of a fresh worker

`sentchat bench saturate --help` lists a command's options. The other suites run as
modules: python -m bench.durable | bench.fanout | bench.chat | bench.workers
"""


def _saturate(argv: list[str]) -> int:
    from bench.saturate import saturate

    return saturate(argv)


def _idle(argv: list[str]) -> int:
    from bench.saturate import idle

    return idle(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"saturate": _saturate, "idle": _idle}


def main(argv: list[str] | None = None) -> int:
    """`sentchat bench <saturate|idle> ...`; exit code 2 with the usage for anything else."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, end="", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


class BenchCommand:
    """What `sentchat` needs of a plug-in command (gateway/commands.py: PluginCommand)."""

    help = "load suite: saturate, idle (pip install -e '.[bench]'; `sentchat bench --help`)"

    def run(self, argv: list[str]) -> int:
        return main(argv)


command = BenchCommand()
