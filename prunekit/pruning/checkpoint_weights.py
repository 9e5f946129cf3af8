"""``model.safetensors`` of a checkpoint: its header checked before anything is allocated, hashes, loading.

The safetensors header (8 bytes of length, then JSON) names every tensor with its dtype, shape and
byte range. Reading it costs nothing, so it is checked in full first: the byte ranges must tile the
file exactly (a truncated or padded file fails here), the dtypes come from an allow-list and every
tensor must be the one ``prunekit.json`` declares. Only then is a model built, and the weights are
copied in by name, each tensor keeping the file's dtype.

Two hashes, two purposes: ``weights_sha256`` (stored in prunekit.json) catches corruption, but
anyone who edits the folder can rewrite it too. :func:`checkpoint_digest` covers every file of the
folder; compared with a value the caller got from the publisher (``expected_sha256``) it gives
authenticity. It equals ``cd FOLDER && LC_ALL=C sha256sum $(LC_ALL=C ls) | sha256sum``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import torch
from torch import nn

from .checkpoint_schema import CheckpointError

WEIGHTS = "model.safetensors"
MAX_HEADER_BYTES = 100 << 20  # the limit safetensors itself enforces
# safetensors dtype -> (torch dtype, bytes per element); anything else is a foreign file.
ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file directly in ``folder``, by name (sorted)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.is_file()}


def checkpoint_digest(hashes: dict[str, str]) -> str:
    """One sha256 over all files: that of the ``sha256sum`` listing of the folder, in byte order."""
    listing = "".join(f"{h}  {name}\n" for name, h in sorted(hashes.items(), key=lambda kv: kv[0].encode()))
    return hashlib.sha256(listing.encode()).hexdigest()


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {problem}: the weights file is damaged or not prunekit's; re-save the checkpoint"
    )


def read_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """``{name: (safetensors dtype, shape)}`` from the header, checked to describe the whole file exactly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, "is shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise _bad(path, f"declares a {n}-byte header in a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(path, "has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "has a header that is not a mapping")
    header.pop("__metadata__", None)
    out: dict[str, tuple[str, list[int]]] = {}
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in ST_DTYPES:
            raise _bad(path, f"has tensor {name!r} of an unsupported dtype")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok:
            raise _bad(path, f"has a malformed entry for tensor {name!r}")
        begin, end = offsets
        if end - begin != math.prod(shape) * ST_DTYPES[entry["dtype"]][1] or begin < 0:
            raise _bad(path, f"gives tensor {name!r} a byte range that does not fit its shape")
        spans.append((begin, end))
        out[name] = (entry["dtype"], shape)
    position = 0
    for begin, end in sorted(spans):  # the tensors must tile the data section exactly
        if begin != position:
            raise _bad(path, "has overlapping or missing tensor data")
        position = end
    if 8 + n + position != size:
        raise _bad(path, f"holds {size} bytes but its header describes {8 + n + position} (truncated?)")
    return out


def check_header(path: Path, header: dict[str, tuple[str, list[int]]], shapes: dict[str, list[int]]) -> None:
    """Every tensor in the file is one ``prunekit.json`` declares, with the declared shape."""
    extra = sorted(set(header) - set(shapes))
    if extra:
        raise _bad(path, f"has tensor {extra[0]!r} that prunekit.json does not declare ({len(extra)} such)")
    for name, (_, shape) in header.items():
        if shape != shapes[name]:
            raise _bad(path, f"has tensor {name!r} of shape {shape}, prunekit.json declares {shapes[name]}")
    if not header:
        raise _bad(path, "holds no tensors")


def header_bytes(header: dict[str, tuple[str, list[int]]]) -> int:
    return sum(math.prod(shape) * ST_DTYPES[dt][1] for dt, shape in header.values())


def load_weights_(model: nn.Module, path: Path, header: dict[str, tuple[str, list[int]]]) -> None:
    """Copy the file's tensors into ``model`` by name, each keeping the file's dtype.

    safetensors stores one name per shared tensor (tied weights), so every state-dict entry must be in
    the file or share its storage with one that is; nothing else may be missing.
    """
    from safetensors import safe_open

    state = model.state_dict()
    for name, (dtype, shape) in header.items():
        have = state.get(name)
        if have is None or list(have.shape) != shape:
            raise _bad(path, f"has tensor {name!r} that the rebuilt model does not have in that shape")
        if have.dtype.is_floating_point != ST_DTYPES[dtype][0].is_floating_point:
            raise _bad(path, f"stores tensor {name!r} as {dtype}, the model holds {have.dtype}")
    stored = {state[n].data_ptr() for n in header}
    missing = [n for n, t in state.items() if n not in header and t.data_ptr() not in stored]
    if missing:
        raise _bad(path, f"lacks tensor {missing[0]!r} ({len(missing)} missing)")
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers(remove_duplicate=False)))
    with safe_open(str(path), framework="pt") as f, torch.no_grad():
        for name in header:
            value = f.get_tensor(name)
            # .data assignment keeps each Parameter object (and so every tie) and takes the file's dtype
            targets[name].data = value
