"""Head pruning of nn.MultiheadAttention (structure/mha.py finds the heads, pruning/mha.py runs the
pruned module), on real modules: every form of the module is exact against the dense model with
the removed heads zeroed (LayerNorms randomised), under every mask and call option, inside
nn.TransformerEncoder with its fast paths, and through sizes, MACs, masking, apply_plan_, a second
prune and a checkpoint reload."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from coverage_cases import outputs, random_plan, rel_err
from torch import Tensor, nn

from prunekit.metrics import count_macs, mac_breakdown
from prunekit.pruning import apply_plan_, load, save
from prunekit.pruning.apply import compose_plans
from prunekit.pruning.mha import DENSE, HEADS, PrunedMultiheadAttention
from prunekit.structure import Plan, find_groups, mask_groups, remaining_size
from prunekit.testing.patterns import PATTERNS, pattern_factory
from prunekit.testing.reference import randomise_norms, zero_masked

TOL = 1e-5  # float32 sums in another order; a head given to the wrong place is >= 1e-2


class Block(nn.Module):
    """Queries from one Linear into an nn.MultiheadAttention of 8 heads of 4; keys and values from
    the same stream (self-attention) or from other Linears (cross-attention over 5 tokens from the
    first 3, kdim / vdim widths); residual, LayerNorm, mean, Linear."""

    def __init__(self, cross: bool = False, kdim: int | None = None, vdim: int | None = None, **mha: object):
        super().__init__()
        self.cross, self.batch_first = cross, mha.get("batch_first", True)
        self.inp = nn.Linear(12, 32)
        self.keys = nn.Linear(12, kdim or 32) if cross else None
        self.values = nn.Linear(12, vdim) if cross and vdim else None
        self.attn = nn.MultiheadAttention(32, 8, kdim=kdim, vdim=vdim, **{"batch_first": True, **mha})
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        q = h[:, :3] if self.cross else h
        k = self.keys(x) if self.keys is not None else h
        v = self.values(x) if self.values is not None else k
        if self.batch_first:
            out = self.attn(q, k, v, need_weights=False)[0]
        else:  # (L, B, E)
            out = self.attn(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), need_weights=False)[0]
            out = out.transpose(0, 1)
        return self.head(self.norm(out + q).mean(1))


VARIANTS = {
    "self": {},
    "seq_first": {"batch_first": False},
    "no_bias": {"bias": False},
    "cross": {"cross": True},
    "cross_kdim_vdim": {"cross": True, "kdim": 20, "vdim": 24},  # q/k/v_proj_weight
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "everything": dict(cross=True, kdim=20, vdim=24, add_bias_kv=True, add_zero_attn=True, batch_first=False),
}


def _block(variant: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(seed)
    model = randomise_norms(Block(**VARIANTS[variant]), seed).eval()
    return model, torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(seed))


def _pruned(model: nn.Module, x: Tensor, fraction: float, seed: int = 0, **find: object):
    """(groups, plan, zero-masked reference, pruned copy)."""
    groups = find_groups(model, x, strict=False, **find)
    plan = random_plan(groups, fraction, seed)
    pruned = apply_plan_(copy.deepcopy(model), plan, x, groups=groups)
    return groups, plan, zero_masked(model, groups, plan.keep), pruned


@pytest.mark.parametrize("fraction", [0.3, 0.5])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_head_prune_equals_the_zero_masked_model_in_eval_and_train_mode(variant, fraction):
    model, x = _block(variant)
    groups, plan, reference, pruned = _pruned(model, x, fraction)
    assert [(g.name, g.kind, g.num_units) for g in groups] == [("attn:heads", "head", 8)]
    assert type(pruned.attn) is PrunedMultiheadAttention and pruned.attn.num_heads == len(
        plan.keep["attn:heads"]
    )
    assert (
        pruned.attn.in_proj_bias is None or pruned.attn.in_proj_bias.shape[0] == 3 * 4 * pruned.attn.num_heads
    )
    for mode in ("eval", "train"):  # dropout 0: the same function in both
        pruned.train(mode == "train")
        reference.train(mode == "train")
        assert rel_err(outputs(pruned, x), outputs(reference, x)) < TOL
    assert rel_err(outputs(pruned, x), outputs(model, x)) > 1e-3  # negative control: the prune did something


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sizes_and_macs_predicted_are_the_measured_ones(variant):
    model, x = _block(variant)
    groups, plan, _, pruned = _pruned(model, x, 0.5)
    counts = {g.name: len(plan.keep[g.name]) for g in groups}
    assert remaining_size(model, groups, counts, x) == (
        sum(p.numel() for p in pruned.parameters()),
        count_macs(pruned, x),
    )
    assert groups[0].macs_per_unit > 0  # the attention's work scales with its heads
    # q 3 (cross) or 5 queries, keys 5 (+ bias_k, + the zero key): 2 x queries x keys x width 16
    lq, keys = (3 if VARIANTS[variant].get("cross") else 5), 5
    keys += bool(VARIANTS[variant].get("add_bias_kv")) + bool(VARIANTS[variant].get("add_zero_attn"))
    assert mac_breakdown(pruned, x)["attn:attention"] == 2 * lq * keys * 16


def _calls(lq: int, lk: int, heads: int) -> dict[str, dict]:
    g = torch.Generator().manual_seed(3)
    band = torch.rand(lq, lk, generator=g) > 0.6
    band[:, 0] = False  # every query sees a key: no all-masked row (NaN in both)
    pad = torch.zeros(2, lk, dtype=torch.bool)
    pad[1, -2:] = True
    return {
        "defaults": {},
        "no_weights": {"need_weights": False},
        "per_head_weights": {"average_attn_weights": False},
        "bool_mask": {"attn_mask": band},
        "float_mask": {"attn_mask": torch.randn(lq, lk, generator=g), "need_weights": False},
        "mask_per_head": {"attn_mask": torch.randn(2 * heads, lq, lk, generator=g)},
        "key_padding": {"key_padding_mask": pad, "need_weights": False},
        "both_masks": {"key_padding_mask": pad, "attn_mask": band},
        "causal": {"attn_mask": nn.Transformer.generate_square_subsequent_mask(lq), "is_causal": True,
                   "need_weights": False},
    }  # fmt: skip


@pytest.mark.parametrize("variant", ["self", "everything"])
def test_the_pruned_module_takes_every_mask_and_option_of_nn_multihead_attention(variant):
    model, x = _block(variant)
    _, plan, reference, pruned = _pruned(model, x, 0.5)
    kept = plan.keep["attn:heads"]
    mine, dense = pruned.attn, reference.attn
    lq = lk = 5 if variant == "self" else None
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 5, 32, generator=g)
    k = v = q
    if variant == "everything":  # cross, kdim 20 / vdim 24, (L, B, E)
        lq, lk = 3, 5
        q, k, v = (torch.randn(n, 2, w, generator=g) for n, w in ((3, 32), (5, 20), (5, 24)))
    for name, kwargs in _calls(lq, lk, 8).items():
        with torch.no_grad():
            out, weights = mine(q, k, v, **kwargs)
            ref, ref_weights = dense(q, k, v, **{**kwargs, "average_attn_weights": False})
        assert rel_err([out], [ref]) < TOL, name
        if weights is None:
            assert not kwargs.get("need_weights", True), name
            continue
        kept_weights = ref_weights[:, kept]  # the removed heads did no work to report
        expected = kept_weights if kwargs.get("average_attn_weights") is False else kept_weights.mean(1)
        assert rel_err([weights], [expected]) < TOL, name
    per_kept = _calls(lq, lk, 8)["mask_per_head"]["attn_mask"].view(2, 8, lq, lk)[:, kept].reshape(-1, lq, lk)
    with torch.no_grad():  # a mask for the kept heads alone is taken as it is
        assert torch.equal(
            mine(q, k, v, attn_mask=per_kept)[0], mine(q, k, v, **_calls(lq, lk, 8)["mask_per_head"])[0]
        )
    with pytest.raises(RuntimeError, match="one mask per head of the dense module"):
        mine(q, k, v, attn_mask=torch.zeros(3, lq, lk))
    with pytest.raises(AssertionError, match="key_padded_mask.shape"):  # as torch: (S, B) is not (B, S)
        mine(q, k, v, key_padding_mask=torch.zeros(lk, 2, dtype=torch.bool))


def test_unbatched_calls_and_nested_inputs():
    model, x = _block("self")
    _, _, reference, pruned = _pruned(model, x, 0.3)
    q = torch.randn(5, 32)
    with torch.no_grad():
        assert rel_err([pruned.attn(q, q, q)[0]], [reference.attn(q, q, q)[0]]) < TOL
    nested = torch.nested.nested_tensor([torch.randn(3, 32), torch.randn(5, 32)])
    with pytest.raises(ValueError, match="enable_nested_tensor=False"):
        pruned.attn(nested, nested, nested)


class Encoder(nn.Module):
    """Linear -> nn.TransformerEncoder (2 layers of 8 heads, nested tensors enabled) -> mean -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 8, 48, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        for copied in self.encoder.layers:  # the stack deep-copies one layer: make the two differ
            copied.self_attn._reset_parameters()
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.inp(x)).mean(1))


