"""Rewrite the `--help` blocks of docs/cli.md from the CLI itself.

    python docs/update_cli_help.py           # rewrite docs/cli.md in place
    python docs/update_cli_help.py --check   # exit 1 if docs/cli.md is out of date

Each block is a marker line, then a fenced ```text block holding the verbatim
output of that command's --help:

    <!-- help: memedit apply -->
    ```text
    Usage: memedit apply [OPTIONS] FILE
    ...
    ```

The help is produced in-process with click's CliRunner at a fixed width of
80 columns (`terminal_width=80`, which click uses as is, whatever the real
terminal or $COLUMNS says) and the program name `memedit`, so the text does
not depend on the machine that runs this. (A real terminal gives the same
text when it is 82 columns wide: click leaves two columns free there.) A
marker with no fenced block after it gets one. tests/test_docs.py imports
`help_text` and `blocks` from this file and fails when a block is stale or a
command has no marker.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent / "cli.md"
WIDTH = 80
PROG = "memedit"
MARKER = re.compile(r"^<!-- help: (memedit(?: [a-z][a-z0-9_-]*)*) -->[ \t]*$")
FENCE = "```"


def help_text(args: tuple[str, ...] | list[str] = ()) -> str:
    """The verbatim `memedit ARGS --help` output at the fixed width."""
    from click.testing import CliRunner

    from memedit_cli.cli import cli

    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=WIDTH, prog_name=PROG)
    if result.exit_code != 0:
        raise RuntimeError(f"`{PROG} {' '.join([*args, '--help'])}` exited {result.exit_code}:\n{result.output}")
    return result.stdout


def block_text(args: tuple[str, ...] | list[str] = ()) -> str:
    """What the fenced block for `memedit ARGS` must hold: the help, ending in one newline."""
    return help_text(args).rstrip("\n") + "\n"


def _args(marker_name: str) -> tuple[str, ...]:
    """'memedit apply' -> ('apply',); 'memedit' -> ()."""
    return tuple(marker_name.split()[1:])


def _block_at(lines: list[str], i: int) -> tuple[int, int] | None:
    """If a ```text fence opens at line i, return (first content line, closing fence line)."""
    if i >= len(lines) or lines[i].rstrip() != FENCE + "text":
        return None
    for j in range(i + 1, len(lines)):
        if lines[j].rstrip() == FENCE:
            return i + 1, j
    raise ValueError(f"{DOC.name}:{i + 1}: a ```text block that never closes")


def blocks(text: str) -> dict[tuple[str, ...], str | None]:
    """Marker -> the content of the fenced block right after it (None if there is none)."""
    lines = text.split("\n")
    out: dict[tuple[str, ...], str | None] = {}
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        args = _args(m.group(1))
        if args in out:
            raise ValueError(f"{DOC.name}:{i + 1}: a second marker for `{m.group(1)}`")
        span = _block_at(lines, i + 1)
        out[args] = None if span is None else "".join(line + "\n" for line in lines[span[0] : span[1]])
    return out


def render(text: str) -> str:
    """`text` with every marker's block replaced by the current --help output."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = MARKER.match(line)
        if not m:
            continue
        span = _block_at(lines, i)
        if span is not None:
            i = span[1] + 1  # skip the old block, closing fence included
        out += [FENCE + "text", *block_text(_args(m.group(1))).rstrip("\n").split("\n"), FENCE]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    old = DOC.read_text(encoding="utf-8")
    new = render(old)
    if new == old:
        print(f"{DOC} is up to date")
        return 0
    if check:
        print(f"{DOC} is out of date: run python docs/update_cli_help.py", file=sys.stderr)
        return 1
    DOC.write_text(new, encoding="utf-8")
    print(f"rewrote the --help blocks of {DOC}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(DOC.parent.parent))  # the checkout's memedit_cli, installed or not
    sys.exit(main(sys.argv[1:]))
