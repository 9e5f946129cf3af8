"""``Estimator``: the stated bound's estimators, built once per model and data, asked many times.

``estimate(model, data, cfg)`` is one call; a planner or a validity study asks the same question dozens of
times per plan, about the same model with different units removed at fixed weights. What does not change
between those questions is built once, in the constructor: the class-balanced probe set (on the model's
device), n, the intrinsic dimension d_eff (TwoNN on the training inputs or a representation of the
*unmasked* model: a property of the data, constant across masked variants), the Hessian micro-batches and
the checks of the settings. Then

- :meth:`Estimator.estimates` gives the full :class:`~prunekit.theory.estimate.Estimates` of the model as
  it is (``estimate()`` is this, in one call);
- :meth:`Estimator.predict` gives a :class:`Prediction` for the model with some units removed ("Level 2":
  the units' parameter entries zeroed by :func:`prunekit.structure.masking.mask_groups`, every quantity
  recomputed, the weights restored bit for bit).

**The default masked setting** (``hessian="gauss_newton"``, no eigenvalues): one Jacobian pass over the
probe set gives the NTK Gram (C_arch), the logits (train loss and accuracy) and the exact Gauss-Newton
diagonal, whose layer-normalised trace is T_opt. It skips the Hutchinson probes of the Hessian's
remainder R = H − G and the Lanczos eigenvalues: they cost as much again as the pass (results/
estimator_cost.md) and add Monte-Carlo noise that differences between masked variants would have to beat,
while G is exact, deterministic and positive semi-definite, so the bound is always defined even when
removing units moves the weights off a minimum (where H turns indefinite). The price is that R is left
out: small at a trained minimum (0.3 of 46.1 on the quickstart model) but growing with the residuals
after masking; ``hessian="full"`` adds it exactly as :meth:`estimates` does (the quantity a calibration
fitted on ``estimate()`` records saw), ``top_eigenvalue=True`` adds the Lanczos eigenvalues.

Masked entries are dead, not merely zero: with every slice of a unit zeroed, the logits do not depend on
any of its entries to first order, so their Jacobian columns and Gauss-Newton diagonal vanish and the
Gram equals that of the surgically pruned model. The layer-normalised traces divide by the number of
*remaining* parameters and the Hutchinson probes are zero on the removed entries, so the masked model
estimates what the pruned one would (up to the exceptions in :mod:`prunekit.structure.masking`:
LayerNorm over a pruned dimension). Under data parallelism the probe samples and probes are shared out
as in ``estimate()``, and every rank gets the same Prediction.

**Causal LMs** (the data is causal-LM text) take the branch of :mod:`prunekit.theory.lm_estimator`: the
same quantities on k random projections of the next-token logits at sampled (sequence, position) pairs
(:mod:`prunekit.theory.lm_sketch`), n in predicted tokens, d_eff on hidden states; Gauss-Newton T only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.batch import Batch, batch_size_of, device_of, move_to
from prunekit.config import EstimateConfig
from prunekit.structure import Group, Plan, mask_groups
from prunekit.structure.units import as_groups, removed_entry_masks, trainable_parameters
from prunekit.theory import lm_probe
from prunekit.theory.bound import stated_bound
from prunekit.theory.distributed import rank_and_world
from prunekit.theory.estimates import Estimates, jsonable
from prunekit.theory.jacobian_pass import GRAM_PSD_RTOL, jacobian_pass, top_eigenvalues
from prunekit.theory.lm_estimator import LMBranch, refuse_for_lm
from prunekit.theory.probe_data import (
    balanced_order,
    chunks,
    id_batches,
    id_layer,
    is_splits,
    probe_from_batches,
    train_rows,
)
from prunekit.theory.steps import (
    HESSIAN_BATCH,
    Run,
    Timer,
    exact_ntk_traces,
    hessian_step,
    hutchinson_ntk_traces,
    intrinsic_step,
    layer_normalised_trace,
    top_groups,
)

Removed = Mapping[str, Sequence[int] | None] | Plan | None
HESSIAN_CHOICES = ("gauss_newton", "full")


@dataclass(frozen=True)
class Prediction:
    """The bound's quantities for one (masked) variant of the model; ``to_dict()`` is JSON-ready."""

    C_arch: float  # d_lambda of the normalised NTK Gram of the (masked) model on the probe set
    T_opt: float  # layer-normalised Hessian trace (method in settings["hessian"]; Gauss-Newton part exact)
    n: int
    d_eff: float
    bound: float | None  # sqrt(C_arch*T_opt/(n*d_eff)); None when T_opt <= 0
    train_loss: float  # mean cross-entropy of the (masked) model on the probe set
    train_accuracy: float  # accuracy of the (masked) model on the probe set
    ntk_trace: float  # raw trace of the NTK Gram (un-normalised)
    seconds: float
    T_opt_se: float = 0.0  # standard error of T_opt (0: the Gauss-Newton part alone is exact)
    gauss_newton_T: float = 0.0  # the exact Gauss-Newton part of T_opt (== T_opt by default)
    hessian_top_eigenvalue: float | None = None  # with top_eigenvalue=True
    params: int = 0  # trainable parameters that remain (the layer normalisation's P)
    removed_units: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def calibrated_gap(self, calibration: Any) -> float:
        """The gap a :class:`~prunekit.theory.bound.Calibration` predicts from these quantities."""
        return float(calibration.predict(C=self.C_arch, T=self.T_opt, n=self.n, d_eff=self.d_eff))


