"""Structured candidates of one size: many ways to prune the same model to the same parameter budget.

Families (each a different mix of *layer widths* and *which units*, since the planner probe showed
widths matter more than units):

- ``planner:<name>``: every registered planner as it plans on its own (uniform widths, global rankings,
  the ``theory`` planner where it exists);
- ``uniform:<criterion>``: the same keep fraction everywhere, units by a criterion (random with seeds);
- ``skew:<k>``: non-uniform widths, keep fraction ∝ exp(σ·z_g) with z random per group, units by L2 or
  at random;
- ``ramp:front`` / ``ramp:back``: keep fractions rising or falling with depth;
- ``bad:*``: deliberately bad choices: the lowest-L2 or lowest-Taylor units kept, a raw (not
  layer-normalised) global ranking that strips late layers, one layer squeezed to its floor.

Every candidate's params lie within the toolkit's 1 % tolerance of the target (``make_plan`` checks it;
a family that cannot land there is dropped, and the study says how many it kept).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

Counts = dict[str, int]


@dataclass
class Candidate:
    name: str
    family: str
    plan: object  # prunekit Plan


def _floors(groups: Sequence, min_keep_fraction: float) -> Counts:
    return {
        g.name: min(g.num_units, max(g.min_units, math.ceil(min_keep_fraction * g.num_units))) for g in groups
    }


def weighted_counts(
    groups: Sequence, sizes, saved: float, weights: Mapping[str, float], floors: Counts
) -> Counts:
    """Keep counts ≈ f·w_g·n_g (clipped to [floor, n]) with f bisected so that ``saved`` of the params go.

    Between the two bracketing f the groups are moved one at a time (largest unit first), so the target is
    resolved more finely than one common step; the closest count set within 1 % wins.
    """

    def at(f: float) -> Counts:
        return {
            g.name: int(
                min(g.num_units, max(floors[g.name], math.floor(f * weights[g.name] * g.num_units + 0.5)))
            )
            for g in groups
        }

    lo, hi = 0.0, 1.0 / min(weights.values())  # saved(at(lo)) is max; saved(at(hi)) = 0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sizes.saved(at(mid), "params") >= saved:
            lo = mid
        else:
            hi = mid
    under, over = at(hi), at(lo)
    options, current = [dict(over)], dict(over)
    for g in sorted(groups, key=lambda g: -g.params_per_unit):
        if under[g.name] != over[g.name]:
            current = {**current, g.name: under[g.name]}
            options.append(current)
    return min(options, key=lambda c: abs(sizes.saved(c, "params") - saved))


def _keep(scores: Mapping[str, Tensor], counts: Counts) -> dict[str, list[int]]:
    from prunekit.planner.allocate import keep_indices

    return {name: keep_indices(scores[name], counts[name]) for name in counts}


def _random_scores(groups: Sequence, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.num_units, generator=gen, dtype=torch.float64) for g in groups}


class CandidateBuilder:
    """Builds candidates for one trained model at one budget (fraction of params saved)."""

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence,
        example,
        batches,
        min_keep_fraction: float,
        seed: int,
        planners: Sequence[str] | None = None,
        probe_samples: int | None = None,
    ):
        from prunekit.planner.allocate import SizeModel
        from prunekit.planner.importance import unit_scores

        self.model, self.groups, self.example, self.batches = model, groups, example, batches
        self.seed, self.min_keep, self.planners = seed, min_keep_fraction, planners
        self.probe_samples = probe_samples
        self.sizes = SizeModel(model, groups, example)
        self.floors = _floors(groups, min_keep_fraction)
        self.scores = {c: unit_scores(model, groups, batches, c, seed=seed) for c in ("l1", "l2", "taylor")}

    def _plan(self, keep: dict[str, list[int]], saved: float, family: str):
        from prunekit.structure import Plan

        counts = {k: len(v) for k, v in keep.items()}
        plan = Plan(
            keep=keep,
            num_units={g.name: g.num_units for g in self.groups},
            target={"metric": "params", "saved": saved},
            planner=f"study:{family}",
        )
        plan.extra = {"achieved": self.sizes.report(counts)}
        return plan

    def _planner(self, name: str, saved: float):
        import dataclasses

        from prunekit.planner import Target, make_plan
        from prunekit.planner.registry import get_planner, planner_config

        options = {"seed": self.seed, "min_keep_fraction": self.min_keep}
        fields = {f.name for f in dataclasses.fields(get_planner(name).config_cls)}
        if "probe_samples" in fields and self.probe_samples is not None:
            options["probe_samples"] = self.probe_samples  # the planner's estimator = the study's settings
        cfg = planner_config(name, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_plan(
                self.model,
                self.groups,
                Target(metric="params", saved=saved),
                cfg,
                self.batches,
                self.example,
            )

    def families(self, saved: float) -> list[tuple[str, str, Callable[[], object]]]:
        """(name, family, build) in an interleaved order: a prefix of any length mixes the families."""
        from prunekit.planner.registry import known_planners

        G = self.groups
        depth = {g.name: i / max(1, len(G) - 1) for i, g in enumerate(G)}
        uni = {g.name: 1.0 for g in G}

        def weighted(weights, scores):
            return lambda: self._plan(
                _keep(scores, weighted_counts(G, self.sizes, saved, weights, self.floors)), saved, "w"
            )

        def skew(k: int, sigma: float):
            rng = np.random.default_rng([self.seed, k, int(saved * 1000)])
            w = {g.name: float(np.exp(sigma * rng.standard_normal())) for g in G}
            scores = self.scores["l2"] if k % 2 == 0 else _random_scores(G, self.seed * 7919 + k)
            return weighted(w, scores)

        inv = {c: {n: -s for n, s in self.scores[c].items()} for c in ("l2", "taylor")}
        squeeze_last = {g.name: (0.05 if i == len(G) - 1 else 1.0) for i, g in enumerate(G)}
        planners = [p for p in (self.planners or known_planners()) if p != "uniform"]
        out: list[tuple[str, str, Callable[[], object]]] = []
        out += [(f"planner:{p}", "planner", (lambda p=p: self._planner(p, saved))) for p in planners]
        out += [(f"uniform:{c}", "uniform", weighted(uni, self.scores[c])) for c in ("l2", "l1", "taylor")]
        out += [(f"bad:lowest_{c}", "bad", weighted(uni, inv[c])) for c in ("l2", "taylor")]
        out += [("ramp:front", "ramp", weighted({n: 1.5 - d for n, d in depth.items()}, self.scores["l2"]))]
        out += [("ramp:back", "ramp", weighted({n: 0.5 + d for n, d in depth.items()}, self.scores["l2"]))]
        out += [("bad:squeeze_last", "bad", weighted(squeeze_last, self.scores["l2"]))]
        out += [("bad:raw_global_taylor", "bad", self._raw_global(saved))]
        for k in range(4):
            out += [
                (f"uniform:random{k}", "uniform", weighted(uni, _random_scores(G, self.seed * 104729 + k)))
            ]
        for k in range(200):  # as many as asked for: σ cycles through mild to extreme skews
            out += [(f"skew:{k}", "skew", skew(k, (0.3, 0.6, 1.0)[k % 3]))]
        return out

    def _raw_global(self, saved: float) -> Callable[[], object]:
        def build():
            from prunekit.planner.allocate import global_counts
            from prunekit.planner.target import Target

            scores = {n: s.double() for n, s in self.scores["taylor"].items()}
            counts = global_counts(self.groups, self.sizes, Target("params", saved), self.floors, 1, scores)
            return self._plan(_keep(scores, counts), saved, "raw_global_taylor")

        return build

    def build(self, saved: float, count: int) -> tuple[list[Candidate], list[str]]:
        """``count`` candidates within 1 % of ``saved``; also the names dropped (and why)."""
        from prunekit.planner.target import TOLERANCE

        out, dropped, keys = [], [], set()
        for name, family, make in self.families(saved):
            if len(out) == count:
                break
            try:
                plan = make()
            except ValueError as err:  # a family that cannot meet this budget
                dropped.append(f"{name}: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - another planner's failure drops its candidate, named
                if family != "planner":
                    raise
                dropped.append(f"{name}: failed ({type(err).__name__}: {err})")
                continue
            achieved = plan.extra["achieved"]["params_saved"]
            key = tuple(tuple(plan.keep[g.name]) for g in self.groups)
            if abs(achieved - saved) > TOLERANCE:
                dropped.append(f"{name}: saves {achieved:.4f}, off the target by more than 1 %")
            elif key in keys:
                dropped.append(f"{name}: the same plan as an earlier candidate")
            else:
                keys.add(key)
                out.append(Candidate(name, family, plan))
        return out, dropped
