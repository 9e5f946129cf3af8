"""The schema of ``prunekit.json``: every field is checked on read, before anything is built.

A checkpoint folder is data that may come from anyone, so nothing in it is trusted: types are
checked, dtypes and input kinds come from explicit allow-lists (a name is never looked up with
``getattr(torch, name)``), and every size is bounded (the tensor shapes by the weights file's own
header, see :mod:`prunekit.pruning.checkpoint_weights`). Whether code may run is never read from
here: ``base.trust_remote_code`` and ``base.path`` are kept for information only.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from prunekit.errors import UserError
from prunekit.structure.plan import Plan

FORMAT_VERSION = 1
META = "prunekit.json"
MAX_META_BYTES = 64 << 20  # a 7B-parameter LLaMA's plan is ~2 MB of JSON
MAX_DIM = 1 << 31  # one tensor dimension
MAX_NDIM = 8
MAX_EXAMPLE_NUMEL = 1 << 22  # elements per example tensor (16 MB as float32)
MAX_EXAMPLE_BATCH = 64
MAX_EXAMPLE_TENSORS = 16
MAX_UNITS = 1 << 24  # units of one group in a plan
MAX_IGNORE = 256  # ignore patterns carried in a plan, each at most this many characters
MAX_NAME = 1024  # characters of a tensor / group / input name

# The only dtypes a checkpoint may name (example inputs, HF config dtype); str -> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
EXAMPLE_KINDS = ("tensor", "dict")
TOP_KEYS = {
    "format_version",
    "base",
    "plan",
    "example_inputs",
    "shapes",
    "weights_sha256",
    "hf_from_pretrained",
    "versions",
    "metrics",
}
REQUIRED = ("format_version", "base", "shapes", "weights_sha256", "example_inputs")
BASE_KEYS = {
    "format",
    "name",
    "kwargs",
    "num_classes",
    "input_shape",
    "path",
    "trust_remote_code",
    "hf_config",
    "hf_auto_class",
    "hf_class",
    "attn_implementation",
}
PLAN_KEYS = set(Plan.__dataclass_fields__)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted or read (one-line message with the fix; CLI exit code 2).

    The message quotes names and values from the file, so it is made printable (a tensor named
    ``"\\n"`` must not break the line) and clipped."""

    def __init__(self, message: str) -> None:
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
        super().__init__(text if len(text) <= 500 else text[:497] + "...")


