"""LM importance criteria on a tiny LLaMA (GQA) against hand computations."""

import torch

from prunekit.data.lm_text import LMBlocks, pack
from prunekit.models.causal_lm import tiny_llama
from prunekit.planner import lm_importance  # noqa: F401 (registers lm_taylor and wanda)
from prunekit.planner.importance import unit_scores
from prunekit.structure import find_groups

V = 60


def _setup():
    model = tiny_llama(
        V, seed=2, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=24
    )
    stream = torch.randint(2, V, (70,), generator=torch.Generator().manual_seed(1)).numpy()
    blocks = LMBlocks(**pack(stream, 16, pad_id=1))  # the last block is part padding
    groups = find_groups(model, {"input_ids": torch.zeros(1, 16, dtype=torch.long)})
    return model, blocks, {g.name: g for g in groups}


def test_l2_magnitude_of_heads_by_hand():
    model, _, groups = _setup()
    attn = model.model.layers[1].self_attn
    scores = unit_scores(model, list(groups.values()), criterion="l2")
    d = attn.head_dim  # 8; query head h belongs to kv head h // 2; slot j = query heads {j, 2 + j}
    for j in range(2):
        rows = [r for h in (j, 2 + j) for r in range(h * d, (h + 1) * d)]
        hand = (attn.q_proj.weight[rows] ** 2).sum() + (attn.o_proj.weight[:, rows] ** 2).sum()
        assert torch.isclose(scores["model.layers.1.self_attn:heads"][j], hand.double().sqrt())


def test_lm_taylor_of_neurons_and_heads_by_hand():
    model, blocks, groups = _setup()
    batches = list(blocks.batches(3))  # 3 + 2 blocks: token-weighted over both
    scores = unit_scores(model, list(groups.values()), batches, "lm_taylor", num_batches=2)
    x, y = next(blocks.batches(len(blocks)))
    model.zero_grad()
    model(**x, labels=y).loss.backward()  # HF: mean over all predicted tokens of the whole set
    mlp, attn = model.model.layers[0].mlp, model.model.layers[0].self_attn
    for j in range(24):
        hand = (mlp.gate_proj.weight[j] * mlp.gate_proj.weight.grad[j]).sum()
        hand += (mlp.up_proj.weight[j] * mlp.up_proj.weight.grad[j]).sum()
        hand += (mlp.down_proj.weight[:, j] * mlp.down_proj.weight.grad[:, j]).sum()
        assert torch.isclose(
            scores["model.layers.0.mlp:neurons"][j], hand.abs().double(), rtol=1e-4, atol=1e-9
        )
    d = attn.head_dim
    for k in range(2):  # kv head k: its key and value rows, query heads 2k, 2k+1 and their o columns
        kv = slice(k * d, (k + 1) * d)
        q = slice(2 * k * d, (2 * k + 2) * d)
        hand = sum((p.weight[kv] * p.weight.grad[kv]).sum() for p in (attn.k_proj, attn.v_proj))
        hand += (attn.q_proj.weight[q] * attn.q_proj.weight.grad[q]).sum()
        hand += (attn.o_proj.weight[:, q] * attn.o_proj.weight.grad[:, q]).sum()
        assert torch.isclose(
            scores["model.layers.0.self_attn:kv_heads"][k], hand.abs().double(), rtol=1e-4, atol=1e-9
        )


def test_wanda_of_neurons_by_hand_and_padding_ignored():
    model, blocks, groups = _setup()
    full = LMBlocks(blocks.input_ids[:4], blocks.attention_mask[:4], blocks.labels[:4])
    scores = unit_scores(model, list(groups.values()), list(full.batches(4)), "wanda", num_batches=1)
    mlp = model.model.layers[1].mlp
    seen = []
    handle = mlp.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        model(**next(full.batches(4))[0])
    handle.remove()
    h = seen[0].reshape(-1, 32).double()
    a = torch.nn.functional.silu(h @ mlp.gate_proj.weight.T.double()) * (h @ mlp.up_proj.weight.T.double())
    xn, an = h.norm(dim=0), a.norm(dim=0)
    for j in range(24):
        hand = (mlp.gate_proj.weight[j].double().abs() * xn).sum() + (
            mlp.up_proj.weight[j].double().abs() * xn
        ).sum()
        hand += (mlp.down_proj.weight[:, j].double().abs() * an[j]).sum()
        assert torch.isclose(scores["model.layers.1.mlp:neurons"][j], hand, rtol=1e-6)
    # a padded block scores like its unpadded prefix (causal attention: padding at the end changes nothing before it)
    last = len(blocks) - 1
    real = int(blocks.attention_mask[last].sum())
    padded = unit_scores(model, list(groups.values()), list(blocks.subset([last]).batches(1)), "wanda")
    prefix = {"input_ids": torch.from_numpy(blocks.input_ids[last : last + 1, :real])}
    trimmed = unit_scores(model, list(groups.values()), [(prefix, prefix["input_ids"])], "wanda")
    for name in groups:
        assert torch.allclose(padded[name], trimmed[name], rtol=1e-5)
    assert not torch.allclose(padded["model.layers.1.mlp:neurons"], scores["model.layers.1.mlp:neurons"])


def test_first_layer_is_protected_by_name_pattern():
    model, _, _ = _setup()
    groups = find_groups(
        model, {"input_ids": torch.zeros(1, 16, dtype=torch.long)}, ignore=["model.layers.0.*"]
    )
    assert {g.layer for g in groups} == {"model.layers.1.self_attn", "model.layers.1.mlp"}