def _counting(monkeypatch, name: str) -> list[int]:
    calls, original = [0], getattr(torch, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, name, counted)
    return calls


def test_transformer_encoder_fast_path_and_nested_tensors_are_kept_off_for_pruned_layers(monkeypatch):
    model, x = randomise_norms(Encoder(), 2).eval(), torch.randn(2, 5, 12)
    with pytest.raises(
        ValueError, match=r"^group inp:out couples to encoder.layers.0.self_attn \(Multihead.*'inp'"
    ):
        find_groups(model, x)
    groups, plan, reference, pruned = _pruned(model, x, 0.5, ignore=["inp"])
    assert {g.kind for g in groups} == {"head", "neuron"} and len(groups) == 4
    assert not pruned.encoder.use_nested_tensor and reference.encoder.use_nested_tensor
    fused, nested = (
        _counting(monkeypatch, "_transformer_encoder_layer_fwd"),
        _counting(monkeypatch, "_nested_tensor_from_mask"),
    )
    with torch.no_grad():
        mine = outputs(pruned, x)
        assert fused[0] == 0
        assert rel_err(mine, outputs(reference, x)) < TOL
        assert fused[0] == 2  # the dense reference does take the fused path the pruned model avoids
        pad = torch.zeros(2, 5, dtype=torch.bool)
        pad[1, -2:] = True  # left aligned: the dense encoder turns its input into a nested tensor
        h = pruned.inp(x)
        mine, ref = (
            pruned.encoder(h, src_key_padding_mask=pad),
            reference.encoder(h, src_key_padding_mask=pad),
        )
    assert nested[0] == 1  # the reference only
    real = ~pad  # the nested path leaves zeros at padded positions, the slow path does not
    assert rel_err([mine[real]], [ref[real]]) < TOL
    torch.manual_seed(0)
    assert rel_err(outputs(pruned.train(), x), outputs(reference.train(), x)) < TOL


