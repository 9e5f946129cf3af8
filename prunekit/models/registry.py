"""The model registry: names users write in YAML, mapped to factories that build ``nn.Module`` s.

A factory is called as ``factory(num_classes=..., input_shape=..., **cfg.kwargs)``. Factories that need
the model config's ``path`` or ``trust_remote_code`` declare parameters of those names; ``build_model``
fills them from the :class:`~prunekit.config.ModelConfig`, never from ``kwargs``. A factory that loads
pretrained weights declares ``pretrained: bool = True`` so that checkpoints can rebuild the bare
architecture (``build_from_reference``) without the weights and without a network.

Every build runs under a fixed torch seed inside ``torch.random.fork_rng``: the same config gives the same
initial weights (a new classification head included), and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.config import ModelConfig

Factory = Callable[..., nn.Module]
# Filled by build_model from its own arguments / the ModelConfig, so users cannot pass them in kwargs.
_RESERVED = ("num_classes", "input_shape", "path", "trust_remote_code")
REFERENCE_FORMAT = 1


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    # For HF-backed entries: returns the transformers config of the model (num_labels set) without
    # loading weights, so that describe() can store it and build_from_reference can rebuild offline.
    hf_config: Callable[[ModelConfig, int], Any] | None = None


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, factory: Factory, *, hf_config: Callable[[ModelConfig, int], Any] | None = None
) -> None:
    """Register ``factory`` under ``name`` (the value of ``model.name`` in a config). Names are unique."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(
            f"model '{name}' is already registered: pick another name (registered: {', '.join(sorted(_REGISTRY))})"
        )
    if not callable(factory):
        raise ValueError(f"factory for model '{name}' must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = _Entry(factory, hf_config)


def registered_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}': set model.name to one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _user_params(factory: Factory) -> tuple[list[str], bool]:
    """The keyword arguments a user may set for ``factory``, and whether it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _RESERVED
    ]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_kwargs(name: str, factory: Factory, kwargs: dict[str, Any]) -> None:
    allowed, open_ended = _user_params(factory)
    for key in kwargs:
        if key in _RESERVED:
            raise ValueError(
                f"model.kwargs.{key} is not allowed for model '{name}': it comes from "
                f"{'the data' if key in ('num_classes', 'input_shape') else f'model.{key}'}"
            )
        if key not in allowed and not open_ended:
            raise ValueError(
                f"unknown model.kwargs.{key} for model '{name}'; allowed: {', '.join(allowed) or '(none)'}"
            )


def _shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints (numpy integers too); empty when it is not a sequence of integers."""
    try:
        return tuple(operator.index(d) for d in input_shape)
    except TypeError:
        return ()


def _call(
    name: str, cfg: ModelConfig, kwargs: dict[str, Any], num_classes: int, input_shape: tuple, seed: int
) -> nn.Module:
    entry = _entry(name)
    _check_kwargs(name, entry.factory, kwargs)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    shape = _shape(input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive integers (per example, e.g. (1, 40)), "
            f"got {input_shape!r}"
        )
    params = inspect.signature(entry.factory).parameters
    extra: dict[str, Any] = {}
    if "path" in params:
        extra["path"] = cfg.path
    if "trust_remote_code" in params:
        extra["trust_remote_code"] = cfg.trust_remote_code
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.factory(num_classes=num_classes, input_shape=shape, **extra, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory of model '{name}' returned {type(model).__name__}, not an nn.Module")
    return model


def build_model(cfg: ModelConfig, num_classes: int, input_shape: tuple, seed: int = 0) -> nn.Module:
    """Build the model ``cfg.name`` with ``cfg.kwargs`` for ``num_classes`` classes and per-example
    ``input_shape`` (e.g. ``(1, 40)``). Deterministic given ``seed``; raises ValueError on a bad name/kwarg."""
    return _call(cfg.name, cfg, dict(cfg.kwargs), num_classes, input_shape, seed)


def describe(
    cfg: ModelConfig, num_classes: int, input_shape: tuple, model: nn.Module | None = None
) -> dict[str, Any]:
    """A JSON-able reference to the base model, enough for :func:`build_from_reference` to rebuild its
    architecture offline. For HF-backed models the transformers config is stored (from ``model`` when
    given, so that any patched dims are kept; else read from the model's path without loading weights)."""
    entry = _entry(cfg.name)
    ref: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "name": cfg.name,
        "kwargs": dict(cfg.kwargs),
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "path": cfg.path,
        "trust_remote_code": bool(cfg.trust_remote_code),
    }
    if entry.hf_config is not None:
        config = getattr(model, "config", None) if model is not None else None
        if config is None or not hasattr(config, "to_dict"):
            config = entry.hf_config(cfg, int(num_classes))
        ref["hf_config"] = config.to_dict()
    return ref


def build_from_reference(
    ref: dict[str, Any], seed: int = 0, trust_remote_code: bool = False, code_folder: str | None = None
) -> nn.Module:
    """Rebuild the (freshly initialised, not pretrained) base architecture from a :func:`describe` reference.

    A reference is data read from a checkpoint, so it never decides whether code runs:
    ``ref["trust_remote_code"]`` and ``ref["path"]`` are ignored. ``trust_remote_code`` is the caller's
    own choice; remote code, when allowed, is read from ``code_folder`` (the checkpoint folder) only.
    Factories that take ``path`` get ``None``: nothing is read from a folder or hub id the file names.
    """
    if not isinstance(ref, dict) or "name" not in ref:
        raise ValueError("model reference must be a dict from prunekit.models.describe (it has no 'name')")
    if int(ref.get("format", 0)) > REFERENCE_FORMAT:
        raise ValueError(
            f"model reference format {ref.get('format')} is newer than this prunekit understands "
            f"({REFERENCE_FORMAT}): upgrade prunekit"
        )
    if "hf_config" in ref:
        from prunekit.models.hf import model_from_config_dict

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return model_from_config_dict(
                ref["hf_config"],
                trust_remote_code=trust_remote_code,
                code_folder=code_folder,
                auto_class_name=ref.get("hf_auto_class"),
                class_name=ref.get("hf_class"),
                attn_implementation=ref.get("attn_implementation"),
            )
    entry = _entry(ref["name"])
    if entry.hf_config is not None:  # 'hf' / 'minilm' rebuild from their stored config, never from a path
        raise ValueError(f"model reference of '{ref['name']}' has no hf_config: it cannot be rebuilt offline")
    cfg = ModelConfig(
        name=ref["name"], kwargs=dict(ref.get("kwargs") or {}), trust_remote_code=trust_remote_code
    )
    kwargs = dict(cfg.kwargs)
    allowed, _ = _user_params(entry.factory)
    if "pretrained" in allowed:
        kwargs["pretrained"] = False  # the checkpoint supplies the weights; no download, no disk read
    return _call(cfg.name, cfg, kwargs, int(ref["num_classes"]), tuple(ref["input_shape"]), seed)
