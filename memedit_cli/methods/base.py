"""What an edit method provides to the repository.

The repository owns history, storage and replay; a method only turns
(model, facts) into tensors and knows how to attach them:

- `hparams_class`: a frozen dataclass; `default_hparams(model)` fills in the
  values for the model's architecture (the resolved values go in the log).
- `compute(model, tok, facts, hp, seed)`: returns {name: tensor} and a small
  JSON-able info dict. It must leave the model exactly as it found it (hooks
  only inside `with` blocks) and be deterministic given the seed and the model.
- `attach(model, tensors, hp)`: makes the lasting edit — a weight delta, or a
  wrapper module that keeps the base layer. States are always rebuilt by
  attaching segments to fresh base weights, never by subtracting.
- forget: the repository drops the forgotten facts from their segment and
  replays every later segment from the log with its recorded hparams and seed
  (`forget_strategy = "replay"`), which equals a fresh repository built without
  them. A method whose segments are independent may narrow the replay.
- export: `export_extras(model, out_dir)` runs before the model is saved by
  `export --merged`. Methods whose state is plain weights (`ft`, MEMIT) need
  nothing. Methods with wrapper modules (WISE, Larimar) must put the base
  layers back into the model here, write their extra tensors into `out_dir`
  and return `{"auto_map": {...}, "modeling_file": name}` naming a modeling
  file of memedit's own, so that `from_pretrained(..., trust_remote_code=True)`
  rebuilds the wrappers.
"""

from __future__ import annotations


class Method:
    name: str = ""
    hparams_class: type = type(None)
    needs_subject: bool = False
    forget_strategy: str = "replay"

    def default_hparams(self, model):
        raise NotImplementedError

    def compute(self, model, tok, facts, hp, seed: int) -> tuple[dict, dict]:
        raise NotImplementedError

    def attach(self, model, tensors: dict, hp) -> None:
        raise NotImplementedError

    def export_extras(self, model, out_dir) -> dict | None:
        return None


def add_weight_deltas(model, deltas: dict) -> None:
    """W += Δ for each `parameter name -> Δ` (Δ in the parameter's own layout).

    The sum is taken in float32 and cast back, on the parameter's device, so
    it works for bfloat16 models and for layers spread over devices.
    """
    import torch

    with torch.no_grad():
        for name, delta in deltas.items():
            param = model.get_parameter(name)
            summed = param.float() + delta.to(device=param.device, dtype=torch.float32)
            param.copy_(summed.to(param.dtype))
