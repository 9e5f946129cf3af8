"""Empirical NTK of a model's logits: per-group traces (Hutchinson) and the Gram matrix (Jacobian contraction).

J is the Jacobian of the logits ``f`` (n samples × k outputs) with respect to the trainable parameters θ,
and Θ = J Jᵀ. For any partition of θ, Θ = Σ_g J_g J_gᵀ exactly: traces and Gram blocks add.

**Per-group traces** (:func:`group_ntk_traces`). With Rademacher output signs ε ∈ {±1}^{n×k},
E‖(Jᵀε)_g‖² = tr(J_g J_gᵀ) = tr Θ_g. One probe is ONE backward pass of Σ ε·f over the whole batch (the
samples are independent because the model is put in eval mode, so BatchNorm uses running statistics),
and it yields the traces of every group and every unit at once: cost ≈ num_probes backward passes,
memory of one gradient. The variance of one probe is 2(‖Θ_g‖_F² − Σ diag²); the standard error
shrinks as 1/√num_probes.

A group's trace is taken over its *own* slice entries. A parameter entry can belong to two groups
(a conv's input column j belongs to the previous layer's output-channel group j, its output row i to this
layer's group i), so group traces need not sum to the total. A dict ``{name: [param names]}`` that
partitions the trainable parameters gives traces that sum to the total exactly.

**Gram matrix** (:func:`ntk_gram`). Θ on up to 1024 inputs by Jacobian contraction streamed over blocks
of parameter tensors: the Jacobian of one block (n·k × m entries) is built, J_b J_bᵀ is accumulated
in float64, and the block is dropped, so memory stays near ``block_elements`` Jacobian entries.
Cost: ⌈P·n·k / block_elements⌉ Jacobian passes of n·k rows each (one row ≈ one sample's backward;
a tensor bigger than the budget is recomputed on pairs of sample chunks, same order of work) plus
n²k²P flops for the products. So raise ``block_elements`` where memory allows (on a large GPU, 2**30+):
the work falls in proportion. Engines: ``"vmap"`` vmaps ``jacrev`` over samples (fast for MLPs and
transformers); ``"vjp"`` does an ordinary forward on a chunk and vmaps only the backward over one-hot
output cotangents (works where the forward has data-dependent control flow, e.g. HF BERT's attention-
mask creation, which ``vmap`` over inputs cannot trace; on small CNNs it was as fast as ``vmap``);
``"loop"`` does one backward per output row. ``"hooks"`` (tried first by ``"auto"``) runs one ordinary
forward with hooks on the modules that own the block's parameters and one backward per logit, then forms
the per-sample gradients in closed form (Linear, Conv1d/2d, BatchNorm1d/2d on running statistics,
LayerNorm, Embedding; :mod:`prunekit.theory.per_sample`): about 4× faster than ``vmap`` on the
quickstart CNN and 7× faster than ``vjp`` on tiny BERT. ``"auto"`` uses it for every block whose
parameters it supports (a tied parameter, a bare ``nn.Parameter`` or a custom module sends that block to
``vmap``, ``vjp``, ``loop`` in that order), and it checks itself against one ordinary backward per
block, warning once and falling back if a parameter is also used outside its module. HF models are run
with eager attention (``config._attn_implementation`` is set to ``"eager"`` during the call and
restored): SDPA has no batching rule for its backward, so it is slow under vmap.

**Removal of units.** Level 1 (:func:`level1_trace_drop`, :func:`level1_gram`) subtracts the removed
entries' own contribution, Θ − Θ_S: a screening heuristic that ignores how removing a unit changes the
Jacobian of the parameters downstream of it. Level 2 (:func:`level2_gram`) recomputes Θ over the
remaining entries with the removed ones zeroed at fixed weights: exact for "prune without retraining".
Entry bookkeeping (groups → units → slices, masking) lives in :mod:`prunekit.structure.units`, the
Jacobian engines in :mod:`prunekit.theory.ntk_jacobian`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunekit.batch import Inputs, batch_size_of, device_of, logits_of, move_to, slice_inputs
from prunekit.structure.units import (
    Groups,
    UnitReducer,
    masked_units,
    module_partition,
    normalise_groups,
    removed_entry_masks,
    trainable_parameters,
)
from prunekit.theory.modes import eval_mode, grad_scope
from prunekit.theory.ntk_jacobian import (
    ENGINES,
    JacobianRows,
    ParamFilter,
    accumulate,
    blocks,
    column_selector,
    select,
)

__all__ = [
    "GroupTraces",
    "eval_mode",
    "group_ntk_traces",
    "inputs_of",
    "level1_gram",
    "level1_trace_drop",
    "level2_gram",
    "masked_units",
    "module_partition",
    "ntk_gram",
    "removed_entry_masks",
]


@dataclass
class GroupTraces:
    """Hutchinson estimates of tr Θ per group and per unit, with standard errors (all in float64).

    ``unit[name][u]`` is the trace over unit ``u``'s own entries; for a dict partition the units of a group
    are its parameter tensors, in the order given. ``is_partition`` is true when the groups partition the
    trainable parameters, so that ``sum(group.values()) == total`` up to rounding.
    """

    group: dict[str, float]
    group_se: dict[str, float]
    unit: dict[str, Tensor]
    unit_se: dict[str, Tensor]
    total: float
    total_se: float
    num_probes: int
    num_samples: int
    is_partition: bool
    group_probes: dict[str, Tensor]  # per-probe values, for merging shards or bootstrap

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable summary (per-unit traces as lists; per-probe values left out)."""
        return {
            "total": self.total,
            "total_se": self.total_se,
            "num_probes": self.num_probes,
            "num_samples": self.num_samples,
            "is_partition": self.is_partition,
            "groups": {
                g: {
                    "trace": self.group[g],
                    "se": self.group_se[g],
                    "unit_traces": self.unit[g].tolist(),
                    "unit_se": self.unit_se[g].tolist(),
                }
                for g in self.group
            },
        }