def test_masked_evaluation_equals_surgery():
    model, x = PATTERNS["torch_decoder"]()
    groups, plan, _, pruned = _pruned(model, x, 0.5, ignore=["embed", "memory"])
    removed = {g.name: sorted(set(range(g.num_units)) - set(plan.keep[g.name])) for g in groups}
    with mask_groups(model, groups, removed):
        masked = outputs(model, x)
    assert rel_err(outputs(pruned, x), masked) < TOL


def _save_load(model: nn.Module, plan: Plan, x: Tensor, folder) -> nn.Module:
    from prunekit.config import ModelConfig
    from prunekit.models.registry import describe, register_model, registered_models

    if "pattern_torch_decoder" not in registered_models():
        register_model("pattern_torch_decoder", pattern_factory("torch_decoder"))
    base = describe(ModelConfig(name="pattern_torch_decoder"), num_classes=1, input_shape=tuple(x.shape[1:]))
    save(model, folder, plan, None, base, x)
    return load(folder)[0]


def test_a_second_prune_composes_and_reloads_bit_identically(tmp_path):
    model, x = PATTERNS["torch_decoder"]()
    groups, first, _, once = _pruned(model, x, 0.3)  # strict=False: the two streams are left out
    again = find_groups(once, x, strict=False)
    assert [g.name for g in again] == [g.name for g in groups]  # names stay from round to round
    second = random_plan(again, 0.3, seed=5)
    twice = apply_plan_(copy.deepcopy(once), second, x, groups=again)
    composed = compose_plans(first, second)
    direct = apply_plan_(copy.deepcopy(model), composed, x)  # groups found by apply_plan_ itself
    for name in ("layer.self_attn", "layer.multihead_attn"):
        kept = composed.keep[f"{name}:heads"]
        assert getattr(twice.get_submodule(name), HEADS).tolist() == kept
        assert getattr(direct.get_submodule(name), HEADS).tolist() == kept
    assert rel_err(outputs(twice, x), outputs(zero_masked(model, groups, composed.keep), x)) < TOL
    assert rel_err(outputs(twice, x), outputs(direct, x)) < TOL
    loaded = _save_load(twice, composed, x, tmp_path / "ckpt")
    mine, theirs = twice.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(torch.equal(a, b) for a, b in zip(outputs(twice, x), outputs(loaded, x), strict=True))
    for name in ("layer.self_attn", "layer.multihead_attn"):
        assert type(loaded.get_submodule(name)) is PrunedMultiheadAttention
        assert torch.equal(
            getattr(loaded.get_submodule(name), HEADS), getattr(twice.get_submodule(name), HEADS)
        )


def test_a_failed_prune_restores_the_class_and_hooks(monkeypatch):
    model, x = _block("self")
    groups = find_groups(model, x, strict=False)
    plan = random_plan(groups, 0.5, 0)

    def broken(model: nn.Module) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr("prunekit.pruning.hf.patch_transformer", broken)
    with pytest.raises(RuntimeError, match="the model was restored"):
        apply_plan_(model, plan, x, groups=groups)
    attn = model.attn
    assert type(attn) is nn.MultiheadAttention and attn.num_heads == 8 and not attn._forward_pre_hooks
    assert attn.in_proj_weight.shape == (96, 32) and not hasattr(attn, HEADS) and not hasattr(attn, DENSE)


@pytest.mark.parametrize("base", [nn.MultiheadAttention, PrunedMultiheadAttention])
def test_a_subclass_with_its_own_forward_is_not_cut(caplog, base):
    class Custom(base):  # surgery would swap its class for PrunedMultiheadAttention, losing its forward
        pass

    model, x = _block("self")
    model.attn.__class__ = Custom
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.mha"):
        assert find_groups(model, x, strict=False) == []
    assert "head groups not offered (Custom subclasses nn.MultiheadAttention" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.mha"):
        find_groups(model, x, strict=False, ignore=["attn"])
    assert not caplog.text  # a module the user left alone is not inspected
