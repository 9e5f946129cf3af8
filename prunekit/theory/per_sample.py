"""Per-sample Jacobian rows of a model's logits from forward hooks (the Opacus / BackPACK method).

**Method.** For a block of parameters, forward hooks on the modules that own them record each call's
input ``x`` and output ``y`` during ONE ordinary forward of a chunk of ``b`` samples. Then k backward
passes of the logits to those outputs (pass c: cotangent one-hot on logit c for every sample) give
δ = ∂f_c/∂y for every call, sample and logit: the samples are independent (eval mode), so row i of δ is
sample i's own gradient. Each parameter's per-sample gradient is then a closed form in (x, δ):

- ``nn.Linear``: W: Σ_t δ_t x_tᵀ over token dims, b: Σ_t δ_t;
- ``nn.Conv1d`` / ``nn.Conv2d`` (zeros padding, incl. ``'same'``; any stride, dilation, groups): W: δ
  times the unfolded input, per group; b: Σ over positions of δ;
- ``nn.BatchNorm1d`` / ``2d`` on running statistics: γ: Σ over positions of δ·x̂, β: Σ δ;
- ``nn.LayerNorm``: γ: Σ over leading dims of δ·x̂, β: Σ δ;
- ``nn.Embedding``: δ scattered to the rows that were looked up (the ``padding_idx`` row stays zero).

A module called several times adds up its calls. A module whose input is shared by all samples (batch
dim 1, e.g. HF BERT's position ids) has its output expanded to the chunk, so that δ stays per sample.
Cost: one forward, k backward passes that stop at the hooked outputs (no weight gradients), one batched
matmul per call, and writing the rows: for the quickstart CNN the rows themselves (326 MB on 256
samples) are a large part of the time, so they are written once, in place, into huge-page memory.

**Limits.** Only parameters that are the ``weight``/``bias`` of exactly one module of an exact type above
are served (``type(m) in ...``, so subclasses with their own forward are not); :meth:`HookRows.unsupported`
names the first parameter that is not (weight tying, an ``nn.Parameter`` used directly, a BatchNorm in
training mode, ``max_norm`` embeddings, a non-zeros conv padding mode, ...) and the caller falls back to
the torch.func engines. A parameter also used *outside* its module (``F.linear(h, self.emb.weight)``)
cannot be seen from hooks; ``rows(..., check=True)`` detects it by comparing Σ_{i,c} r_ic J_ic with one
ordinary backward of Σ r·f for random r on a few samples, and raises :class:`SelfCheckError`. Modules
must see the samples as dim 0 of their input (or a dim 0 of 1, shared by all samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the parameter attributes each supported type owns; anything else on such a module (e.g. the
# ``weight_orig`` of torch.nn.utils.prune, which a pre-hook multiplies by a mask) is not served
SUPPORTED: dict[type, tuple[str, ...]] = {
    nn.Linear: ("weight", "bias"),
    nn.Conv1d: ("weight", "bias"),
    nn.Conv2d: ("weight", "bias"),
    nn.BatchNorm1d: ("weight", "bias"),
    nn.BatchNorm2d: ("weight", "bias"),
    nn.LayerNorm: ("weight", "bias"),
    nn.Embedding: ("weight",),
}


_CHECK_SAMPLES = 16  # samples the self-check weighs


class HookError(RuntimeError):
    """The hooks engine cannot serve this call (found while running); the caller should fall back."""


class SelfCheckError(HookError):
    """The hook rows disagree with an ordinary backward: a parameter is used outside its module."""


@dataclass
class _Call:
    x: Tensor  # the module's input, detached (shares the version counter with the live tensor)
    version: int  # of x when recorded: an in-place change before we read it would corrupt the formulas
    y: Tensor  # the module's output, the tensor δ is taken with respect to


class HookRows:
    """Per-sample Jacobian rows of ``model``'s logits for blocks of its parameters, via forward hooks."""

    def __init__(self, model: nn.Module):
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        seen: set[int] = set()
        for _, m in model.named_modules(remove_duplicate=False):
            if id(m) in seen:  # a module registered twice is one owner (it is just called more often)
                continue
            seen.add(id(m))
            for attr, p in m._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((m, attr))
        self._names = names
        self._owners = {n: owners.get(id(p), []) for n, p in model.named_parameters()}

    # ------------------------------------------------------------------------------------------ support
    def unsupported(self, names: Iterable[str]) -> str | None:
        """Why the first of ``names`` cannot be served (one line naming it), or None if all can."""
        for name in names:
            reason = self._reason(name)
            if reason is not None:
                return f"parameter {name!r} {reason}"
        return None

    def _reason(self, name: str) -> str | None:
        owners = self._owners.get(name)
        if owners is None:
            return "is not a parameter of the model"
        if len(owners) != 1:
            mods = " and ".join(repr(self._names[id(m)]) for m, _ in owners)
            return f"is shared by modules {mods} (weight tying)"
        m, attr = owners[0]
        kind = type(m)
        if kind not in SUPPORTED:
            return f"belongs to a {kind.__name__}, which has no per-sample rule"
        if attr not in SUPPORTED[kind]:
            return f"is {attr!r} of an nn.{kind.__name__}, not its weight or bias"
        if "forward" in m.__dict__:
            return "belongs to a module whose forward was replaced"
        if kind in (nn.Conv1d, nn.Conv2d) and m.padding_mode != "zeros":
            return f"belongs to a conv with padding_mode={m.padding_mode!r} (only 'zeros')"
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and (m.training or m.running_mean is None):
            return "belongs to a BatchNorm that uses batch statistics (training mode or no running stats)"
        if kind is nn.Embedding and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
            return "belongs to an nn.Embedding with max_norm, scale_grad_by_freq or sparse gradients"
        return None

    # -------------------------------------------------------------------------------------------- rows
    def rows(
        self,
        call: Callable[[Mapping[str, Tensor]], Tensor],
        block: Mapping[str, Tensor],
        batch: int,
        check: bool = False,
        out: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """name → (batch·k, numel) Jacobian rows, ordered (sample, logit), of ``call(block)``: the logits of
        ``batch`` samples computed with the block's values (a ``functional_call``). ``check``: verify
        against one ordinary backward (:class:`SelfCheckError` on mismatch). ``out``: contiguous
        (batch·k, numel) tensors to write the rows into (e.g. one chunk's slice of a larger result), which
        are then returned. Raises :class:`HookError` where the forward does not fit the method; call
        :meth:`unsupported` first."""
        reason = self.unsupported(block)
        if reason is not None:
            raise HookError(reason)
        modules = {id(m): m for name in block for m, _ in self._owners[name][:1]}
        calls: dict[int, list[_Call]] = {i: [] for i in modules}

        def hook(m: nn.Module, args: tuple, kwargs: dict, y: object) -> Tensor:
            return self._record(m, args, kwargs, y, batch, calls[id(m)])

        # prepend: our hook must see the module's own output, before any user hook replaces it
        handles = [m.register_forward_hook(hook, with_kwargs=True, prepend=True) for m in modules.values()]
        try:
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(check) for k, v in block.items()}
                logits = call(leaves)
        finally:
            for h in handles:
                h.remove()
        if logits.dim() == 0 or logits.shape[0] != batch:
            raise HookError(f"logits of shape {tuple(logits.shape)} are not batched over {batch} samples")
        k = logits[0].numel()
        if check:
            gen = torch.Generator().manual_seed(0)
            # random weights on the first few samples only: reading every row would cost as much as a
            # third of the engine; a few samples still tell samples apart and catch a missed use
            probe = torch.zeros_like(logits)
            s = min(batch, _CHECK_SAMPLES)
            probe[:s] = torch.randn((s, *logits.shape[1:]), generator=gen, dtype=torch.float64).to(logits)
            ref = torch.autograd.grad(
                logits, list(leaves.values()), probe, retain_graph=True, allow_unused=True
            )
        flat = [(i, c) for i, cs in calls.items() for c in cs]
        # BatchNorm's δ is stored channel-major, (b, C, k, positions): its rule is then one matmul
        major = [type(modules[i]) in (nn.BatchNorm1d, nn.BatchNorm2d) for i, _ in flat]
        deltas = self._deltas(logits, [c.y for _, c in flat], major) if flat else []
        where = {(id(self._owners[n][0][0]), self._owners[n][0][1]): n for n in block}
        grads: dict[tuple[int, str], Tensor] = {}
        with torch.no_grad():
            for (i, c), d in zip(flat, deltas, strict=True):
                if d is None:  # this call does not reach the logits
                    continue
                if c.x._version != c.version:
                    raise HookError(f"the input of {self._names[i]!r} was changed in place after the call")
                dest = None  # the first call writes its weight rows straight into ``out``
                if out is not None and (i, "weight") in where and (i, "weight") not in grads:
                    dest = out[where[(i, "weight")]].view(batch, k, -1)
                for attr, g in _per_sample(modules[i], c.x, d, dest).items():
                    key = (i, attr)
                    grads[key] = grads[key].add_(g) if key in grads else g  # our own buffers
        rows: dict[str, Tensor] = {}
        for name, v in block.items():
            m, attr = self._owners[name][0]
            g = grads.get((id(m), attr))
            if out is None:
                rows[name] = (
                    g.reshape(batch * k, v.numel())
                    if g is not None
                    else torch.zeros(batch * k, v.numel(), dtype=logits.dtype, device=logits.device)
                )
                continue
            rows[name] = target = out[name]
            if g is None:
                target.zero_()
            elif g.data_ptr() != target.data_ptr():
                target.copy_(g.reshape(target.shape))
        if check:
            self._compare(rows, ref, probe[:s].reshape(-1))
        return rows

    def _record(
        self, m: nn.Module, args: tuple, kwargs: dict, y: object, batch: int, calls: list[_Call]
    ) -> Tensor:
        x = args[0] if args else next(iter(kwargs.values()), None)  # every supported forward takes one input
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() == 0 or y.dim() == 0:
            raise HookError(f"{self._names[id(m)]!r} was not called on one batched tensor")
        if y.shape[0] != batch or x.shape[0] != batch:
            if not (y.shape[0] == 1 and x.shape[0] == 1):
                raise HookError(
                    f"{self._names[id(m)]!r} saw a leading dim of {x.shape[0]}, not the {batch} samples"
                )
            # an input shared by all samples: expand, so that downstream gradients stay per sample
            x, y = x.expand(batch, *x.shape[1:]), y.expand(batch, *y.shape[1:])
        anchor = y if y.requires_grad else y.detach().requires_grad_()
        calls.append(_Call(x.detach(), x._version, anchor))
        # a copy goes downstream, so that an in-place op there (ReLU(inplace=True)) cannot move the anchor
        return anchor.clone()

    @staticmethod
    def _deltas(logits: Tensor, ys: list[Tensor], major: list[bool]) -> list[Tensor | None]:
        """∂logit_c/∂y for every recorded output y, as (b, k, *y.shape[1:]): one backward per logit.
        Where ``major[i]``, the memory is laid out (b, C, k, ...) (the tensor is a transposed view).

        A loop, not ``is_grads_batched``: vmap has no batching rule for the conv and BatchNorm backward,
        so it loops anyway and then concatenates (measured 1.5x slower), and the loop writes δ straight
        into the (sample, logit) order that the Jacobian rows have."""
        b, k = logits.shape[0], logits[0].numel()
        out: list[Tensor | None] = [None] * len(ys)
        cot = torch.zeros_like(logits).view(b, k)
        for c in range(k):
            cot.zero_()[:, c] = 1
            grads = torch.autograd.grad(
                logits, ys, cot.view_as(logits), retain_graph=c < k - 1, allow_unused=True
            )
            for i, g in enumerate(grads):
                if g is not None:
                    if out[i] is None:
                        out[i] = (
                            empty_rows((b, g.shape[1], k, *g.shape[2:]), g).transpose(1, 2)
                            if major[i] and g.dim() > 1
                            else empty_rows((b, k, *g.shape[1:]), g)
                        )
                    out[i][:, c] = g
        return out

    def _compare(self, rows: Mapping[str, Tensor], ref: tuple[Tensor | None, ...], probe: Tensor) -> None:
        ours = {name: probe @ r[: len(probe)] for name, r in rows.items()}
        want = {
            name: o * 0 if g is None else g.reshape(-1)
            for (name, o), g in zip(ours.items(), ref, strict=True)
        }
        size = {name: max(_amax(ours[name]), _amax(want[name])) for name in ours}
        # a tensor whose gradient is ~0 (an attention key bias: softmax ignores it) is held to the
        # block's scale, not to its own rounding noise
        floor = 1e-3 * max(size.values(), default=0.0)
        for name in ours:
            err = _amax(ours[name] - want[name])
            if err > _tolerance(rows[name].dtype) * max(size[name], floor):
                raise SelfCheckError(
                    f"parameter {name!r}: hook rows miss {err:.2e} of a gradient of size {size[name]:.2e} "
                    "(is it used outside its module?)"
                )


