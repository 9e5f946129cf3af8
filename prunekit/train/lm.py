"""Training a causal LM on packed blocks, on accelerate: pre-training from scratch and recovery after pruning.

One loop for both (nanoGPT style): AdamW, linear warmup then cosine decay to ``min_lr_fraction`` of
``lr``, gradient clipping, weight decay on matrices only, the HF causal-LM loss (mean over the batch's
predicted tokens). Steps, not epochs, set the budget, so a run's cost does not depend on the split size.
The loader is sharded by accelerate (DDP over processes like the classifiers: with a per-process batch
of B / N, the N processes' step-k batches are the 1-process step-k batch of B); the shuffle order is
drawn from ``seed``. The prepare / clean-up around the loop, the optimizer step and the all-process
loss are the classifier loop's (:mod:`prunekit.train.loop`); only the loop body differs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunekit.data.lm_text import LMBlocks
from prunekit.train.loop import check_finite, global_mean, optimizer_step, set_lr, training_session
from prunekit.train.optim import decay_groups

LOG_EVERY = 50  # steps per logged (all-process mean) training loss


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 1000
    batch_size: int = 16  # blocks per process per step
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0: no evaluation during training
    eval_blocks: int = 256  # validation blocks scored at each evaluation

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")


class _Blocks(Dataset):
    def __init__(self, blocks: LMBlocks):
        self.b = blocks

    def __len__(self) -> int:
        return len(self.b)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.from_numpy(self.b.input_ids[i]),
            "attention_mask": torch.from_numpy(self.b.attention_mask[i]),
            "labels": torch.from_numpy(self.b.labels[i]),
        }


def lr_at(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.min_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(
    model: nn.Module,
    train: LMBlocks,
    cfg: LMTrainConfig,
    seed: int = 0,
    accelerator: Any = None,
    validation: LMBlocks | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the history (losses, val perplexities).
    A mean loss that turns inf / NaN raises :class:`~prunekit.train.TrainingDiverged` on every rank."""
    from prunekit.metrics.perplexity import perplexity
    from prunekit.train.accel import check_launch, make_accelerator

    accelerator = accelerator or make_accelerator(seed=seed)
    check_launch(accelerator)
    gen = torch.Generator().manual_seed(seed)
    loader = accelerator.prepare_data_loader(
        DataLoader(_Blocks(train), batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
    )
    model.to(accelerator.device)
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    params = [p for p in model.parameters() if p.requires_grad]
    history: dict[str, Any] = {"train_loss": [], "val": []}
    step, start, running, lr = 0, time.perf_counter(), 0.0, cfg.lr
    with training_session(model, optimizer, accelerator, loader) as (wrapped, optimizer):
        wrapped.train()
        while step < cfg.steps:
            for batch in loader:
                lr = lr_at(step, cfg)
                set_lr(optimizer, lr)
                loss = wrapped(**batch).loss
                accelerator.backward(loss)
                optimizer_step(accelerator, optimizer, params, cfg.max_grad_norm)
                running += float(loss.detach())
                step += 1
                if step % LOG_EVERY == 0 or step == cfg.steps:
                    n = LOG_EVERY if step % LOG_EVERY == 0 else step % LOG_EVERY
                    mean = global_mean(
                        accelerator, torch.tensor(running, dtype=torch.float64), n
                    )  # over all processes
                    check_finite(mean, "causal-LM training", f"over steps {step - n + 1}-{step}", lr)
                    history["train_loss"].append((step, mean))
                    log(f"step {step}/{cfg.steps} loss {mean:.4f} ({time.perf_counter() - start:.0f} s)")
                    running = 0.0
                if validation is not None and cfg.eval_every and step % cfg.eval_every == 0:
                    sub = validation.subset(torch.arange(min(cfg.eval_blocks, len(validation))).numpy())
                    ppl = perplexity(accelerator.unwrap_model(wrapped), sub.batches(64))["perplexity"]
                    history["val"].append((step, ppl))
                    log(f"step {step} validation perplexity {ppl:.2f}")
                    wrapped.train()
                if step >= cfg.steps:
                    break
    model.eval()
    history.update(steps=step, seconds=time.perf_counter() - start, num_processes=accelerator.num_processes)
    return history
