"""Compressed checkpoints: ``model.safetensors`` + ``prunekit.json`` (+ ``config.json`` for HF models).

No pickle anywhere. A pruned model is rebuilt as *base architecture → the same plan → the saved
weights*: plans are deterministic, so this reproduces every pruned shape and patched attribute
exactly, and the recorded shape table is checked against the result.

HF models also get a ``config.json`` with the patched dims (poisoned for ``from_pretrained`` when it
cannot express them; see :mod:`prunekit.pruning.checkpoint_hf`). Loading trusts nothing in the
folder: prunekit.json is schema-checked (:mod:`~prunekit.pruning.checkpoint_schema`), the weights
header is checked before anything is allocated (:mod:`~prunekit.pruning.checkpoint_weights`), the
base model is sized on the meta device first, and only the caller decides whether remote code runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from prunekit._version import __version__
from prunekit.atomic import write_folder
from prunekit.batch import Inputs
from prunekit.errors import UserError
from prunekit.structure.plan import Plan

from .checkpoint_hf import save_remote_code, write_hf_files
from .checkpoint_schema import (
    FORMAT_VERSION,
    MAX_META_BYTES,
    META,
    CheckpointError,
    check_hex_digest,
    check_meta,
    example_from_spec,
    example_spec,
)
from .checkpoint_weights import (
    WEIGHTS,
    check_header,
    checkpoint_digest,
    file_hashes,
    header_bytes,
    load_weights_,
    read_header,
    sha256_file,
)

__all__ = [
    "CheckpointError",
    "checkpoint_info",
    "example_spec",
    "load",
    "read_meta",
    "save",
    "verify_checkpoint",
]
# The base model is built before the plan cuts it; it may be this much bigger than the saved weights
# (99.9 % of the parameters pruned) or this big in any case, and no bigger: a bigger one means
# base.kwargs or base.hf_config were edited to allocate memory (checked on the meta device first).
MAX_BASE_RATIO = 1000
MIN_BASE_BYTES = 512 << 20
META_BUILD_TIMEOUT_S = 60.0  # LLaMA-7B's config builds on the meta device in 2.8 s (shared 2-core CPU)
_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # what atomic.write_folder's mkdtemp names look like


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
    if "hf_config" in base and hasattr(getattr(model, "config", None), "to_dict"):
        from prunekit.models.hf import recorded_class

        base = dict(base) | recorded_class(model)  # so that load rebuilds this head and attention
        if not base["hf_config"].get("architectures") and "hf_class" in base:
            # an auto class that maps a config to several classes (DeiT: with and without a teacher)
            # picks by architectures; transformers fails on a config without them
            base["hf_config"] = dict(base["hf_config"], architectures=[base["hf_class"]])

    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))
        expressible = write_hf_files(model, tmp, tokenizer_source)
        meta = {
            "format_version": FORMAT_VERSION,
            "base": base,
            "plan": plan.to_dict() if plan is not None else None,
            "example_inputs": example_spec(example_inputs),
            "shapes": state_shapes,
            "weights_sha256": sha256_file(tmp / WEIGHTS),
            "hf_from_pretrained": expressible,
            "versions": _versions(),
            "metrics": metrics or {},
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        save_remote_code(model, tmp)
        _share_modes(tmp)

    _remove_stale_temps(folder.parent)
    write_folder(folder, fill)
    return folder


def _share_modes(tmp: Path) -> None:
    """0644 files and a 0755 folder (subject to umask), like every other output: safetensors and
    copied files would otherwise keep whatever mode they were created or copied with."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _remove_stale_temps(parent: Path) -> None:
    """Temporary folders a killed checkpoint write left behind. Outputs are written by one process
    (the run folder is locked), so any such folder here is from a write that never finished."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if _TEMP.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"prunekit": __version__, "torch": torch.__version__}
    try:  # the installed distribution's metadata: importing transformers costs ~1 s on a CNN run
        out["transformers"] = version("transformers")
    except PackageNotFoundError:
        pass
    return out


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``prunekit.json`` of a checkpoint, checked against the schema (one-line CheckpointError)."""
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(
            f"'{folder}' is not a prunekit checkpoint: {META} is missing (give a folder written by prunekit)"
        )
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(
            f"{meta_path} is over {MAX_META_BYTES >> 20} MiB: not prunekit metadata; re-save it"
        )
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, or an over-long int
        raise CheckpointError(
            f"{meta_path} is not valid prunekit metadata: the checkpoint is corrupt; re-save it"
        ) from None
    return check_meta(meta, str(folder))


