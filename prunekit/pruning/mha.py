"""nn.MultiheadAttention after a head prune: a subclass whose forward runs an attention width below
embed_dim.

Why a subclass: ``F.multi_head_attention_forward`` derives the head size from the query's width
(embed_dim // num_heads) and splits the packed projection by embed_dim, so with some heads cut
(``in_proj_weight`` of ``3 x kept x head_dim`` rows, ``out_proj`` of ``kept x head_dim`` inputs)
it would compute nonsense or raise. Slicing parameters alone cannot fix that, and padding the cut
heads back would give up the speed-up. So after surgery the module's class becomes
:class:`PrunedMultiheadAttention` (same parameters, attributes and call signature; state_dict keys
unchanged), whose forward is torch's own algorithm with the width ``num_heads x head_dim`` taken
from the weights. It is still an nn.MultiheadAttention, so isinstance checks, the MAC counter and
torch-pruning's trace treat it as before.

Three more things follow from the cut:

- A 3-D ``attn_mask`` holds one mask per head of the *dense* module, ``(batch x heads, L, S)``;
  the module records which of those heads it kept (``prunekit_heads``, a non-persistent buffer,
  composed over repeated prunes and rebuilt from the plan when a checkpoint loads) and uses their
  rows. A mask for the kept heads alone, ``(batch x kept, L, S)``, is taken as it is.
- nn.TransformerEncoderLayer's inference fast path (``torch._transformer_encoder_layer_fwd``) reads
  ``in_proj_weight`` with the dense shapes. It is skipped whenever a forward pre-hook sits on any
  of the layer's modules, so a pruned module carries a no-op pre-hook (a documented switch of
  torch, travelling with the module wherever it is used). nn.TransformerEncoder's nested-tensor
  path would then hand the slow path a nested tensor: the encoders holding a pruned module get
  ``use_nested_tensor = False``, and a nested input is refused in one line.
- With ``need_weights`` the weights returned are those of the kept heads (averaged over them by
  default); the removed heads did no work to report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = "prunekit_heads"  # the dense module's heads that a pruned module kept
DENSE = "prunekit_dense_heads"  # the dense module's head count (3-D attn_mask rows per example)


def _no_fast_path(module: nn.Module, args: tuple) -> None:
    """Does nothing: its presence turns off nn.TransformerEncoderLayer's fused fast path."""
    return None


