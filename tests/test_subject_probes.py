"""benchmarks/common.py's same-subject probes (spec): by template, and by relation where the data has no ids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def common():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    return common


def fact(i, subject, template, truth, new):
    from memedit_cli.facts import Fact

    return Fact(id=f"f{i}", prompt=template.format(subject), subject=subject, target_new=new, ground_truth=truth)


# Two wordings of "plays the sport" (their answers are sports) and one of "was born in" (cities), as in
# CounterFact, whose files carry no relation ids.
POOL = [
    ("Michael Jordan", "{} professionally plays the sport", "basketball", "baseball"),
    ("Lionel Messi", "{} plays", "soccer", "basketball"),
    ("Serena Williams", "{} plays", "tennis", "baseball"),
    ("Marie Curie", "{} was born in", "Warsaw", "Paris"),
    ("Tom Brady", "{} professionally plays the sport", "football", "soccer"),
]


def test_by_template_any_other_wording_is_a_probe(common):
    pool = [fact(i, *row) for i, row in enumerate(POOL)]
    probed = common.with_subject_probes(pool[:1], pool, n=2)
    # the next templates in the pool other than the fact's own: "plays" (the same relation reworded) first
    assert [p.prompt for p in probed[0].subject_locality] == ["Michael Jordan plays", "Michael Jordan was born in"]
    assert [p.answer for p in probed[0].subject_locality] == ["soccer", "Warsaw"]


def test_by_relation_a_rewording_of_the_edited_relation_is_no_probe(common):
    pool = [fact(i, *row) for i, row in enumerate(POOL)]
    probed = common.with_subject_probes(pool[:1], pool, n=2, by="relation")
    # "plays" shares basketball, soccer and baseball with "professionally plays the sport": one relation
    assert [p.prompt for p in probed[0].subject_locality] == ["Michael Jordan was born in"]
    # a relation that shares one answer only stays another relation
    one_shared = pool + [fact(9, "Babe Ruth", "{} is famous for", "baseball", "chess")]
    probed = common.with_subject_probes(one_shared[:1], one_shared, n=3, by="relation")
    assert [p.prompt for p in probed[0].subject_locality] == ["Michael Jordan was born in",
                                                               "Michael Jordan is famous for"]


def test_an_unknown_rule_is_refused(common):
    pool = [fact(i, *row) for i, row in enumerate(POOL)]
    with pytest.raises(ValueError, match="'template' or 'relation'"):
        common.with_subject_probes(pool, pool, by="answers")


def test_larimar_eval_refuses_probes_by_where_no_probes_are_made():
    """`--probes-by` shapes only quality's and contexts' probes: elsewhere a one-line error, before any model loads."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "larimar_eval.py"), "speed", "--probes-by",
                          "relation"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "--probes-by is read only by quality and contexts, not by speed" in out.stderr
