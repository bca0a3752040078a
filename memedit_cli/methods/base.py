"""The method contract: what an edit method provides to the repository.

Core code (replay, the commands, cli) reaches a method only through this
class and the registry (`methods.get(name)`); it never imports a method's
own modules, and methods never import each other. A new method is one
folder (or file) under methods/ plus one line in methods/__init__.py.

The repository owns history, storage and replay; a method only turns
(model, facts) into tensors and knows how to attach them:

- `hparams_class`: a frozen dataclass; `default_hparams(model)` fills in the
  values for the model's architecture (the resolved values go in the log).
- `resolve(hp, model, tok, env)`: fills in what depends on the model or the
  repository (generated prompts, scaled constants) before the values are
  recorded; by default nothing.
- `compute(model, tok, facts, hp, seed, env, reuse)`: returns {name: tensor}
  and a small JSON-able info dict (a value that is a dict of tensors is
  stored as an object of its own, under that name: Larimar's adapter, which
  every segment shares, is then stored once). It must leave the model exactly as it found
  it (hooks only inside `with` blocks; weights changed for a while are
  restored from copies) and be deterministic given the seed and the model.
  `env` (frozen) gives the repository's caches, the unedited base model on demand, and
  the segments already attached (with their tensors, for methods whose update
  depends on earlier edits' stored keys: MEMIT's null-space option);
  `reuse` is, during a forget's replay of the first affected segment (whose
  starting state is unchanged), that segment's stored facts and tensors, so a
  method can skip work whose result cannot have changed.
- `attach(model, tensors, hp, tok)`: makes the lasting edit — a weight delta,
  or a wrapper module that keeps the base layer. States are always rebuilt by
  attaching segments to fresh base weights, never by subtracting. `tok` is
  the model's tokenizer, for wrappers that read text at run time (Larimar's
  scope detector); weight methods ignore it.
- `settle(model)`: the segments attached since the last call take effect.
  Replay calls it once after attaching a run of segments and before the
  model runs, so a method whose attachment is a function of all its segments
  (WISE's merged side memories, Larimar's memory) builds it once per state,
  not once per segment: materializing N segments is O(N), not O(N²).
  Default: nothing (a weight delta takes effect when it is added).
- `batch_limit(hp)`: the most facts one segment may hold (apply cuts bigger
  batches); None for no limit.
- forget: the repository drops the forgotten facts from their segment and
  replays every later segment from the log with its recorded hparams and seed,
  which equals a fresh repository built without them. A method whose segments
  do not depend on earlier segments of the same method (`independent = True`,
  WISE's shards) keeps its later segments as they are, as long as no segment
  of another method before them had to be replayed.
- `footprint(hp, model)`: the blocks whose weights the lasting edit changes,
  and the block below which its stored tensors were read (routing keys,
  episode encodings). `apply` refuses, before computing, a weight edit below
  the block an earlier segment read from: the earlier segment's stored keys
  would no longer match the model (replay.check_composes). A weight edit of a
  layer an earlier method wrapped composes: `weight_module` finds the layer
  under the wrapper (every memedit wrapper keeps the layer it wraps as `base`).
- `visible_to_others`: False for a method whose wrapper changes the model's
  inputs (Larimar prepends a read episode's text): while another method
  computes, `hidden(model)` turns that wrapper off, so no other segment's
  result depends on it, and forget keeps the later segments of other methods
  when only such segments changed.
- `snapshot(model, segments)` / `restore(model, meta, tensors, tok)`: what
  the method's attached `segments` add to the base, as (JSON-able meta,
  tensors), and putting exactly that back on a fresh base: the state cache
  (states.py) keeps a state in one file. Default: None, the state is not
  cached; `WeightMethod` (ft, MEMIT) snapshots the final weights of the blocks
  its footprints write; methods with wrappers say their own.
- `reset(model)`: a new sequence starts (generation, a batch of scores):
  wrappers that keep state across the calls of one sequence drop it (WISE's
  key router keeps the route its prompt chose). Default: nothing.
- `explain(model, segments, prompt)`: after one forward of `prompt`, the facts
  the method itself says it used (`blame`), as [{"facts", "method", "how"}];
  None (the default) means "my edits are weights: find them by ablation".
- `precompute(hp, env, model)`: work a command may do ahead of `apply`
  (`memedit stats`: MEMIT's key statistics); returns a one-line summary.
  Default: the method has nothing to precompute (a UserError).
- `measured`: per-model defaults measured for particular shapes, keyed by
  `shape_key(config)`; `measured_defaults(model)` is the one lookup.
- export: `export_extras(model, out_dir)` runs before the model is saved by
  `export --merged`. Methods whose state is plain weights (`ft`, MEMIT) need
  nothing. Methods with wrapper modules (WISE, Larimar) keep their tensors
  as parameters or buffers of the wrappers (so `save_pretrained` writes them),
  describe the wrappers in the config, copy a modeling file of memedit's own
  into `out_dir`, and return `{"auto_map": {...}, "modeling_file": name}`, so
  that `from_pretrained(..., trust_remote_code=True)` rebuilds the wrappers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memedit_cli.errors import UserError
from memedit_cli.lm.arch import shape_key


@dataclass(frozen=True)
class Env:
    """What a method may use besides the model: caches and the base model. A snapshot: replay
    makes a new one as segments are attached, a method never changes it."""

    cache_dirs: tuple[Path, ...]  # the repository's cache first, then the per-user cache shared by repositories
    model_key: str  # identifies the base weights (sha256, or hub id@revision)
    load_base: Callable[[], tuple]  # () -> (model, tok) of the unedited base model, loaded on demand
    load_fresh: Callable[[], tuple]  # () -> a separately loaded base model (loaded once, then reused)
    attached: tuple[dict, ...] = ()  # the log segments attached to the model, in order
    segment_tensors: Callable[[dict], dict] = lambda seg: {}  # a segment's stored tensors
    # stored(name, make) -> tensors the segment reads besides the model (MEMIT's C₀): on a replay the
    # ones recorded in the log, else make(); the repository keeps them as an object named by the segment
    stored: Callable[[str, Callable[[], dict]], dict] = lambda name, make: make()

    def after(self, seg: dict) -> "Env":
        """The Env once `seg` is attached: the model in hand is no longer the base model."""
        return dataclasses.replace(self, attached=(*self.attached, seg), load_base=self.load_fresh)


@dataclass(frozen=True)
class Footprint:
    """What a segment's lasting edit touches, by block index (see `Method.footprint`)."""

    writes: tuple[int, ...] = ()  # blocks whose FFN output projection's weight the edit changes
    blocks_hparam: str = ""  # the hparam that chooses `writes` (for the error's fix)
    reads_below: int | None = None  # its stored tensors were read from activations the blocks below this compute
    reads_what: str = ""  # what was read there, for messages ("routing keys")