def _seq_first(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L, B, E) views of batch-first inputs, keeping self-attention's inputs one tensor."""
    q = query.transpose(0, 1)
    k = q if key is query else key.transpose(0, 1)
    v = k if value is key else value.transpose(0, 1)
    return q, k, v


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An nn.MultiheadAttention with ``num_heads x head_dim < embed_dim`` (see the module docstring)."""

    prunekit_inner_width = True  # structure/mha.py: this subclass's forward is prunekit's own

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if query.is_nested or key.is_nested or value.is_nested:
            raise ValueError(
                "a head-pruned nn.MultiheadAttention cannot take nested tensors: build its "
                "nn.TransformerEncoder with enable_nested_tensor=False"
            )
        batched = query.dim() == 3
        if batched and self.batch_first:
            query, key, value = _seq_first(query, key, value)
        elif not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        out, weights = self._attend(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
        if not batched:
            return out.squeeze(1), (weights.squeeze(0) if weights is not None else None)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of the kept heads, ``(L or S, B, kept x head_dim)``; one matmul for self-attention."""
        width = self.num_heads * self.head_dim
        bias = self.in_proj_bias.split(width) if self.in_proj_bias is not None else (None,) * 3
        if self.in_proj_weight is None:
            ws = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        elif query is key and key is value:  # packed self-attention: one matmul, then split
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        else:
            ws = self.in_proj_weight.split(width)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), ws, bias, strict=True))

    def _head_mask(self, mask: Tensor | None, batch: int, lq: int, lk: int) -> Tensor | None:
        """A 2-D mask as (1, L, S); a 3-D one as the rows of the kept heads, (B x kept, L, S)."""
        if mask is None:
            return None
        if mask.dim() == 2:
            if tuple(mask.shape) != (lq, lk):
                raise RuntimeError(
                    f"The shape of the 2D attn_mask is {mask.shape}, but should be {(lq, lk)}."
                )
            return mask.unsqueeze(0)
        dense = getattr(self, DENSE, self.num_heads)
        if mask.dim() == 3 and tuple(mask.shape) == (batch * dense, lq, lk):
            rows = mask.view(batch, dense, lq, lk)[:, getattr(self, HEADS)]
            return rows.reshape(batch * self.num_heads, lq, lk)
        if mask.dim() == 3 and tuple(mask.shape) == (batch * self.num_heads, lq, lk):
            return mask
        raise RuntimeError(
            f"The shape of the attn_mask is {mask.shape}, but should be {(lq, lk)} or "
            f"{(batch * dense, lq, lk)} (one mask per head of the dense module)."
        )

    def _masks(
        self, q: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None, need_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor | None, Tensor | None, bool]:  # fmt: skip
        """Both masks as float additive masks, as F.multi_head_attention_forward makes them
        (its private helpers, so that mixed bool / float masks behave exactly as in torch)."""
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=q.dtype,
        )  # fmt: skip
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and key_padding_mask is None and not need_weights:
            return None, None, True  # scaled_dot_product_attention builds the causal mask itself
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=q.dtype,
            check_other=False,
        )  # fmt: skip
        return key_padding_mask, attn_mask, is_causal and key_padding_mask is None

    def _attend(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
        need_weights: bool, attn_mask: Tensor | None, average_attn_weights: bool, is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """torch's algorithm on (L, B, E) inputs with the kept heads' width."""
        lq, batch, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)
        key_padding_mask, attn_mask, is_causal = self._masks(
            q, key_padding_mask, attn_mask, need_weights, is_causal
        )
        attn_mask = self._head_mask(attn_mask, batch, lq, k.shape[0])
        if self.bias_k is not None and self.bias_v is not None:  # add_bias_kv: one more key
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q = q.reshape(lq, batch * h, d).transpose(0, 1)
        k = k.reshape(k.shape[0], batch * h, d).transpose(0, 1)
        v = v.reshape(v.shape[0], batch * h, d).transpose(0, 1)
        if self.add_zero_attn:  # one more key and value, all zeros
            zeros = torch.zeros((batch * h, 1, d), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        lk = k.shape[1]
        if key_padding_mask is not None:  # (S, B) would pass the view below when S x B = B x S
            F._check_key_padding_mask(key_padding_mask, lk, batch)
            rows = key_padding_mask.view(batch, 1, 1, lk).expand(-1, h, -1, -1).reshape(batch * h, 1, lk)
            attn_mask = rows if attn_mask is None else attn_mask + rows
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q * math.sqrt(1.0 / float(d))
            scores = torch.baddbmm(attn_mask, scores, k.transpose(-2, -1)) if attn_mask is not None else (
                torch.bmm(scores, k.transpose(-2, -1))
            )  # fmt: skip
            weights = F.softmax(scores, dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(lq * batch, h * d)
            weights = weights.view(batch, h, lq, lk)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            if attn_mask is not None:
                one = attn_mask.size(0) == 1 and attn_mask.dim() == 3
                attn_mask = attn_mask.unsqueeze(0) if one else attn_mask.view(batch, h, -1, lk)
            q, k, v = q.view(batch, h, lq, d), k.view(batch, h, lk, d), v.view(batch, h, lk, d)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout, is_causal)
            out, weights = out.permute(2, 0, 1, 3).reshape(lq * batch, h * d), None
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out.view(lq, batch, out.shape[1]), weights


def _pad(mask: Tensor | None) -> Tensor | None:
    """One more key column, not masked (0.0: the masks are additive floats by now)."""
    return F.pad(mask, (0, 1)) if mask is not None else None


def keep_mha_heads_(model: nn.Module, removed_units: Mapping[str, Sequence[int]]) -> None:
    """After surgery: every nn.MultiheadAttention that lost heads (group ``"<module>:heads"``, see
    structure/mha.py) records its kept heads, takes their count and becomes a
    :class:`PrunedMultiheadAttention`; the fast paths that read the dense shapes are turned off."""
    pruned = []
    for name, m in model.named_modules():
        removed = set(removed_units.get(f"{name}:heads", ())) if isinstance(m, nn.MultiheadAttention) else ()
        if not removed:
            continue
        before = getattr(m, HEADS, None)
        if before is None:
            before = torch.arange(m.num_heads, device=m.out_proj.weight.device)
            setattr(m, DENSE, m.num_heads)
        kept = [h for h in range(len(before)) if h not in removed]
        m.register_buffer(HEADS, before[kept], persistent=False)
        m.num_heads = m.out_proj.weight.shape[1] // m.head_dim  # read off the cut weights: len(kept)
        m.__class__ = PrunedMultiheadAttention
        if not any(hook is _no_fast_path for hook in m._forward_pre_hooks.values()):
            m.register_forward_pre_hook(_no_fast_path)
        pruned.append(m)
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(p in pruned for p in m.modules()):
            m.use_nested_tensor = False  # the nested path needs every layer's fast path
