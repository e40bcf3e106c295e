"""The command line as a whole: help with examples, README coverage, error conventions."""

from __future__ import annotations

import re

import pytest

from prunekit.cli import app
from tests.conftest import ROOT


def _commands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    found = []
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        if sub:
            found += [[name, s] for s in sub]
        else:
            found.append([name])
    return found


def test_top_level_help_has_an_example(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_help_has_an_example(runner, command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert re.search(r"Examples?:\s+prunekit " + " ".join(command), result.stdout)


def test_every_command_appears_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for command in _commands():
        assert f"prunekit {' '.join(command)}" in readme, command


def test_usage_errors_exit_2(runner):
    result = runner.invoke(app, ["bench", "--no-such-option"])
    assert result.exit_code == 2


def test_version(runner):
    from prunekit import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == __version__
