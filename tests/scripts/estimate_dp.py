"""Estimates of a tiny MLP on real MNIST-1D, one process or data-parallel (tests/theory/test_estimate_distributed.py).

Usage: python tests/scripts/estimate_dp.py OUT_DIR                      (one process)
       ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
           --mixed_precision no --dynamo_backend no tests/scripts/estimate_dp.py OUT_DIR
Every rank writes OUT_DIR/rank<r>.json with its (reduced) estimates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn

from prunekit.config import EstimateConfig
from prunekit.theory import estimate
from prunekit.theory.ntk import module_partition
from prunekit.train import make_accelerator

CFG = EstimateConfig(probe_samples=80, trace_probes=48, hessian_probes=24, power_iters=4, id_samples=500)
N_TRAIN = 800


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)  # two processes share two cores
    accelerator = make_accelerator(seed=0)
    args = get_dataset_args()
    args.num_samples = 1000  # never get_dataset: it tries a download first
    d = make_dataset(args)
    x = torch.from_numpy(np.asarray(d["x"][:N_TRAIN], dtype=np.float32))
    y = torch.from_numpy(np.asarray(d["y"][:N_TRAIN], dtype=np.int64))
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, N_TRAIN, 100)]
    torch.manual_seed(0)  # the same weights on every rank
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 10))
    est = estimate(model, batches, CFG, groups=module_partition(model), accelerator=accelerator, n=N_TRAIN)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = est.to_dict() | {"rank": accelerator.process_index, "world": accelerator.num_processes}
    (out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
