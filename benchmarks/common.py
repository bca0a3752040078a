"""What every benchmark shares, so that they measure the product and not code of their own.

- Data: the files of ../shared/data (next to the repository). The project works
  without them: `data_path` ends a benchmark with a "skipped: ..." message instead.
- The model: a repository made by `memedit init` (in process, default model,
  float32, device auto), loaded as every command loads it (`lm.models.load`),
  with the Env a method computes with (`replay.method_env`).
- The CLI: `memedit(work, ...)`, the one way a benchmark runs a command.
- Scores: only `memedit eval`'s scorer, `commands.evaluate.evaluate` (a
  repository's HEAD) or `commands.evaluate.score` (a state built in memory, on
  a model that `restored` turns back into the base afterwards).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memedit_cli.facts import Fact, parse_facts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES = {"counterfact": "counterfact-edit-1k.json", "zsre": "zsre-mend-train-1k.json"}
WIKITEXT = "wikitext-2-raw-test.txt"


def data_path(name: str) -> Path:
    """../shared/data/<file> for a dataset name (a key of FILES) or a file name; exits with a message when absent."""
    path = DATA / FILES.get(name, name)
    if not path.exists():
        sys.exit(f"skipped: {path} is not present (this benchmark reads ../shared/data)")
    return path


def load(name: str, n: int) -> list[Fact]:
    """The first `n` facts of a dataset, parsed as `memedit apply` parses them."""
    raw = json.loads(data_path(name).read_text())
    if name == "zsre":  # two records have an empty target; the parser refuses them, as it should
        raw = [r for r in raw if r.get("alt", "").strip()]
    return parse_facts(json.dumps(raw[:n]).encode(), f"{FILES[name]}[:{n}]")


def load_probed(name: str, n: int, probes: int = 2, start: int = 0, by: str = "template") -> list[Fact]:
    """Facts `start` to `start + n` of a dataset (`load`) with `probes` same-subject probes per fact
    (`with_subject_probes`, from the first 1,000)."""
    return with_subject_probes(load(name, start + n)[start:], load(name, 1000), probes, by)


SAME_RELATION_SHARED = 2  # answers two templates share, at least, for `by="relation"` to call them one relation


def with_subject_probes(facts: list[Fact], pool: list[Fact], n: int = 2, by: str = "template") -> list[Fact]:
    """`facts` with `n` same-subject probes each (`subject_locality`, scored as `spec`), for data that has none:
    the prompts of the next facts in `pool` whose template (prompt with its subject cut out) differs from
    the fact's own, with the fact's subject put in, answered by those facts' ground truth (spec compares the
    edited model's predictions on those answer tokens with the unedited model's). The same subject through
    other relations of the same dataset: a router keyed on the subject alone sends them to the edit's memory.

    by="template" (what every committed spec figure used): any other template counts as another relation,
    so a rewording of the edited relation ("{} plays" beside "{} professionally plays the sport") can become
    a probe that the edit rightly changes. by="relation": the data files carry no relation ids, so two
    templates are taken for one relation when their answers in `pool` and `facts` (ground truths and new
    targets) share at least SAME_RELATION_SHARED values (sports with sports, car makers with car makers),
    and such a template is not made a probe."""
    import dataclasses

    from memedit_cli.facts import Probe

    if by not in ("template", "relation"):
        raise ValueError(f"by must be 'template' or 'relation', got {by!r}")

    def template(f):
        return f.prompt.replace(f.subject, "{}", 1) if f.subject in f.prompt else None

    templates = [(template(f), f.ground_truth or f.target_new) for f in pool]
    answers: dict = {}  # by="relation": template -> the answers its facts have (ground truth and new target)
    for f in pool + facts if by == "relation" else []:
        if template(f) is not None:  # a prompt without its subject has no template to compare
            answers.setdefault(template(f), set()).update(a for a in (f.ground_truth, f.target_new) if a)

    def same_relation(t, own) -> bool:
        return own in answers and len(answers.get(t, set()) & answers[own]) >= SAME_RELATION_SHARED

    out = []
    for i, f in enumerate(facts):
        own, probes, j = template(f), [], 0
        while len(probes) < n and j < len(templates):
            t, answer = templates[(i + 1 + j) % len(templates)]
            j += 1
            if t is not None and t != own and not same_relation(t, own) and \
                    all(p.prompt != t.format(f.subject) for p in probes):
                probes.append(Probe(t.replace("{}", f.subject), answer))
        out.append(dataclasses.replace(f, subject_locality=tuple(probes)))
    return out


def sample(seen: list, n: int | None) -> list:
    """`n` of the facts seen, evenly spaced over the stream (the first and the last included); all if n is None."""
    if n is None or n >= len(seen):
        return seen
    if n < 2:  # one point has no spacing: the first
        return seen[:n]
    return [seen[round(i * (len(seen) - 1) / (n - 1))] for i in range(n)]


def write_facts(facts: list[Fact], path: Path) -> Path:
    """`facts` as a JSONL file for the CLI (ids kept)."""
    path.write_text("".join(json.dumps(f.to_json()) + "\n" for f in facts))
    return path


def memedit(work, *args, env: dict | None = None) -> tuple[float, str]:
    """Run `memedit -q -C work ARGS...` as a user would; (wall seconds, stdout). Raises with its stderr on failure."""
    cmd = [sys.executable, "-m", "memedit_cli", "-q", "-C", str(work), *map(str, args)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"`memedit {' '.join(map(str, args))}` exited {out.returncode}:\n{out.stderr.strip()}")
    return seconds, out.stdout


def new_repo(work=None, model: str | None = None):
    """A repository on `model` (default: the default model; `memedit init`), in `work` or in a temporary
    folder removed at exit."""
    from memedit_cli.commands.init import init

    if work is None:
        work = tempfile.mkdtemp(prefix="memedit-bench-")
        atexit.register(shutil.rmtree, work, True)
    return init(work, model, "float32", "auto", False)


def default_model(repo=None):
    """(repo, model, tok, env): the base model of `repo` (a new one if None) and the Env to compute on it."""
    from memedit_cli.lm import models
    from memedit_cli.replay import method_env

    repo = repo or new_repo()
    model, tok = models.load(repo.config)
    return repo, model, tok, method_env(repo, model, tok, [])


def set_threads(n: int | None = None) -> None:
    """torch threads: `n`, else $OMP_NUM_THREADS, else 2 (the machine the figures come from)."""
    import torch

    torch.set_num_threads(n or int(os.environ.get("OMP_NUM_THREADS", "2")))


@contextlib.contextmanager
def restored(model):
    """Inside, attach anything to `model` (weight deltas, wrapper modules); after, it is the base model again.

    `commands.evaluate.score` takes the base model in hand (locality compares with it), so a
    benchmark that scores several states on one loaded model builds each one inside this block.
    """
    import torch

    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    tree = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]
    try:
        yield model
    finally:
        for parent, name, child in tree:  # wrappers replaced modules: put the originals back
            setattr(parent, name, child)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
