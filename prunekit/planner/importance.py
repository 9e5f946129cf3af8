"""Per-unit importance scores for the units of pruning groups.

Every criterion sums an element-wise quantity over *all* parameter slices of a unit (a conv output
channel's filter, its BatchNorm scale and shift, and the next layer's input slice), so BatchNorm counts.
Buffers in a group (BatchNorm running statistics) are not weights and are skipped.

Criteria (higher score = more important = kept first):

- ``l1``: Σ|w|;  ``l2``: sqrt(Σ w²) — magnitudes, no data needed.
- ``taylor``: |Σ w·ḡ| with ḡ the gradient of the mean cross-entropy over ``num_batches`` batches
  (first-order estimate of the loss change when the unit is zeroed).
- ``hessian``: OBD saliency ½ Σ diag(H)·w², diag(H) estimated by the empirical Fisher (mean of squared
  per-example gradients, the default) or by Hutchinson (z ⊙ Hz, Rademacher z); the estimate is averaged
  over all examples of all ``num_batches`` batches, not taken from the last batch only. The Fisher costs
  one backward pass per example (exact per-example gradients; HF models do not vmap); for large models
  Hutchinson is cheaper: one double-backward per probe per batch.
- ``lamp``: LAMP (Lee et al., ICLR 2021) applied to the units' squared norms: ``s_u / Σ_{v ⪰ u} s_v`` over
  the units of the same group sorted by magnitude, so scores are comparable across layers (max 1 per group).
- ``random``: uniform random scores from a generator seeded by ``seed``.

Scores are float64 CPU tensors of shape ``[num_units]``. The model's mode, ``requires_grad`` flags and
``.grad`` fields are left as they were: no state is kept between calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from prunekit.batch import Batch, batch_size_of, device_of, logits_of, move_to, slice_inputs
from prunekit.structure.group import Group
from prunekit.structure.units import UnitReducer
from prunekit.theory.hessian_diagonal import hutchinson_diagonal
from prunekit.theory.modes import grad_scope

HESSIAN_ESTIMATORS = ("fisher", "hutchinson")


@dataclass(frozen=True)
class ScoreRequest:
    """Everything a criterion may use; built fresh for every call (no shared mutable state)."""

    model: nn.Module
    groups: Sequence[Group]
    batches: Sequence[Batch] | None
    seed: int
    hessian_estimator: str
    probes: int


CriterionFn = Callable[[ScoreRequest], dict[str, Tensor]]


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: CriterionFn
    needs_data: bool


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, fn: CriterionFn, needs_data: bool = False) -> None:
    """Make ``fn`` available as ``unit_scores(..., criterion=name)``; a name can be registered once."""
    if name in _CRITERIA:
        raise ValueError(f"importance criterion '{name}' is already registered; pick another name")
    _CRITERIA[name] = Criterion(name, fn, needs_data)


def known_criteria() -> list[str]:
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    if name not in _CRITERIA:
        raise ValueError(
            f"unknown importance criterion '{name}'; known criteria: {', '.join(known_criteria())}"
        )
    return _CRITERIA[name]


def unit_scores(
    model: nn.Module,
    groups: Sequence[Group],
    batches: Iterable[Batch] | None = None,
    criterion: str = "l2",
    num_batches: int = 4,
    seed: int = 0,
    hessian_estimator: str = "fisher",
    probes: int = 1,
) -> dict[str, Tensor]:
    """Score every unit of every group: ``{group.name: Tensor[group.num_units]}`` (float64, CPU).

    ``batches`` are ``(inputs, labels)`` pairs; the first ``num_batches`` are used by data-driven criteria
    (``taylor``, ``hessian``). ``probes`` is the number of Hutchinson probes per batch.
    """
    crit = get_criterion(criterion)
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches} must be at least 1")
    if hessian_estimator not in HESSIAN_ESTIMATORS:
        raise ValueError(
            f"unknown hessian_estimator '{hessian_estimator}'; choose one of {', '.join(HESSIAN_ESTIMATORS)}"
        )
    if probes < 1:
        raise ValueError(f"probes={probes} must be at least 1")
    _check_groups(model, groups)
    taken: list[Batch] | None = None
    if crit.needs_data:
        if batches is None:
            raise ValueError(f"criterion '{criterion}' needs data: pass batches=[(inputs, labels), ...]")
        taken = list(islice(iter(batches), num_batches))
        if not taken:
            raise ValueError(f"criterion '{criterion}' needs data but the batches are empty")
    request = ScoreRequest(model, groups, taken, seed, hessian_estimator, probes)
    return crit.fn(request)


# --------------------------------------------------------------------------------------------- helpers


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    # remove_duplicate=False so that every alias of a tied weight can be named in a slice
    return dict(model.named_parameters(remove_duplicate=False))


def _check_groups(model: nn.Module, groups: Sequence[Group]) -> None:
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    names |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    for g in groups:
        for s in g.slices:
            if s.param not in names:
                raise ValueError(
                    f"group '{g.name}' names '{s.param}', which is not a parameter or buffer of the model: "
                    "build groups with find_groups on this model"
                )
            if len(s.index) != g.num_units:
                raise ValueError(
                    f"group '{g.name}': slice of '{s.param}' lists {len(s.index)} units, expected {g.num_units}"
                )


def _group_params(model: nn.Module, groups: Sequence[Group]) -> dict[str, nn.Parameter]:
    """The parameters (not buffers) that appear in the groups, in first-seen order."""
    params = _named_params(model)
    out: dict[str, nn.Parameter] = {}
    for g in groups:
        for s in g.slices:
            if s.param in params:
                out.setdefault(s.param, params[s.param])
    return out


def reduce_to_units(groups: Sequence[Group], quantity: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sum an element-wise ``quantity`` (name -> tensor shaped like the parameter) over each unit's slices,
    in float64, on the CPU.

    The reduction is :class:`~prunekit.structure.units.UnitReducer`, the estimators' too, so a planner's
    scores and the theory's per-unit traces add up the same entries. Slices whose parameter is not in
    ``quantity`` (buffers) are skipped.
    """
    shapes = {k: v.shape for k, v in quantity.items()}
    values = {k: v.detach() for k, v in quantity.items()}
    out: dict[str, Tensor] = {}
    for g in groups:
        units = [
            [(s.param, s.dim, torch.as_tensor(s.index[u], dtype=torch.long)) for s in g.slices]
            for u in range(g.num_units)
        ]
        out[g.name] = UnitReducer(units, shapes)(values)[0].cpu()
    return out


