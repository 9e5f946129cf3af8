"""The :class:`~prunekit.theory.estimator.Estimator`'s causal-LM branch: the same quantities from the sketch.

Built once per model and data (:mod:`prunekit.theory.lm_probe`: the (sequence, position) probe, n in
predicted tokens, d_eff on hidden states of the unmasked model; :func:`prunekit.theory.lm_sketch.projection`:
the sketch S, fixed by the seed), then asked per masked variant: one sketched Jacobian pass gives the NTK
Gram (C_arch, ntk_trace), the per-entry NTK and Gauss-Newton diagonals (per-group traces; T_opt = the
layer-normalised Gauss-Newton trace) and their standard errors over the sketch's rows; one forward gives the
train loss and next-token accuracy over every predicted token of the probe's sequences.

Not for causal LMs (refused with a one-line error): the Hutchinson remainder H − G (``hessian="full"``) and
the Lanczos top eigenvalue; T_opt is the Gauss-Newton part, as in the classifier's default ``predict``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.config import EstimateConfig
from prunekit.structure.units import trainable_parameters
from prunekit.theory import lm_probe
from prunekit.theory.lm_sketch import mean_and_se, projection, sketch_pass
from prunekit.theory.steps import intrinsic_step, layer_normalised_trace

DEFAULT_SKETCH_DIM = (
    16  # relative SE at most sqrt(2/16) = 0.35 (the worst case, rank-1 outputs); see lm_sketch
)
DEFAULT_SKETCH = "rademacher"
log = logging.getLogger("prunekit.theory")


class LMBranch:
    """The probe, n, d_eff and the sketch of one causal LM on one training set; :meth:`quantities` per variant."""

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        cfg: EstimateConfig,
        n: int | None,
        seed: int,
        sketch_dim: int = DEFAULT_SKETCH_DIM,
        sketch: str = DEFAULT_SKETCH,
        notes: list[str] | None = None,
    ):
        # an output embedding is what a causal-LM head has (MODEL_FOR_CAUSAL_LM_MAPPING would import
        # every transformers model: 14 s); the logits' shape is checked on the first forward
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(
                f"the data is causal-LM text but the model is a {type(model).__name__}, which has no causal-LM "
                "head: load it with AutoModelForCausalLM"
            )
        self.cfg, self.seed, self.notes = cfg, seed, notes if notes is not None else []
        data = lm_probe.as_batches(data)
        inputs, labels, self.n, self.n_info = lm_probe.sequences(data, cfg.probe_samples, seed, n)
        seq, pos = lm_probe.positions(labels, cfg.probe_samples, seed)
        device = next(model.parameters()).device
        self.probe = lm_probe.probe_inputs(inputs, seq, pos, device)
        self.targets = labels[seq, pos + 1].to(device)  # the next tokens the probe's logits predict
        used = torch.unique(seq)  # the loss is over every predicted token of the probe's sequences
        self.loss_inputs = {k: v[used] for k, v in inputs.items()}
        self.loss_labels = labels[used]
        vocab = int(head.weight.shape[0])
        self.sketch_kind = sketch
        self.sketch = projection(vocab, sketch_dim if sketch != "exact" else vocab, sketch, seed)
        self.exact = sketch == "exact"
        self._note_cost(model)
        layer = cfg.id_representation
        id_inputs, id_labels, _, _ = lm_probe.sequences(data, cfg.id_samples, seed + 1, n or 1)
        id_seq, id_pos = lm_probe.positions(id_labels, cfg.id_samples, seed + 1)
        points = lm_probe.hidden_points(model, id_inputs, id_seq, id_pos, layer)
        cloud = [(torch.from_numpy(points), torch.zeros(len(points)))]
        self.intrinsic = intrinsic_step(model, cloud, "inputs", cfg, seed, self.notes)
        self.intrinsic["representation"] = (
            "final hidden state (output embedding input) at sampled positions"
            if layer == "inputs"
            else f"{layer} at sampled positions"
        )

    def _note_cost(self, model: nn.Module) -> None:
        # every parameter block re-runs the model on the whole probe (forward + 2k backward passes), and the
        # blocks number rows·P / jacobian_elements: the cost grows as (positions · k)², so say so up front
        params = sum(p.numel() for p in trainable_parameters(model).values())
        rows = self.probe_samples * 2 * int(self.sketch.shape[0])
        passes = -(-rows * params // self.cfg.jacobian_elements)
        if passes > 16:
            msg = (
                f"the sketched Jacobian has {rows} rows x {params:,} params: {passes} passes over the probe per "
                "estimate; lower estimate.probe_samples or sketch_dim, or raise jacobian_elements, to cut it"
            )
            self.notes.append(msg)
            log.warning(msg)

    @property
    def probe_samples(self) -> int:
        return int(self.probe["position"].shape[0])

    def settings(self) -> dict[str, Any]:
        return {
            "task": "causal_lm",
            "sketch": self.sketch_kind,
            "sketch_dim": int(self.sketch.shape[0]),
            "probe_positions": self.probe_samples,
            "probe_sequences": int(self.loss_labels.shape[0]),
            **self.n_info,
        }

    def quantities(self, model: nn.Module, remaining: int) -> dict[str, Any]:
        """One sketched pass on the model as it is (masked or not): the NTK Gram and its spectrum, the
        traces with their standard errors, T (Gauss-Newton, layer-normalised by ``remaining``), the loss."""
        from prunekit.theory.jacobian_pass import GRAM_PSD_RTOL
        from prunekit.theory.spectrum import ntk_spectrum

        gram, stats = sketch_pass(model, self.probe, self.sketch, self.cfg.jacobian_elements)
        spectrum = ntk_spectrum(gram, ridge=self.cfg.ridge, psd_rtol=GRAM_PSD_RTOL)
        params = trainable_parameters(model)
        weights = {k: float(p.detach().double().pow(2).sum()) / remaining for k, p in params.items()}
        trace, trace_se = mean_and_se(stats.row_estimates("ntk"), self.exact)
        gn_trace, gn_trace_se = mean_and_se(stats.row_estimates("gn"), self.exact)
        _, T_se = mean_and_se(stats.row_estimates("gn", weights), self.exact)
        T = layer_normalised_trace(params, stats.per_tensor("gn"), remaining)
        spectrum |= {
            "trace_se": trace_se,
            "trace_relative_se": trace_se / trace if trace > 0 else math.nan,
            "sketch": self.sketch_kind,
            "sketch_dim": int(self.sketch.shape[0]),
        }
        loss, accuracy = lm_probe.token_loss(model, self.loss_inputs, self.loss_labels)
        return {
            "gram": gram,
            "stats": stats,
            "spectrum": spectrum,
            "T": T,
            "T_se": T_se,
            "gauss_newton_trace": gn_trace,
            "gauss_newton_trace_se": gn_trace_se,
            "train_loss": loss,
            "train_accuracy": accuracy,
        }

    def group_traces(self, model: nn.Module, groups: Any, stats: Any) -> dict[str, dict[str, Any]]:
        """Per-group and per-unit NTK and Gauss-Newton traces from the sketched diagonals (standard errors
        0 when exact; per group they are not estimated for the sketch: None)."""
        from prunekit.structure.units import UnitReducer, normalise_groups

        ntk, gn = stats.per_tensor("ntk"), stats.per_tensor("gn")
        specs, _ = normalise_groups(groups, model)
        shapes = {k: v.shape for k, v in ntk.items()}
        se = 0.0 if self.exact else None
        out: dict[str, dict[str, Any]] = {}
        for g, units in specs:
            reduce = UnitReducer(units, shapes)
            n_units, n_total = reduce(ntk)
            g_units, g_total = reduce(gn)
            out[g] = {
                "ntk_trace": float(n_total),
                "ntk_trace_se": se,
                "ntk_unit_traces": n_units.cpu().numpy(),
                "ntk_unit_traces_se": None if se is None else np.zeros(len(n_units)),
                "hessian_trace": float(g_total),
                "hessian_trace_se": se,
                "hessian_unit_traces": g_units.cpu().numpy(),
                "hessian_unit_traces_se": None if se is None else np.zeros(len(g_units)),
            }
        return out

    def hessian_summary(self, q: Mapping[str, Any], params: Mapping[str, Tensor], num_params: int) -> dict:
        gn = q["stats"].per_tensor("gn")
        return {
            "method": "gauss_newton_sketch" if not self.exact else "gauss_newton_exact",
            "trace": q["gauss_newton_trace"],
            "trace_se": q["gauss_newton_trace_se"],
            "normalized_trace": q["T"],
            "normalized_trace_se": q["T_se"],
            "gauss_newton_trace": q["gauss_newton_trace"],
            "gauss_newton_normalized_trace": q["T"],
            "num_params": num_params,
            "num_probes": 0,
            "per_tensor": {k: float(v.sum()) for k, v in gn.items()},
            "top_eigenvalue": {"eigenvalue": math.nan, "note": "not estimated for causal LMs"},
        }

    # ----------------------------------------------------------------------- what the Estimator returns
    def estimates(self, model: nn.Module, groups: Any, n: int, d_eff: float, extra: Mapping[str, Any]) -> Any:
        """The :class:`~prunekit.theory.estimates.Estimates` of the model as it is (``extra``: the
        Estimator's notes, setup seconds, seed, processes, parameter count)."""
        import time

        from prunekit.theory.estimates import Estimates
        from prunekit.theory.steps import top_groups

        notes = list(extra["notes"])
        num_params = int(extra["num_params"])
        t0 = time.perf_counter()
        q = self.quantities(model, num_params)
        seconds = {"ntk_gram": time.perf_counter() - t0}
        per_group: dict[str, dict[str, Any]] = {}
        if groups is not None and len(groups) > 0:
            t1 = time.perf_counter()
            per_group = self.group_traces(model, groups, q["stats"])
            seconds["ntk_group_traces"] = time.perf_counter() - t1
        spectrum = q["spectrum"] | {"group_traces": "exact" if self.exact else "sketch"}
        notes.append("causal LM: T_opt is the Gauss-Newton part only; no Hessian top eigenvalue (NaN)")
        seconds |= dict(extra["setup_seconds"])
        seconds["total"] = sum(seconds.values())
        C, T = float(spectrum["d_lambda"]), float(q["T"])
        settings = {
            "estimate": self.cfg.model_dump(),
            "seed": extra["seed"],
            "num_processes": extra["num_processes"],
            "probe_samples_shared": False,
            "probe_samples": self.probe_samples,
            "num_groups": len(per_group),
            "params": num_params,
            **self.settings(),
        }
        return Estimates(
            C_arch=C,
            T_opt=T,
            n=n,
            d_eff=d_eff,
            bound=bound_or_note(C, T, n, d_eff, notes),
            hessian_top_eigenvalue=math.nan,
            ntk=spectrum,
            hessian=self.hessian_summary(q, trainable_parameters(model), num_params),
            intrinsic_dim=self.intrinsic,
            groups=per_group,
            top_groups_ntk=top_groups(per_group, "ntk_trace"),
            top_groups_hessian=top_groups(per_group, "hessian_trace"),
            seconds=seconds,
            settings=settings,
            notes=notes,
        )

    def predict(
        self, model: nn.Module, remaining: int, n: int, d_eff: float, extra: Mapping[str, Any]
    ) -> dict:
        """The fields of a :class:`~prunekit.theory.estimator.Prediction` for the (masked) model as it is."""
        notes = list(extra["notes"])
        q = self.quantities(model, remaining)
        C = float(q["spectrum"]["d_lambda"])
        return {
            "C_arch": C,
            "T_opt": float(q["T"]),
            "T_opt_se": float(q["T_se"]),
            "gauss_newton_T": float(q["T"]),
            "bound": bound_or_note(C, float(q["T"]), n, d_eff, notes),
            "train_loss": q["train_loss"],
            "train_accuracy": q["train_accuracy"],
            "ntk_trace": float(q["spectrum"]["trace"]),
            "hessian_top_eigenvalue": None,
            "notes": notes,
            "settings": {
                "seed": extra["seed"],
                "probe_samples": self.probe_samples,
                "probe_samples_shared": False,
                "num_processes": extra["num_processes"],
                "ridge": self.cfg.ridge,
                "hessian_probes": 0,
                "hessian_method": "gauss_newton_part",
                "ntk_trace_se": q["spectrum"]["trace_se"],
                **self.settings(),
            },
        }


def bound_or_note(C: float, T: float, n: int, d: float, notes: list[str]) -> float | None:
    from prunekit.theory.bound import stated_bound

    try:
        return stated_bound(C, T, n, d)
    except ValueError as err:
        notes.append(f"no stated bound: {err}")
        return None


def refuse_for_lm(hessian: str, top_eigenvalue: bool) -> None:
    """The parts of ``predict`` the causal-LM branch does not have: one line naming them and the fix."""
    if hessian != "gauss_newton" or top_eigenvalue:
        raise ValueError(
            "for a causal LM the estimator has the Gauss-Newton part only: call predict() with "
            "hessian='gauss_newton' and top_eigenvalue=False"
        )
