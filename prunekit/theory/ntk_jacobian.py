"""Per-sample Jacobian rows of a model's logits w.r.t. a block of parameters, and their contraction.

Four engines (see :mod:`prunekit.theory.ntk`): ``hooks`` (one ordinary forward with hooks on the modules
that own the block's parameters, one backward per logit to their outputs, closed-form per-sample
gradients: :mod:`prunekit.theory.per_sample`; parameters of Linear, Conv1d/2d, BatchNorm1d/2d, LayerNorm
and Embedding only), ``vmap`` (torch.func ``jacrev`` vmapped over samples), ``vjp`` (one ordinary forward
per chunk, backward vmapped over one-hot output cotangents; tolerates data-dependent control flow in the
forward, such as HF attention-mask creation) and ``loop`` (one backward per output row). ``auto`` uses
``hooks`` for every block it supports, and otherwise tries ``vmap``, ``vjp``, ``loop`` in this order,
keeping the first that works; ``hooks`` on a block it does not support raises ValueError. The first
time ``hooks`` serves a block it checks its rows against one ordinary backward (a parameter also used
outside its module, e.g. ``F.linear(h, self.emb.weight)``, is invisible to hooks); on a mismatch it
warns once and the instance uses the torch.func engines from then on.
The samples must be independent (eval mode), so that the gradient of logit (i, c) of a batched forward
is sample i's own gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from prunekit.batch import Inputs, logits_of, slice_inputs
from prunekit.theory.per_sample import HookRows, SelfCheckError, empty_rows

ParamFilter = Callable[[str], bool] | Iterable[str] | Mapping[str, Tensor] | None
ENGINES = ("auto", "hooks", "vmap", "vjp", "loop")
_FUNC_ENGINES = ("vmap", "vjp", "loop")
# samples per Jacobian call; vjp/loop cost grows as chunk²
_DEFAULT_CHUNK = {"vmap": 64, "vjp": 8, "loop": 8}
# hooks: (sample, logit) rows per call; its memory is ~rows × the hooked activations of one sample
_HOOK_ROWS = 1024  # 102 samples at 10 logits: as fast as 256 (measured), a quarter of the memory


class _LogitsOf(nn.Module):
    """Wraps a model so that ``functional_call`` goes through :func:`prunekit.batch.logits_of`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Inputs) -> Tensor:
        return logits_of(self.model, inputs)


