"""ALiBi families after a head prune (pruning/alibi.py): each kept head keeps its own slope, through
generation with the KV cache, a second prune of the pruned model, a deep copy and a checkpoint reload."""

import copy

import pytest
import torch
from checkpoint_cases import hf_reference

from prunekit.pruning import apply_plan_, compose_plans, load, save
from prunekit.pruning.alibi import HEADS
from prunekit.structure import Plan, find_groups
from prunekit.testing.hf_tiny import randomise_norms, zero_masked


def _model(family: str):
    import transformers as hf

    torch.manual_seed(0)
    if family == "bloom":
        cfg = hf.BloomConfig(vocab_size=64, hidden_size=48, n_layer=2, n_head=6)
        model = hf.BloomForCausalLM(cfg)
    else:
        cfg = hf.FalconConfig(
            vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, alibi=True
        )
        model = hf.FalconForCausalLM(cfg)
    cfg._attn_implementation = "eager"
    x = {"input_ids": torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(0))}
    return randomise_norms(model.eval()), x


def _plan(groups, keep_heads):
    keep = {g.name: (keep_heads if g.name.endswith(":heads") else list(range(g.num_units))) for g in groups}
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


@pytest.mark.parametrize("family", ["bloom", "falcon"])
def test_kept_heads_keep_their_slopes_through_generation_and_a_second_prune(family, tmp_path):
    model, x = _model(family)
    base = hf_reference(model)
    groups = find_groups(model, x)
    first = _plan(groups, [0, 2, 3, 5])
    pruned = apply_plan_(copy.deepcopy(model), first, x, groups=groups)
    attn = pruned.transformer.h[1].self_attention
    assert getattr(attn, HEADS).tolist() == [0, 2, 3, 5] and attn.num_heads == 4

    # a second prune of the pruned model: heads 1 and 3 of the four left are heads 2 and 5 of six
    second = _plan(find_groups(pruned, x), [1, 3])
    again = apply_plan_(copy.deepcopy(pruned), second, x)
    assert getattr(again.transformer.h[0].self_attention, HEADS).tolist() == [2, 5]
    reference = zero_masked(model, groups, _plan(groups, [2, 5]).keep)
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
