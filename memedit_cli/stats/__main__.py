"""Second moments of FFN output projections' inputs, standalone, on one or many processes.

    python -m memedit_cli.stats --model DIR --layers 3,4 --corpus FILE --tokens N --out DIR
    torchrun --standalone --nproc_per_node 4 -m memedit_cli.stats --model DIR --layers 3-8 ...

Under torchrun (WORLD_SIZE > 1) it joins the process group from torchrun's
environment (NCCL with cuda:LOCAL_RANK per rank when CUDA is available, else
gloo on CPU) and splits the corpus's rows over the ranks. Results land in
OUT/stats/MODEL_KEY/SPEC_KEY/MODULE.safetensors, the layout of memedit's stats
cache, so OUT can be a repository's `.memedit/cache` or the user cache. The
model key defaults to the sha256 of the model folder's weight files, the
`weights_sha256` memedit records for a local model.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path


def _layers(text: str) -> list[int]:
    from memedit_cli.errors import MemeditError
    from memedit_cli.hparams import parse_layers

    try:
        return parse_layers(text)
    except MemeditError as e:
        raise argparse.ArgumentTypeError(e.detail) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m memedit_cli.stats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model folder")
    ap.add_argument("--layers", required=True, type=_layers, help="block indices, e.g. 3,4 or 3-8")
    ap.add_argument("--corpus", default=None, help=".txt or .jsonl corpus; omitted: text sampled from the model")
    ap.add_argument("--tokens", required=True, type=int, help="tokens to accumulate")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row (default 256)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per forward pass per process (default 8)")
    ap.add_argument("--out", required=True, type=Path, help="cache dir to write stats/ into")
    ap.add_argument("--model-key", default=None, help="folder name under stats/ (default: sha256 of the weights)")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="rows between resumable checkpoints (default: about every 20 s)")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memedit_cli.errors import MemeditError
    from memedit_cli.lm.arch import arch_for
    from memedit_cli.lm.models import quiet_transformers, weights_hash
    from memedit_cli.stats import CorpusSpec, second_moments, stats_dir

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1:
        # rank 0 alone samples the default corpus while the others wait: a generous timeout
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=3))
    rank = dist.get_rank() if world > 1 else 0
    try:
        quiet_transformers()
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
        model.requires_grad_(False)
        tok = AutoTokenizer.from_pretrained(args.model)
        names = [arch_for(model.config).mlp_out_at(i) for i in args.layers]
        key = args.model_key
        if key is None:  # hashed once, on rank 0
            box = [weights_hash(args.model) if rank == 0 else None]
            if world > 1:
                dist.broadcast_object_list(box, src=0)
            key = box[0]
        spec = CorpusSpec(args.corpus, args.tokens, args.seq_len)
        second_moments(model, tok, names, spec, key, [args.out], batch_size=args.batch_size,
                       checkpoint_every=args.checkpoint_every)
        if rank == 0:
            folder = stats_dir(args.out, key, spec)
            for name in names:
                print(folder / f"{name}.safetensors")
    except MemeditError as e:
        print(f"memedit: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
