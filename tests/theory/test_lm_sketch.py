"""The causal-LM estimators: the sketched NTK / Gauss-Newton quantities against the exact ones (all V
logits) and against a hand computation, the Estimator on LM data (n, d_eff, masked variants), and a
tiny LM plan by the theory planner through make_plan (as prunekit/lm_pipeline.py calls it)."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from prunekit.config import EstimateConfig
from prunekit.data.lm_text import LMBlocks, pack, tweet_texts
from prunekit.models.causal_lm import tiny_llama
from prunekit.structure import find_groups
from prunekit.theory.estimate import estimate
from prunekit.theory.estimator import Estimator
from prunekit.theory.lm_sketch import mean_and_se, projection, sketch_pass

V = 96  # 94 characters + end-of-text (0) + padding (1)
BLOCK = 24


@pytest.fixture(scope="module")
def blocks():
    """Real text (the offline tweets), character-level so that the vocabulary is small (96)."""
    texts = [" ".join(t.split()) for t in tweet_texts()[:600]]
    chars = [c for c, _ in Counter("".join(texts)).most_common(V - 2)]
    ids = {c: i + 2 for i, c in enumerate(chars)}
    stream = np.fromiter((i for t in texts for i in (*(ids[c] for c in t if c in ids), 0)), dtype=np.int64)
    return LMBlocks(**pack(stream, BLOCK, 1))


@pytest.fixture(scope="module")
def model(blocks):
    """A tiny LlamaForCausalLM given 20 AdamW steps on the text, so that its softmax is not uniform."""
    m = tiny_llama(V, seed=0, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    for _, (x, y) in zip(range(20), blocks.batches(16, shuffle_seed=0), strict=False):
        loss = m(**x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _probe(blocks, m=4):
    ids = torch.from_numpy(blocks.input_ids[:m])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position": torch.arange(m) * 3 % BLOCK}


def _jacobian(model, probe):
    """Per sample, the full V × P Jacobian of the next-token logits, by autograd (the hand computation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    out = []
    for i, t in enumerate(probe["position"].tolist()):
        z = logits[i, t]
        g = torch.autograd.grad(z, params, torch.eye(V), retain_graph=True, is_grads_batched=True)
        rows = torch.cat([x.reshape(V, -1) for x in g], 1).double()
        out.append((rows, torch.softmax(z.detach().double(), -1)))
    return out


def test_exact_pass_is_the_full_jacobian(model, blocks):
    probe = _probe(blocks)
    gram, stats = sketch_pass(model, probe, projection(V, 0, "exact"), 2**27)
    jac = _jacobian(model, probe)
    want = torch.stack([torch.stack([(a * b).sum() for b, _ in jac]) for a, _ in jac])  # Σ_v ⟨∇z_iv, ∇z_jv⟩
    torch.testing.assert_close(gram, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    gn = sum((((torch.diag(p) - torch.outer(p, p)) @ j) * j).sum() for j, p in jac) / len(jac)  # tr JᵀHJ
    exact_gn, se = mean_and_se(stats.row_estimates("gn"), exact=True)
    assert se == 0.0
    assert exact_gn == pytest.approx(float(gn), rel=1e-4)
    ntk_diag = torch.cat([v.flatten() for v in stats.per_tensor("ntk").values()])
    torch.testing.assert_close(ntk_diag, sum(j.square().sum(0) for j, _ in jac), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_sketch_is_within_its_stated_tolerance(model, blocks, kind):
    """Stated tolerance (prunekit/theory/lm_sketch.py): relative SE <= sqrt(2/k); the estimated SE is
    honest: the error is within 4 of them; and the mean over seeds converges on the exact value."""
    probe = _probe(blocks, 16)
    gram, stats = sketch_pass(model, probe, projection(V, 0, "exact"), 2**27)
    exact_ntk, exact_gn = float(gram.trace()), float(stats.row_estimates("gn").mean())
    k = 16
    for seed in range(3):
        g, s = sketch_pass(model, probe, projection(V, k, kind, seed), 2**27)
        for exact, (est, se) in (
            (exact_ntk, mean_and_se(s.row_estimates("ntk"), False)),
            (exact_gn, mean_and_se(s.row_estimates("gn"), False)),
        ):
            assert se > 0
            assert abs(est - exact) <= 4 * se
            assert abs(est - exact) <= 3 * math.sqrt(2 / k) * exact
        assert float(g.trace()) == pytest.approx(float(s.row_estimates("ntk").mean()), rel=1e-5)
    means = [
        float(sketch_pass(model, probe, projection(V, 4, kind, 100 + s), 2**27)[0].trace()) for s in range(8)
    ]
    assert abs(np.mean(means) - exact_ntk) <= 4 * np.std(means, ddof=1) / math.sqrt(len(means))


def test_estimator_on_lm_blocks(model, blocks):
    cfg = EstimateConfig(probe_samples=12, id_samples=200)
    groups = find_groups(model, next(blocks.batches(1))[0])
    est = Estimator(model, blocks, cfg, groups=groups, lm_options={"sketch_dim": 8})
    assert est.n == int((blocks.labels[:, 1:] != -100).sum())  # n counts predicted tokens, exactly
    assert est.probe_samples == 12 and math.isfinite(est.d_eff) and est.d_eff > 0
    e = est.estimates()
    assert e.C_arch > 0 and e.T_opt > 0 and e.bound is not None
    assert e.settings["sketch_dim"] == 8 and e.ntk["trace_se"] > 0
    assert sum(g["ntk_trace"] for g in e.groups.values()) < e.ntk["trace"]  # groups leave out embeddings
    p = est.predict(None)
    assert (p.C_arch, p.T_opt) == pytest.approx((e.C_arch, e.T_opt), rel=1e-9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = [g for g in groups if g.name.endswith(":heads")][0]
    masked = est.predict({heads.name: [0]})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored bit for bit
    assert masked.params < p.params and masked.ntk_trace != p.ntk_trace and masked.T_opt != p.T_opt
    assert math.isfinite(masked.train_loss) and 0 <= masked.train_accuracy <= 1
    with pytest.raises(ValueError, match="Gauss-Newton part only"):
        est.predict(None, hessian="full")
    # batches + n (training sequences, what a planner passes): n becomes predicted tokens
    batches = list(blocks.batches(8))[:2]
    again = estimate(model, batches, cfg, n=100)
    assert again.n == round(100 * (BLOCK - 1)) and again.settings["n_sequences"] == 100


def test_lm_data_on_a_model_without_a_causal_lm_head_is_refused(model, blocks):
    with pytest.raises(ValueError, match="no causal-LM head"):
        Estimator(model.model, blocks, EstimateConfig(probe_samples=4, id_samples=50))


def test_theory_planner_plans_a_tiny_lm(model, blocks):
    """A plan by the theory planner, called as prunekit/lm_pipeline.py calls make_plan."""
    import prunekit.planner.lm_importance  # noqa: F401 (lm_taylor)
    from prunekit.planner import Target, make_plan, planner_config
    from prunekit.structure import remaining_size

    example = next(blocks.batches(1))[0]
    groups = find_groups(model, example)
    calib = list(blocks.batches(8))[:2]
    cfg = planner_config(
        "theory",
        importance="lm_taylor",
        quantity="risk",
        probe_samples=8,
        allocation="curves",
        fractions=(0.5,),
    )
    plan = make_plan(model, groups, Target("params", 0.2), cfg, calib, example)
    assert any(len(plan.keep[g.name]) < g.num_units for g in groups)
    assert math.isfinite(plan.predicted_gap) and plan.predicted_gap > 0
    counts = {name: len(keep) for name, keep in plan.keep.items()}
    saved = 1 - remaining_size(model, groups, counts, example)[0] / sum(p.numel() for p in model.parameters())
    assert saved == pytest.approx(0.2, abs=0.01)


@pytest.mark.slow
def test_lm_run_with_the_theory_planner(tmp_path):
    """`prunekit run` on the causal-LM task with ``planner: theory`` (risk from the sketched Estimator)."""
    import json

    import yaml

    from prunekit.config import load_config
    from prunekit.pipeline import run

    cfg = {
        "name": "lm_theory",
        "data": {"name": "lm_text", "path": "tweets", "max_length": 32, "batch_size": 64},
        "model": {
            "name": "tiny_llama",
            "kwargs": {
                "vocab_size": 300,
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "intermediate_size": 64,
            },
        },  # fmt: skip
        "train": {"max_steps": 30, "batch_size": 16, "lr": 1.0e-2},
        "finetune": {"max_steps": 5, "batch_size": 16, "lr": 1.0e-3},
        "prune": {
            "planner": "theory",
            "importance": "lm_taylor",
            "levels": [0.3],
            "importance_batches": 2,
            "planner_options": {
                "quantity": "risk",
                "probe_samples": 16,
                "allocation": "curves",
                "fractions": [0.5],
            },
        },
        "evaluate": {"latency_repeats": 2, "latency_warmup": 1},
    }
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    report = run(load_config(path), tmp_path / "run")
    assert report["planner"] == "theory (lm_taylor)"
    assert report["levels"][0]["params_saved"] == pytest.approx(0.3, abs=0.01)
    plan = json.loads((tmp_path / "run" / "level-30" / "prunekit.json").read_text())["plan"]
    assert plan["extra"]["quantity"] == "risk" and math.isfinite(plan["predicted_gap"])