class JacobianRows:
    """``rows(block, lo, hi)``: name → ((hi-lo)·k, numel) Jacobian, rows ordered (sample, logit)."""

    def __init__(self, model: nn.Module, inputs: Inputs, engine: str = "auto", chunk: int | None = None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of samples or None; got {chunk}")
        self.wrapped, self.inputs, self.engine, self.chunk = _LogitsOf(model), inputs, engine, chunk
        # None: hooks are not (or no longer, after a failed self-check) used by this instance
        self._hooks = HookRows(model) if engine in ("auto", "hooks") else None
        self._checked: set[tuple[str, ...]] = set()  # blocks hooks has verified against a plain backward
        self._k: int | None = None  # logits per sample
        self._func = list(_FUNC_ENGINES) if self._hooks is not None else [engine]  # torch.func engines to try

    def _call(self, block: Mapping[str, Tensor], x: Inputs) -> Tensor:
        from torch.func import functional_call

        return functional_call(self.wrapped, {f"model.{k}": v for k, v in block.items()}, (x,))

    def rows(self, block: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
        if self._hooks is not None:
            reason = self._hooks.unsupported(block)
            if reason is None:
                try:
                    return self._hook_rows(block, lo, hi)
                except SelfCheckError as err:
                    msg = (
                        f"NTK Jacobian: engine 'hooks' failed its self-check ({err}); using {self._func[0]!r}"
                    )
                except Exception as err:  # hooks reshape a forward (expanded shared inputs): any error
                    if self.engine == "hooks":
                        raise
                    first = (str(err).splitlines() or [""])[0][:120]
                    msg = f"NTK Jacobian: engine 'hooks' failed ({first}); using {self._func[0]!r}"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                self._hooks = None  # warn once; the torch.func engines serve this instance from now on
            elif self.engine == "hooks":
                raise ValueError(
                    f"engine='hooks' cannot serve this block: {reason}; use engine='auto' or 'vmap'"
                )
        return self._func_rows(block, lo, hi)

    def _hook_rows(self, block: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
        assert self._hooks is not None
        if self._k is None:  # logits per sample, for the default chunk and the result's size
            with torch.no_grad():
                self._k = self._call(block, slice_inputs(self.inputs, slice(lo, lo + 1)))[0].numel()
        k = self._k
        step = self.chunk or max(1, _HOOK_ROWS // k)
        key = tuple(block)
        # chunks write into one result: a torch.cat would copy it once more, into freshly faulted pages
        out = (
            None
            if hi - lo <= step
            else {n: empty_rows(((hi - lo) * k, v.numel()), v) for n, v in block.items()}
        )
        rows: dict[str, Tensor] = {}
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            x = slice_inputs(self.inputs, slice(a, b))
            part = None if out is None else {n: o[(a - lo) * k : (b - lo) * k] for n, o in out.items()}
            check = key not in self._checked
            rows = self._hooks.rows(lambda blk, x=x: self._call(blk, x), block, b - a, check=check, out=part)
            self._checked.add(key)
        return rows if out is None else out

    def _func_rows(self, block: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
        engines = self._func
        for i, engine in enumerate(engines):
            step = self.chunk or _DEFAULT_CHUNK[engine]
            try:
                parts = [self._rows(engine, block, a, min(a + step, hi)) for a in range(lo, hi, step)]
            except RuntimeError as err:
                if i == len(engines) - 1:
                    raise
                first = (str(err).splitlines() or [""])[0][:120]
                warnings.warn(
                    f"NTK Jacobian: engine {engine!r} failed ({first}); using {engines[i + 1]!r}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self._func = [engine]  # remember what works for the next blocks
            return _cat(parts, block)
        raise RuntimeError("no Jacobian engine to try")  # unreachable: engines is never empty

    def _rows(self, engine: str, block: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
        from torch.func import jacrev, vjp, vmap

        x = slice_inputs(self.inputs, slice(lo, hi))
        b = hi - lo
        # torch.func ignores no_grad for its own transforms; it keeps autograd off the fixed parameters
        with torch.no_grad():
            if engine == "vmap":

                def one(blk: dict[str, Tensor], xi: Inputs) -> Tensor:
                    xi = (
                        {k: v.unsqueeze(0) for k, v in xi.items()}
                        if isinstance(xi, Mapping)
                        else xi.unsqueeze(0)
                    )
                    return self._call(blk, xi)[0]

                jac = vmap(jacrev(one), in_dims=(None, 0))(block, x)
                return {k: j.reshape(-1, block[k].numel()) for k, j in jac.items()}
            logits, pullback = vjp(lambda blk: self._call(blk, x), block)
            rows = logits.numel()
            eye = torch.eye(rows, dtype=logits.dtype, device=logits.device).reshape(rows, *logits.shape)
            if engine == "vjp":
                (grads,) = vmap(pullback)(eye)
            else:
                per = [pullback(e)[0] for e in eye]
                grads = {k: torch.stack([g[k] for g in per]) for k in block}
            if rows % b:
                raise ValueError(f"logits of {b} samples have {rows} entries, not a multiple of {b}")
            return {k: g.reshape(rows, -1) for k, g in grads.items()}


def _cat(parts: list[dict[str, Tensor]], block: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Chunks' rows joined per tensor (one chunk is returned as is: no copy of a large Jacobian)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for k in block:
        rows = [p[k] for p in parts]
        out[k] = torch.cat(rows, out=empty_rows((sum(len(r) for r in rows), rows[0].shape[1]), rows[0]))
    return out


def column_selector(param_filter: ParamFilter, params: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    """name → flat indices of the selected entries (None: the whole tensor); unselected names are absent."""
    if param_filter is None:
        return dict.fromkeys(params)
    if isinstance(param_filter, Mapping):
        out: dict[str, Tensor | None] = {}
        for name, mask in param_filter.items():
            if name not in params:
                raise ValueError(
                    f"param_filter names {name!r}, which is not a trainable parameter of the model"
                )
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if mask.shape != params[name].shape:
                raise ValueError(
                    f"param_filter mask for {name!r} has shape {tuple(mask.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            idx = mask.flatten().nonzero().flatten()
            if len(idx) == mask.numel():
                out[name] = None
            elif len(idx):
                out[name] = idx.to(params[name].device)
        return out
    if callable(param_filter):
        return {k: None for k in params if param_filter(k)}
    wanted = [param_filter] if isinstance(param_filter, str) else list(param_filter)
    unknown = [k for k in wanted if k not in params]
    if unknown:
        raise ValueError(
            f"param_filter names {unknown[0]!r}, which is not a trainable parameter of the model"
        )
    return dict.fromkeys(wanted)


def blocks(cols: Mapping[str, Tensor | None], params: Mapping[str, Tensor], budget: int) -> list[list[str]]:
    """Consecutive parameter tensors grouped so that one block has at most ``budget`` selected entries
    (a single tensor larger than the budget forms its own block)."""
    out: list[list[str]] = []
    size = 0
    for name, idx in cols.items():
        m = params[name].numel() if idx is None else len(idx)
        if not out or size + m > budget:
            out.append([])
            size = 0
        out[-1].append(name)
        size += m
    return out


def select(
    rows: Mapping[str, Tensor], cols: Mapping[str, Tensor | None], dtype: torch.dtype
) -> dict[str, Tensor]:
    """The selected columns of a block's Jacobian rows, per parameter, in ``dtype``. Kept apart rather than
    concatenated: the products below add up per tensor, and a concatenation would copy the whole block."""
    return {k: (r if cols[k] is None else r[:, cols[k]]).to(dtype) for k, r in rows.items()}


def accumulate(
    gram: Tensor, ja: Mapping[str, Tensor], jb: Mapping[str, Tensor], a: int, b: int, k: int, output: str
) -> None:
    """Add the (samples a.., samples b..) block of J Jᵀ = Σ_tensors J_t J_tᵀ, and its mirror, to ``gram``."""
    blk: Tensor | None = None
    for name, ra in ja.items():
        rb = jb[name]
        na, nb = ra.shape[0] // k, rb.shape[0] // k
        if output == "full":
            part = ra @ rb.T
        else:  # Σ over logits c and entries m at once: rows of sample i hold (c, m) contiguously
            part = ra.reshape(na, -1) @ rb.reshape(nb, -1).T
        blk = part if blk is None else blk.add_(part)
    if blk is None:
        return
    scale = k if output == "full" else 1  # "full" rows are (sample, logit), "trace" rows samples
    r0, c0 = a * scale, b * scale
    rows, cols = blk.shape
    gram[r0 : r0 + rows, c0 : c0 + cols] += blk
    if a != b:
        gram[c0 : c0 + cols, r0 : r0 + rows] += blk.T
