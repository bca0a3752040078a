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


class StopForward(Exception):
    """Raised from a hook to end a forward pass once what is needed has been seen."""


def forward_then_remove(model, handles: list, **inputs) -> None:
    """model(**inputs), ended early by a StopForward from a hook; the hooks `handles` are removed however
    it ends (for hooks that must live for one forward only, registered by the caller)."""
    try:
        model(**inputs)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def stop_after(module):
    """Inside the block, a forward raises StopForward right after `module` ran (its
    output hooks registered earlier have seen it); the caller catches it."""

    def hook(mod, args, output):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


@contextlib.contextmanager
def capture(model, inputs: list[str] = (), outputs: list[str] = ()):
    """Record the first positional input and/or the output of named modules.

    Inside the block, `seen["in:NAME"]` / `seen["out:NAME"]` hold the tensors of
    the latest forward (a decoder block's tuple output is reduced to its first
    element, the hidden states).
    """
    seen: dict = {}
    handles = []

    def take_in(name):
        def hook(mod, args):
            seen[f"in:{name}"] = args[0]
        return hook

    def take_out(name):
        def hook(mod, args, output):
            seen[f"out:{name}"] = output[0] if isinstance(output, tuple) else output
        return hook

    try:
        for name in inputs:
            handles.append(model.get_submodule(name).register_forward_pre_hook(take_in(name)))
        for name in outputs:
            handles.append(model.get_submodule(name).register_forward_hook(take_out(name)))
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def edit_output(module, fn):
    """Inside the block, `module`'s (first) output h is replaced by `fn(h)`."""

    def hook(mod, args, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


@contextlib.contextmanager
def inputs_until_all(model, names: list[str], on_input):
    """Inside the block, `on_input(name, x)` sees each named module's first input; once every
    module has, the forward raises StopForward from the pre-hook of the last one (the deepest in
    execution order), before it runs, so nothing above it is computed. Yields the set of names
    seen in the current forward (clear it before each one)."""
    seen: set[str] = set()

    def make(name):
        def hook(mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            on_input(name, x)
            seen.add(name)
            if len(seen) == len(names):
                seen.clear()
                raise StopForward
        return hook

    handles = []
    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_pre_hook(make(name), with_kwargs=True))
        yield seen
    finally:
        for h in handles:
            h.remove()


def module_input(model, name: str, **inputs):
    """The first input (B, T, d_in) of module `name` for one forward of `inputs`, without gradients,
    running the model no further than that module."""
    import torch

    seen = {}
    with torch.no_grad(), inputs_until_all(model, [name], lambda _, x: seen.__setitem__("x", x)):
        try:
            model(**inputs, use_cache=False)
        except StopForward:
            pass
    return seen["x"].detach()