def _fail(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{where}: {problem}; the checkpoint is corrupt or was edited, re-save it")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(where, f"must be an integer in [{lo}, {hi}], got {_short(value)}")
    return value


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise _fail(
            where, f"must be a non-empty string of at most {MAX_NAME} characters, got {_short(value)}"
        )
    return value


def check_shape(where: str, value: Any, lo: int = 0) -> list[int]:
    """A list of at most MAX_NDIM integers in [lo, MAX_DIM]."""
    if not isinstance(value, list) or len(value) > MAX_NDIM:
        raise _fail(where, f"must be a list of at most {MAX_NDIM} integers, got {_short(value)}")
    return [_int(f"{where}[{i}]", d, lo, MAX_DIM) for i, d in enumerate(value)]


def dtype_of(where: str, name: Any) -> torch.dtype:
    """The torch dtype of an allow-listed name; anything else is refused."""
    if not isinstance(name, str) or name not in DTYPES:
        raise _fail(where, f"dtype {_short(name)} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _check_example_tensor(where: str, spec: Any) -> None:
    if not isinstance(spec, dict) or set(spec) != {"shape", "dtype"}:
        raise _fail(where, "must be a mapping with exactly 'shape' and 'dtype'")
    shape = check_shape(f"{where}.shape", spec["shape"], lo=1)
    if not shape:
        raise _fail(f"{where}.shape", "must have a batch dimension")
    if shape[0] > MAX_EXAMPLE_BATCH:
        raise _fail(f"{where}.shape", f"batch {shape[0]} is over {MAX_EXAMPLE_BATCH}")
    if math.prod(shape) > MAX_EXAMPLE_NUMEL:
        raise _fail(f"{where}.shape", f"{shape} has more than {MAX_EXAMPLE_NUMEL} elements")
    dtype_of(f"{where}.dtype", spec["dtype"])


def check_example_spec(spec: Any, where: str = f"{META} example_inputs") -> None:
    if not isinstance(spec, dict) or spec.get("kind") not in EXAMPLE_KINDS:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise _fail(where, f"kind must be one of {', '.join(EXAMPLE_KINDS)}, got {_short(kind)}")
    if spec["kind"] == "tensor":
        if set(spec) != {"kind", "shape", "dtype"}:
            raise _fail(where, "a 'tensor' example has exactly 'kind', 'shape' and 'dtype'")
        _check_example_tensor(where, {"shape": spec["shape"], "dtype": spec["dtype"]})
        return
    tensors = spec.get("tensors")
    if set(spec) != {"kind", "tensors"} or not isinstance(tensors, dict) or not tensors:
        raise _fail(where, "a 'dict' example has exactly 'kind' and a non-empty 'tensors' mapping")
    if len(tensors) > MAX_EXAMPLE_TENSORS:
        raise _fail(where, f"more than {MAX_EXAMPLE_TENSORS} input tensors")
    for name, t in tensors.items():
        _name(f"{where}.tensors key", name)
        _check_example_tensor(f"{where}.tensors.{name}", t)


def _check_plan(plan: Any) -> None:
    where = f"{META} plan"
    if plan is None:
        return
    if not isinstance(plan, dict):
        raise _fail(where, f"must be a mapping or null, got {type(plan).__name__}")
    keep, units = plan.get("keep"), plan.get("num_units")
    if not isinstance(keep, dict) or not isinstance(units, dict):
        raise _fail(where, "needs 'keep' and 'num_units' mappings")
    for g, n in units.items():
        _name(f"{where}.num_units key", g)
        _int(f"{where}.num_units.{g}", n, 0, MAX_UNITS)
    for g, kept in keep.items():
        _name(f"{where}.keep key", g)
        if not isinstance(kept, list) or len(kept) > MAX_UNITS:
            raise _fail(f"{where}.keep.{g}", "must be a list of unit indices")
        for i in kept:
            _int(f"{where}.keep.{g}[]", i, 0, MAX_UNITS)
    _int(f"{where}.round_to", plan.get("round_to", 1), 1, MAX_UNITS)
    _int(f"{where}.format_version", plan.get("format_version", 1), 0, 1 << 16)
    unknown = sorted(set(plan) - PLAN_KEYS)
    if unknown:
        raise _fail(where, f"has unknown fields {unknown[:5]}")
    if not isinstance(plan.get("planner", ""), str) or not isinstance(plan.get("target", {}), dict):
        raise _fail(where, "planner must be a string and target a mapping")
    gap = plan.get("predicted_gap")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float))):
        raise _fail(f"{where}.predicted_gap", f"must be a number or null, got {_short(gap)}")
    extra = plan.get("extra", {})
    if not isinstance(extra, dict):
        raise _fail(f"{where}.extra", "must be a mapping")
    ignore = extra.get("ignore", [])
    if not isinstance(ignore, list) or len(ignore) > MAX_IGNORE:
        raise _fail(f"{where}.extra.ignore", f"must be a list of at most {MAX_IGNORE} patterns")
    for p in ignore:
        if not isinstance(p, str) or len(p) > MAX_IGNORE:
            raise _fail(f"{where}.extra.ignore", f"holds {_short(p)}, not a pattern string")


def _check_base(base: Any) -> None:
    where = f"{META} base"
    if not isinstance(base, dict):
        raise _fail(where, f"must be a mapping, got {type(base).__name__}")
    unknown = sorted(set(base) - BASE_KEYS)
    if unknown:
        raise _fail(where, f"has unknown fields {unknown[:5]}")
    _name(f"{where}.name", base.get("name"))
    _int(f"{where}.format", base.get("format", 1), 0, 1 << 16)
    if not isinstance(base.get("kwargs", {}), dict):
        raise _fail(f"{where}.kwargs", "must be a mapping")
    if "num_classes" in base:
        _int(f"{where}.num_classes", base["num_classes"], 1, MAX_UNITS)
    if "input_shape" in base:
        check_shape(f"{where}.input_shape", base["input_shape"], lo=1)
    for key in ("path", "hf_auto_class", "hf_class", "attn_implementation"):
        if base.get(key) is not None and not isinstance(base[key], str):
            raise _fail(f"{where}.{key}", f"must be a string, got {_short(base[key])}")
    if "trust_remote_code" in base and not isinstance(base["trust_remote_code"], bool):
        raise _fail(
            f"{where}.trust_remote_code", f"must be true or false, got {_short(base['trust_remote_code'])}"
        )
    hf = base.get("hf_config")
    if hf is not None and (not isinstance(hf, dict) or not isinstance(hf.get("model_type"), str)):
        raise _fail(f"{where}.hf_config", "must be a transformers config mapping with a 'model_type'")


