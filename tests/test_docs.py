"""docs/cli.md carries the verbatim --help of every command, kept current by docs/update_cli_help.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from memedit_cli.cli import cli

ROOT = Path(__file__).resolve().parents[1]
STALE = "docs/cli.md is out of date: run python docs/update_cli_help.py"


def _load_updater():
    spec = importlib.util.spec_from_file_location("update_cli_help", ROOT / "docs" / "update_cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


updater = _load_updater()
COMMANDS = [()] + [(name,) for name in sorted(cli.commands)]


@pytest.fixture(scope="module")
def documented() -> dict:
    return updater.blocks((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))


def test_every_command_has_a_marker(documented):
    missing = [" ".join(("memedit", *c)) for c in COMMANDS if c not in documented]
    assert not missing, f"{STALE} (no `<!-- help: ... -->` marker for: {', '.join(missing)}; add a section with one)"
    unknown = [" ".join(("memedit", *c)) for c in documented if c not in COMMANDS]
    assert not unknown, f"docs/cli.md has markers for commands that do not exist: {', '.join(unknown)}"


@pytest.mark.parametrize("args", COMMANDS, ids=lambda c: " ".join(("memedit", *c)))
def test_help_block_is_current(documented, args):
    if args not in documented:
        pytest.fail(f"{STALE} (no marker for `{' '.join(('memedit', *args))}`)")
    assert documented[args] == updater.block_text(args), STALE


def test_update_script_is_a_fixed_point():
    """Running the script on the committed file changes nothing (the whole file, not only the blocks)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert updater.render(text) == text, STALE
