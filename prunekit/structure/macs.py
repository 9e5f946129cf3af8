"""The one MAC counter of prunekit: multiply-accumulates of one hooked forward pass, term by term.

:func:`prunekit.metrics.count_macs` (what a model costs) and :func:`prunekit.structure.remaining_size`
(what it will cost after keeping some units, predicted without surgery) both read these terms, so the
planners' MACs are the ones reported later by construction. What is counted (per example: the total
over the batch divided by the batch size):

* every instance of ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` — subclasses included, so TF-style
  "same"-padding convs (EfficientNet) count too — as ``output elements x (in_channels / groups) x kernel
  elements``, read from the weight's shape so pruned layers count correctly; transposed convs
  (``nn.ConvTranspose*``) as ``input elements x (out_channels / groups) x kernel elements``;
* every instance of ``nn.Linear`` (and subclasses): ``output elements x in_features``;
* transformers' ``Conv1D`` (GPT-2 style, weight ``(in, out)``): ``output elements x in``;
* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (their weights run inside one fused kernel, so no Linear hook
  fires): each ``weight_ih`` / ``weight_hh`` / ``weight_hr`` matrix (every layer and direction) once per
  time step of every sequence (``time steps x weight entries``; a PackedSequence counts its real steps);
* ``nn.MultiheadAttention`` (whose projections run functionally, so their Linear hooks never fire): the
  q/k/v/out projections (``"<module>:q_proj"`` .. ``":out_proj"``, rows x weight entries) plus the two
  attention matmuls (``"<module>:attention"``: 2 x query-key pairs x the attention width, which is
  out_proj's input width, so a head-pruned module counts its kept heads; bias_k and add_zero_attn
  add a key each);
* attention score and context matmuls of other attention modules (HF): ``2 x B x L_q x L_k x W_q``, i.e.
  ``Q K^T`` and ``softmax(.) V``, each ``heads x head_dim`` MACs per query-key pair (DeBERTa's
  disentangled attention adds ``B x L_q x 2 x span x W_q`` for each of its c2p / p2c scores). Attention modules
  are those whose class name contains "Attention" or "Attn" (any case). ``W_q`` is the output width of
  the module's query projection child (``query``, ``q_proj``, ``q_lin`` or ``q``; read from its weight,
  so pruned heads count correctly), else ``num_attention_heads|num_heads|n_head x
  attention_head_size|head_dim`` attributes (fused projections, e.g. GPT-2). ``L_q`` is the sequence
  length of the module's input hidden states (``(B, L, D)``; ``B`` counts windows in windowed attention),
  ``L_k`` that of ``encoder_hidden_states`` / ``key_value_states`` when given, else ``L_q``. Only the
  innermost qualifying module of a nest counts (BertAttention and BertSelfAttention count once), and
  none that wraps an ``nn.MultiheadAttention``.

Not counted: biases, normalisation, activations, pooling, softmax, embeddings lookups (no multiplies or
negligible against the above, and the usual convention of MAC counters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..batch import Inputs, batch_size_of, move_to
from .blocks import find_blocks, is_attention, out_dim

_Q_NAMES = ("query", "q_proj", "q_lin", "q")
_HEADS = ("num_attention_heads", "num_heads", "n_head")
_HEAD_DIM = ("attention_head_size", "head_dim")


@dataclass(frozen=True)
class MacTerm:
    """``count x cost`` MACs over the batch of the counting pass.

    After units are removed, the term scales by the surviving fraction of ``param`` along each of
    ``dims`` (the work of a layer shrinks with its weight; attention matmuls with the query rows);
    ``param`` None is a cost no group changes."""

    module: str  # the module doing the work; attention matmuls are f"{name}:attention"
    param: str | None  # canonical parameter name (a tied weight goes by named_parameters()' name)
    dims: tuple[int, ...]
    count: int  # output positions of a layer, 2 x query-key pairs of attention (whole batch, all calls)
    cost: int  # MACs per count: the layer's weight entries, the attention's query width
    batch: int

    @property
    def total(self) -> int:
        """MACs over the whole batch (exact)."""
        return self.count * self.cost

    @property
    def macs(self) -> float:
        """MACs per example."""
        return self.count / self.batch * self.cost


def checked_inputs(model: nn.Module, example_inputs: Inputs) -> tuple[Inputs, int]:
    """``example_inputs`` on the model's device, and their batch size; ValueError for unusable inputs."""
    fix = "use prunekit.models.example_inputs(model, input_shape)"
    if isinstance(example_inputs, Mapping):
        if not example_inputs or not all(isinstance(v, Tensor) for v in example_inputs.values()):
            raise ValueError(f"example_inputs must be a non-empty dict of tensors: {fix}")
    elif not isinstance(example_inputs, Tensor):
        raise ValueError(
            f"example_inputs must be a tensor or a dict of tensors, got {type(example_inputs).__name__}: {fix}"
        )
    batch = batch_size_of(example_inputs)
    if batch < 1:
        raise ValueError(f"example_inputs hold no examples (batch size 0): MACs are per example; {fix}")
    param = next(model.parameters(), None)  # a model without parameters runs where its inputs are
    return (move_to(example_inputs, param.device) if param is not None else example_inputs), batch


