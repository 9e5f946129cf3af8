"""The hooks engine (prunekit.theory.per_sample) against the torch.func engines, row for row."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.config import ModelConfig
from prunekit.models.registry import build_model
from prunekit.structure.units import trainable_parameters
from prunekit.testing import models as tiny
from prunekit.theory.modes import eval_mode
from prunekit.theory.ntk import ntk_gram
from prunekit.theory.ntk_jacobian import JacobianRows
from prunekit.theory.per_sample import HookRows


def _random_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that a wrong x̂ cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model


def _rows(model: nn.Module, x: object, engine: str, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Jacobian rows of all trainable parameters, one block, the way ntk_gram calls the engines."""
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    with eval_mode(model):
        block = {k: v.detach() for k, v in trainable_parameters(model).items()}
        return JacobianRows(model, x, engine, chunk).rows(block, 0, n)


def _assert_rows_equal(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(ref)
    top = max(float(r.abs().max()) for r in ref.values())
    assert top > 0
    for k in ref:
        assert ours[k].shape == ref[k].shape and ours[k].dtype == ref[k].dtype, k
        assert torch.allclose(ours[k], ref[k], rtol=1e-4, atol=1e-6 * top), k


def _hooks_rows(model: nn.Module, x: object, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Rows by engine='hooks', which must serve the block itself: any warning (a fallback) fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return _rows(model, x, "hooks", chunk)


def _cnn1d() -> nn.Module:
    return _random_bn_stats(build_model(ModelConfig(name="cnn1d", kwargs={"width": 32}), 10, (1, 40)))


# ------------------------------------------------------------------------------ equal to vmap
@pytest.mark.parametrize("name", ["tiny_mlp", "tiny_resnet", "tiny_grouped_conv", "tiny_mobile", "cnn1d"])
def test_hooks_rows_equal_vmap(name: str) -> None:
    torch.manual_seed(0)
    model = _cnn1d() if name == "cnn1d" else _random_bn_stats(getattr(tiny, name)())
    x = torch.randn(5, 1, 40) if name == "cnn1d" else tiny.example_inputs_for(model, batch=5)
    ref = _rows(model, x, "vmap")
    _assert_rows_equal(_hooks_rows(model, x), ref)
    _assert_rows_equal(_hooks_rows(model, x, chunk=2), ref)  # chunks of 2, 2, 1 written into one result


class _Zoo(nn.Module):
    """Every layer rule in its less common forms: strided, dilated, 'same' with an even kernel (padding
    at the end only), 'valid', grouped and depthwise convs with bias; BatchNorm1d on (b, C); LayerNorm
    over two dims and without bias; Linear on tokens; an Embedding with padding_idx; in-place ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.c1 = nn.Conv1d(6, 8, 4, padding="same", dilation=3)
        self.c2 = nn.Conv2d(2, 4, 3, stride=2, padding=(1, 2), dilation=(1, 2), groups=2)
        self.c3 = nn.Conv2d(4, 4, 3, padding="valid", groups=4)
        self.bn = nn.BatchNorm1d(8)
        self.ln2 = nn.LayerNorm((8, 5))
        self.ln = nn.LayerNorm(8, bias=False)
        self.tok = nn.Linear(8, 8)
        self.head = nn.Linear(8 + 8, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0, :5] * 3).long().clamp(0, 6)  # (b, 5) token ids, some 0 = padding
        h = self.c1(self.emb(ids).transpose(1, 2))  # (b, 8, 5)
        h = self.act(self.ln2(h))
        h = self.tok(self.ln(h.transpose(1, 2))).mean(1)  # Linear over 5 tokens
        img = x[:, :2].reshape(-1, 2, 6, 6)
        z = self.c3(self.act(self.c2(img))).mean((2, 3))  # (b, 4)
        z = self.act(self.bn(torch.cat([z, z * 2], 1)))
        return self.head(torch.cat([h, z], 1))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_zoo_of_layer_forms_equals_vmap() -> None:
    torch.manual_seed(0)
    model = _random_bn_stats(_Zoo())
    x = torch.rand(4, 3, 36)
    x[0, 0, :2] = 0  # padding ids: their embedding row gets no gradient
    ref = _rows(model, x, "vmap")
    assert float(ref["emb.weight"].reshape(4, 3, 7, 6)[:, :, 0].abs().max()) == 0
    _assert_rows_equal(_hooks_rows(model, x), ref)


def test_tiny_bert_equals_vjp() -> None:
    """Linear, LayerNorm and Embedding (position ids shared by the batch: dim 0 of size 1), with a padded
    sequence; vmap cannot trace HF mask creation, so the reference is vjp."""
    model = tiny.tiny_bert()
    x = tiny.example_inputs_for(model, batch=3, seq_len=6)
    x["input_ids"][1, 4:] = 0
    x["attention_mask"][1, 4:] = 0
    _assert_rows_equal(_hooks_rows(model, x), _rows(model, x, "vjp"))


class _Twice(nn.Module):
    """One Linear and one Conv1d, each called twice: their per-sample gradients add over the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.tanh(self.conv(x))).flatten(1)
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_module_called_twice_equals_vmap() -> None:
    torch.manual_seed(1)
    model, x = _Twice(), torch.randn(4, 2, 4)
    _assert_rows_equal(_hooks_rows(model, x), _rows(model, x, "vmap"))


# ------------------------------------------------------------------------------------- fallbacks
class _TiedHead(nn.Module):
    """The output layer shares the embedding's weight (weight tying): one tensor, two owners."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(ids).mean(1))))


def test_tied_parameter_falls_back_and_equals_vmap() -> None:
    torch.manual_seed(2)
    model, ids = _TiedHead(), torch.randint(0, 5, (4, 3))
    assert "weight tying" in HookRows(model).unsupported(["mid.weight", "emb.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", RuntimeWarning
        )  # a statically unsupported block falls back without a warning
        auto = _rows(model, ids, "auto")
    _assert_rows_equal(auto, _rows(model, ids, "vmap"))
    with pytest.raises(ValueError, match=r"'emb.weight' .*weight tying.*engine='auto' or 'vmap'"):
        _rows(model, ids, "hooks")


class _Scaled(nn.Linear):
    """A subclass with its own forward: the Linear rule would be wrong for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x) ** 2


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Scaled(3, 4)
        self.b = nn.Linear(4, 2)
        self.gain = nn.Parameter(torch.tensor(1.5))  # used directly, owned by no supported module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) * self.gain