def _progress(batches: Sequence[Batch] | None, desc: str) -> Iterable[Batch]:
    return tqdm(batches or [], desc=desc, leave=False, disable=not sys.stderr.isatty())


def _loss(model: nn.Module, inputs, labels: Tensor) -> Tensor:
    logits = logits_of(model, inputs)
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------------------------------ criteria


def _magnitude(p: int) -> CriterionFn:
    def fn(req: ScoreRequest) -> dict[str, Tensor]:
        params = _group_params(req.model, req.groups)
        quantity = {n: w.detach().abs() if p == 1 else w.detach().double() ** 2 for n, w in params.items()}
        sums = reduce_to_units(req.groups, quantity)
        return sums if p == 1 else {k: v.sqrt() for k, v in sums.items()}

    return fn


def _taylor(req: ScoreRequest) -> dict[str, Tensor]:
    params = _group_params(req.model, req.groups)
    names, tensors = list(params), list(params.values())
    device = device_of(req.model)
    acc = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    seen = 0
    with grad_scope(req.model, params.values()):
        for inputs, labels in _progress(req.batches, "taylor scores"):
            inputs, labels = move_to(inputs, device), labels.to(device)
            n = batch_size_of(inputs)
            grads = torch.autograd.grad(_loss(req.model, inputs, labels), tensors, allow_unused=True)
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a.add_(g.double(), alpha=n)  # weight by batch size: the gradient of the overall mean loss
            seen += n
    quantity = {n: t.detach().double() * (a / seen) for n, t, a in zip(names, tensors, acc, strict=True)}
    return {k: v.abs() for k, v in reduce_to_units(req.groups, quantity).items()}


def _fisher_diag(req: ScoreRequest, tensors: list[Tensor], device: torch.device) -> tuple[list[Tensor], int]:
    """Σ over examples of squared per-example gradients (one backward per example; eval mode makes
    batch-of-one forward passes equal to the rows of the batched pass)."""
    acc = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    seen = 0
    for inputs, labels in _progress(req.batches, "fisher diagonal"):
        inputs, labels = move_to(inputs, device), labels.to(device)
        for i in range(batch_size_of(inputs)):
            x_i = slice_inputs(inputs, slice(i, i + 1))
            grads = torch.autograd.grad(_loss(req.model, x_i, labels[i : i + 1]), tensors, allow_unused=True)
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a.add_(g.double() ** 2)
            seen += 1
    return acc, seen


def _hutchinson_diag(
    req: ScoreRequest, tensors: list[Tensor], device: torch.device
) -> tuple[list[Tensor], int]:
    """Σ over batches of (batch size × mean over probes of z ⊙ H_b z), H_b the Hessian of batch b's mean loss."""
    return hutchinson_diagonal(req.model, req.batches or [], tensors, req.probes, req.seed)


def _hessian(req: ScoreRequest) -> dict[str, Tensor]:
    params = _group_params(req.model, req.groups)
    names, tensors = list(params), list(params.values())
    device = device_of(req.model)
    with grad_scope(req.model, params.values()):
        estimate = _fisher_diag if req.hessian_estimator == "fisher" else _hutchinson_diag
        acc, seen = estimate(req, tensors, device)
    quantity = {
        n: 0.5 * (a / seen) * t.detach().double() ** 2 for n, t, a in zip(names, tensors, acc, strict=True)
    }
    return reduce_to_units(req.groups, quantity)


def lamp_transform(sq_norms: Tensor) -> Tensor:
    """LAMP scores from squared magnitudes: s_u / Σ_{v at or above u in ascending order} s_v."""
    order = torch.argsort(sq_norms, stable=True)
    sorted_vals = sq_norms[order]
    # suffix sums: the denominator of the smallest unit is the total, of the largest its own value
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_vals, [0]), 0), [0])
    scores_sorted = torch.where(
        suffix > 0, sorted_vals / suffix.clamp_min(torch.finfo(suffix.dtype).tiny), 0.0
    )
    out = torch.empty_like(sq_norms)
    out[order] = scores_sorted
    return out


def _lamp(req: ScoreRequest) -> dict[str, Tensor]:
    l2 = _magnitude(2)(req)
    return {k: lamp_transform(v**2) for k, v in l2.items()}


def _random(req: ScoreRequest) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(req.seed)
    return {g.name: torch.rand(g.num_units, generator=gen, dtype=torch.float64) for g in req.groups}


register_criterion("l1", _magnitude(1))
register_criterion("l2", _magnitude(2))
register_criterion("taylor", _taylor, needs_data=True)
register_criterion("hessian", _hessian, needs_data=True)
register_criterion("lamp", _lamp)
register_criterion("random", _random)
