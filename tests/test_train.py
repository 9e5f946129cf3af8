"""prunekit.train on real MNIST-1D, one process: learning, determinism, frozen and replaced parameters,
gradient accumulation, schedules, evaluation and mixed-precision fallbacks."""

from __future__ import annotations

import gc
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from tiny_mnist1d import TinyCNN1d, loader, mnist1d_tensors, shrink_conv2_  # noqa: E402

from prunekit.config import TrainConfig  # noqa: E402
from prunekit.train import (  # noqa: E402
    build_optimizer,
    evaluate,
    finetune,
    lr_at,
    make_accelerator,
    resolve_mixed_precision,
    total_optimizer_steps,
)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return mnist1d_tensors(5000)  # the standard split: 4000 train / 1000 test


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny models only lose time to thread hand-offs on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator()


def _small(data, n: int = 512, batch_size: int = 64, seed: int = 0):
    return loader(data["x"][:n], data["y"][:n], batch_size, shuffle=True, seed=seed)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_training_learns_mnist1d(data, accelerator):
    torch.manual_seed(0)
    model = TinyCNN1d(width=32)
    train = loader(data["x"], data["y"], 64, shuffle=True, seed=0)
    test = loader(data["x_test"], data["y_test"], 256, shuffle=False)
    before = evaluate(model, test, accelerator)
    cfg = TrainConfig(epochs=5, batch_size=64, lr=3e-3, schedule="cosine", warmup_fraction=0.05)
    hist = finetune(model, train, cfg, accelerator, val_loader=test, desc="learn")
    after = evaluate(model, test, accelerator)
    # Measured: 2.30 -> ~0.82 train loss and ~0.77 test accuracy (chance 0.10) in ~5 s on 1 thread.
    assert len(hist["train_loss"]) == 5 and hist["steps"] == 5 * 63
    assert hist["train_loss"][-1] < 0.6 * hist["train_loss"][0]
    assert before["accuracy"] < 0.2 and after["accuracy"] > 0.65, (before, after)
    assert after["loss"] < before["loss"] - 1.0
    assert hist["val_accuracy"][-1] == pytest.approx(after["accuracy"])
    assert after["n"] == 1000


def test_same_seed_same_parameters_and_other_seed_differs(data, accelerator):
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3)
    results = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = TinyCNN1d(width=8)
        train = _small(data)
        list(train)  # a loader iterated before must not change the result: finetune re-seeds it
        finetune(model, train, cfg, accelerator, seed=seed)
        results.append(_params(model))
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k
    assert any(not torch.allclose(results[0][k], results[2][k]) for k in results[0])  # negative control


def test_frozen_parameters_stay_unchanged(data, accelerator):
    torch.manual_seed(0)
    model = TinyCNN1d(width=8)
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    before = _params(model)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, weight_decay=0.1)
    finetune(model, _small(data), cfg, accelerator)
    after = _params(model)
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert torch.equal(before["conv1.bias"], after["conv1.bias"])
    assert not torch.allclose(before["fc.weight"], after["fc.weight"])
    assert all(p.grad is None for p in model.parameters())  # no stale gradients left behind


def test_finetune_trains_the_new_parameters_after_a_prune(data, accelerator):
    torch.manual_seed(0)
    model = TinyCNN1d(width=8)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3)
    finetune(model, _small(data), cfg, accelerator, desc="dense")
    old_conv2 = model.conv2
    old_weight = old_conv2.weight.detach().clone()
    shrink_conv2_(model, keep=5)  # new nn.Conv1d / nn.Linear / BatchNorm1d objects
    new_conv2, new_fc = model.conv2, model.fc
    new_before = _params(model)
    model.eval()
    finetune(model, _small(data), cfg, accelerator, desc="pruned")
    assert model.conv2 is new_conv2 and model.fc is new_fc  # the caller's modules, trained in place
    assert model.conv2.weight.shape == (5, 8, 5)
    assert not torch.allclose(new_before["conv2.weight"], model.conv2.weight)
    assert not torch.allclose(new_before["fc.weight"], model.fc.weight)
    assert torch.equal(old_conv2.weight, old_weight)  # the orphaned parameters were not optimised
    assert not model.training  # the caller's train/eval mode is restored
    assert "forward" not in model.__dict__  # no wrapper left on the caller's model
    # Nothing (optimizer, accelerator registries) keeps the pruned-away parameters alive.
    gone = weakref.ref(old_conv2.weight)
    del old_conv2
    gc.collect()
    assert gone() is None