def _hf_conv1d_type() -> type | None:
    """transformers' Conv1D, without importing transformers when the caller has not."""
    import sys

    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def _query(module: nn.Module) -> tuple[int, nn.Linear | None] | None:
    """(total query width, the query projection or None) if ``module`` is an attention module."""
    if not is_attention(module):
        return None  # a child named "query" alone does not make a module attention
    for name in _Q_NAMES:
        child = getattr(module, name, None)
        if isinstance(child, nn.Linear) and isinstance(getattr(child, "weight", None), Tensor):
            return int(child.weight.shape[0]), child
    heads = next((getattr(module, a) for a in _HEADS if isinstance(getattr(module, a, None), int)), None)
    dim = next((getattr(module, a) for a in _HEAD_DIM if isinstance(getattr(module, a, None), int)), None)
    return (heads * dim, None) if heads and dim else None


def _attention_modules(model: nn.Module) -> dict[nn.Module, tuple[int, nn.Linear | None]]:
    found = {m: q for m in model.modules() if not isinstance(m, nn.MultiheadAttention) and (q := _query(m))}

    def nested(m: nn.Module) -> bool:  # a descendant is counted already (innermost wins; MHA counts itself)
        return any(c is not m and (c in found or isinstance(c, nn.MultiheadAttention)) for c in m.modules())

    return {m: q for m, q in found.items() if not nested(m)}


def _mha_counts(m: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> dict[str, int]:
    """Work of one nn.MultiheadAttention call by part: query / key / value rows projected (the
    query rows again for out_proj) and 2 x query-key pairs (keys with bias_k and the zero key)."""
    names = ("query", "key", "value")
    q, k, _ = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
    if q.dim() == 2:  # unbatched (L, E)
        b, lq, lk = 1, q.shape[0], k.shape[0]
    elif m.batch_first:
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    else:
        b, lq, lk = q.shape[1], q.shape[0], k.shape[0]
    keys = lk + (m.bias_k is not None) + bool(m.add_zero_attn)
    return {
        "q_proj": b * lq,
        "k_proj": b * lk,
        "v_proj": b * lk,
        "out_proj": b * lq,
        "attention": 2 * b * lq * keys,
    }


def _mha_term(key: str, m: nn.MultiheadAttention, count: int, canonical: dict, batch: int) -> MacTerm:
    """One part of an nn.MultiheadAttention as a term that scales with its kept heads: the projections
    by their weights (a third of the packed in_proj_weight each), the matmuls by out_proj's input
    columns (the heads x head_dim attention width)."""
    part = key.rsplit(":", 1)[1]
    out = m.out_proj.weight
    if part == "attention":
        return MacTerm(key, canonical.get(id(out)), (1,), count, int(out.shape[1]), batch)
    if part == "out_proj":
        w, cost = out, out.numel()
    elif m.in_proj_weight is not None:  # packed [q | k | v]: each part is a third of its rows
        w, cost = m.in_proj_weight, m.in_proj_weight.numel() // 3
    else:
        w = getattr(m, f"{part}_weight")
        cost = w.numel()
    return MacTerm(key, canonical.get(id(w)), tuple(range(w.dim())), count, cost, batch)


def _relative_positions(m: nn.Module, kwargs: dict[str, Any]) -> int:
    """Query-width dot products per query that DeBERTa's disentangled attention adds: the
    content-to-position and the position-to-content scores, each against 2 x span relative positions
    (the projections of the position table are Linear calls, counted by their own hooks)."""
    kinds = getattr(m, "pos_att_type", None)
    if not getattr(m, "relative_attention", False) or not isinstance(kinds, (list, tuple)):
        return 0
    rows = 2 * int(m.pos_ebd_size)
    rel = kwargs.get("rel_embeddings")
    if isinstance(rel, Tensor):  # the forward slices the table to at most 2 x span rows
        rows = min(rows, rel.shape[-2])
    return rows * sum(k in kinds for k in ("c2p", "p2c"))


def _positions(m: nn.Module, inp: tuple, out: Tensor) -> int:
    """Output positions of a layer: where its whole weight is applied once."""
    w = m.weight
    if isinstance(m, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, *kernel): per input
        return inp[0].numel() // w.shape[0]
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):  # weight (out, in / groups, *kernel)
        return out.numel() // w.shape[0]
    return out.numel() // w.shape[1]  # transformers Conv1D: weight (in, out)