class Method:
    name: str = ""
    hparams_class: type = type(None)
    needs_subject: bool = False
    independent: bool = False  # segments do not depend on earlier segments of this method
    visible_to_others: bool = True  # False: its wrappers are off while other methods compute (`hidden`)
    # False: `compute` never reads what this method's own earlier segments did to the model, so they need not
    # take effect (`settle`) before it runs: a run of one-fact segments settles once, not once per fact
    reads_own_segments: bool = True
    resolvable: bool = False  # `forget --resolve`: a later segment may be recomputed from its stored `reuse`
    edits_ffn: bool = True  # edits (or wraps) an FFN output projection: refused where the model has none (MoE)
    measured: dict = {}  # shape_key(config) -> hparams measured for that shape (docs/methods/<name>.md)

    def batch_limit(self, hp) -> int | None:
        return None

    def needs_subject_with(self, hp) -> bool:
        """Whether these (resolved) hparams locate the subject in the prompt (apply checks before computing)."""
        return self.needs_subject

    def measured_defaults(self, model) -> dict:
        """The hparams measured for this model's shape, or {}."""
        return dict(self.measured.get(shape_key(model.config), {}))

    def default_hparams(self, model):
        raise NotImplementedError

    def resolve(self, hp, model, tok, env: Env):
        return hp

    def compute(self, model, tok, facts, hp, seed: int, env: Env, reuse: dict | None = None) -> tuple[dict, dict]:
        raise NotImplementedError

    def attach(self, model, tensors: dict, hp, tok=None) -> None:
        raise NotImplementedError

    def footprint(self, hp, model) -> Footprint:
        """The blocks the edit writes and reads its stored tensors below; by default nothing."""
        return Footprint()

    @contextlib.contextmanager
    def hidden(self, model):
        """Inside, this method's wrappers leave the model's inputs alone (methods with visible_to_others=False)."""
        yield

    def settle(self, model) -> None:
        """The segments attached since the last call take effect; by default they already have."""

    def snapshot(self, model, segments: list[dict]) -> tuple[dict, dict] | None:
        """(meta, tensors) of what the attached `segments` add to the base; None: the state is not cached."""
        return None

    def restore(self, model, meta: dict, tensors: dict, tok=None) -> None:
        """Put a `snapshot` back on the base `model`."""
        raise NotImplementedError


    def reset(self, model) -> None:
        """A new sequence starts; by default a method keeps no state between calls."""

    def explain(self, model, segments: list[dict], prompt: str) -> list[dict] | None:
        """The facts this method used on the last forward of `prompt`; None: ask by ablation."""
        return None

    def precompute(self, hp, env: Env, model) -> str:
        raise UserError(f"{self.name} has nothing to precompute")

    def export_extras(self, model, out_dir) -> dict | None:
        return None


