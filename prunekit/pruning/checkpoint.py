"""Compressed checkpoints: ``model.safetensors`` + ``prunekit.json`` (+ ``config.json`` for HF models).

No pickle anywhere. A pruned model is rebuilt as *base architecture → the same plan → the saved
weights*: plans are deterministic, so this reproduces every pruned shape and patched attribute
exactly, and the recorded shape table is checked against the result.

HF models also get a ``config.json`` with the patched dims. When an HF config cannot express the
pruned widths (per-layer widths differ, or BERT heads were pruned: its head size is derived from
``hidden_size / num_attention_heads``), ``config.json`` gets ``model_type: prunekit-pruned-<type>``
and its width fields an explanatory string, so every ``from_pretrained`` fails before building a
model — even with ``ignore_mismatched_sizes=True``, which would otherwise load re-initialised weights
silently — while ``AutoTokenizer.from_pretrained(folder)`` still works.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from prunekit._version import __version__
from prunekit.atomic import write_folder
from prunekit.batch import Inputs
from prunekit.structure.plan import Plan

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "prunekit.json"
# HF config fields that carry layer widths; poisoned when the pruned model cannot be expressed.
HF_WIDTH_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
NOT_EXPRESSIBLE = "non-uniform after pruning: load this folder with prunekit.load(folder)"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "preprocessor_config.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read (one-line message with the fix)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_spec(inputs: Inputs) -> dict[str, Any]:
    """A JSON description of example inputs, enough to rebuild equivalent ones for graph building."""
    if isinstance(inputs, torch.Tensor):
        return {
            "kind": "tensor",
            "shape": list(inputs.shape),
            "dtype": str(inputs.dtype).removeprefix("torch."),
        }
    return {
        "kind": "dict",
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in inputs.items()
        },
    }


def example_from_spec(spec: dict[str, Any]) -> Inputs:
    gen = torch.Generator().manual_seed(0)

    def make(shape: list[int], dtype: str, name: str = "") -> torch.Tensor:
        dt = getattr(torch, dtype)
        if dt.is_floating_point:
            return torch.randn(*shape, generator=gen, dtype=dt)
        if name == "attention_mask":
            return torch.ones(*shape, dtype=dt)
        if name == "token_type_ids":
            return torch.zeros(*shape, dtype=dt)
        return torch.randint(1, 8, tuple(shape), generator=gen, dtype=dt)  # ids valid in any vocabulary

    if spec["kind"] == "tensor":
        return make(spec["shape"], spec["dtype"])
    return {k: make(v["shape"], v["dtype"], k) for k, v in spec["tensors"].items()}


def _hf_config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return config.to_dict()


def _hf_expressible(model: nn.Module) -> bool:
    """Would ``from_config(model.config)`` build exactly these shapes? (Checked on the meta device.)"""
    from transformers import AutoConfig

    d = model.config.to_dict()
    if any(isinstance(d.get(k), (list, dict)) for k in HF_WIDTH_KEYS):
        return False
    config = AutoConfig.for_model(**{k: v for k, v in d.items() if k not in ("transformers_version",)})
    try:
        with torch.device("meta"):
            fresh = type(model)._from_config(config)  # the model's own class, whatever its head
    except Exception:  # the config itself cannot build a model: certainly not expressible
        return False
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return want == got


def save(
    model: nn.Module,
    folder: str | Path,
    plan: Plan | None,
    metrics: dict[str, Any] | None,
    base: dict[str, Any],
    example_inputs: Inputs,
    tokenizer_source: str | Path | None = None,
) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    ``base`` is the base-model reference from :func:`prunekit.models.describe` (what
    :func:`prunekit.models.build_from_reference` rebuilds); ``plan`` is ``None`` for a dense model.
    """
    folder = Path(folder)
    state_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))
        hf = _hf_config_dict(model)
        expressible = None
        if hf is not None:
            expressible = _hf_expressible(model)
            if not expressible:
                hf = dict(hf)
                # An unknown model_type makes AutoConfig raise a ValueError (which AutoTokenizer
                # tolerates, so the tokenizer still loads); string widths stop a concrete class such
                # as BertForSequenceClassification.from_pretrained as well.
                hf["model_type"] = f"prunekit-pruned-{hf.get('model_type')}"
                for key in HF_WIDTH_KEYS:
                    if key in hf:
                        hf[key] = NOT_EXPRESSIBLE
                hf["prunekit_note"] = NOT_EXPRESSIBLE
            (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
            if tokenizer_source is not None:
                for name in TOKENIZER_FILES:
                    src = Path(tokenizer_source) / name
                    if src.is_file():
                        shutil.copy2(src, tmp / name)
        meta = {
            "format_version": FORMAT_VERSION,
            "base": base,
            "plan": plan.to_dict() if plan is not None else None,
            "example_inputs": example_spec(example_inputs),
            "shapes": state_shapes,
            "weights_sha256": _sha256(tmp / WEIGHTS),
            "hf_from_pretrained": expressible,
            "versions": _versions(),
            "metrics": metrics or {},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    write_folder(folder, fill)
    return folder


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"prunekit": __version__, "torch": torch.__version__}
    try:  # the installed distribution's metadata: importing transformers costs ~1 s on a CNN run
        out["transformers"] = version("transformers")
    except PackageNotFoundError:
        pass
    return out


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``prunekit.json`` of a checkpoint, checked for existence and format version."""
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(
            f"'{folder}' is not a prunekit checkpoint: {META} is missing (give a folder written by prunekit)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        version = int(meta.get("format_version", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise CheckpointError(
            f"{meta_path} is not valid prunekit metadata: the checkpoint is corrupt; re-save it"
        ) from None
    missing = [k for k in ("base", "shapes", "weights_sha256", "example_inputs") if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks {missing}: the checkpoint is incomplete; re-save it")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{folder}' has format version {version}, newer than this prunekit reads "
            f"({FORMAT_VERSION}): upgrade prunekit"
        )
    return meta


def load(folder: str | Path, verify: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder exactly; returns ``(model, meta)``. No pickle."""
    from prunekit.models import build_from_reference
    from prunekit.pruning.apply import apply_plan_

    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no {WEIGHTS}: the folder is incomplete; re-save it")
    if verify and _sha256(weights) != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {META}: the weights were modified or "
            "corrupted; restore the original file or re-save the checkpoint"
        )
    model = build_from_reference(meta["base"])
    if meta.get("plan"):
        apply_plan_(model, Plan.from_dict(meta["plan"]), example_from_spec(meta["example_inputs"]))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if shapes != meta["shapes"]:
        diff = sorted(k for k in set(shapes) | set(meta["shapes"]) if shapes.get(k) != meta["shapes"].get(k))
        raise CheckpointError(
            f"rebuilding '{folder}' gave other shapes than were saved (first: {diff[0]}): the base "
            "model or prunekit version differs from the one that wrote it"
        )
    load_model(model, str(weights), strict=True)
    model.eval()
    return model, meta


def checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """A summary of a checkpoint for ``prunekit info`` (reads metadata only; no model is built)."""
    folder = Path(folder)
    meta = read_meta(folder)
    plan = meta.get("plan")
    n_params = sum(int(torch.tensor(s).prod()) if s else 1 for s in meta["shapes"].values())
    return {
        "folder": str(folder),
        "format_version": meta["format_version"],
        # the base reference without its (long) HF config: the model type says what it is
        "base": {k: v for k, v in meta["base"].items() if k != "hf_config"}
        | (
            {"hf_model_type": meta["base"]["hf_config"].get("model_type")}
            if "hf_config" in meta["base"]
            else {}
        ),
        "planner": plan["planner"] if plan else None,
        "target": plan["target"] if plan else None,
        "pruned_groups": (
            {
                g: f"{len(k)}/{plan['num_units'][g]}"
                for g, k in plan["keep"].items()
                if len(k) < plan["num_units"][g]
            }
            if plan
            else {}
        ),
        "state_numel": n_params,
        "weights_sha256": meta["weights_sha256"],
        "weights_ok": _sha256(folder / WEIGHTS) == meta["weights_sha256"]
        if (folder / WEIGHTS).is_file()
        else False,
        "hf_from_pretrained": meta.get("hf_from_pretrained"),
        "versions": meta.get("versions", {}),
        "metrics": meta.get("metrics", {}),
    }
