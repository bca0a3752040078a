"""benchmarks/gpu_check.sh on a machine without CUDA: it says so and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the script would run for real")
def test_the_gpu_script_refuses_without_cuda_and_runs_nothing():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PY": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "no CUDA device is visible" in done.stderr and "nothing was run" in done.stderr
    assert "| method |" not in done.stdout and "passed" not in done.stdout
