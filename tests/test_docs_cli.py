"""The README's command table keeps up with the parser: every subcommand and every option of one is named there."""

from __future__ import annotations

import argparse
from pathlib import Path

from assistant import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMON = {"--help", "--config", "--set", "--debug", "--log-json"}  # every command's, documented once below the table


def test_every_command_and_option_is_in_the_readme() -> None:
    """Each `assistant COMMAND` and each of its own options appears in README.md (`ctl --max-events` did not)."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {option}"
        for name, parser in sub.choices.items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in COMMON and option not in README
    ]
    missing += [name for name in sub.choices if f"`assistant {name}" not in README]
    assert not missing, missing
    assert all(option in README for option in COMMON - {"--help"})
