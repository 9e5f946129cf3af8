"""What the estimators see of a causal LM's data: sampled (sequence, position) pairs, n, d_eff's points.

The data is an :class:`prunekit.data.lm_text.LMData` (its train split), its ``LMBlocks``, or a re-iterable
of ``({"input_ids", "attention_mask"}, labels)`` batches with ``labels`` (B, L) the input ids (-100 on
padding): HF causal-LM heads shift them, so the logits at position t predict ``labels[t + 1]``.

- **The probe.** ``probe_samples`` (sequence, position) pairs of predicted tokens, in an order that cycles
  through the sequences (each sequence's positions shuffled, as the classifier's probe cycles through
  classes): with at least as many sequences as probe samples, every sample comes from its own
  sequence, so the pairs are as little correlated as the data allows. A sequence is read from the train
  split only.
- **n** counts *predicted tokens*, not sequences: the training loss is the mean over predicted tokens and
  the probe's rows are (sequence, position) pairs, so n must count the same unit as the probe. With an
  LMData it is exact (the train split's predicted tokens). With batches, the caller's ``n`` counts the
  training *sequences* (what ``len(labels)`` of a batch counts, and what a planner passes) and is
  multiplied by the mean predicted tokens per sequence of the sequences read. Tokens of one sequence are
  correlated, so n overstates the effective sample size; that is a property of the bound's n, stated
  here, not corrected.
- **d_eff** is TwoNN on ``id_samples`` positions (sampled like the probe, from another seed): the output
  embedding's input (the final hidden state the logits are read from) for ``id_representation="inputs"``
  — token ids have no geometry of their own —, or the named module's output at those positions (e.g.
  ``model.embed_tokens`` for token embeddings, ``model.layers.1`` for a middle layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.theory.modes import eval_mode
from prunekit.theory.probe_data import balanced_order

IGNORE = -100


def is_lm_data(data: Any) -> bool:
    """Whether ``data`` is causal-LM text: an LMData, LMBlocks, or batches of (B, L) labels on token ids."""
    if _blocks_of(data) is not None:
        return True
    if isinstance(data, (list, tuple)):
        first = data[0] if data else None
    else:
        try:
            first = next(iter(data), None)  # a re-iterable (a DataLoader): peeking does not consume it
        except TypeError:
            return False
    return (
        isinstance(first, (list, tuple))
        and len(first) == 2
        and isinstance(first[0], Mapping)
        and "input_ids" in first[0]
        and isinstance(first[1], Tensor)
        and first[1].dim() == 2
    )


def _blocks_of(data: Any) -> Any:
    if all(hasattr(data, a) for a in ("train", "calibration", "tokenizer")):
        return data.train  # LMData: its train split
    if all(hasattr(data, a) for a in ("input_ids", "attention_mask", "labels", "batches")):
        return data  # LMBlocks
    return None


def sequences(data: Any, num: int, seed: int, n: int | None) -> tuple[dict[str, Tensor], Tensor, int, dict]:
    """Up to ``num`` training sequences (inputs, labels), n in predicted tokens, and how n was counted."""
    blocks = _blocks_of(data)
    if blocks is not None:
        labels_all = blocks.labels
        total = int((labels_all[:, 1:] != IGNORE).sum())
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(blocks), size=min(num, len(blocks)), replace=False))
        inputs = {
            "input_ids": torch.from_numpy(blocks.input_ids[rows]),
            "attention_mask": torch.from_numpy(blocks.attention_mask[rows]),
        }
        labels = torch.from_numpy(blocks.labels[rows])
        n_tok = total if n is None else int(round(n * total / max(1, len(blocks))))
        info = {"n_counts": "predicted tokens of the train split", "n_sequences": len(blocks)}
        return inputs, labels, n_tok, info
    if n is None:
        raise ValueError(
            "pass n (the number of training sequences) when the LM data is an iterable of batches"
        )
    xs, ys, seen = [], [], 0
    for x, y in data:
        xs.append({"input_ids": x["input_ids"], "attention_mask": x.get("attention_mask", None)})
        ys.append(y.detach().cpu())
        seen += y.shape[0]
        if seen >= num:
            break
    inputs = {
        "input_ids": torch.cat([x["input_ids"].cpu() for x in xs])[:num],
        "attention_mask": torch.cat(
            [
                x["input_ids"].new_ones(x["input_ids"].shape)
                if x["attention_mask"] is None
                else x["attention_mask"].cpu()
                for x in xs
            ]
        )[:num],
    }
    labels = torch.cat(ys)[:num]
    per_seq = float((labels[:, 1:] != IGNORE).sum()) / labels.shape[0]
    info = {
        "n_counts": "n sequences x mean predicted tokens per sequence read",
        "n_sequences": int(n),
        "tokens_per_sequence": per_seq,
    }
    return inputs, labels, int(round(n * per_seq)), info


def positions(labels: Tensor, num: int, seed: int) -> tuple[Tensor, Tensor]:
    """``num`` (sequence, position) pairs of predicted tokens, cycling through the sequences."""
    valid = (labels[:, 1:] != IGNORE).numpy()
    seq, pos = np.nonzero(valid)
    if len(seq) == 0:
        raise ValueError("the LM data has no predicted tokens (every label is -100): give real text blocks")
    order = balanced_order(seq, seed)[:num]
    return torch.from_numpy(seq[order]), torch.from_numpy(pos[order])


def probe_inputs(inputs: Mapping[str, Tensor], seq: Tensor, pos: Tensor, device: Any) -> dict[str, Tensor]:
    """One row per (sequence, position) pair: the sequence's tokens and the position to read."""
    return {
        "input_ids": inputs["input_ids"][seq].to(device),
        "attention_mask": inputs["attention_mask"][seq].to(device),
        "position": pos.to(device),
    }