def verify_checkpoint(folder: str | Path, expected_sha256: str) -> dict[str, str]:
    """Check the whole folder against the digest the caller got from the publisher (authenticity);
    returns the per-file hashes. The stored ``weights_sha256`` only catches corruption."""
    folder = Path(folder)
    want = check_hex_digest(expected_sha256)
    if not folder.is_dir():
        raise CheckpointError(f"'{folder}' is not a checkpoint folder")
    hashes = file_hashes(folder)
    got = checkpoint_digest(hashes)
    if got != want:
        hint = (
            " (that is the hash of model.safetensors alone: give the checkpoint_sha256 of `prunekit info`, "
            "which covers prunekit.json too)"
            if hashes.get(WEIGHTS) == want
            else ": it is not the checkpoint that was published; get it again from a source you trust"
        )
        raise CheckpointError(
            f"checkpoint '{folder}' has sha256 {got[:16]}..., not the expected {want[:16]}...{hint}"
        )
    return hashes


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _build_base(meta: dict[str, Any], folder: Path, trust_remote_code: bool, meta_device: bool) -> nn.Module:
    """The base architecture from ``meta["base"]``; every failure is a one-line CheckpointError.

    The inputs are untrusted file data, so any exception while building from them means the file is
    bad (a factory given a string where it wants an int raises TypeError deep inside)."""
    from prunekit.models import build_from_reference
    from prunekit.structure.timeout import GraphTimeoutError, call_with_timeout

    def build() -> nn.Module:
        return build_from_reference(meta["base"], trust_remote_code=trust_remote_code, code_folder=folder)

    def build_on_meta() -> nn.Module:
        with torch.device("meta"):  # a per-thread mode: entered in the worker thread
            return build()

    try:
        if meta_device:  # a million layers cost no memory on the meta device, but time: bounded too
            return call_with_timeout(
                build_on_meta, META_BUILD_TIMEOUT_S, f"building the base model of '{folder}'"
            )
        return build()
    except GraphTimeoutError:
        raise CheckpointError(
            f"checkpoint '{folder}': building its base model took over {META_BUILD_TIMEOUT_S:g} s on the meta "
            f"device (no weights): base.kwargs or base.hf_config in {META} ask for a huge model; re-save it"
        ) from None
    except UserError as err:  # a refusal that already names the fix (remote code, unknown model)
        raise CheckpointError(f"checkpoint '{folder}': {_first_line(err)}") from None
    except Exception as err:
        raise CheckpointError(
            f"checkpoint '{folder}': its base model cannot be built from {META} "
            f"({type(err).__name__}: {_first_line(err)}); the file is corrupt or was edited, re-save it"
        ) from None


def _check_base_size(base: nn.Module, header: dict, folder: Path) -> None:
    tensors = [*base.parameters(), *base.buffers()]
    need = sum(t.numel() * t.element_size() for t in tensors)
    have = header_bytes(header)
    if need > max(MAX_BASE_RATIO * have, MIN_BASE_BYTES):
        raise CheckpointError(
            f"checkpoint '{folder}': its base model would take {need / 2**30:.2f} GiB, over {MAX_BASE_RATIO} "
            f"times its {have} bytes of weights: base.kwargs or base.hf_config in {META} were edited; re-save it"
        )


