"""The house rules of docs/architecture.md, read off the source: which layer may import which.

Every import counts, also those inside functions (a lazy import is still a
dependency). A module's imports are resolved to the memedit_cli modules they
name; `from pkg import name` names pkg.name when that is a module, else pkg.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "memedit_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module (memedit_cli's or a third party's top-level name) that `path` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
    return out


GRAPH = {name: {i for i in _imports(path) if i.startswith("memedit_cli")} for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else (parts[1] if len(parts) == 2 else "")


def _method(module: str) -> str | None:
    """The method a module belongs to (methods/<name>/... or methods/<name>.py), else None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "methods" and parts[2] not in ("base",):
        return parts[2]
    return None


def test_the_graph_sees_the_imports_it_should():
    # the rules below are only as good as the import reader: check it on known edges
    assert "memedit_cli.store.repo" in GRAPH["memedit_cli.cli"]
    assert "memedit_cli.lm.models" in GRAPH["memedit_cli.replay"]  # a lazy import, inside a function
    assert "memedit_cli.methods.base" in GRAPH["memedit_cli.methods.ft"]
    assert len(MODULES) > 50


def test_there_is_no_import_circle():
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt in GRAPH:
                visit(nxt)
        stack.pop()

    for name in sorted(GRAPH):
        visit(name)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_store_never_imports_torch_or_anything_above_it():
    for name, path in MODULES.items():
        if _layer(name) != "store":
            continue
        imported = _imports(path)
        assert not {i for i in imported if i.split(".")[0] in ("torch", "safetensors", "transformers", "numpy")}, name
        assert all(i.startswith(("memedit_cli.store", "memedit_cli.errors")) or i == "memedit_cli"
                   for i in GRAPH[name]), (name, GRAPH[name])


def test_core_code_reaches_methods_only_through_the_registry_and_the_contract():
    allowed = {"memedit_cli.methods", "memedit_cli.methods.base"}
    for name, deps in GRAPH.items():
        if _layer(name) == "methods":
            continue
        reached = {d for d in deps if d.startswith("memedit_cli.methods")} - allowed
        assert not reached, f"{name} imports a method's internals: {sorted(reached)}"


def test_methods_do_not_import_each_other_or_the_layers_above_them():
    for name, deps in GRAPH.items():
        mine = _method(name)
        if mine is None:
            continue
        for d in deps:
            other = _method(d)
            assert other in (None, mine), f"{name} (method {mine}) imports {d} (method {other})"
            assert _layer(d) not in ("commands", "replay", "cli"), f"{name} reaches up into {d}"
            # crash-safe writes are for everyone; the repository itself (log, objects, HEAD) is replay's
            assert _layer(d) != "store" or d == "memedit_cli.store.fileio", f"{name} reaches into the repository: {d}"


def test_lower_layers_do_not_import_higher_ones():
    below = {"lm": ("commands", "replay", "cli", "methods", "stats"),
             "stats": ("commands", "replay", "cli", "methods"),
             "store": ("commands", "replay", "cli", "methods", "stats", "lm")}
    for name, deps in GRAPH.items():
        for d in deps:
            assert _layer(d) not in below.get(_layer(name), ()), f"{name} ({_layer(name)}) imports {d}"


def test_the_top_level_stays_small():
    top = [p.name for p in PKG.iterdir() if p.is_file() and p.suffix == ".py"]
    assert len(top) <= 12, sorted(top)


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["log"], ["status"], ["show", "HEAD"], ["fsck"],
                                  ["checkout", "base"]])
def test_commands_that_only_read_the_log_never_import_torch(tmp_path, args):
    import json

    from memedit_cli import FORMAT_VERSION
    from memedit_cli.store.repo import Repo

    # a repository whose base model is a hub id: fsck notes it and hashes nothing
    Repo.create(tmp_path, {"format_version": FORMAT_VERSION, "dtype": "float32", "device": "cpu",
                           "model": {"kind": "hub", "id": "org/name", "revision": "main", "trust_remote_code": False}})
    code = ("import sys; from memedit_cli.cli import cli\n"
            f"try: cli({json.dumps(['-C', str(tmp_path), *args])})\n"
            "except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
