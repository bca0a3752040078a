"""Forward hooks that exist only inside a `with` block (after kmeng01/memit's nethook)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def add_to_output(module, fn):
    """Inside the block, `module(x)` returns `module(x) + fn(x)`; the hook is always removed."""

    def hook(mod, args, output):
        return output + fn(args[0]).to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()