def _amax(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _tolerance(dtype: torch.dtype) -> float:
    # measured errors are ~1e-6 (float32) and ~1e-15 (float64) of the gradient's scale; a parameter used
    # outside its module misses a whole term, orders of magnitude above either
    return min(0.05, 1000 * torch.finfo(dtype).eps)


# ------------------------------------------------------------------------------ per-sample formulas
def _per_sample(m: nn.Module, x: Tensor, d: Tensor, dest: Tensor | None) -> dict[str, Tensor]:
    """attr → (b, k, numel) per-sample gradients of one call, from input x (b, ...) and δ (b, k, ...).
    ``dest``: where to write the (large) weight rows, contiguous (b, k, numel), or None for new memory."""
    kind = type(m)
    if kind is nn.Linear:
        return _linear(m, x, d, dest)
    if kind in (nn.Conv1d, nn.Conv2d):
        return _conv(m, x, d, dest)
    b, k = d.shape[:2]
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):  # channels are dim 1, positions after them
        xhat = F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)
        c = x.shape[1]
        xs = torch.stack([xhat.reshape(b, c, -1), torch.ones_like(xhat).reshape(b, c, -1)], -1)
        # δ is channel-major (see _deltas): [Σ δ·x̂, Σ δ] is one pass of a batched matmul, no temporaries
        both = torch.matmul(d.transpose(1, 2).reshape(b, c, k, -1), xs).transpose(1, 2)  # (b, k, C, 2)
        return _affine(m, both[..., 0], both[..., 1])
    if kind is nn.LayerNorm:  # normalised dims last, every dim between them and the batch is summed
        n = math.prod(m.normalized_shape)
        if x.dim() <= len(m.normalized_shape):
            raise HookError(f"a LayerNorm called on an unbatched input of shape {tuple(x.shape)}")
        xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        xs, ds = xhat.reshape(b, -1, n), d.reshape(b, k, -1, n)
        return _affine(m, torch.einsum("bktn,btn->bkn", ds, xs), ds.sum(2))
    if kind is nn.Embedding:
        return _embedding(m, x, d, dest)
    raise HookError(f"no per-sample rule for {kind.__name__}")  # unreachable: unsupported() filters