def check_meta(meta: Any, folder: str) -> dict[str, Any]:
    """``meta`` (parsed prunekit.json) if it follows the schema; else a one-line CheckpointError."""
    where = f"{folder}/{META}"
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{where} is not valid prunekit metadata: the checkpoint is corrupt; re-save it"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: the checkpoint is incomplete; re-save it")
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(f"{META} format_version", f"must be a positive integer, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{folder}' has format version {version}, newer than this prunekit reads "
            f"({FORMAT_VERSION}): upgrade prunekit"
        )
    unknown = sorted(set(meta) - TOP_KEYS)
    if unknown:
        raise _fail(META, f"has unknown fields {unknown[:5]}")
    _check_base(meta["base"])
    _check_plan(meta.get("plan"))
    check_example_spec(meta["example_inputs"])
    shapes = meta["shapes"]
    if not isinstance(shapes, dict) or not shapes:
        raise _fail(
            f"{META} shapes", f"must map tensor names to lists of integers, got {type(shapes).__name__}"
        )
    for name, shape in shapes.items():
        _name(f"{META} shapes key", name)
        check_shape(f"{META} shapes.{name}", shape)
    sha = meta["weights_sha256"]
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise _fail(f"{META} weights_sha256", "must be 64 lower-case hex digits")
    for key in ("versions", "metrics"):
        if not isinstance(meta.get(key, {}), dict):
            raise _fail(f"{META} {key}", "must be a mapping")
    if meta.get("hf_from_pretrained") not in (None, True, False):
        raise _fail(f"{META} hf_from_pretrained", "must be true, false or null")
    return meta


def check_hex_digest(value: Any) -> str:
    """A caller's expected sha256: 64 hex digits (any case) -> lower case; else a one-line error."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise CheckpointError(
            f"expected sha256 {_short(value)} is not 64 hex digits: copy the checkpoint_sha256 that "
            "`prunekit info` printed for the published checkpoint"
        )
    return value.strip().lower()


def example_spec(inputs: Any) -> dict[str, Any]:
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


TEXT_SEQ_CAP = 64  # token positions rebuilt for tracing: weight shapes never depend on sequence length


def example_from_spec(spec: dict[str, Any]) -> Any:
    """Inputs of the described kind, shape and dtype (checked by :func:`check_example_spec` first).

    Text inputs (a dict with ``input_ids``) are rebuilt at most TEXT_SEQ_CAP tokens long, so that a
    long saved sequence cannot make the rebuild's attention quadratic in it."""
    check_example_spec(spec)
    gen = torch.Generator().manual_seed(0)

    def make(shape: list[int], dtype: str, name: str = "") -> torch.Tensor:
        dt = DTYPES[dtype]
        if dt.is_floating_point:
            return torch.randn(*shape, generator=gen, dtype=dt)
        if dt is torch.bool or name == "attention_mask":
            return torch.ones(*shape, dtype=dt)
        if name == "token_type_ids":
            return torch.zeros(*shape, dtype=dt)
        return torch.randint(1, 8, tuple(shape), generator=gen, dtype=dt)  # ids valid in any vocabulary

    if spec["kind"] == "tensor":
        return make(spec["shape"], spec["dtype"])
    tensors = spec["tensors"]
    text = tensors.get("input_ids", {}).get("shape")
    out = {}
    for k, v in tensors.items():
        shape = list(v["shape"])
        if text is not None and len(shape) == 2 and shape == text:
            shape[1] = min(shape[1], TEXT_SEQ_CAP)
        out[k] = make(shape, v["dtype"], k)
    return out
