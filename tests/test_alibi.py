"""ALiBi families after a head prune (pruning/alibi.py): each kept head keeps its own slope, through
generation with the KV cache, a second prune of the pruned model, a deep copy and a checkpoint reload.
Bloom and Falcon with whole heads as units; Falcon's grouped decoder with query slots and key-value
groups as units, whose kept heads follow from the packing."""

import copy

import pytest
import torch
from checkpoint_cases import hf_reference

from prunekit.pruning import apply_plan_, compose_plans, load, save
from prunekit.pruning.alibi import HEADS
from prunekit.structure import Plan, find_groups
from prunekit.testing.reference import randomise_norms, zero_masked


def _model(family: str):
    import transformers as hf

    torch.manual_seed(0)
    if family == "bloom":
        cfg = hf.BloomConfig(vocab_size=64, hidden_size=48, n_layer=2, n_head=6)
        model = hf.BloomForCausalLM(cfg)
    else:  # "falcon_grouped": the new decoder architecture, heads g x 3 + j of key-value group g
        grouped = dict(new_decoder_architecture=True, num_kv_heads=2) if family == "falcon_grouped" else {}
        cfg = hf.FalconConfig(
            vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, alibi=True, **grouped
        )
        model = hf.FalconForCausalLM(cfg)
    cfg._attn_implementation = "eager"
    x = {"input_ids": torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(0))}
    return randomise_norms(model.eval()), x


def _plan(groups, **keep):
    """Keep ``keep[kind]`` units of each group named ``...:kind`` ("heads", "kv_heads"), all of the rest."""
    units = {g.name: keep.get(g.name.rsplit(":", 1)[-1], list(range(g.num_units))) for g in groups}
    return Plan(keep=units, num_units={g.name: g.num_units for g in groups})


_WHOLE_HEADS = (dict(heads=[0, 2, 3, 5]), [0, 2, 3, 5], dict(heads=[1, 3]), [2, 5], dict(heads=[2, 5]))
CASES = {  # first plan, the model's heads it keeps, second plan, heads kept then, the composed plan
    "bloom": _WHOLE_HEADS,  # a unit is one head
    "falcon": _WHOLE_HEADS,
    # a :heads unit is slot j of both key-value groups (heads j, 3 + j); a :kv_heads unit is group g
    "falcon_grouped": (dict(heads=[0, 2]), [0, 2, 3, 5], dict(heads=[1]), [2, 5], dict(heads=[2])),
    "falcon_grouped_kv": (
        dict(kv_heads=[1]),
        [3, 4, 5],
        dict(heads=[0, 2]),
        [3, 5],
        dict(heads=[0, 2], kv_heads=[1]),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kept_heads_keep_their_slopes_through_generation_and_a_second_prune(case, tmp_path):
    first_keep, first_heads, second_keep, second_heads, composed = CASES[case]
    model, x = _model(case.removesuffix("_kv"))
    base = hf_reference(model)
    groups = find_groups(model, x)
    first = _plan(groups, **first_keep)
    pruned = apply_plan_(copy.deepcopy(model), first, x, groups=groups)
    attn = pruned.transformer.h[1].self_attention
    assert getattr(attn, HEADS).tolist() == first_heads and attn.num_heads == len(first_heads)

    # a second prune of the pruned model, its units counted in the pruned layer's heads
    second = _plan(find_groups(pruned, x), **second_keep)
    again = apply_plan_(copy.deepcopy(pruned), second, x)
    assert getattr(again.transformer.h[0].self_attention, HEADS).tolist() == second_heads
    reference = zero_masked(model, groups, _plan(groups, **composed).keep)
    prompt = x["input_ids"][:, :4]
    with torch.no_grad():
        expected = reference(**x).logits
        assert torch.allclose(again(**x).logits, expected, rtol=0, atol=1e-5 * expected.abs().max())
        assert torch.equal(copy.deepcopy(again)(**x).logits, again(**x).logits)
        greedy = dict(max_new_tokens=6, do_sample=False, use_cache=True)
        assert torch.equal(
            again.generate(input_ids=prompt, **greedy), reference.generate(input_ids=prompt, **greedy)
        )

    # a checkpoint of the twice-pruned model records one plan from the base and rebuilds the slopes
    save(again, tmp_path / "ckpt", compose_plans(first, second), {}, base, x)
    loaded, _ = load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, again(**x).logits)


def test_kept_heads_are_the_query_heads_of_no_removed_unit_of_either_group_kind():
    from prunekit.pruning.alibi import kept_heads
    from prunekit.structure.blocks import find_blocks

    model, _ = _model("falcon_grouped")  # heads g x 3 + j: slot 1 is heads 1, 4; group 0 heads 0-2
    a = find_blocks(model)[0][0]
    assert kept_heads(model, a, {f"{a.name}:heads": [1]}) == [0, 2, 3, 5]
    assert kept_heads(model, a, {f"{a.name}:heads": [1], f"{a.name}:kv_heads": [0]}) == [3, 5]


def test_a_failed_prune_leaves_the_model_prunable(monkeypatch):
    """The undo also drops what the failed prune added (the hook marker): otherwise the next prune
    skipped the slope hook and its forward failed."""
    model, x = _model("bloom")
    groups = find_groups(model, x)
    plan = _plan(groups, heads=[0, 2, 3, 5])

    def broken(model: torch.nn.Module) -> None:
        raise RuntimeError("injected")

    with monkeypatch.context() as patched:
        patched.setattr("prunekit.pruning.hf.patch_transformer", broken)
        with pytest.raises(RuntimeError, match="the model was restored"):
            apply_plan_(model, plan, x, groups=groups)
    reference = zero_masked(model, groups, plan.keep)
    apply_plan_(model, plan, x, groups=groups)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, reference(**x).logits)