def test_empty_loader_is_a_clear_error(accelerator):
    empty = loader(torch.zeros(0, 1, 40), torch.zeros(0, dtype=torch.long), 8, shuffle=False)
    with pytest.raises(ValueError, match="the training loader yields no batches"):
        finetune(TinyCNN1d(width=4), empty, TrainConfig(), accelerator)
    with pytest.raises(ValueError, match="the evaluation loader yields no batches"):
        evaluate(TinyCNN1d(width=4), empty, accelerator)
    model = TinyCNN1d(width=4)
    before = _params(model)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(1, 40), torch.tensor(0)

    registered = len(accelerator._dataloaders)
    with pytest.raises(ValueError, match="the training loader has no length"):
        finetune(model, torch.utils.data.DataLoader(Stream()), TrainConfig(), accelerator)
    assert len(accelerator._dataloaders) == registered  # the refused loader is not kept alive
    with pytest.raises(ValueError, match="needs a prunekit.config.TrainConfig, got dict"):
        finetune(model, empty, {"epochs": 1}, accelerator)
    with pytest.raises(ValueError, match="the validation loader yields no batches: pass val_loader=None"):
        finetune(
            model,
            loader(torch.zeros(8, 1, 40), torch.zeros(8, dtype=torch.long), 4, False),
            TrainConfig(),
            accelerator,
            val_loader=empty,
        )
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())  # refused before training


def test_gradient_accumulation_matches_a_larger_batch(data, accelerator):
    """32 × 2 accumulated micro-batches = one batch of 64 (no BatchNorm, whose statistics are per batch)."""
    results = []
    for batch_size, accum in ((64, 1), (32, 2)):
        torch.manual_seed(0)
        model = TinyCNN1d(width=8, norm=False)
        cfg = TrainConfig(epochs=1, batch_size=batch_size, grad_accum_steps=accum, lr=3e-3)
        hist = finetune(model, _small(data, batch_size=batch_size), cfg, accelerator)
        assert hist["steps"] == 8 and hist["global_batch_size"] == 64
        results.append(_params(model))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_accumulation_set_in_two_places_must_agree(data):
    acc = make_accelerator(grad_accum_steps=2)
    model = TinyCNN1d(width=4)
    try:
        with pytest.raises(ValueError, match="grad_accum_steps is 3 in the train config but 2"):
            finetune(model, _small(data), TrainConfig(grad_accum_steps=3), acc)
        hist = finetune(model, _small(data), TrainConfig(max_steps=2), acc)  # the accelerator's 2 is used
        assert hist["grad_accum_steps"] == 2 and hist["steps"] == 2
        assert hist["epochs"] == pytest.approx(0.5)
    finally:
        make_accelerator()  # back to no accumulation for the other tests (accelerate shares this state)


def test_steps_from_epochs_and_max_steps(data, accelerator):
    assert total_optimizer_steps(TrainConfig(epochs=0.5), 8, 1) == 4
    assert total_optimizer_steps(TrainConfig(epochs=1.5), 8, 3) == 4  # ceil(12 / 3)
    assert total_optimizer_steps(TrainConfig(epochs=3, max_steps=5), 8, 1) == 5  # max_steps wins
    assert total_optimizer_steps(TrainConfig(epochs=0), 8, 1) == 0
    model = TinyCNN1d(width=4)
    hist = finetune(model, _small(data), TrainConfig(epochs=2.5), accelerator)
    assert hist["steps"] == 20 and len(hist["train_loss"]) == 3 and hist["epochs"] == pytest.approx(2.5)
    before = _params(model)
    hist = finetune(model, _small(data), TrainConfig(epochs=0), accelerator)
    assert hist["steps"] == 0 and hist["train_loss"] == []
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466]),
    ],
)
def test_schedules_with_warmup(schedule, expected):
    """Warmup never uses lr 0; decay starts at the peak right after warmup (as in HF's schedules)."""
    cfg = TrainConfig(lr=1.0, schedule=schedule, warmup_fraction=2 / 6)
    got = [lr_at(s, 6, cfg) for s in range(6)]
    assert got == pytest.approx(expected, abs=1e-6)


def test_named_optimizers_and_weight_decay_groups():
    model = TinyCNN1d(width=4)
    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1))
        assert type(opt) is cls
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decay["params"])
        assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, TrainConfig())


