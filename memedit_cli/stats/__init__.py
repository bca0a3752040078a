"""Key statistics: second moments C = E[k kᵀ] of named modules' inputs over a corpus, cached.

compute.py runs them (hooks from lm/nethook.py), corpus.py and samples.py make
the token stream, store.py is the on-disk layout, dist.py the collectives,
and `python -m memedit_cli.stats` (or torchrun) the standalone entry.
"""

from memedit_cli.stats.compute import all_cached, second_moments
from memedit_cli.stats.corpus import CorpusSpec
from memedit_cli.stats.store import SAMPLES_ID, stats_dir

__all__ = ["SAMPLES_ID", "CorpusSpec", "all_cached", "second_moments", "stats_dir"]
