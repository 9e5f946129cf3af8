"""The benchmark's tasks and methods (experiments/benchmark.py runs them; experiments/planning_cost.py and
experiments/unit_criterion.py reuse the tasks): each method is a prunekit planner with options, a
scheduled planner, or Torch-Pruning used directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# task name -> (config, overrides, metric, levels of the full grid, methods skipped there)
TASKS: dict[str, dict[str, Any]] = {
    "mnist1d": {"config": "configs/quickstart.yaml", "overrides": []},
    "mnist1d_large": {"config": "configs/quickstart.yaml", "overrides": ["data.variant=large"]},
    "fashion_resnet20": {
        "config": "configs/fashion_resnet20.yaml",
        "overrides": ["data.max_train_samples=10000"],
    },
    "minilm_tweets": {
        "config": "configs/minilm_tweets.yaml",
        "overrides": [],
        "metric": "macs",
        "levels": [0.5, 0.7],
        "skip": ["tp_local", "tp_global"],  # Torch-Pruning's HF attention handling is not this benchmark
    },
}

STEPS = 4  # steps of every scheduled method

# method -> how it plans: a prunekit planner with options, or Torch-Pruning directly
METHODS: dict[str, dict[str, Any]] = {
    "theory": {"planner": "theory", "options": {"quantity": "risk"}},
    "theory_bound": {"planner": "theory", "options": {"quantity": "bound"}},
    # the same with 16 probe inputs: on MiniLM one masked evaluation costs ~50 CPU s at 16
    # (results/estimator_cost.md) and grows with the probe, so 256 does not finish here
    "theory_probe16": {"planner": "theory", "options": {"quantity": "risk", "probe_samples": 16}},
    # ... and with separable curves at two keep fractions (groups x 2 evaluations, ~25 on MiniLM)
    # instead of the joint path (groups evaluations per move), which did not finish there in 65 min
    "theory_curves16": {
        "planner": "theory",
        "options": {"quantity": "risk", "probe_samples": 16, "allocation": "curves", "fractions": (0.6, 0.3)},
    },
    # the predictor the validity study ranked best (results/validity/*/best_predictor.json): synflow on
    # MNIST-1D; removed weight mass on Fashion-MNIST (here carried over to the other task)
    "theory_validated": {
        "planner": "theory",
        "options": {"predictor_file": str(ROOT / "results/validity/mnist1d/best_predictor.json")},
    },
    "theory_validated_fashion": {
        "planner": "theory",
        "options": {"predictor_file": str(ROOT / "results/validity/fashion/best_predictor.json")},
    },
    "loss_sensitivity": {"planner": "loss_sensitivity", "options": {}},
    # theory_curves16's no-theory ablation: the same allocator, probe and curves on the probe loss alone
    "loss_curves16": {
        "planner": "loss_sensitivity",
        "options": {"probe_samples": 16, "allocation": "curves", "fractions": (0.6, 0.3)},
    },
    "uniform": {"planner": "uniform", "options": {"importance": "l2"}},
    # uniform widths, units by the OBD / Hessian score: isolates the within-group criterion
    "uniform_hessian": {"planner": "uniform", "options": {"importance": "hessian"}},
    "theory_validated_curves": {
        "planner": "theory",
        "options": {
            "predictor_file": str(ROOT / "results/validity/mnist1d/best_predictor.json"),
            "allocation": "curves",
        },
    },
    "global_magnitude": {"planner": "global_magnitude", "options": {}},
    "global_taylor": {"planner": "global_taylor", "options": {}},
    "lamp": {"planner": "lamp", "options": {}},
    "random": {"planner": "random", "options": {}},
    "tp_local": {"tp": "local"},
    "tp_global": {"tp": "global"},
    # scheduled variants: prune -> fine-tune in steps, the one-shot fine-tuning budget (optimizer steps)
    # shared over the steps by prunekit.schedule (run_schedule / share); the steps used go in the row
    "theory_validated_constant_gap": {
        "planner": "theory",
        "options": {"predictor_file": str(ROOT / "results/validity/mnist1d/best_predictor.json")},
        # force: a step the predicted gap cannot hold still goes on to the target, recorded as "forced"
        "schedule": {"name": "constant_gap", "steps": STEPS, "force": True},
    },
    "uniform_linear": {
        "planner": "uniform",
        "options": {},
        "importance": "l2",
        "schedule": {"name": "linear", "steps": STEPS},
    },
    # Torch-Pruning's own linear iterative schedule (MetaPruner iterative_steps), ratio bisected
    "tp_local_iterative": {"tp": "local", "iterative_steps": STEPS},
}
# Every option a row was made with is spelled out, so that a method re-runs as it was measured when a
# planner default moves. These curve planners ran without a band (band 2 became the default later):
UNBANDED = (
    "theory",
    "theory_bound",
    "theory_probe16",
    "theory_curves16",
    "loss_sensitivity",
    "loss_curves16",
    "theory_validated_curves",
    "theory_validated_constant_gap",
)
for _name in UNBANDED:
    METHODS[_name]["options"]["band"] = 0
# the two validated planners without the band: the ablation of the band (the plain names are the default)
for _name in ("theory_validated", "theory_validated_fashion"):
    _spec = METHODS[_name]
    METHODS[f"{_name}_band0"] = {**_spec, "options": {**_spec["options"], "band": 0}}
# ... and as they were before l2 became the within-group default: units by OBD / Hessian scores, no band
HESSIAN_PINNED = (
    "theory",
    "theory_bound",
    "theory_validated",
    "theory_validated_fashion",
    "loss_sensitivity",
    "theory_curves16",
    "loss_curves16",
)
for _name in HESSIAN_PINNED:
    _spec = METHODS[_name]
    _options = {**_spec["options"], "importance": "hessian", "band": 0}
    METHODS[f"{_name}_hessian"] = {**_spec, "options": _options}
DEFAULT = {"tasks": ["mnist1d"], "levels": [0.85, 0.93, 0.97], "seeds": [0, 1, 2]}
FULL = {"tasks": list(TASKS), "levels": [0.5, 0.7, 0.85, 0.93, 0.97], "seeds": [0, 1, 2]}