def test_evaluate_matches_a_direct_computation(data, accelerator):
    torch.manual_seed(0)
    model = TinyCNN1d(width=8)
    model.train()
    x, y = data["x_test"][:203], data["y_test"][:203]  # 203 = 4 × 50 + 3: an uneven last batch
    got = evaluate(model, loader(x, y, 50, shuffle=False), accelerator)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert got["n"] == 203
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert got["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_mixed_precision_fallbacks_on_cpu():
    with pytest.warns(UserWarning, match="fp16.*needs a CUDA GPU"):
        assert resolve_mixed_precision("fp16", cpu=True) == "no"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("bf16", cpu=True) == "bf16"  # torch's CPU autocast
        assert resolve_mixed_precision("no", cpu=True) == "no"
    with pytest.raises(ValueError, match="mixed_precision='fp8' is not one of"):
        resolve_mixed_precision("fp8", cpu=True)
    with pytest.raises(ValueError, match="grad_accum_steps=0"):
        make_accelerator(grad_accum_steps=0)


def test_bf16_finetune_on_cpu_runs_and_leaves_a_plain_model(data):
    acc = make_accelerator("bf16")  # on this CPU machine: torch's CPU autocast
    assert acc.mixed_precision == "bf16"
    torch.manual_seed(0)
    model = TinyCNN1d(width=8)
    before = _params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipe and the accelerator agree: no warning
        hist = finetune(model, _small(data), TrainConfig(epochs=1, lr=3e-3, mixed_precision="bf16"), acc)
    assert all(torch.isfinite(torch.tensor(hist["train_loss"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert not torch.allclose(before["fc.weight"], model.fc.weight)
    assert "forward" not in model.__dict__ and "_original_forward" not in model.__dict__
    assert model(data["x_test"][:4]).dtype == torch.float32  # no autocast left on the model
    acc = make_accelerator()
    assert acc.mixed_precision == "no"  # switching back within one process works
    with pytest.warns(UserWarning, match="asks for mixed_precision='bf16' but the Accelerator runs 'no'"):
        finetune(model, _small(data), TrainConfig(max_steps=1, mixed_precision="bf16"), acc)


def test_launch_checks_read_world_size_and_the_launcher_command_line(accelerator, monkeypatch, tmp_path):
    from prunekit.train.accel import _num_processes_from_argv, _num_processes_from_config, requested_processes

    # an accelerate config file asking for 2 processes, without --multi_gpu: the launcher starts ONE
    # process (checked by hand with `accelerate launch --config_file`), so the request must be seen
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n"
        "num_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n"
    )
    found = _num_processes_from_config(["--config_file", str(config), "train.py"])
    assert found == (2, f"num_processes: 2 in {config}")
    assert _num_processes_from_config(["--config_file", str(config), "--num_processes", "1", "x.py"]) is None

    # what `accelerate launch` passes on: its own options, then the script and the script's options
    assert (
        _num_processes_from_argv(["--cpu", "--num_processes", "2", "train.py", "--num_processes", "5"]) == 2
    )
    assert _num_processes_from_argv(["--num_processes=3", "train.py"]) == 3
    assert _num_processes_from_argv(["train.py", "--num_processes", "5"]) is None  # the script's own flag
    assert requested_processes() == (1, "")  # pytest is not launched by accelerate
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert requested_processes() == (4, "WORLD_SIZE=4")
    with pytest.raises(
        RuntimeError, match=r"4 processes were started .* sees 1: each process is training alone"
    ):
        finetune(TinyCNN1d(width=4), [], TrainConfig(), accelerator)
    with pytest.raises(
        RuntimeError, match=r"ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 4 "
    ):
        evaluate(TinyCNN1d(width=4), [], accelerator)


def test_dict_inputs_of_a_transformers_model(accelerator, monkeypatch):
    """HF models take dict batches (model(**inputs)) and return an output object with .logits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)  # built from a config: nothing is downloaded
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 32, (256, 8), generator=g)
    labels = (ids == 7).any(dim=1).long()  # label: does token 7 occur?
    mask = torch.ones(8, dtype=torch.long)
    samples = [({"input_ids": ids[i], "attention_mask": mask}, labels[i]) for i in range(256)]
    batches = torch.utils.data.DataLoader(samples, batch_size=32)  # collates to ({...}, labels)
    with pytest.raises(ValueError, match="must be a torch DataLoader"):
        evaluate(model, list(batches), accelerator)
    before = evaluate(model, batches, accelerator)
    hist = finetune(model, batches, TrainConfig(epochs=5, lr=1e-2, schedule="constant"), accelerator)
    after = evaluate(model, batches, accelerator)
    assert before["n"] == after["n"] == 256
    assert hist["steps"] == 40 and hist["train_loss"][-1] < hist["train_loss"][0]
    assert after["loss"] < before["loss"]


def test_diverged_loss_stops_training_with_the_fix(data, accelerator):
    """lr 1e30 sends the loss to inf / NaN: finetune raises on every rank after that pass, naming the fix."""
    from prunekit.train import TrainingDiverged

    torch.manual_seed(0)
    model = TinyCNN1d(width=8)
    cfg = TrainConfig(epochs=2, lr=1e30, batch_size=64, max_grad_norm=None)
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as err:
        finetune(model, _small(data), cfg, accelerator, desc="dense")
    assert "pass 1" in err.value.detail and "\n" not in str(err.value)
