"""Progress bars on stderr; `memedit --quiet` (MEMEDIT_QUIET=1) silences them."""

import os
import sys


def bar(iterable=None, total=None, desc=None, unit="it"):
    from tqdm.auto import tqdm

    quiet = os.environ.get("MEMEDIT_QUIET") == "1"
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, disable=quiet,
                leave=False, dynamic_ncols=True)