def _linear(m: nn.Linear, x: Tensor, d: Tensor, dest: Tensor | None) -> dict[str, Tensor]:
    b, k = d.shape[:2]
    x = x.reshape(b, -1, m.in_features)  # tokens (all dims between batch and features) are summed
    d = d.reshape(b, k, -1, m.out_features)
    rows = d.transpose(2, 3).reshape(b, k * m.out_features, -1)  # (b, k·out, tokens); a view for 1 token
    w = (
        empty_rows((b, k * m.out_features, m.in_features), d)
        if dest is None
        else dest.view(b, -1, m.in_features)
    )
    out = {"weight": torch.bmm(rows, x, out=w).reshape(b, k, -1)}
    if m.bias is not None:
        out["bias"] = d.sum(2)
    return out


def _conv(m: nn.Conv1d | nn.Conv2d, x: Tensor, d: Tensor, dest: Tensor | None) -> dict[str, Tensor]:
    b, k = d.shape[:2]
    dims = m.weight.dim() - 2
    if x.dim() != dims + 2:
        raise HookError(f"a {type(m).__name__} called on an unbatched input of shape {tuple(x.shape)}")
    ksize, stride, dil = m.kernel_size, m.stride, m.dilation
    if isinstance(m.padding, str):  # 'same' puts the odd pixel at the end, as PyTorch does
        tot = [0] * dims if m.padding == "valid" else [dil[i] * (ksize[i] - 1) for i in range(dims)]
        pads = [(t // 2, t - t // 2) for t in tot]
    else:
        pads = [(p, p) for p in m.padding]
    if any(p for pair in pads for p in pair):
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    if dims == 1:  # unfold is 2-D only: a 1-D signal is an image of height 1
        x, ksize, stride, dil = x.unsqueeze(2), (1, *ksize), (1, *stride), (1, *dil)
    cols = F.unfold(x, ksize, dilation=dil, stride=stride)  # (b, C_in·Πk, positions)
    g, o, n = m.groups, m.out_channels // m.groups, cols.shape[-1]
    j = cols.shape[1] // g
    d = d.reshape(b, k, g, o, -1)
    if d.shape[-1] != n:
        raise HookError(f"conv positions mismatch: δ has {d.shape[-1]}, the unfolded input {n}")
    rows = d.transpose(1, 2).reshape(b * g, k * o, n)  # (b·g, k·o, positions); a view for groups=1
    cols = cols.reshape(b * g, j, n).transpose(1, 2)
    w = empty_rows((b, k, g * o * j), d) if dest is None else dest
    if g == 1:  # the product is already in (sample, logit, weight) order: write it in place
        torch.bmm(rows, cols, out=w.view(b, k * o, j))
    else:
        w.view(b, k, g, o, j).copy_(torch.bmm(rows, cols).view(b, g, k, o, j).transpose(1, 2))
    out = {"weight": w}
    if m.bias is not None:
        out["bias"] = d.sum(-1).reshape(b, k, -1)
    return out


def _affine(m: nn.Module, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """γ and β rows, both (b, k, C), kept for the parameters the module has."""
    out = {}
    if m.weight is not None:
        out["weight"] = weight
    if m.bias is not None:
        out["bias"] = bias
    return out


def _embedding(m: nn.Embedding, idx: Tensor, d: Tensor, dest: Tensor | None) -> dict[str, Tensor]:
    b, k = d.shape[:2]
    idx = idx.reshape(b, 1, -1, 1).long()  # F.embedding also takes int32 ids; scatter needs int64
    d = d.reshape(b, k, -1, m.embedding_dim)
    shape = (b, k, m.num_embeddings, m.embedding_dim)
    out = (empty_rows(shape, d) if dest is None else dest.view(shape)).zero_()
    out.scatter_add_(2, idx.expand(b, k, idx.shape[2], m.embedding_dim), d)
    if m.padding_idx is not None:  # PyTorch gives the padding row no gradient
        out[:, :, m.padding_idx] = 0
    return {"weight": out.reshape(b, k, -1)}


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def empty_rows(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised buffer for Jacobian rows. Big CPU buffers come from NumPy, which asks Linux for
    transparent huge pages (madvise) where torch.empty gets 4 KiB pages: first touching the rows (326 MB
    for the quickstart CNN on 256 samples) was half the engine's time, and 2.5x cheaper this way."""
    npdt = _NUMPY_DTYPES.get(like.dtype)
    if like.device.type == "cpu" and npdt is not None and math.prod(shape) * like.element_size() >= 1 << 22:
        return torch.from_numpy(np.empty(shape, dtype=npdt))
    return torch.empty(shape, dtype=like.dtype, device=like.device)
