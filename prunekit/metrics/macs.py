"""Multiply-accumulate counts by forward hooks.

What is counted (per example: the total over the batch divided by the batch size):

* every instance of ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` — subclasses included, so TF-style
  "same"-padding convs (EfficientNet) count too — as ``output elements x (in_channels / groups) x kernel
  elements``, read from the weight's shape so pruned layers count correctly; transposed convs
  (``nn.ConvTranspose*``) as ``input elements x (out_channels / groups) x kernel elements``;
* every instance of ``nn.Linear`` (and subclasses): ``output elements x in_features``;
* transformers' ``Conv1D`` (GPT-2 style, weight ``(in, out)``): ``output elements x in``;
* ``nn.MultiheadAttention`` (whose projections run functionally, so their Linear hooks never fire): the
  q/k/v/out projections plus the two attention matmuls;
* attention score and context matmuls of other attention modules (HF): ``2 x B x L_q x L_k x W_q``, i.e.
  ``Q K^T`` and ``softmax(.) V``, each ``heads x head_dim`` MACs per query-key pair. Attention modules
  are those whose class name contains "Attention" or "Attn" (any case). ``W_q`` is the output width of
  the module's query projection child (``query``, ``q_proj``, ``q_lin`` or ``q``; read from its weight,
  so pruned heads count correctly), else ``num_attention_heads|num_heads|n_head x
  attention_head_size|head_dim`` attributes (fused projections, e.g. GPT-2). ``L_q`` is the sequence
  length of the module's input hidden states (``(B, L, D)``), ``L_k`` that of ``encoder_hidden_states``
  / ``key_value_states`` when given, else ``L_q``. Only the innermost qualifying module of a nest counts
  (BertAttention and BertSelfAttention count once), and none that wraps an ``nn.MultiheadAttention``.

Not counted: biases, normalisation, activations, pooling, softmax, embeddings lookups (no multiplies or
negligible against the above, and the usual convention of MAC counters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.batch import Inputs, batch_size_of, logits_of, move_to
from prunekit.structure.blocks import is_attention

_Q_NAMES = ("query", "q_proj", "q_lin", "q")
_HEADS = ("num_attention_heads", "num_heads", "n_head")
_HEAD_DIM = ("attention_head_size", "head_dim")


def _hf_conv1d_type() -> type | None:
    """transformers' Conv1D, without importing transformers when the caller has not."""
    import sys

    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def _query_width(module: nn.Module) -> int | None:
    """Total query width (heads x head_dim) if ``module`` is an attention module, else None."""
    if not is_attention(module):
        return None  # a child named "query" alone does not make a module attention
    for name in _Q_NAMES:
        child = getattr(module, name, None)
        weight = getattr(child, "weight", None)
        if isinstance(child, nn.Linear) and isinstance(weight, Tensor):
            return int(weight.shape[0])
    heads = next((getattr(module, a) for a in _HEADS if isinstance(getattr(module, a, None), int)), None)
    dim = next((getattr(module, a) for a in _HEAD_DIM if isinstance(getattr(module, a, None), int)), None)
    return heads * dim if heads and dim else None


def _attention_modules(model: nn.Module) -> dict[nn.Module, int]:
    found = {
        m: w for m in model.modules() if not isinstance(m, nn.MultiheadAttention) and (w := _query_width(m))
    }

    def nested(m: nn.Module) -> bool:  # a descendant is counted already (innermost wins; MHA counts itself)
        return any(c is not m and (c in found or isinstance(c, nn.MultiheadAttention)) for c in m.modules())

    return {m: w for m, w in found.items() if not nested(m)}


def _mha_macs(m: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> int:
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
    if q.dim() == 2:  # unbatched (L, E)
        b, lq, lk = 1, q.shape[0], k.shape[0]
    elif m.batch_first:
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    else:
        b, lq, lk = q.shape[1], q.shape[0], k.shape[0]
    e = m.embed_dim
    proj = lq * q.shape[-1] * e + lk * k.shape[-1] * e + lk * v.shape[-1] * e + lq * e * e
    return b * (proj + 2 * lq * lk * e)


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


def mac_breakdown(model: nn.Module, example_inputs: Inputs) -> dict[str, int]:
    """MACs per example of every counted module, by module name (see the module docstring for the rules).

    The inputs are moved to the model's device; ValueError for inputs that are not a (dict of) tensor(s)
    or hold no examples."""
    example_inputs, batch = checked_inputs(model, example_inputs)
    conv1d = _hf_conv1d_type()
    attention = _attention_modules(model)
    totals: dict[str, int] = {}
    handles = []

    def add(name: str, macs: int) -> None:
        totals[name] = totals.get(name, 0) + int(macs)

    def layer_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inp: tuple, out: Tensor) -> None:
            w = m.weight
            if isinstance(m, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, *kernel)
                add(name, inp[0].numel() * w.shape[1] * math.prod(w.shape[2:]))
            elif isinstance(m, nn.modules.conv._ConvNd):
                add(name, out.numel() * w.shape[1] * math.prod(w.shape[2:]))
            elif isinstance(m, nn.Linear):
                add(name, out.numel() * w.shape[1])
            else:  # transformers Conv1D: weight (in, out)
                add(name, out.numel() * w.shape[0])

        return hook

    def attn_hook(name: str, width: int) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")
            if not isinstance(hidden, Tensor) or hidden.dim() != 3:
                return  # not a (B, L, D) call: nothing we can count by this rule
            other = kwargs.get("encoder_hidden_states", kwargs.get("key_value_states"))
            lk = other.shape[1] if isinstance(other, Tensor) and other.dim() == 3 else hidden.shape[1]
            add(name + ":attention", 2 * hidden.shape[0] * hidden.shape[1] * lk * width)

        return hook

    def mha_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> None:
            add(name, _mha_macs(m, args, kwargs))

        return hook

    types: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear) + ((conv1d,) if conv1d is not None else ())
    try:
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_pre_hook(mha_hook(name), with_kwargs=True))
            elif isinstance(m, types):
                handles.append(m.register_forward_hook(layer_hook(name)))
            if m in attention:
                handles.append(m.register_forward_pre_hook(attn_hook(name, attention[m]), with_kwargs=True))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits_of(model, example_inputs)
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return {k: v // batch for k, v in totals.items()}


def count_macs(model: nn.Module, example_inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass, per example of ``example_inputs`` (see module docstring)."""
    return sum(mac_breakdown(model, example_inputs).values())
