"""Model registry and built-in models.

``build_model(cfg, num_classes, input_shape)`` builds a registered model by name; ``register_model`` adds
one. Built-ins: mlp, simple_cnn, cnn1d, resnet20, resnet56, resnet20_1d, resnet56_1d, hf, minilm,
efficientnet_lite0. ``describe`` / ``build_from_reference`` let checkpoints rebuild the base architecture.
"""

from __future__ import annotations

from prunekit.models.cnn import cnn1d, simple_cnn
from prunekit.models.efficientnet import efficientnet_lite0
from prunekit.models.hf import hf, hf_config_for, hf_path, minilm
from prunekit.models.inputs import example_inputs
from prunekit.models.mlp import mlp
from prunekit.models.registry import (
    build_from_reference,
    build_model,
    describe,
    register_model,
    registered_models,
)
from prunekit.models.resnet import resnet20, resnet20_1d, resnet56, resnet56_1d

__all__ = [
    "build_from_reference",
    "build_model",
    "describe",
    "example_inputs",
    "hf_path",
    "register_model",
    "registered_models",
]

for _name, _factory in [
    ("mlp", mlp),
    ("simple_cnn", simple_cnn),
    ("cnn1d", cnn1d),
    ("resnet20", resnet20),
    ("resnet56", resnet56),
    ("resnet20_1d", resnet20_1d),
    ("resnet56_1d", resnet56_1d),
    ("efficientnet_lite0", efficientnet_lite0),
]:
    register_model(_name, _factory)
register_model("hf", hf, hf_config=hf_config_for)
register_model("minilm", minilm, hf_config=hf_config_for)