def token_loss(
    model: nn.Module, inputs: Mapping[str, Tensor], labels: Tensor, batch: int = 32
) -> tuple[float, float]:
    """Mean next-token cross-entropy and top-1 accuracy over every predicted token of the sequences."""
    device = next(model.parameters()).device
    total, correct, count = 0.0, 0, 0
    with eval_mode(model, eager_attention=False), torch.no_grad():
        for a in range(0, labels.shape[0], batch):
            ids = inputs["input_ids"][a : a + batch].to(device)
            mask = inputs["attention_mask"][a : a + batch].to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if logits.dim() != 3:
                raise ValueError(
                    f"the data is causal-LM text but the model gives logits shaped {tuple(logits.shape)}, "
                    "not (batch, positions, vocabulary): load it with AutoModelForCausalLM"
                )
            logits = logits[:, :-1].float()
            target = labels[a : a + batch, 1:].to(device)
            keep = target != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
            correct += int((logits[keep].argmax(-1) == target[keep]).sum())
            count += int(keep.sum())
    return total / count, correct / count


def hidden_points(
    model: nn.Module, inputs: Mapping[str, Tensor], seq: Tensor, pos: Tensor, layer: str, batch: int = 32
) -> np.ndarray:
    """(N, D) points: the representation ``layer`` at each (sequence, position) pair (see the module doc)."""
    modules = dict(model.named_modules())
    if layer == "inputs":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ValueError(
                "the LM has no output embedding: set estimate.id_representation to a module name"
            )
        module, take_input = head, True
    elif layer in modules:
        module, take_input = modules[layer], False
    else:
        raise ValueError(
            f"estimate.id_representation={layer!r} is not a module of the model; use 'inputs' or a name "
            "from model.named_modules()"
        )
    captured: list[Tensor] = []

    def hook(_m: nn.Module, args: tuple, out: Any) -> None:
        x = args[0] if take_input else (out[0] if isinstance(out, (tuple, list)) else out)
        captured.append(x.detach())

    device = next(model.parameters()).device
    sequences_used = torch.unique(seq)
    where = {int(s): i for i, s in enumerate(sequences_used)}
    feats: list[Tensor] = []
    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model, eager_attention=False), torch.no_grad():
            for a in range(0, len(sequences_used), batch):
                rows = sequences_used[a : a + batch]
                captured.clear()
                model(
                    input_ids=inputs["input_ids"][rows].to(device),
                    attention_mask=inputs["attention_mask"][rows].to(device),
                    use_cache=False,
                )
                if not captured or captured[-1].dim() != 3:
                    raise ValueError(f"module {layer!r} gives no (batch, positions, features) states")
                feats.append(captured[-1].float().cpu())
    finally:
        handle.remove()
    states = torch.cat(feats)
    idx = torch.tensor([where[int(s)] for s in seq])
    return states[idx, pos].numpy()


def as_batches(data: Any) -> Any:
    """A one-shot iterator of batches kept as a list (the sequences are read more than once)."""
    if _blocks_of(data) is None and not isinstance(data, (list, tuple)) and iter(data) is data:
        return list(data)
    return data
