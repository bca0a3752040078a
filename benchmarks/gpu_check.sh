#!/usr/bin/env bash
# On a CUDA machine: the GPU tests, then one timed apply / forget / export per method on the default
# model (examples/facts.jsonl), printed as a table for docs/architectures.md. Meant to fit in 8 minutes.
#
#     bash benchmarks/gpu_check.sh            # after `make` (uses .venv), or with memedit on PATH
#
# Without a visible CUDA device it says so and exits 2, having run nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); nothing was run" >&2
    exit 2
fi
"$PY" -c "import torch; print('#', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
"$PY" -m pytest -q -m gpu tests/test_gpu.py
MEMEDIT="$PY -m memedit_cli.cli"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
first=$(head -1 examples/facts.jsonl | "$PY" -c "import json, sys; print(json.loads(sys.stdin.readline())['id'])")
secs() {  # the seconds a command took; its output only when it fails
    local t0 t1
    t0=$(date +%s%N)
    "$@" > "$work/out.txt" 2>&1 || { cat "$work/out.txt" >&2; return 1; }
    t1=$(date +%s%N)
    awk "BEGIN { print ($t1 - $t0) / 1e9 }"
}
echo "| method | apply s | forget s | export s | peak GPU MiB |"
echo "|---|---|---|---|---|"
for method in ft memit wise larimar; do
    dir="$work/$method"
    mkdir -p "$dir"
    $MEMEDIT -C "$dir" init --device cuda > /dev/null
    a=$(secs $MEMEDIT -C "$dir" apply examples/facts.jsonl --method "$method")
    f=$(secs $MEMEDIT -C "$dir" forget "$first")
    e=$(secs $MEMEDIT -C "$dir" export --merged "$dir/out")
    peak=$("$PY" - "$dir" <<'PY'
import sys, torch
from memedit_cli.replay import materialize
from memedit_cli.store.repo import Repo
torch.cuda.reset_peak_memory_stats()
repo = Repo.open(sys.argv[1])
materialize(repo, repo.segments_at(repo.head()))
print(torch.cuda.max_memory_allocated() // 2**20)
PY
)
    printf "| %s | %.1f | %.1f | %.1f | %s (materialize) |\n" "$method" "$a" "$f" "$e" "$peak"
done
