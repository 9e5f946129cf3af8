"""Real multi-process runs through `accelerate launch` (gloo DDP on CPU) and the two launches that
silently lose processes. All launches start at once (module fixture) to keep the wall time down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_finetune.py"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
WORKING_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
WORKING_FLAGS += ["--dynamo_backend", "no"]
FIX = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1"

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
cpu_only_trap = pytest.mark.skipif(torch.cuda.is_available(), reason="a trap of machines without GPUs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, use_cpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # An empty HF_HOME: no user `accelerate config` file can change what these launches do.
    env.update(HF_HOME=str(tmp / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_finetune import run
    from tiny_mnist1d import mnist1d_tensors, save_tensors

    data = tmp / "mnist1d_640.safetensors"  # generated once here, not in every process
    save_tensors(mnist1d_tensors(640), data)
    launches = {
        # the launch that works: two gloo DDP ranks, 32 per rank = global batch 64
        "ddp": (
            [*WORKING_FLAGS, "--main_process_port", str(_free_port()), str(SCRIPT), "--batch-size", "32"],
            True,
        ),
        # trap (a): --cpu picks the simple launcher, which starts ONE process
        "trap_cpu_flag": (["--cpu", "--num_processes", "2", str(SCRIPT), "--batch-size", "32"], False),
        # trap (a'): without --multi_gpu on a machine without GPUs: the same one-process launcher
        "trap_no_multi_gpu": (["--num_processes", "2", str(SCRIPT), "--batch-size", "32"], False),
        # trap (b): two processes, but a plain Accelerator() on CPU forms no process group
        "trap_plain": (
            [*WORKING_FLAGS, "--main_process_port", str(_free_port()), str(SCRIPT), "--batch-size", "32"]
            + ["--accelerator", "plain"],
            False,
        ),
    }
    if torch.cuda.is_available():  # these two are CPU-only traps; with GPUs the launches are real DDP
        launches.pop("trap_no_multi_gpu")
        launches.pop("trap_plain")
    procs = {}
    for name, (args, use_cpu) in launches.items():
        out = tmp / name
        procs[name] = subprocess.Popen(
            [*LAUNCH, *args, "--out", str(out), "--data", str(data)],
            env=_env(tmp, use_cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    # The one-process reference runs here while the launches run: same data, same global batch of 64.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tmp / "ref", batch_size=64, data=data)
    finally:
        torch.set_num_threads(threads)
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "out": tmp / name}
    results["ref"] = {"rc": 0, "out": tmp / "ref"}
    return results


def _rank(results, name: str, rank: int):
    out = results[name]["out"]
    return load_file(str(out / f"rank{rank}.safetensors")), json.loads((out / f"rank{rank}.json").read_text())


def test_two_ranks_train_in_lockstep(runs):
    ddp = runs["ddp"]
    assert ddp["rc"] == 0, ddp["stderr"][-3000:]
    (p0, i0), (p1, i1) = _rank(runs, "ddp", 0), _rank(runs, "ddp", 1)
    assert i0["num_processes"] == i1["num_processes"] == 2
    assert p0["conv2.weight"].shape == (5, 8, 5)  # the second finetune trained the pruned model
    for k in p0:  # gradients are all-reduced and the optimizers identical: bit-for-bit equal
        assert torch.equal(p0[k], p1[k]), k
    assert i0["metrics"] == i1["metrics"]
    assert i0["metrics"]["n"] == 128  # every test example once: accelerate's padding was dropped
    assert i0["dense"]["train_loss"][-1] < i0["dense"]["train_loss"][0]


def test_batchnorm_statistics_end_equal_on_both_ranks(runs):
    """DDP broadcasts rank 0's buffers before each forward, so after the last step each rank holds the
    statistics of its own last batch; finetune broadcasts them once more so the ranks hold one model."""
    assert runs["ddp"]["rc"] == 0, runs["ddp"]["stderr"][-3000:]
    out = runs["ddp"]["out"]
    b0, b1 = (load_file(str(out / f"rank{r}_bn.safetensors")) for r in (0, 1))
    assert float(b0["bn1.running_mean"].abs().sum()) > 0  # the statistics were updated by training
    for k in b0:
        assert torch.equal(b0[k], b1[k]), k


def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    """Same init, same shuffled order, same examples in every optimizer step (64, then 128 with 2
    accumulated micro-batches): DDP's average of per-rank mean gradients equals the one-process mean
    up to float32 summation order (~1e-7 relative per step). Measured max |difference| over all
    parameters (largest |w| ~0.5) after 20 Adam steps: 1.2e-7 to 3e-7; atol 1e-5 leaves ~30x headroom
    while a real divergence (a step on different data) moves weights by ~lr = 1e-2."""
    assert runs["ddp"]["rc"] == 0, runs["ddp"]["stderr"][-3000:]
    ddp, ddp_info = _rank(runs, "ddp", 0)
    ref, ref_info = _rank(runs, "ref", 0)
    assert ref_info["num_processes"] == 1
    assert ddp_info["dense"]["steps"] == ref_info["dense"]["steps"] == 16  # 2 epochs × 512 / 64
    # the pruned run accumulates 2 micro-batches (DDP skips the all-reduce on the first: no_sync)
    assert ddp_info["pruned"]["steps"] == ref_info["pruned"]["steps"] == 4
    assert ddp.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ddp[k], ref[k], rtol=1e-4, atol=1e-5)
    assert ddp_info["metrics"]["n"] == ref_info["metrics"]["n"] == 128
    assert ddp_info["metrics"]["accuracy"] == pytest.approx(ref_info["metrics"]["accuracy"], abs=1 / 128)
    assert ddp_info["metrics"]["loss"] == pytest.approx(ref_info["metrics"]["loss"], abs=1e-4)
    for a, b in zip(ddp_info["dense"]["train_loss"], ref_info["dense"]["train_loss"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("name", ["trap_cpu_flag", pytest.param("trap_no_multi_gpu", marks=cpu_only_trap)])
def test_one_process_launch_is_refused_with_the_fix(runs, name):
    trap = runs[name]
    assert trap["rc"] != 0
    msg = "asked for 2 processes (accelerate launch --num_processes 2) but only 1 is running"
    assert msg in trap["stderr"], trap["stderr"][-3000:]
    assert FIX in trap["stderr"]
    assert not (trap["out"] / "rank0.safetensors").exists()


@cpu_only_trap
def test_plain_accelerator_on_cpu_is_refused_with_the_fix(runs):
    trap = runs["trap_plain"]
    assert trap["rc"] != 0
    assert "each process is training alone" in trap["stderr"], trap["stderr"][-3000:]
    assert FIX in trap["stderr"]
    assert not (trap["out"] / "rank0.safetensors").exists()