def _time_steps(m: nn.RNNBase, inp: tuple) -> int:
    """Sequence elements a recurrent layer steps through: every one applies each weight matrix once."""
    x = inp[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.data.shape[0])  # the real steps of all sequences, padding excluded
    return x.numel() // x.shape[-1]  # (L, H), (L, B, H) or (B, L, H)


def count_mac_terms(model: nn.Module, example_inputs: Inputs) -> list[MacTerm]:
    """Every counted piece of work of one forward pass of ``model`` on ``example_inputs``, in the order
    it first ran (see the module docstring for the rules).

    The model runs in eval mode without gradients (no dropout, no BatchNorm statistics update), on
    inputs moved to its device; its mode is restored. ValueError for inputs that are not a (dict of)
    tensor(s) or hold no examples."""
    example_inputs, batch = checked_inputs(model, example_inputs)
    conv1d = _hf_conv1d_type()
    attention = _attention_modules(model)
    counts: dict[str, int] = {}  # insertion order = the order the work first ran
    handles = []

    def add(key: str, count: int) -> None:
        counts[key] = counts.get(key, 0) + int(count)

    def layer_hook(name: str) -> Callable[..., None]:
        return lambda m, inp, out: add(name, _positions(m, inp, out))

    def attn_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")
            if not isinstance(hidden, Tensor) or hidden.dim() != 3:
                return  # not a (B, L, D) call: nothing we can count by this rule
            other = kwargs.get("encoder_hidden_states", kwargs.get("key_value_states"))
            lk = other.shape[1] if isinstance(other, Tensor) and other.dim() == 3 else hidden.shape[1]
            per_query = 2 * lk + _relative_positions(m, kwargs)  # Q K^T and softmax(.) V, + DeBERTa's
            add(name + ":attention", hidden.shape[0] * hidden.shape[1] * per_query)

        return hook

    def mha_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> None:
            for part, count in _mha_counts(m, args, kwargs).items():
                add(f"{name}:{part}", count)

        return hook

    def rnn_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.RNNBase, inp: tuple, out: Any) -> None:
            steps = _time_steps(m, inp)
            for w in m._flat_weights_names:  # weight_ih_l0, weight_hh_l0_reverse, weight_hr_l1, ...
                if w.startswith("weight_"):
                    add(f"{name}:{w}", steps)

        return hook

    types: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear) + ((conv1d,) if conv1d is not None else ())
    modules = dict(model.named_modules())
    try:
        for name, m in modules.items():
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_pre_hook(mha_hook(name), with_kwargs=True))
            elif isinstance(m, types):
                handles.append(m.register_forward_hook(layer_hook(name)))
            elif isinstance(m, nn.RNNBase):
                handles.append(m.register_forward_hook(rnn_hook(name)))
            if m in attention:
                handles.append(m.register_forward_pre_hook(attn_hook(name), with_kwargs=True))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(**example_inputs) if isinstance(example_inputs, Mapping) else model(example_inputs)
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return _terms(model, modules, attention, counts, batch)


def _terms(
    model: nn.Module,
    modules: dict[str, nn.Module],
    attention: dict[nn.Module, tuple[int, nn.Linear | None]],
    counts: dict[str, int],
    batch: int,
) -> list[MacTerm]:
    canonical = {id(p): n for n, p in model.named_parameters()}
    outputs = {a.name: modules[a.o] for a in find_blocks(model)[0]}  # o's inputs: the query heads
    terms = []
    for key, count in counts.items():
        owner = modules.get(key.rsplit(":", 1)[0]) if ":" in key else None
        if isinstance(owner, nn.MultiheadAttention):
            terms.append(_mha_term(key, owner, count, canonical, batch))
        elif key.endswith(":attention"):
            width, q = attention[modules[key.removesuffix(":attention")]]
            param, dims = (canonical.get(id(q.weight)) if q is not None else None), (0,)
            o = outputs.get(key.removesuffix(":attention"))
            if q is None and o is not None:  # fused q/k/v (GPT-2, Falcon): scale by the kept query heads
                param, dims = canonical.get(id(o.weight)), (1 - out_dim(o),)
            terms.append(MacTerm(key, param, dims, count, width, batch))
        elif ":" in key:  # a recurrent layer's weight matrix, f"{module}:{weight name}"
            module, weight = key.rsplit(":", 1)
            w = getattr(modules[module], weight)
            terms.append(MacTerm(key, canonical.get(id(w)), tuple(range(w.dim())), count, w.numel(), batch))
        else:
            w = modules[key].weight
            terms.append(MacTerm(key, canonical.get(id(w)), tuple(range(w.dim())), count, w.numel(), batch))
    return terms
