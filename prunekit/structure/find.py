"""``find_groups``: every prunable group of a model, with the parameter entries each unit owns."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..batch import Inputs
from .group import Group
from .sizes import mac_terms, param_shapes, removed_entries, size_after


def _check_patterns(ignore: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(ignore, str):
        ignore = (ignore,)
    patterns = tuple(ignore)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"ignore must be a list of layer-name patterns (fnmatch), got {bad!r}")
    return patterns


def _ignored(raw: dict, patterns: tuple[str, ...]) -> bool:
    names = (raw["name"], raw["layer"], *raw.get("members", ()))
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _with_costs(model: nn.Module, raws: list[dict], example_inputs: Inputs) -> list[Group]:
    """Attach params_per_unit / macs_per_unit: what removing unit 0 alone saves."""
    shapes = param_shapes(model)
    terms = mac_terms(model, example_inputs)
    full_params, full_macs = size_after(shapes, terms, {})
    groups = []
    for r in raws:
        g = Group(r["name"], r["kind"], r["layer"], r["num_units"], r["slices"], 0, 0)
        params, macs = size_after(shapes, terms, removed_entries([g], {g.name: [0]}))
        groups.append(
            Group(
                g.name,
                g.kind,
                g.layer,
                g.num_units,
                g.slices,
                params_per_unit=full_params - params,
                macs_per_unit=int(round(full_macs - macs)),
                min_units=int(r.get("min_units", 1)),
                rescale=tuple(r.get("rescale", ())),
            )
        )
    return groups


def _with_mha_heads(model: nn.Module, raws: list[dict], ignore: tuple[str, ...]) -> list[dict]:
    """``raws`` with the head group of every nn.MultiheadAttention (mha.py) inserted in model order:
    neither the layouts nor the trace describe its heads (its projections are its own parameters)."""
    from .mha import mha_groups

    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    out = list(raws)
    for heads in mha_groups(model, ignore):
        at = order[heads["layer"]]
        i = next((i for i, r in enumerate(out) if order.get(r["layer"], len(order)) > at), len(out))
        out.insert(i, heads)
    return out


def find_groups(
    model: nn.Module,
    example_inputs: Inputs,
    ignore: Sequence[str] = (),
    timeout_s: float = 120.0,
    strict: bool = True,
    experts: bool = False,
) -> list[Group]:
    """All prunable groups of ``model``, in model order.

    Transformer models (the families of layouts.py) get one ``:heads`` group per attention module
    (plus ``:kv_heads`` for grouped-query attention), one ``:neurons`` group per feed-forward block and
    per mixture-of-experts block (moe.py). Other models are traced with torch-pruning under a
    ``timeout_s`` limit (graph.py): one ``"<layer>:out"`` group per set of coupled Conv / Linear /
    LSTM / GRU / RNN outputs (a residual add couples all the layers that feed it; a grouped conv
    loses whole groups), never a model output. Every ``nn.MultiheadAttention`` gets a ``:heads``
    group (mha.py); its embed_dim is the stream's width, so the stream's group couples to it and is
    refused like any other (add the stream's layer to ``ignore``, or ``strict=False``). ``ignore`` holds fnmatch patterns of layer or
    group names not to prune. ``macs_per_unit`` is per example of ``example_inputs``. A group that
    couples to a layer prunekit cannot cut raises ValueError naming it (``strict=False``: left out).
    ``experts=True`` adds one ``"<experts>:experts"`` group per mixture-of-experts block whose units
    are whole experts with their router rows (moe.py; at least the router's top-k are kept).
    """
    from .blocks import unrecognised_attention
    from .graph import graph_groups
    from .transformer import transformer_groups

    patterns = _check_patterns(ignore)
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if experts:
        from .moe import is_moe_block

        if not any(is_moe_block(m) for m in model.modules()):
            raise ValueError(
                f"experts=True (prune.experts), but {type(model).__name__} has no mixture-of-experts block "
                "(a module with an `experts` child): set it to false"
            )
    raws = transformer_groups(model, patterns, experts=experts)
    if raws is None:
        unknown = unrecognised_attention(model, patterns)
        if unknown is not None:
            raise ValueError(
                f"prunekit has no adapter for the attention module {unknown}: tracing cannot split it into "
                f"heads (supported: the families of prunekit/structure/layouts.py); add "
                f"'{unknown.split(' ')[0]}' to ignore (or '*.{unknown.split(' ')[0].rsplit('.', 1)[-1]}' "
                f"for every layer) to prune the rest"
            )
        if unrecognised_attention(model) is not None:  # all ignored: tracing HF code around them fails
            raise ValueError(
                f"{type(model).__name__}: its attention modules are ignored, but prunekit finds no feed-forward "
                "block it can group without them (HF code is not traced): describe its layout in structure/layouts.py"
            )
        raws = [r for r in graph_groups(model, example_inputs, timeout_s) if not r["sink"]]
    raws = _with_mha_heads(model, raws, patterns)
    raws = [r for r in raws if not _ignored(r, patterns) and r["num_units"] > 0]
    if not strict:
        raws = [r for r in raws if not r.get("unsupported")]
    for r in raws:
        if r.get("unsupported"):
            raise ValueError(
                f"group {r['name']} couples to {r['unsupported'][0]}, which prunekit cannot prune; "
                f"add '{r['layer']}' to ignore"
            )
    return _with_costs(model, raws, example_inputs)


def round_keep(count: int, num_units: int, round_to: int = 1, min_units: int = 1) -> int:
    """``count`` rounded to the nearest multiple of ``round_to`` (ties up), within
    [``min_units`` rounded up, ``num_units``]; keeping all units is always allowed."""
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    if num_units < 0 or count < 0:
        raise ValueError(f"count ({count}) and num_units ({num_units}) must be >= 0")
    if count >= num_units:
        return num_units
    rounded = int((count + round_to / 2) // round_to) * round_to
    lowest = -(-min_units // round_to) * round_to  # the smallest multiple of round_to >= min_units
    rounded = max(rounded, lowest)
    return num_units if rounded >= num_units else rounded