def _apply(model: nn.Module, meta: dict[str, Any], folder: Path) -> None:
    """Cut the base model with the stored plan (one forward pass on the example inputs before and
    after); with no plan, that forward pass alone. Config values from the file that only break the
    forward (a ``None`` chunk size, say) fail here, in one line, rather than at the caller's first use."""
    from prunekit.batch import logits_of
    from prunekit.pruning.apply import apply_plan_

    example = example_from_spec(meta["example_inputs"])
    try:
        plan = Plan.from_dict(meta["plan"]) if meta.get("plan") else None
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint '{folder}': its plan is malformed ({_first_line(err)}); re-save it"
        ) from None
    try:
        if plan is not None:
            apply_plan_(model, plan, example)
        else:
            with torch.no_grad():
                logits_of(model.eval(), example)
    except (ValueError, RuntimeError) as err:  # apply_plan_'s own refusals name the problem
        what = (
            "its plan does not fit its base model"
            if plan is not None
            else "its model fails on its example inputs"
        )
        raise CheckpointError(f"checkpoint '{folder}': {what} ({_first_line(err)}); re-save it") from None
    except Exception as err:  # untrusted config values reach library code: any failure is the file's
        raise CheckpointError(
            f"checkpoint '{folder}': its rebuilt model fails on its example inputs "
            f"({type(err).__name__}: {_first_line(err)}); {META} was edited or is corrupt, re-save it"
        ) from None


def load(
    folder: str | Path,
    trust_remote_code: bool = False,
    expected_sha256: str | None = None,
    verify: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder exactly; returns ``(model, meta)``. No pickle.

    Nothing in the folder decides whether code runs: ``trust_remote_code`` comes from the caller only
    (an HF model type that transformers does not know is refused without it, and its code is then
    read from this folder, never from a path or hub id in prunekit.json). ``expected_sha256``, a
    digest of the whole folder from whoever published it (``prunekit info`` prints it), makes the load
    fail unless the folder is that one; ``verify`` checks the stored weights hash (corruption only).
    prunekit.json and the weights header are checked in full before anything is allocated.
    """
    folder = Path(folder)
    hashes = verify_checkpoint(folder, expected_sha256) if expected_sha256 is not None else {}
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no {WEIGHTS}: the folder is incomplete; re-save it")
    header = read_header(weights)
    check_header(weights, header, meta["shapes"])
    if verify and (hashes.get(WEIGHTS) or sha256_file(weights)) != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {META}: the weights were modified or "
            "corrupted; restore the original file or re-save the checkpoint"
        )
    example_from_spec(meta["example_inputs"])  # checked before building
    _check_base_size(_build_base(meta, folder, trust_remote_code, meta_device=True), header, folder)
    model = _build_base(meta, folder, trust_remote_code, meta_device=False)  # seeded: same init every time
    _apply(model, meta, folder)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if shapes != meta["shapes"]:
        diff = sorted(k for k in set(shapes) | set(meta["shapes"]) if shapes.get(k) != meta["shapes"].get(k))
        raise CheckpointError(
            f"rebuilding '{folder}' gave other shapes than were saved (first: {diff[0]}): the base "
            "model or prunekit version differs from the one that wrote it"
        )
    load_weights_(model, weights, header)
    model.eval()
    return model, meta


def checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """A summary of a checkpoint for ``prunekit info`` (reads metadata and hashes; builds no model).

    ``checkpoint_sha256`` covers every file of the folder: publish it, and users check it with
    ``prunekit evaluate --sha256`` / ``prunekit.load(..., expected_sha256=...)``."""
    folder = Path(folder)
    meta = read_meta(folder)
    plan = meta.get("plan")
    hashes = file_hashes(folder)
    base = meta["base"]
    return {
        "folder": str(folder),
        "format_version": meta["format_version"],
        # the base reference without its (long) HF config: the model type says what it is
        "base": {k: v for k, v in base.items() if k != "hf_config"}
        | ({"hf_model_type": base["hf_config"].get("model_type")} if "hf_config" in base else {}),
        "planner": plan.get("planner") if plan else None,
        "target": plan.get("target") if plan else None,
        "pruned_groups": {
            g: f"{len(k)}/{plan['num_units'].get(g)}"
            for g, k in plan["keep"].items()
            if len(k) < plan["num_units"].get(g, 0)
        }
        if plan
        else {},
        "state_numel": sum(math.prod(s) for s in meta["shapes"].values()),
        "weights_sha256": meta["weights_sha256"],
        "weights_ok": hashes.get(WEIGHTS) == meta["weights_sha256"],
        "checkpoint_sha256": checkpoint_digest(hashes),
        "hf_from_pretrained": meta.get("hf_from_pretrained"),
        "versions": meta.get("versions", {}),
        "metrics": meta.get("metrics", {}),
    }