# --------------------------------------------------------------------------------------------- helpers
def inputs_of(batch: object) -> Inputs:
    """The inputs of a batch ``(inputs, labels)``; a bare tensor or dict of tensors is taken as inputs."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a batch is (inputs, labels); got a sequence of length {len(batch)}")
        return batch[0]
    if isinstance(batch, (Tensor, Mapping)):
        return batch
    raise ValueError(f"a batch is (inputs, labels) or inputs; got {type(batch).__name__}")


def _rademacher(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).mul_(2).sub_(1)


# ---------------------------------------------------------------------------------- Hutchinson traces
def group_ntk_traces(
    model: nn.Module,
    batch: object,
    groups: Groups,
    num_probes: int = 64,
    seed: int = 0,
    chunk: int | None = None,
) -> GroupTraces:
    """Hutchinson estimates of tr Θ_g = E‖(Jᵀε)_g‖² for every group and unit, and of tr Θ.

    ``chunk`` caps the samples per forward/backward (gradients of one probe are summed over chunks; the
    signs ε are drawn for the whole batch, so the result does not depend on ``chunk``).
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 to give a standard error; got {num_probes}")
    inputs = move_to(inputs_of(batch), device_of(model))
    n = batch_size_of(inputs)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples or None; got {chunk}")
    step = n if chunk is None else min(chunk, n)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters; the NTK is empty")
    names = list(params)
    specs, is_partition = normalise_groups(groups, model)
    shapes = {k: v.shape for k, v in params.items()}
    reducers = [(g, UnitReducer(units, shapes)) for g, units in specs]
    gen = torch.Generator().manual_seed(seed)

    group_probes = torch.zeros(len(specs), num_probes, dtype=torch.float64)
    total_probes = torch.zeros(num_probes, dtype=torch.float64)
    unit_sum = [torch.zeros(r.num_units, dtype=torch.float64) for _, r in reducers]
    unit_sq = [torch.zeros(r.num_units, dtype=torch.float64) for _, r in reducers]

    with grad_scope(model):  # eval mode and autograd on: callers may hold no_grad
        starts = list(range(0, n, step))
        one_pass = len(starts) == 1
        out = logits_of(model, inputs) if one_pass else None  # reused by every probe (retain_graph)
        for p in tqdm(range(num_probes), desc="NTK traces", disable=None, leave=False):
            grads: list[Tensor | None] = [None] * len(names)
            eps = None
            for lo in starts:
                o = out if one_pass else logits_of(model, slice_inputs(inputs, slice(lo, lo + step)))
                if eps is None:
                    eps = _rademacher((n, *o.shape[1:]), gen).to(o.device, o.dtype)
                g = torch.autograd.grad(
                    o,
                    [params[k] for k in names],
                    grad_outputs=eps[lo : lo + step],
                    retain_graph=one_pass and p < num_probes - 1,
                    allow_unused=True,
                )
                grads = [a if b is None else b if a is None else a + b for a, b in zip(grads, g, strict=True)]
            sq = {
                k: g.detach().to(torch.float64).square()
                for k, g in zip(names, grads, strict=True)
                if g is not None
            }
            total_probes[p] = float(sum(s.sum() for s in sq.values()))
            for i, (_, red) in enumerate(reducers):
                units, tot = red(sq)
                units = units.cpu()
                group_probes[i, p] = tot.cpu()
                unit_sum[i] += units
                unit_sq[i] += units.square()

    def se(x: Tensor) -> float:
        return float(x.std(unbiased=True) / num_probes**0.5)

    unit_mean = [s / num_probes for s in unit_sum]
    unit_var = [
        (q / num_probes - m.square()).clamp_min(0) * num_probes / (num_probes - 1)
        for q, m in zip(unit_sq, unit_mean, strict=True)
    ]
    gnames = [g for g, _ in reducers]
    return GroupTraces(
        group={g: float(group_probes[i].mean()) for i, g in enumerate(gnames)},
        group_se={g: se(group_probes[i]) for i, g in enumerate(gnames)},
        unit={g: unit_mean[i] for i, g in enumerate(gnames)},
        unit_se={g: (unit_var[i] / num_probes).sqrt() for i, g in enumerate(gnames)},
        total=float(total_probes.mean()),
        total_se=se(total_probes),
        num_probes=num_probes,
        num_samples=n,
        is_partition=is_partition,
        group_probes={g: group_probes[i].clone() for i, g in enumerate(gnames)},
    )


