"""Estimates of a tiny MLP on real MNIST-1D, one process or data-parallel (tests/theory/test_estimate_distributed.py).

Usage: python tests/scripts/estimate_dp.py OUT_DIR [DATA.npz]             (one process)
       ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
           --mixed_precision no --dynamo_backend no tests/scripts/estimate_dp.py OUT_DIR [DATA.npz]
Every rank writes OUT_DIR/rank<r>.json with its (reduced) estimates. DATA.npz (arrays x, y from
:func:`mnist1d_train`) saves each process the seconds of importing mnist1d and generating the data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from prunekit.config import EstimateConfig
from prunekit.structure import find_groups
from prunekit.theory import Estimator, estimate
from prunekit.theory.ntk import module_partition
from prunekit.train import make_accelerator

if TYPE_CHECKING:
    from accelerate import Accelerator

CFG = EstimateConfig(probe_samples=32, trace_probes=32, hessian_probes=16, power_iters=3, id_samples=400)
# the Monte-Carlo alternatives: Hutchinson NTK traces and Hutchinson on the whole Hessian
CFG_HUTCHINSON = CFG.model_copy(update={"ntk_traces": "hutchinson", "hessian_method": "hutchinson"})
# a Jacobian too big to keep (and so to gather): every rank builds the whole Gram, the products are shared
CFG_REPLICATED = CFG.model_copy(update={"jacobian_elements": 20_000})
N_TRAIN = 800


def mnist1d_train() -> tuple[np.ndarray, np.ndarray]:
    """The first N_TRAIN MNIST-1D training signals, generated locally."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 1000  # never get_dataset: it tries a download first
    d = make_dataset(args)
    return np.asarray(d["x"][:N_TRAIN], dtype=np.float32), np.asarray(d["y"][:N_TRAIN], dtype=np.int64)


def run(accelerator: Accelerator | None, data: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The estimates of the fixed tiny model and data; ``accelerator=None`` is the one-process reference."""
    torch.set_num_threads(1)  # two processes share two cores
    x_np, y_np = mnist1d_train() if data is None else data
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, N_TRAIN, 100)]
    torch.manual_seed(0)  # the same weights on every rank
    model = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    groups = module_partition(model)
    est = estimate(model, batches, CFG, groups=groups, accelerator=accelerator, n=N_TRAIN)
    alt = estimate(model, batches, CFG_HUTCHINSON, groups=groups, accelerator=accelerator, n=N_TRAIN)
    rep = estimate(model, batches, CFG_REPLICATED, groups=groups, accelerator=accelerator, n=N_TRAIN)
    # a masked variant (hidden neurons of the first layer zeroed) through the Estimator
    units = find_groups(model, x[:2])
    masker = Estimator(model, batches, CFG, groups=units, accelerator=accelerator, n=N_TRAIN)
    removed = {units[0].name: [0, 3, 5, 9]}
    masked = {
        "default": masker.predict(removed).to_dict(),
        "full": masker.predict(removed, hessian="full", top_eigenvalue=True).to_dict(),
    }
    for m in masked.values():
        m.pop("seconds")
    return est.to_dict() | {"hutchinson": alt.to_dict(), "replicated": rep.to_dict(), "masked": masked}


def main(out_dir: Path, data_file: Path | None) -> None:
    accelerator = make_accelerator(seed=0)
    data = None
    if data_file is not None:
        with np.load(data_file) as f:
            data = (f["x"], f["y"])
    result = run(accelerator, data) | {"rank": accelerator.process_index, "world": accelerator.num_processes}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
