"""Fine-tuning and evaluation: one readable loop on an :class:`accelerate.Accelerator`.

Every :func:`finetune` call builds a fresh optimizer from the model's *current* trainable parameters
and wraps the model afresh (DDP when several processes run): pruning replaces ``nn.Parameter``
objects, and an optimizer or DDP wrapper built before a prune would hold the old ones. The caller's
``model`` object is trained in place and stays usable (no wrapper, no patched forward left on it).

Determinism: ``seed`` seeds python/numpy/torch and re-seeds the training loader's shuffling generator,
so the same (model, data, cfg, seed) gives bit-identical parameters in one process. Across processes,
accelerate copies rank 0's generator state to every rank at the start of each epoch, so all ranks
shuffle alike and each takes its own slice of every global batch; buffers (BatchNorm statistics) are
broadcast from rank 0 before each validation and at the end, so every rank ends with the same model.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunekit.batch import batch_size_of, logits_of
from prunekit.config import TrainConfig
from prunekit.train.accel import check_launch, resolve_mixed_precision
from prunekit.train.optim import build_optimizer, lr_at

if TYPE_CHECKING:  # accelerate is imported lazily: `import prunekit` stays lean
    from accelerate import Accelerator
    from torch.utils.data import DataLoader


class TrainingDiverged(ValueError):
    """The training loss became inf or NaN: the recipe (lr, gradient clipping) needs changing.

    Raised by :func:`finetune` after the pass in which it happened, on every process alike; the model
    is left as it was then (not a result to keep)."""

    def __init__(self, message: str, detail: str):
        super().__init__(f"{message}: lower the learning rate or set max_grad_norm")
        self.detail = detail


def _is_prepared(loader: Any) -> bool:
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    return isinstance(loader, (DataLoaderShard, DataLoaderDispatcher))


def _prepare_loader(accelerator: Accelerator, loader: Any) -> DataLoader:
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise ValueError(
            f"the loader must be a torch DataLoader yielding (inputs, labels), got {type(loader).__name__}: "
            "wrap the data in torch.utils.data.DataLoader (accelerate shards it over processes)"
        )
    return loader if _is_prepared(loader) else accelerator.prepare_data_loader(loader)


def _num_batches(loader: Any) -> int:
    """Micro-batches per pass of the training loader (it needs a length: epochs are counted in passes)."""
    try:
        n = len(loader)
    except TypeError:
        raise ValueError(
            "the training loader has no length (an iterable-style dataset): use a map-style dataset, "
            "e.g. DataSplits.loader, or set a length on the dataset"
        ) from None
    if n == 0:
        raise ValueError("the training loader yields no batches: check the split size and batch_size")
    return n


def _yields_nothing(loader: Any) -> bool:
    try:
        return len(loader) == 0
    except TypeError:  # an iterable-style dataset: its length is unknown until iterated
        return False


def _reseed_loader(loader: Any, seed: int) -> None:
    """Make the shuffling order a function of ``seed`` (the loader may have been iterated before)."""
    seen: set[int] = set()
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for obj in (owner, getattr(owner, "sampler", None)):
            gen = getattr(obj, "generator", None)
            if isinstance(gen, torch.Generator) and id(gen) not in seen:
                seen.add(id(gen))
                gen.manual_seed(seed)


def _release(accelerator: Accelerator, *objs: Any) -> None:
    """Drop ``objs`` from the accelerator's registries so a pruned-away model can be freed.

    ``accelerator.free_memory()`` would also drop what the caller prepared; this removes only ours.
    """
    for attr in ("_models", "_optimizers", "_dataloaders", "_schedulers"):
        registry = getattr(accelerator, attr, None)
        if isinstance(registry, list):
            registry[:] = [o for o in registry if all(o is not x for x in objs)]


def _strip_forward_patch(model: nn.Module, had_forward: bool) -> None:
    """Remove the autocast forward that ``accelerator.prepare`` installs under mixed precision."""
    original = model.__dict__.pop("_original_forward", None)
    if had_forward:
        if original is not None:
            model.forward = original
    else:
        model.__dict__.pop("forward", None)


def _sync_buffers(model: nn.Module, accelerator: Accelerator) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each forward, so after the last training step every rank holds
    the statistics of its own last batch: without this the ranks would evaluate, prune and save
    different models. Runs only on the success path (a collective after one rank failed would hang).
    """
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        buffers = list(model.buffers())
        if buffers:
            broadcast(buffers, from_process=0)  # in place


