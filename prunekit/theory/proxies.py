"""Zero-cost proxies as predictors: one number per (pruned) network, no training, as their papers define them.

- :func:`snip`: Σ |θ ⊙ ∂L/∂θ| (connection sensitivity; Lee et al., ICLR 2019);
- :func:`grasp`: Σ −θ ⊙ (H ∂L/∂θ) (gradient-signal preservation; Wang et al., ICLR 2020), the Hessian-gradient
  product by double backward;
- :func:`synflow`: Σ θ ⊙ ∂R/∂θ with R = 1ᵀ f(1) computed with every parameter replaced by its absolute
  value (Tanaka et al., NeurIPS 2020; data-free). BatchNorm layers are evaluated with running mean 0
  and variance 1, so that they become the positive linear maps |γ|·x + |β| the definition assumes;
- :func:`jacob_cov`: −Σ_i [log(λ_i + k) + 1/(λ_i + k)], k = 1e-5, over the eigenvalues λ of the correlation
  matrix of the per-input Jacobians ∂(Σ_c f_c(x))/∂x (Mellor et al., "Neural architecture search without
  training", 2021, first version).

The per-weight scores are summed over the weights of Conv and Linear layers (parameters with two or more
dimensions), as the zero-cost-proxy study (Abdelfattah et al., ICLR 2021) does; the model is in eval mode
(the same as the theory's estimators) and every weight is left exactly as it was. Larger is claimed
better for all four (:data:`DIRECTIONS`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.batch import logits_of

JACOB_COV_K = 1e-5
DIRECTIONS = {"snip": 1, "grasp": 1, "synflow": 1, "jacob_cov": 1}


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


@contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _loss(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits_of(model, inputs), labels)


def snip(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """SNIP: Σ |θ ⊙ ∂L/∂θ| of the mean cross-entropy on one batch."""
    with _eval(model):
        named = _weights(model)
        grads = torch.autograd.grad(_loss(model, inputs, labels), [p for _, p in named])
        return float(
            sum((p.detach() * g).abs().sum().double() for (_, p), g in zip(named, grads, strict=True))
        )


def grasp(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """GraSP: Σ −θ ⊙ H g with g = ∂L/∂θ and H the Hessian of the mean cross-entropy on one batch."""
    with _eval(model):
        params = [p for _, p in _weights(model)]
        grads = torch.autograd.grad(_loss(model, inputs, labels), params, create_graph=True)
        # gᵀ·stop(g) differentiated once more gives H g (H symmetric)
        z = sum((g * g.detach()).sum() for g in grads)
        hg = torch.autograd.grad(z, params)
        return float(sum((-p.detach() * h).sum().double() for p, h in zip(params, hg, strict=True)))


def synflow(model: nn.Module, example: Tensor) -> float:
    """SynFlow: Σ θ ⊙ ∂R/∂θ on |θ|, R = Σ f(1) over one all-ones input shaped like ``example[0]``.

    Computed in float64 on a copy (the products of absolute weights overflow float32 in deep nets).
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    named = _weights(net)
    ones = torch.ones((1, *example.shape[1:]), dtype=torch.float64, device=example.device)
    r = logits_of(net, ones).sum()
    grads = torch.autograd.grad(r, [p for _, p in named])
    return float(sum((p.detach() * g).sum() for (_, p), g in zip(named, grads, strict=True)))


def input_jacobians(model: nn.Module, inputs: Tensor) -> Tensor:
    """Rows ∂(Σ_c f_c(x_i))/∂x_i, flattened, one per input (eval mode: inputs do not interact)."""
    with _eval(model):
        x = inputs.detach().clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(logits_of(model, x).sum(), x)
    return jac.reshape(len(x), -1)


def jacob_cov(model: nn.Module, inputs: Tensor, k: float = JACOB_COV_K) -> float:
    """jacob_cov: −Σ [log(λ + k) + 1/(λ + k)] over the eigenvalues of the Jacobians' correlation matrix."""
    jac = input_jacobians(model, inputs).double()
    jac = jac - jac.mean(dim=1, keepdim=True)
    norms = jac.norm(dim=1, keepdim=True).clamp_min(1e-300)
    corr = (jac / norms) @ (jac / norms).T  # np.corrcoef of the rows
    lam = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    return float(-(torch.log(lam + k) + 1.0 / (lam + k)).sum())


def all_proxies(model: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, float | None]:
    """The four proxies on one batch (synflow uses only its shape). synflow and jacob_cov need real-valued
    tensor inputs (an all-ones input, a gradient with respect to the input): None for token ids."""
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        return {
            "snip": snip(model, inputs, labels),
            "grasp": grasp(model, inputs, labels),
            "synflow": None,
            "jacob_cov": None,
        }
    return {
        "snip": snip(model, inputs, labels),
        "grasp": grasp(model, inputs, labels),
        "synflow": synflow(model, inputs),
        "jacob_cov": jacob_cov(model, inputs),
    }


def weight_mass(model: nn.Module) -> float:
    """Σ θ² over every parameter, in float64. The "removed weight mass" baseline of a pruned (or masked)
    model is ``weight_mass(dense) - weight_mass(pruned)``: smaller is claimed better."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