# ------------------------------------------------------------------------------------------ Gram matrix
RowsCallback = Callable[[int, int, dict[str, Tensor]], None]


def ntk_gram(
    model: nn.Module,
    batch: object,
    output: str = "trace",
    param_filter: ParamFilter = None,
    dtype: torch.dtype = torch.float64,
    engine: str = "auto",
    chunk: int | None = None,
    block_elements: int = 2**26,
    max_inputs: int = 1024,
    matmul_dtype: torch.dtype | None = None,
    on_rows: RowsCallback | None = None,
) -> Tensor:
    """The empirical NTK Θ = J Jᵀ of the logits, accumulated block by block in ``dtype``.

    ``output="trace"``: the n×n kernel Σ_c J_c J_cᵀ (summed over logits); ``"full"``: the (n·k)×(n·k)
    kernel, rows ordered (sample, logit). ``param_filter`` restricts J to some trainable parameters: a
    predicate on names, a list of names, or a dict name → boolean mask of entries (then only the named
    tensors count): Θ_g blocks and Level-1 kernels. ``block_elements`` bounds the Jacobian entries held at
    once (default 2**26: 256 MiB in float32, twice that once cast to float64); the work is inversely
    proportional to it, so raise it on a large accelerator. A tensor too big for it is handled by
    recomputing its Jacobian on pairs of sample chunks. ``chunk``: samples per Jacobian call (activation
    memory; default 1024 // k for hooks, 64 for vmap, 8 for vjp/loop, whose work grows as chunk²). ``engine``: see above.

    ``matmul_dtype``: the dtype of the block products (default ``dtype``). float32 halves the work; each
    block's product is still added into the ``dtype`` kernel, so only the per-block dot products round in
    float32 (relative error ~√m·6e-8 for m columns). ``on_rows(lo, hi, rows)`` sees every block's Jacobian rows
    of samples lo..hi exactly once (a dict name → (hi−lo)·k × selected columns, in ``matmul_dtype``):
    per-entry statistics collected in the same pass
    (:class:`prunekit.theory.jacobian_stats.JacobianStats`).
    """
    if output not in ("trace", "full"):
        raise ValueError(f"output must be 'trace' or 'full'; got {output!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    inputs = move_to(inputs_of(batch), device_of(model))
    n = batch_size_of(inputs)
    if n > max_inputs:
        raise ValueError(
            f"the NTK Gram is built on at most {max_inputs} inputs (got {n}); pass fewer inputs or raise "
            f"max_inputs knowingly (memory grows as n²k²)"
        )
    params = trainable_parameters(model)
    cols = column_selector(param_filter, params)
    mm_dtype = dtype if matmul_dtype is None else matmul_dtype
    with eval_mode(model):
        with torch.no_grad():
            k = logits_of(model, slice_inputs(inputs, slice(0, 1)))[0].numel()
        size = n * k if output == "full" else n
        gram = torch.zeros(size, size, dtype=dtype, device=device_of(model))
        jac = JacobianRows(model, inputs, engine, chunk)
        for names in tqdm(
            blocks(cols, params, max(1, block_elements // (n * k))),
            desc="NTK Gram",
            disable=None,
            leave=False,
        ):
            block = {name: params[name].detach() for name in names}
            m = sum(params[c].numel() for c in names)  # the Jacobian is computed for whole tensors
            span = min(n, max(1, block_elements // (k * m)))  # samples whose rows fit in the budget
            if span < n:
                span = max(1, span // 2)  # two chunks are held at once below
            starts = list(range(0, n, span))
            for i, a in enumerate(starts):
                ja = select(jac.rows(block, a, min(a + span, n)), cols, mm_dtype)
                if on_rows is not None:
                    on_rows(a, min(a + span, n), ja)
                for b in starts[i:]:
                    jb = ja if b == a else select(jac.rows(block, b, min(b + span, n)), cols, mm_dtype)
                    accumulate(gram, ja, jb, a, b, k, output)
    return gram


# ------------------------------------------------------------------------------------ removal effects
Removed = Mapping[str, Sequence[int] | None]


def level1_trace_drop(traces: GroupTraces, removed: Removed) -> dict[str, float]:
    """Level 1 on the trace: tr Θ − Σ (per-unit traces of the removed units), from Hutchinson estimates.

    ``removed``: group name → unit indices (None: the whole group, its union trace). An entry shared by
    two removed units of *different* groups (a conv's input column and the previous layer's output
    channel) is counted twice; :func:`level1_gram` counts it once. ``se`` assumes independent unit errors
    (they are correlated: the same probes), so treat it as a rough scale.
    """
    drop, var = 0.0, 0.0
    for g, idxs in removed.items():
        if g not in traces.unit:
            raise ValueError(
                f"removed names unknown group {g!r}; the traces have {sorted(traces.unit)[:8]} ..."
            )
        if idxs is None:
            drop += traces.group[g]
            var += traces.group_se[g] ** 2
            continue
        idx = torch.as_tensor([int(i) for i in idxs], dtype=torch.long)
        n_units = len(traces.unit[g])
        if len(idx) and (idx.min() < 0 or idx.max() >= n_units):
            raise ValueError(f"group {g!r} has {n_units} units; unit indices {idxs} are out of range")
        drop += float(traces.unit[g][idx].sum())
        var += float(traces.unit_se[g][idx].square().sum())
    return {
        "total": traces.total,
        "removed": drop,
        "remaining": traces.total - drop,
        "fraction_removed": drop / traces.total if traces.total > 0 else float("nan"),
        "se": var**0.5,
    }


def level1_gram(
    model: nn.Module,
    batch: object,
    groups: Groups,
    removed: Removed,
    gram: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Level 1 kernel Θ − Θ_S, Θ_S = J_S J_Sᵀ over the union S of the removed units' trainable entries.

    Pass the dense ``gram`` if already computed (with the same ``output``); ``kwargs`` go to :func:`ntk_gram`.
    """
    full = ntk_gram(model, batch, **kwargs) if gram is None else gram
    masks = removed_entry_masks(model, groups, removed)
    if not masks:
        return full.clone()
    return full - ntk_gram(model, batch, param_filter=masks, **kwargs)


def level2_gram(model: nn.Module, batch: object, groups: Groups, removed: Removed, **kwargs: Any) -> Tensor:
    """Level 2 kernel: Θ recomputed over the remaining entries, with the removed units' parameter entries
    zeroed at fixed weights (buffers left alone, see :func:`masked_units`); the model is restored exactly
    afterwards."""
    if "param_filter" in kwargs:
        raise ValueError("level2_gram selects the remaining entries itself; do not pass param_filter")
    removed_masks = removed_entry_masks(model, groups, removed)
    keep = {
        name: ~removed_masks[name] if name in removed_masks else torch.ones(p.shape, dtype=torch.bool)
        for name, p in trainable_parameters(model).items()
    }
    with masked_units(model, groups, removed):
        return ntk_gram(model, batch, param_filter=keep, **kwargs)