def test_explicit_hooks_on_unsupported_blocks_raise_and_auto_falls_back() -> None:
    torch.manual_seed(3)
    model, x = _Unsupported(), torch.randn(4, 3)
    params = dict(model.named_parameters())
    for name, why in [("a.weight", "_Scaled"), ("gain", "_Unsupported")]:
        with eval_mode(model), pytest.raises(ValueError, match=rf"'{name}' .*{why}.*engine='auto' or 'vmap'"):
            JacobianRows(model, x, "hooks").rows({name: params[name].detach()}, 0, 4)
    only_b = {"b.weight": model.b.weight.detach(), "b.bias": model.b.bias.detach()}
    with eval_mode(model):  # the supported block is served by hooks, the others fall back
        hooks = JacobianRows(model, x, "hooks").rows(only_b, 0, 4)
        vmap = JacobianRows(model, x, "vmap").rows(only_b, 0, 4)
    _assert_rows_equal(hooks, vmap)
    _assert_rows_equal(_rows(model, x, "auto"), _rows(model, x, "vmap"))


class _FunctionalUse(nn.Module):
    """``fc.weight`` is also used by F.linear in the parent's forward: hooks on ``fc`` cannot see that."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.out(h + 0.5 * F.linear(h, self.fc.weight, self.fc.bias))


def test_functional_use_outside_the_module_fails_the_self_check_once() -> None:
    torch.manual_seed(4)
    model, x = _FunctionalUse(), torch.randn(5, 4)
    ref = ntk_gram(model, x, output="full", engine="vmap")
    with pytest.warns(RuntimeWarning, match=r"self-check .*'fc.weight'.*outside its module") as rec:
        # one tensor per block: the check fails on the first block, later blocks go straight to vmap
        got = ntk_gram(model, x, output="full", engine="auto", block_elements=5 * 3 * 16)
    assert sum("engine 'hooks'" in str(w.message) for w in rec) == 1
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))
    with pytest.warns(RuntimeWarning, match="self-check"):
        hooks = ntk_gram(model, x, output="full", engine="hooks")
    assert torch.allclose(hooks, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


class _DataDependent(nn.Module):
    """Python control flow on a tensor value (vmap cannot trace it) and a bare parameter (hooks cannot
    serve it): auto must go on to vjp, as it did before the hooks engine existed."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.gain = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.gain
        return y if float(x.sum()) > -1e9 else -y


def test_auto_still_falls_back_from_vmap_to_vjp() -> None:
    torch.manual_seed(5)
    model, x = _DataDependent(), torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="engine 'vmap' failed"):
        auto = ntk_gram(model, x, output="full")
    loop = ntk_gram(model, x, output="full", engine="loop")
    assert torch.allclose(auto, loop, rtol=1e-6, atol=1e-9 * float(loop.abs().max()))


# ------------------------------------------------------------------------------------- ntk_gram
@pytest.mark.parametrize("output", ["trace", "full"])
def test_ntk_gram_hooks_equals_vmap(output: str) -> None:
    torch.manual_seed(6)
    model = _cnn1d().train()  # ntk_gram switches to eval mode (BatchNorm on running stats) and back
    x = torch.randn(6, 1, 40)
    ref = ntk_gram(model, x, output=output, engine="vmap")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = ntk_gram(model, x, output=output, engine="hooks")
        # small blocks: several blocks, a tensor bigger than the budget recomputed on pairs of sample chunks
        small = ntk_gram(model, x, output=output, engine="hooks", block_elements=6 * 10 * 4000)
    assert model.training
    tol = 1e-5 * float(ref.abs().max())
    assert torch.allclose(got, ref, rtol=1e-4, atol=tol)
    assert torch.allclose(small, ref, rtol=1e-4, atol=tol)
    masks = {
        "features.3.weight": torch.rand(64, 32, 5) < 0.5,
        "classifier.bias": torch.ones(10, dtype=torch.bool),
    }
    part = ntk_gram(model, x, output=output, engine="hooks", param_filter=masks)
    assert torch.allclose(
        part, ntk_gram(model, x, output=output, engine="vmap", param_filter=masks), rtol=1e-4, atol=tol
    )