def _accumulation(cfg: TrainConfig, accelerator: Accelerator) -> int:
    """Micro-batches per optimizer step: from ``cfg``, or from ``make_accelerator(grad_accum_steps=)``."""
    from_acc = int(accelerator.gradient_accumulation_steps)
    if cfg.grad_accum_steps > 1 and from_acc > 1 and cfg.grad_accum_steps != from_acc:
        raise ValueError(
            f"grad_accum_steps is {cfg.grad_accum_steps} in the train config but {from_acc} in the "
            "Accelerator: set it in one place only"
        )
    return max(cfg.grad_accum_steps, from_acc)


def _warn_on_precision_mismatch(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """The Accelerator fixes the precision; say so when the recipe asks for another one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the device fallback itself was reported by make_accelerator
        wanted = resolve_mixed_precision(cfg.mixed_precision, cpu=accelerator.device.type == "cpu")
    have = str(accelerator.mixed_precision)
    if wanted != have:
        warnings.warn(
            f"the train config asks for mixed_precision={cfg.mixed_precision!r} but the Accelerator runs "
            f"{have!r}: build it with make_accelerator(mixed_precision={cfg.mixed_precision!r})",
            stacklevel=3,
        )


def total_optimizer_steps(cfg: TrainConfig, micro_batches_per_epoch: int, accum: int) -> int:
    """``cfg.max_steps`` when set (it overrides epochs), else ceil(epochs × micro-batches / accum)."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return math.ceil(cfg.epochs * micro_batches_per_epoch / accum)


@contextmanager
def training_session(
    model: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, loader: Any
) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
    """``model`` and ``optimizer`` prepared for one training call (DDP when several processes run),
    and undone on the way out, on success and failure alike: the prepared ``loader`` told its pass
    ended, gradients dropped, the mixed-precision forward patch removed, and the accelerator's
    registries cleared of these objects only, so a pruned-away model can be freed. Shared by the
    classifier loop (:func:`finetune`) and the causal-LM loop (:func:`prunekit.train.lm.train_lm`)."""
    had_forward = "forward" in model.__dict__
    try:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
    except BaseException:
        _release(accelerator, loader)  # the accelerator must not keep the loader (and its data) alive
        raise
    try:
        yield wrapped, optimizer
    finally:
        loader.end()  # a pass cut short (fractional epochs, max_steps) never tells accelerate it ended
        optimizer.zero_grad(set_to_none=True)
        _strip_forward_patch(model, had_forward)
        _release(accelerator, wrapped, optimizer, loader)
        del wrapped, optimizer
        gc.collect()  # drop the DDP reducer (and its autograd hooks) before the next prune + train


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(
    accelerator: Accelerator, optimizer: torch.optim.Optimizer, params: list, max_grad_norm: float | None
) -> float:
    """Clip (when ``max_grad_norm`` is set), step, zero the gradients; returns the pre-clip norm."""
    grad_norm = float("nan")
    if max_grad_norm is not None:
        grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def global_mean(accelerator: Accelerator, total: torch.Tensor, count: float) -> float:
    """sum(total) / sum(count) over all processes (every rank gets the same number)."""
    n = torch.tensor(float(count), device=accelerator.device, dtype=torch.float64)
    totals = accelerator.reduce(torch.stack([total.double().to(n.device), n]), reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1))


