"""Importance criteria for causal language models, registered with the unit-score registry.

Batches are ``({"input_ids", "attention_mask"}, labels)`` with ``labels`` the next-token targets before
the causal shift (-100 = not scored), as :mod:`prunekit.data.lm_text` builds them. Higher = kept first.

- ``lm_taylor``: first-order Taylor, ``|Σ_{w ∈ unit} w · ḡ|`` with ḡ the gradient of the mean next-token
  loss over *all predicted tokens* of the calibration batches (token-weighted, not batch-averaged), for
  every unit of every group: attention heads (their q/k/v rows and o columns), key-value heads, FFN
  neurons (gate/up rows and down column) — the loss change when the unit is zeroed, to first order.
- ``wanda``: activation-aware magnitude after Wanda (Sun et al., 2023), aggregated per structured unit:
  ``Σ_{(i,j) ∈ unit} |W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the norm of input feature ``j`` of that Linear
  over every non-padding token of the calibration batches. A head's query rows weigh the normed hidden
  state; its output-projection columns weigh the attention output of that head; an FFN neuron's down
  column weighs the neuron's activation. Slices of non-Linear parameters (biases, norms) do not count:
  Wanda scores weights only.

Magnitude needs no LM-specific code: ``l1`` / ``l2`` of the registry sum over the same slices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.batch import device_of, move_to
from prunekit.planner.importance import (
    ScoreRequest,
    _group_params,
    reduce_to_units,
    register_criterion,
)
from prunekit.theory.modes import grad_scope

IGNORE = -100


def lm_loss_sum(model: nn.Module, inputs: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, int]:
    """Σ next-token cross-entropy over the predicted tokens of one batch, and their number."""
    logits = model(**inputs).logits.float()
    target = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), target, ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((target != IGNORE).sum())


def _lm_taylor(req: ScoreRequest) -> dict[str, Tensor]:
    params = _group_params(req.model, req.groups)
    names, tensors = list(params), list(params.values())
    device = device_of(req.model)
    acc = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    tokens = 0
    with grad_scope(req.model, params.values()):
        for inputs, labels in req.batches or []:
            inputs, labels = move_to(inputs, device), labels.to(device)
            loss, n = lm_loss_sum(req.model, inputs, labels)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a.add_(g.double())
            tokens += n
    if tokens == 0:
        raise ValueError("criterion 'lm_taylor': the calibration batches have no predicted tokens (all -100)")
    quantity = {n: t.detach().double() * (a / tokens) for n, t, a in zip(names, tensors, acc, strict=True)}
    return {k: v.abs() for k, v in reduce_to_units(req.groups, quantity).items()}


def input_norms(model: nn.Module, linears: dict[str, nn.Linear], batches) -> dict[str, Tensor]:
    """‖X_j‖₂ of every input feature of each named Linear over the non-padding tokens of ``batches``."""
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    mask: list[Tensor] = []

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0].detach().double()
            keep = mask[0].reshape(-1).bool() if mask and x.dim() == 3 else slice(None)
            sums[name] += (x.reshape(-1, x.shape[-1])[keep] ** 2).sum(0).cpu()

        return fn

    device = device_of(model)
    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _ in batches or []:
                inputs = move_to(inputs, device)
                mask[:] = [inputs["attention_mask"]] if "attention_mask" in inputs else []
                model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: s.sqrt() for n, s in sums.items()}


def _wanda(req: ScoreRequest) -> dict[str, Tensor]:
    params = _group_params(req.model, req.groups)
    modules = dict(req.model.named_modules())
    linears = {}
    for pname in params:
        owner, _, leaf = pname.rpartition(".")
        if leaf == "weight" and isinstance(modules.get(owner), nn.Linear):
            linears[owner] = modules[owner]
    norms = input_norms(req.model, linears, req.batches)
    quantity = {
        f"{n}.weight": m.weight.detach().double().abs() * norms[n].to(m.weight.device)[None, :]
        for n, m in linears.items()
    }
    return reduce_to_units(req.groups, quantity)


register_criterion("lm_taylor", _lm_taylor, needs_data=True)
register_criterion("wanda", _wanda, needs_data=True)
