"""Fine-tune, prune (simulated), fine-tune again and evaluate; write this rank's parameters and metrics.

Launched by tests/test_distributed.py through `accelerate launch` (several ranks) and called in-process
(`run(...)`) as the one-process reference. ``--accelerator plain`` builds a bare ``Accelerator()``, the
way a user script might, to check that finetune refuses a launch that lost its process group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_mnist1d import TinyCNN1d, load_tensors, loader, mnist1d_tensors, shrink_conv2_  # noqa: E402

from prunekit.config import TrainConfig  # noqa: E402
from prunekit.train import evaluate, finetune, make_accelerator  # noqa: E402


def run(out: Path, batch_size: int, accelerator_kind: str = "make", data: Path | None = None) -> dict:
    if accelerator_kind == "plain":
        from accelerate import Accelerator

        accelerator = Accelerator()
    else:
        accelerator = make_accelerator()
    d = load_tensors(data) if data is not None else mnist1d_tensors(640)  # 80 % train: 512 samples
    torch.manual_seed(0)
    model = TinyCNN1d(width=8, norm=False)  # no BatchNorm: its statistics are per process under DDP
    train = loader(d["x"], d["y"], batch_size, shuffle=True, seed=0)
    test = loader(d["x_test"], d["y_test"], 50, shuffle=False)  # 128 test samples: uneven last batch
    cfg = TrainConfig(epochs=2, batch_size=batch_size, lr=1e-2, schedule="cosine", warmup_fraction=0.1)
    h1 = finetune(model, train, cfg, accelerator, val_loader=test, desc="dense", seed=0)
    shrink_conv2_(model, keep=5)
    h2 = finetune(
        model,
        train,
        cfg.model_copy(update={"epochs": 1.0, "grad_accum_steps": 2}),
        accelerator,
        desc="pruned",
        seed=1,
    )
    metrics = evaluate(model, test, accelerator)
    # With BatchNorm: each rank's last forward updates its running statistics from its own batch.
    torch.manual_seed(0)
    bn_model = TinyCNN1d(width=4)
    finetune(bn_model, train, cfg.model_copy(update={"max_steps": 3}), accelerator, desc="bn", seed=2)
    rank = accelerator.process_index
    out.mkdir(parents=True, exist_ok=True)
    for suffix, net in (("", model), ("_bn", bn_model)):
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(out / f"rank{rank}{suffix}.safetensors"))
    info = {
        "rank": rank,
        "num_processes": accelerator.num_processes,
        "metrics": metrics,
        "dense": h1,
        "pruned": h2,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="per process")
    parser.add_argument("--accelerator", choices=("make", "plain"), default="make")
    parser.add_argument("--data", type=Path, default=None, help="tensors saved by tiny_mnist1d.save_tensors")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.out, args.batch_size, args.accelerator, args.data)


if __name__ == "__main__":
    main()
