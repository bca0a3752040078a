"""Progress bars on stderr, when it is a terminal; `memedit --quiet` (MEMEDIT_QUIET=1) silences them."""

import os
import sys


def bar(iterable=None, total=None, desc=None, unit="it"):
    from tqdm.auto import tqdm

    # disable=None: tqdm draws only on a terminal, so CI logs get no carriage-return noise
    disable = True if os.environ.get("MEMEDIT_QUIET") == "1" else None
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, disable=disable,
                leave=False, dynamic_ncols=True)
