"""benchmarks/scale.py's own parts: growing a repository in process, the state at N, the growth exponent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scale():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale

    return scale


def test_the_growth_exponent_is_the_slope_on_log_log_axes(scale):
    linear = [{"N": n, "c": 2.0 * n} for n in (10, 100, 1000)]
    square = [{"N": n, "c": 0.5 * n * n} for n in (10, 100, 1000)]
    flat = [{"N": n, "c": 3.0} for n in (10, 100)]
    assert scale.exponent(linear, "c") == 1.0 and scale.exponent(square, "c") == 2.0
    assert scale.exponent(flat, "c") == 0.0
    assert scale.exponent(linear[:1], "c") is None  # one point has no slope


def test_a_grown_repository_cut_to_its_first_n_records_is_the_state_at_n(scale, tiny_models, tmp_path):
    from memedit_cli.commands.init import init
    from memedit_cli.store.repo import Repo

    d = tmp_path / "run"
    d.mkdir()
    init(d, str(tiny_models["llama"]), "float32", "cpu", False)
    scale.grow(Repo.open(d), "ft", scale.CHEAP["ft"], 4)
    repo = Repo.open(d)
    assert len(repo.records) == 4 and [len(r["facts"]) for r in repo.records] == [1, 1, 1, 1]
    scale.grow(Repo.open(d), "ft", scale.CHEAP["ft"], 4)  # already there: nothing added
    assert len(Repo.open(d).records) == 4
    with scale.copy_of(d, 2) as c:
        cut = Repo.open(c)
        assert list(cut.facts_at(cut.head())) == ["s00000", "s00001"]
        assert 0 < scale.repo_mb(c) < scale.repo_mb(d)
    assert not (d / "copy-2").exists() and len(Repo.open(d).records) == 4  # the run itself is untouched