class WeightMethod(Method):
    """A method whose lasting edit is weight deltas of the blocks its footprint writes (ft, MEMIT): its
    snapshot is those layers' final weights."""

    def snapshot(self, model, segments: list[dict]) -> tuple[dict, dict]:
        from memedit_cli import hparams as hparams_mod
        from memedit_cli.lm.arch import arch_for

        arch = arch_for(model.config)
        names = sorted({arch.mlp_out_at(b) for seg in segments for b in
                        self.footprint(hparams_mod.from_json(self.hparams_class, seg["hparams"]), model).writes})
        return {"weights": names}, {name: weight_module(model, name).weight for name in names}

    def restore(self, model, meta: dict, tensors: dict, tok=None) -> None:
        import torch

        with torch.no_grad():
            for name in meta["weights"]:
                param = weight_module(model, name).weight
                param.copy_(tensors[name].to(device=param.device, dtype=param.dtype))


def weight_module(model, name: str):
    """The module at `name` that holds the weight: under memedit's wrapper modules (WISE's key router and
    side memory keep the layer they wrap as `base`), the wrapped layer. Weight edits compose through them."""
    from torch import nn

    module = model.get_submodule(name)
    while "weight" not in module._parameters and isinstance(module._modules.get("base"), nn.Module):
        module = module._modules["base"]
    return module


def add_weight_deltas(model, deltas: dict) -> None:
    """W += Δ for each `parameter name -> Δ` (Δ in the parameter's own layout; under a wrapper, its layer's).

    The sum is taken in float32 and cast back, on the parameter's device, so
    it works for bfloat16 models and for layers spread over devices.
    """
    import torch

    with torch.no_grad():
        for name, delta in deltas.items():
            path, _, leaf = name.rpartition(".")
            param = getattr(weight_module(model, path), leaf)
            summed = param.float() + delta.to(device=param.device, dtype=torch.float32)
            param.copy_(summed.to(param.dtype))
