"""Training a causal LM on packed blocks, on accelerate: pre-training from scratch and recovery after pruning.

One loop for both (nanoGPT style): AdamW, linear warmup then cosine decay to ``min_lr_fraction`` of
``lr``, gradient clipping, weight decay on matrices only, the HF causal-LM loss (mean over the batch's
predicted tokens). Steps, not epochs, set the budget, so a run's cost does not depend on the split size.
The loader is sharded by ``accelerator.prepare`` (DDP over processes like the classifiers); the shuffle
order is drawn from ``seed``.
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


def _optimizer(model: nn.Module, cfg: LMTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},  # norm scales are not decayed
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95))


def train_lm(
    model: nn.Module,
    train: LMBlocks,
    cfg: LMTrainConfig,
    seed: int = 0,
    accelerator: Any = None,
    validation: LMBlocks | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the history (losses, val perplexities)."""
    from prunekit.metrics.perplexity import perplexity
    from prunekit.train.accel import make_accelerator

    accelerator = accelerator or make_accelerator(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _Blocks(train), batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True
    )
    model.to(accelerator.device)
    optimizer = _optimizer(model, cfg)
    wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    history: dict[str, Any] = {"train_loss": [], "val": []}
    step, start, running = 0, time.perf_counter(), 0.0
    wrapped.train()
    while step < cfg.steps:
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = wrapped(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
            step += 1
            if step % 50 == 0 or step == cfg.steps:
                n = 50 if step % 50 == 0 else step % 50
                history["train_loss"].append((step, running / n))
                log(f"step {step}/{cfg.steps} loss {running / n:.4f} ({time.perf_counter() - start:.0f} s)")
                running = 0.0
            if validation is not None and cfg.eval_every and step % cfg.eval_every == 0:
                sub = validation.subset(torch.arange(min(cfg.eval_blocks, len(validation))).numpy())
                ppl = perplexity(accelerator.unwrap_model(wrapped), sub.batches(64))["perplexity"]
                history["val"].append((step, ppl))
                log(f"step {step} validation perplexity {ppl:.2f}")
                wrapped.train()
            if step >= cfg.steps:
                break
    accelerator.free_memory(wrapped, optimizer, loader)
    model.eval()
    history.update(steps=step, seconds=time.perf_counter() - start, num_processes=accelerator.num_processes)
    return history
