"""LoRA recovery of a pruned causal LM through ``peft``: adapters on the pruned model, trained on
accelerate, merged back into the pruned weights (``merge_and_unload``).

The merged model is the caller's own module object again, with plain ``nn.Linear`` layers of the
pruned widths: checkpoints stay pruned weights only (no adapter tensors, no peft at load time).
The adapters' B matrices start at zero (peft's default), so training starts from the pruned model
exactly. ``dropout`` defaults to 0: with dropout every process would draw its own masks, and the
1-process and N-process runs would differ by more than summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from prunekit.errors import UserError

if TYPE_CHECKING:
    from prunekit.data.lm_text import LMBlocks
    from prunekit.train.lm import LMTrainConfig

ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head


@dataclass(frozen=True)
class LoRASpec:
    """Rank ``r``, scale ``alpha`` (the update is ``alpha / r · B A``), ``dropout`` on the adapter
    input, and the module names (suffixes) that get adapters, or ``"all-linear"``."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | Sequence[str] = ALL_LINEAR

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora r={self.r!r} must be an integer >= 1")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha={self.alpha} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout={self.dropout} must be in [0, 1)")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            # peft would read any other string as a regular expression over full module names
            raise ValueError(
                f"lora target_modules={self.target_modules!r}: give a list of names (e.g. ['q_proj']) or 'all-linear'"
            )
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise ValueError("lora target_modules is empty: name the linear layers, or 'all-linear'")


@dataclass
class _Frozen:
    """requires_grad of every base parameter before peft froze them (restored after the merge)."""

    flags: dict[str, bool] = field(default_factory=dict)


def check_targets(model: nn.Module, spec: LoRASpec) -> None:
    """Every named target is the last name of some ``nn.Linear`` in ``model`` (checked before any work:
    peft would only find out at the first recovery, after the dense model was trained)."""
    if isinstance(spec.target_modules, str):
        return
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(spec.target_modules) - linear)
    if missing:
        raise UserError(
            f"lora target_modules {missing} name no linear layer of the model; its linear layers are "
            f"{sorted(linear)}: pick from them or use 'all-linear'"
        )


def add_lora(model: nn.Module, spec: LoRASpec) -> tuple[Any, _Frozen]:
    """Wrap ``model`` in a peft model with LoRA adapters (``model`` is changed in place by peft)."""
    from peft import LoraConfig, get_peft_model

    frozen = _Frozen({n: p.requires_grad for n, p in model.named_parameters()})
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config), frozen
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        first = str(e).splitlines()[0]
        raise UserError(
            f"lora target_modules {targets!r} do not match the model ({first}): name its linear layers "
            "(e.g. q_proj, v_proj) or use 'all-linear'"
        ) from None


def merge_lora(peft_model: Any, frozen: _Frozen) -> nn.Module:
    """Fold the adapters into the base weights and drop them; returns the base module (unwrapped)."""
    merged = peft_model.merge_and_unload()
    for name, p in merged.named_parameters():
        p.requires_grad_(frozen.flags.get(name, True))
    leftover = [n for n, _ in merged.named_parameters() if "lora_" in n]
    if leftover:  # would mean peft left adapters behind: a checkpoint must hold pruned weights only
        raise RuntimeError(f"LoRA parameters left after merging: {leftover[:3]}")
    return merged


def train_lm_lora(
    model: nn.Module,
    train: LMBlocks,
    cfg: LMTrainConfig,
    spec: LoRASpec,
    seed: int = 0,
    accelerator: Any = None,
    validation: LMBlocks | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """LoRA-recover ``model`` in place: add adapters, train them with :func:`train_lm`, merge them back.
    Returns the training history, with the adapters' trainable parameter count."""
    import torch

    from prunekit.train.lm import train_lm

    torch.manual_seed(seed)  # the adapters' A matrices are drawn here: the same on every process
    wrapped, frozen = add_lora(model, spec)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    try:
        history = train_lm(wrapped, train, cfg, seed, accelerator, validation, log)
    finally:
        merged = merge_lora(wrapped, frozen)
    if merged is not model:  # peft injects into the caller's module; the merge hands that module back
        raise RuntimeError("peft returned a new module on merge: the in-place contract is broken")
    history.update(lora_trainable_params=trainable, lora=asdict(spec))
    return history
