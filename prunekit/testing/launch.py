"""The data-parallel launch that works on a CPU-only machine: N gloo DDP ranks via accelerate."""

from __future__ import annotations

import os
import sys


def cpu_ddp_launch(num_processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """``(argv prefix, environment)`` for ``accelerate launch`` of ``num_processes`` CPU ranks.

    ``--multi_gpu`` with ``ACCELERATE_USE_CPU=true`` is what forms a gloo process group on CPU;
    ``--cpu --num_processes N`` silently runs a single process. One intra-op thread per rank keeps
    two ranks from fighting over a small machine's cores. Append the script (or ``-m module``).
    """
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return argv, env
