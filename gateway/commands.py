"""Commands that other installed packages add to `sentchat`.

A package registers a command under the entry-point group ``sentchat.commands``: the entry
point's name is the command's name, its object has ``help`` (one line for `sentchat --help`)
and ``run(argv) -> exit code`` (it parses its own options). The load suite registers `bench`
this way, so the dependency points from the bench to the product and never back.
"""

from __future__ import annotations

import sys
from typing import Protocol

GROUP = "sentchat.commands"


class PluginCommand(Protocol):
    help: str

    def run(self, argv: list[str]) -> int: ...


class _Broken:
    """A registered command whose package failed to import: it says why when run, and the
    product's own commands keep working."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name = name
        self.error = error
        self.help = f"(unavailable: {type(error).__name__})"

    def run(self, argv: list[str]) -> int:
        print(f"sentchat: command {self.name!r} failed to load: {self.error!r}", file=sys.stderr)
        return 2


def discover() -> dict[str, PluginCommand]:
    """The registered commands by name."""
    # Imported here: importlib.metadata costs a fresh worker memory, and `serve` never needs it.
    from importlib.metadata import entry_points

    found: dict[str, PluginCommand] = {}
    for ep in entry_points(group=GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # any import error of a plug-in: see _Broken
            found[ep.name] = _Broken(ep.name, exc)
    return found


MISSING_HINTS = {
    "bench": "the load suite is not installed: install the source tree with its bench extra "
             "(pip install -e '.[bench]')",
}
"""What to tell an operator who names a command that no installed package registers."""