class Estimator:
    """The estimators of one model on one training set; see the module docstring.

    Arguments as :func:`prunekit.theory.estimate.estimate`: ``data`` is a DataSplits (its train split;
    ``n`` = ``n_train``) or a re-iterable of ``(inputs, labels)`` training batches with ``n``; ``groups``
    (``find_groups(model, x)``, or ``{name: [param names]}``) are needed for per-group traces and for
    masked predictions. Place the model on its device first (with an accelerator it is moved here).
    Causal-LM text (an LMData, LMBlocks, or batches of (B, L) labels) takes the sketched branch
    (:mod:`prunekit.theory.lm_estimator`; ``n`` then counts training sequences and ``est.n`` predicted
    tokens); ``lm_options``: ``sketch_dim`` (default 16) and ``sketch`` (``rademacher``, ``gaussian``,
    ``exact``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        cfg: EstimateConfig | None = None,
        groups: Sequence[Group] | Mapping[str, Sequence[str]] | None = None,
        accelerator: Any | None = None,
        n: int | None = None,
        seed: int = 0,
        lm_options: Mapping[str, Any] | None = None,
    ):
        self.model, self.cfg = model, cfg or EstimateConfig()
        self.groups, self.accelerator, self.seed = groups, accelerator, seed
        self.show = rank_and_world(accelerator)[0] == 0
        if accelerator is not None:
            model.to(accelerator.device)
        self.notes: list[str] = []  # about the data and settings: every result carries them
        self._mask_groups: list[Group] | None = None  # groups as Group objects, for mask_groups
        self.num_params = sum(p.numel() for p in trainable_parameters(model).values())
        self.lm: LMBranch | None = None  # causal-LM text: the sketched branch (theory/lm_estimator.py)
        if not is_splits(data) and lm_probe.is_lm_data(data := lm_probe.as_batches(data)):
            self._init_lm(data, n, seed, **(lm_options or {}))
            return
        probe, id_data, self.n = _probe_and_id_data(data, self.cfg, n, seed)
        layer = id_layer(model, self.cfg.id_representation, probe[0], self.notes)  # fail fast
        device = device_of(model)
        self.probe: Batch = (move_to(probe[0], device), probe[1].to(device))  # moved once, reused
        self.hessian_batches = chunks(self.probe, HESSIAN_BATCH)
        self.setup_seconds: dict[str, float] = {}
        with Timer(self.setup_seconds, "intrinsic_dim", self.show):
            self.intrinsic = intrinsic_step(model, id_data, layer, self.cfg, seed, self.notes)
        self.d_eff = float(self.intrinsic["twonn"]["d"])

    def _init_lm(self, data: Any, n: int | None, seed: int, **options: Any) -> None:
        self.setup_seconds = {}
        with Timer(self.setup_seconds, "intrinsic_dim", self.show):  # the probe, n and d_eff
            self.lm = LMBranch(self.model, data, self.cfg, n, seed, notes=self.notes, **options)
        self.n, self.intrinsic = self.lm.n, self.lm.intrinsic
        self.d_eff = float(self.intrinsic["twonn"]["d"])
        self.probe = (self.lm.probe, self.lm.targets)
        self.hessian_batches = []

    def _lm_extra(self) -> dict[str, Any]:
        world = rank_and_world(self.accelerator)[1]
        return {"notes": self.notes, "setup_seconds": self.setup_seconds, "seed": self.seed,
                "num_processes": world, "num_params": self.num_params}  # fmt: skip

    @property
    def probe_samples(self) -> int:
        return batch_size_of(self.probe[0])

    # ------------------------------------------------------------------------------ full estimates
    def estimates(self) -> Estimates:
        """Every estimate of the model as it is now; equal to ``estimate(model, data, cfg, ...)``."""
        cfg, model, accelerator = self.cfg, self.model, self.accelerator
        if self.lm is not None:
            return self.lm.estimates(model, self.groups, self.n, self.d_eff, self._lm_extra())
        seconds: dict[str, float] = {}
        per_group: dict[str, dict[str, Any]] = {}
        notes = list(self.notes)
        run = Run(model, self.groups, cfg, self.seed, accelerator, per_group)
        with Timer(seconds, "ntk_gram", self.show):  # the Jacobian pass: Gram, NTK and GN diagonals
            gram, stats, shared = jacobian_pass(model, self.probe, cfg.jacobian_elements, accelerator)
            spectrum = _spectrum(gram, cfg)
            del gram
        if self.groups is not None and len(self.groups) > 0:
            with Timer(seconds, "ntk_group_traces", self.show):
                exact = cfg.ntk_traces == "exact"
                spectrum |= exact_ntk_traces(run, stats) if exact else hutchinson_ntk_traces(run, self.probe)
        with Timer(seconds, "hessian_trace", self.show):
            hessian = hessian_step(run, self.hessian_batches, stats)
        with Timer(seconds, "hessian_top_eigenvalue", self.show):
            top = top_eigenvalues(
                model, self.probe, stats, cfg.power_iters, self.seed, accelerator, HESSIAN_BATCH
            )
            del stats  # the kept Jacobian
        hessian["top_eigenvalue"] = top
        if not top.get("converged", True):
            notes.append(f"the top Hessian eigenvalue did not converge in {cfg.power_iters} iterations")
        seconds |= self.setup_seconds  # TwoNN ran once, when the Estimator was built
        C, T = float(spectrum["d_lambda"]), float(hessian["normalized_trace"])
        bound = _bound(C, T, self.n, self.d_eff, notes)
        seconds["total"] = sum(seconds.values())
        settings = {
            "estimate": cfg.model_dump(),
            "seed": self.seed,
            "num_processes": rank_and_world(accelerator)[1],
            "probe_samples_shared": shared["samples_shared"],
            "probe_samples": self.probe_samples,
            "num_groups": len(per_group),
            "params": self.num_params,
        }
        return Estimates(
            C_arch=C,
            T_opt=T,
            n=self.n,
            d_eff=self.d_eff,
            bound=bound,
            hessian_top_eigenvalue=float(top["eigenvalue"]),
            ntk=spectrum,
            hessian=hessian,
            intrinsic_dim=self.intrinsic,
            groups=per_group,
            top_groups_ntk=top_groups(per_group, "ntk_trace"),
            top_groups_hessian=top_groups(per_group, "hessian_trace"),
            seconds=seconds,
            settings=settings,
            notes=notes,
        )

    # --------------------------------------------------------------------------- masked predictions
    def predict(
        self, removed: Removed = None, hessian: str = "gauss_newton", top_eigenvalue: bool = False
    ) -> Prediction:
        """The bound's quantities with the units ``removed`` zeroed at fixed weights (Level 2).

        ``removed``: group name → unit indices (None: all of the group's units), or a Plan (the units not
        in ``plan.keep`` of the groups it names), or None (the model as it is). ``hessian``:
        ``"gauss_newton"`` (default) T_opt is the exact Gauss-Newton part; ``"full"`` adds the configured
        Hutchinson estimate of the rest, as :meth:`estimates` does. ``top_eigenvalue``: also run Lanczos.
        """
        if hessian not in HESSIAN_CHOICES:
            raise ValueError(f"hessian={hessian!r} is not one of {HESSIAN_CHOICES}")
        t0 = time.perf_counter()
        units = self._removed(removed)
        groups = self._groups_for_masking() if units else []
        keep = _keep_masks(self.model, groups, units)
        remaining = self.num_params - sum(int((~m).sum()) for m in keep.values())
        with mask_groups(self.model, groups, units):
            out = self._predict_masked(keep, remaining, hessian, top_eigenvalue)
        removed_units = sum(len(v) for v in units.values())
        settings = out.pop("settings") | {"hessian": hessian, "removed_units_by_group": _counts(units)}
        return Prediction(
            **out,
            n=self.n,
            d_eff=self.d_eff,
            seconds=time.perf_counter() - t0,
            params=remaining,
            removed_units=removed_units,
            settings=settings,
        )

    def _predict_masked(
        self, keep: dict[str, Tensor], remaining: int, hessian: str, top_eigenvalue: bool
    ) -> dict[str, Any]:
        cfg, model, accelerator = self.cfg, self.model, self.accelerator
        if self.lm is not None:
            refuse_for_lm(hessian, top_eigenvalue)
            return self.lm.predict(model, remaining, self.n, self.d_eff, self._lm_extra())
        notes = list(self.notes)
        gram, stats, shared = jacobian_pass(model, self.probe, cfg.jacobian_elements, accelerator)
        spectrum = _spectrum(gram, cfg)
        logits, labels = shared["logits"], self.probe[1].to(shared["logits"].device)
        loss = float(F.cross_entropy(logits.float(), labels))
        accuracy = float((logits.argmax(-1) == labels).double().mean())
        params = trainable_parameters(model)
        gn_T = layer_normalised_trace(params, stats.per_tensor("gn"), remaining)
        T, T_se = gn_T, 0.0
        if hessian == "full":
            run = Run(model, None, cfg, self.seed, accelerator, {})
            masks = [keep.get(name) for name in params]
            h = hessian_step(run, self.hessian_batches, stats, probe_masks=masks)
            scale = h["num_params"] / remaining  # the probes' normalisation counted the removed entries
            T, T_se = h["normalized_trace"] * scale, h["normalized_trace_se"] * scale
        top = None
        if top_eigenvalue:
            mask = _flat_mask(keep, params)
            top = top_eigenvalues(
                model, self.probe, stats, cfg.power_iters, self.seed, accelerator, HESSIAN_BATCH, mask
            )
        del stats
        return {
            "C_arch": float(spectrum["d_lambda"]),
            "T_opt": float(T),
            "T_opt_se": float(T_se) if T_se is not None else 0.0,
            "gauss_newton_T": float(gn_T),
            "bound": _bound(float(spectrum["d_lambda"]), float(T), self.n, self.d_eff, notes),
            "train_loss": loss,
            "train_accuracy": accuracy,
            "ntk_trace": float(spectrum["trace"]),
            "hessian_top_eigenvalue": None if top is None else float(top["eigenvalue"]),
            "notes": notes,
            "settings": {
                "seed": self.seed,
                "probe_samples": self.probe_samples,
                "probe_samples_shared": shared["samples_shared"],
                "num_processes": rank_and_world(accelerator)[1],
                "ridge": cfg.ridge,
                "hessian_probes": cfg.hessian_probes if hessian == "full" else 0,
                "hessian_method": cfg.hessian_method if hessian == "full" else "gauss_newton_part",
            },
        }

    def _removed(self, removed: Removed) -> dict[str, list[int]]:
        """``removed`` as group name → sorted unit indices (groups with nothing removed left out)."""
        if removed is None:
            return {}
        if isinstance(removed, Plan):
            sizes = {g.name: g.num_units for g in self._groups_for_masking()}
            for name, count in removed.num_units.items():
                if name in sizes and count != sizes[name]:
                    raise ValueError(
                        f"the plan sizes group {name!r} at {count} units but the model has {sizes[name]}: "
                        "a plan for another model (or an already pruned one)"
                    )
            removed = {
                g: sorted(set(range(sizes.get(g, removed.num_units.get(g, 0)))) - set(keep))
                for g, keep in removed.keep.items()
            }
        elif not isinstance(removed, Mapping):
            raise ValueError(
                f"removed must be a mapping group name -> unit indices, a Plan or None; got {type(removed).__name__}"
            )
        out: dict[str, list[int]] = {}
        sizes = {g.name: g.num_units for g in self._groups_for_masking()} if removed else {}
        for g, idx in removed.items():
            if g not in sizes:
                raise ValueError(f"removed names unknown group {g!r}; known groups start {sorted(sizes)[:3]}")
            units = list(range(sizes[g])) if idx is None else sorted({int(i) for i in idx})
            if units:
                out[g] = units
        return out

    def _groups_for_masking(self) -> list[Group]:
        if not self.groups:
            raise ValueError(
                "masked predictions need groups: build the Estimator with groups=find_groups(model, x)"
            )
        if self._mask_groups is None:
            self._mask_groups = as_groups(self.groups, self.model)
        return self._mask_groups


# ----------------------------------------------------------------------------------------- helpers
def _probe_and_id_data(data: Any, cfg: EstimateConfig, n: int | None, seed: int) -> tuple[Batch, Any, int]:
    """The probe batch, the intrinsic-dimension batches and n, read from the train split only."""
    if is_splits(data):
        n_train = int(data.n_train) if n is None else int(n)
        probe = train_rows(data, balanced_order(data.labels("train"), seed)[: cfg.probe_samples])
        id_data: Iterable[Batch] = list(id_batches(data, cfg.id_samples, seed))
    else:
        if n is None:
            raise ValueError("pass n (the number of training samples) when data is an iterable of batches")
        if iter(data) is data:  # a one-shot iterator: keep its batches, they are read twice
            data = list(data)
        n_train = int(n)
        probe = probe_from_batches(data, cfg.probe_samples, seed)
        id_data = data
    if n_train < 1:
        raise ValueError(f"n must be a positive number of training samples, got {n_train}")
    return probe, id_data, n_train


def _spectrum(gram: Tensor, cfg: EstimateConfig) -> dict[str, Any]:
    from prunekit.theory.spectrum import ntk_spectrum

    return ntk_spectrum(gram, ridge=cfg.ridge, psd_rtol=GRAM_PSD_RTOL)


def _bound(C: float, T: float, n: int, d: float, notes: list[str]) -> float | None:
    try:
        return stated_bound(C, T, n, d)
    except ValueError as err:
        notes.append(f"no stated bound: {err} (T_opt <= 0 means an indefinite Hessian, e.g. off a minimum)")
        return None


def _keep_masks(model: nn.Module, groups: list[Group], units: dict[str, list[int]]) -> dict[str, Tensor]:
    """Trainable parameter name → boolean mask of the entries that remain (only tensors that lose some)."""
    if not units:
        return {}
    return {k: ~m for k, m in removed_entry_masks(model, groups, units).items()}


def _flat_mask(keep: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Tensor | None:
    if not keep:
        return None
    parts = [
        keep[k].flatten() if k in keep else torch.ones(p.numel(), dtype=torch.bool) for k, p in params.items()
    ]
    return torch.cat(parts)


def _counts(units: Mapping[str, Sequence[int]]) -> dict[str, int]:
    return {g: len(u) for g, u in units.items()}
