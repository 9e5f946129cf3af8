"""``estimate(model, data, cfg)``: every quantity of the stated bound, measured on the training split.

One pass over the Jacobian J of the logits on a class-balanced probe set of ``cfg.probe_samples``
training inputs gives most of it (:mod:`prunekit.theory.jacobian_stats`):

- C_arch: d_λ of the empirical NTK Gram J Jᵀ (:func:`prunekit.theory.ntk.ntk_gram`,
  :func:`prunekit.theory.spectrum.ntk_spectrum`);
- per-group and per-unit NTK traces, exactly, from the same J (``ntk_traces="exact"``; or Hutchinson
  with ``cfg.trace_probes`` probes);
- T_opt: the layer-normalised Hessian trace of the mean training loss on the probe set. With
  ``hessian_method="gauss_newton"`` the Gauss-Newton part of every diagonal block comes exactly from J
  and ``cfg.hessian_probes`` Hutchinson probes estimate only the remainder, which is small near a
  minimum; per-group Hessian traces come from the same probes;
- the top eigenvalue of the Gauss-Newton matrix (Lanczos on the kept J) and of the Hessian (Lanczos from
  the Gauss-Newton eigenvector, at most ``cfg.power_iters`` Hessian-vector products);
- n: the number of training samples; d_eff: TwoNN on ``cfg.id_samples`` points of ``cfg.id_representation``.

Only the train split is read: the test split is for the final evaluation alone. Under data parallelism
the Hutchinson probes are shared out across ranks and merged (:mod:`prunekit.theory.distributed`), and
the probe samples of the Jacobian pass and of the top eigenvalues are shared out and their sums
all-reduced (:mod:`prunekit.theory.jacobian_pass`); TwoNN is computed identically on every rank.

This is one call of :class:`prunekit.theory.estimator.Estimator` (built, then asked for its estimates):
one implementation, which a planner keeps to ask about masked variants of the model too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from prunekit.config import EstimateConfig
from prunekit.theory.estimates import ESTIMATES_FORMAT_VERSION as ESTIMATES_FORMAT_VERSION
from prunekit.theory.estimates import Estimates as Estimates
from prunekit.theory.probe_data import balanced_order as balanced_order


def estimate(
    model: nn.Module,
    data: Any,
    cfg: EstimateConfig | None = None,
    groups: Sequence[Any] | None = None,
    accelerator: Any | None = None,
    n: int | None = None,
    seed: int = 0,
    lm_options: Any = None,
) -> Estimates:
    """Estimate C_arch, T_opt, n, d_eff, the stated bound and per-group NTK / Hessian traces.

    ``data``: a :class:`prunekit.data.DataSplits` (its train split is used; ``n`` = ``n_train``) or a
    re-iterable of ``(inputs, labels)`` training batches together with ``n``, the training-set size.
    ``groups``: prunable groups (``prunekit.structure.find_groups``) or ``{name: [param names]}``; without them
    per-group traces are skipped. ``accelerator``: shares the Hutchinson probes across processes.
    The model must give class logits (the Hessian is that of the mean cross-entropy), or be a causal LM
    on causal-LM text (an LMData, its LMBlocks, or batches of (B, L) labels): then the quantities are
    sketched on random projections of the next-token logits (:mod:`prunekit.theory.lm_sketch`; n counts
    predicted tokens, and a given ``n`` training sequences); ``lm_options``: ``sketch_dim``, ``sketch``.
    """
    from prunekit.theory.estimator import Estimator

    est = Estimator(model, data, cfg, groups, accelerator, n, seed, lm_options=lm_options)
    return est.estimates()
