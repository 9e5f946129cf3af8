"""Save a pruned causal LM with prunekit.save, reload it with prunekit.load, check it is bit-identical,
and generate from it.

    OMP_NUM_THREADS=1 python experiments/lm_checkpoint.py --model runs/tiny_llama --out runs/tiny_llama_pruned

Writes ``<out>/`` (the checkpoint) and prints a JSON summary (also ``results/lm/checkpoint.json`` with
``--results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

import prunekit
import prunekit.planner.lm_importance  # noqa: F401 (registers wanda)
from prunekit.config import ModelConfig
from prunekit.models import describe
from prunekit.models.causal_lm import load_causal_lm
from prunekit.planner import Target, make_plan, planner_config
from prunekit.structure import find_groups


def pruned_round_trip(model_path: str, out: Path, saved: float = 0.5, seed: int = 0) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = load_causal_lm(model_path)
    prompt = tok("self-driving cars", return_tensors="pt")
    example = {"input_ids": prompt["input_ids"]}
    base = describe(
        ModelConfig(name="hf", path=model_path), len(tok), tuple(example["input_ids"].shape[1:]), model
    )
    groups = find_groups(model, example)
    gen = torch.Generator().manual_seed(seed)
    calib = [({"input_ids": x}, x) for x in torch.randint(0, len(tok), (4, 8, 32), generator=gen)]
    plan = make_plan(
        model, groups, Target("params", saved), planner_config("uniform", importance="wanda"), calib, example
    )
    prunekit.apply_plan_(model, plan, example, groups)
    prunekit.save(model, out, plan, {}, base, example, tokenizer_source=model_path)
    loaded, _ = prunekit.load(out)
    ids = torch.randint(0, len(tok), (2, 24), generator=gen)
    with torch.no_grad():
        same = torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    state_equal = all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    text = tok.decode(loaded.generate(**prompt, max_new_tokens=12, do_sample=False)[0])
    hf = _from_pretrained(out, ids, model)
    return {
        "folder": str(out),
        "class": type(loaded).__name__,
        "params": sum(p.numel() for p in loaded.parameters()),
        "logits_bit_identical": same,
        "state_dict_bit_identical": state_equal,
        "generated": text,
        "from_pretrained": hf,
    }


def _from_pretrained(out: Path, ids: torch.Tensor, model: torch.nn.Module) -> str:
    """Whether AutoModelForCausalLM.from_pretrained rebuilds the same model (uniform widths only)."""
    from transformers import AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    except Exception as err:  # non-uniform widths: must fail loudly, which is what we record
        return f"refused: {str(err).splitlines()[0][:160]}"
    with torch.no_grad():
        same = torch.equal(model(input_ids=ids).logits, hf(input_ids=ids).logits)
    return "loads, logits bit-identical" if same else "loads, logits DIFFER"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="runs/tiny_llama")
    p.add_argument("--out", default="runs/tiny_llama_pruned")
    p.add_argument("--results", default=None, help="write the summary to this JSON file too")
    a = p.parse_args()
    summary = pruned_round_trip(a.model, Path(a.out))
    summary["command"] = "python experiments/lm_checkpoint.py " + " ".join(sys.argv[1:])
    print(json.dumps(summary, indent=2))
    if a.results:
        Path(a.results).write_text(json.dumps(summary, indent=2))
