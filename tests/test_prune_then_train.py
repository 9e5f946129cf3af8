"""After surgery the model trains: the optimizer is rebuilt from the new parameters."""

from __future__ import annotations

import pytest
import torch

from prunekit.config import TrainConfig
from prunekit.planner import Target, make_plan
from prunekit.pruning import apply_plan_
from prunekit.structure import find_groups
from prunekit.testing import example_inputs_for, tiny_resnet
from prunekit.train import finetune, make_accelerator


@pytest.mark.filterwarnings("ignore:planner 'uniform' saves")  # a tiny model's coarse groups miss 1 %
def test_pruned_model_trains_its_new_parameters_and_frozen_ones_stay_frozen() -> None:
    model = tiny_resnet(num_classes=5)
    x = example_inputs_for(model, batch=16)
    y = torch.arange(16) % 5
    model.fc.weight.requires_grad_(False)  # a frozen layer must survive surgery frozen
    groups = find_groups(model, x)
    apply_plan_(
        model, make_plan(model, groups, Target("params", 0.5), "uniform", example_inputs=x), x, groups=groups
    )
    assert model.fc.weight.requires_grad is False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=8)
    finetune(model, loader, TrainConfig(epochs=1, lr=1e-2, schedule="constant"), make_accelerator())
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    trainable = {n for n, p in after.items() if p.requires_grad}
    assert changed == trainable  # every new trainable parameter moved; nothing stale was optimised
    assert "fc.weight" not in changed