def check_finite(loss: float, desc: str, where: str, lr: float) -> None:
    """Raise :class:`TrainingDiverged` for an inf / NaN loss; called on an all-reduced loss, so every
    rank stops at the same point (a rank that stopped alone would leave the others waiting)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"{desc}: mean training loss {loss} {where} (lr {lr:.3g})", f"loss {loss} {where}"
        )


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    cfg: TrainConfig,
    accelerator: Accelerator,
    val_loader: DataLoader | None = None,
    desc: str = "finetune",
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` in place with cross-entropy and return the history.

    History: ``train_loss`` / ``val_loss`` / ``val_accuracy`` per epoch (a fractional last epoch counts
    as one), ``steps`` (optimizer steps), ``epochs`` (fraction of passes over the data), ``seconds``,
    ``lr_last``, ``grad_norm_last``, ``global_batch_size`` and ``num_processes``.
    The global batch is the loader's batch × processes × accumulation steps: the loader's batch size
    is per process (``prunekit run`` makes it ``cfg.batch_size`` / processes, so that ``batch_size``
    in a config is the global batch). A loss that turns inf / NaN raises :class:`TrainingDiverged`. With accumulation, the optimizer steps are
    ``ceil(epochs × micro-batches / accum)`` and a step may span the end of one pass and the start of
    the next (then the next pass's few micro-batches add a short entry to ``train_loss``).
    """
    from accelerate.utils import set_seed

    if not isinstance(cfg, TrainConfig):
        raise ValueError(
            f"finetune needs a prunekit.config.TrainConfig, got {type(cfg).__name__}: "
            "build one with TrainConfig(**values)"
        )
    check_launch(accelerator)
    _warn_on_precision_mismatch(cfg, accelerator)
    accum = _accumulation(cfg, accelerator)
    if val_loader is not None and _yields_nothing(val_loader):
        # Found now, not after the first epoch's training (evaluate would raise only then).
        raise ValueError("the validation loader yields no batches: pass val_loader=None for an empty split")
    set_seed(seed)
    _reseed_loader(train_loader, seed)
    was_training = model.training

    # Fresh every call: the model's parameters may have been replaced since the last one.
    model.to(accelerator.device)
    optimizer = build_optimizer(model, cfg)
    loader = _prepare_loader(accelerator, train_loader)
    try:
        micro_per_epoch = _num_batches(loader)
    except BaseException:
        _release(accelerator, loader)
        raise
    total_steps = total_optimizer_steps(cfg, micro_per_epoch, accum)
    total_micro = total_steps * accum
    params = [p for p in model.parameters() if p.requires_grad]

    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "val_accuracy": [], "steps": 0}
    saved_accum = accelerator.gradient_accumulation_steps
    accelerator.gradient_accumulation_steps = accum  # accelerator.backward divides the loss by this
    bar = tqdm(total=total_steps, desc=desc, disable=None if accelerator.is_main_process else True)
    start = time.perf_counter()
    micro, step, epoch = 0, 0, 0
    lr = lr_at(0, max(total_steps, 1), cfg)
    grad_norm = float("nan")
    try:
        with training_session(model, optimizer, accelerator, loader) as (wrapped, optimizer):
            while micro < total_micro:
                wrapped.train()
                # Sample-weighted sum of this epoch's losses, and the number of samples, on this process.
                epoch_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
                epoch_samples = 0
                for inputs, labels in loader:
                    if micro % accum == 0:  # first micro-batch of an optimizer step: set its learning rate
                        lr = lr_at(step, total_steps, cfg)
                        set_lr(optimizer, lr)
                    last_micro = (micro + 1) % accum == 0
                    # Skip the gradient all-reduce on all but the last micro-batch of an accumulation.
                    with nullcontext() if last_micro else accelerator.no_sync(wrapped):
                        with accelerator.autocast():
                            logits = logits_of(wrapped, inputs)
                        loss = F.cross_entropy(logits.float(), labels)
                        accelerator.backward(loss)
                    n = batch_size_of(inputs)
                    epoch_loss += loss.detach().double() * n
                    epoch_samples += n
                    micro += 1
                    if last_micro:
                        grad_norm = optimizer_step(accelerator, optimizer, params, cfg.max_grad_norm)
                        step += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
                    if micro >= total_micro:
                        break
                epoch += 1
                history["train_loss"].append(global_mean(accelerator, epoch_loss, epoch_samples))
                check_finite(history["train_loss"][-1], desc, f"in pass {epoch} (step {step})", lr)
                if val_loader is not None:
                    _sync_buffers(model, accelerator)  # every rank evaluates the same model
                    metrics = evaluate(model, val_loader, accelerator)
                    history["val_loss"].append(metrics["loss"])
                    history["val_accuracy"].append(metrics["accuracy"])
    finally:
        bar.close()
        accelerator.gradient_accumulation_steps = saved_accum
        model.train(was_training)

    _sync_buffers(model, accelerator)
    history.update(
        steps=step,
        epochs=micro / micro_per_epoch,
        seconds=time.perf_counter() - start,
        lr_last=lr,
        grad_norm_last=grad_norm,
        grad_accum_steps=accum,
        global_batch_size=(train_loader.batch_size or 0) * accelerator.num_processes * accum,
        num_processes=accelerator.num_processes,
    )
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    """Mean cross-entropy, accuracy and sample count over ``loader``, gathered over all processes.

    Each process evaluates its shard; ``gather_for_metrics`` drops the samples accelerate repeats to
    even out the last batch, so every example counts exactly once. Every rank gets the same numbers.
    """
    check_launch(accelerator)
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.to(accelerator.device).eval()
    prepared = _prepare_loader(accelerator, loader)
    losses, correct = [], []
    try:
        for inputs, labels in prepared:
            with accelerator.autocast():
                logits = logits_of(net, inputs)
            loss = F.cross_entropy(logits.float(), labels, reduction="none")
            hit = (logits.argmax(dim=-1) == labels).float()
            loss, hit = accelerator.gather_for_metrics((loss, hit))
            losses.append(loss.double())
            correct.append(hit.double())
    finally:
        net.train(was_training)
        if prepared is not loader:
            _release(accelerator, prepared)
    if not losses:
        raise ValueError("the evaluation loader yields no batches: check the split size")
    loss_all, hit_all = torch.cat(losses), torch.cat(correct)
    return {"loss": float(loss_all.mean()), "accuracy": float(hit_all.mean()), "n": int(loss_all.numel())}
