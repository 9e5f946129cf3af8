"""Building the :class:`accelerate.Accelerator`, and catching the launches that silently lose processes.

Two launches look fine and are not (measured with accelerate 1.15 on a CPU-only machine):

(a) ``accelerate launch --cpu --num_processes 2 script.py`` starts ONE process: ``--cpu`` selects the
    simple launcher, which ignores ``--num_processes`` (so does a launch without ``--multi_gpu`` on a
    machine without GPUs, and so does ``num_processes: 2`` in an accelerate config file whose
    distributed_type is MULTI_CPU). Nothing in the child's environment records the request (no
    WORLD_SIZE, no ACCELERATE_NUM_PROCESSES), so we read it from the launcher's command line, the parent
    process, or from the config file that command line makes the launcher read.
(b) ``accelerate launch --multi_gpu --num_processes 2 script.py`` whose script builds a plain
    ``Accelerator()`` without a GPU: both processes get WORLD_SIZE=2 but no process group is formed, so
    each trains alone (``accelerator.num_processes == 1``) on the full data, with no error.

In both cases the launch asked for N processes and the Accelerator sees fewer: :func:`check_launch`
raises a one-line :class:`RuntimeError` with the launch that works. :func:`make_accelerator` avoids (b)
by itself (it passes ``cpu=True`` when there is no GPU), and :func:`prunekit.train.finetune` /
:func:`prunekit.train.evaluate` call :func:`check_launch` on any accelerator they are given.

Mixed precision (decided here, see :func:`resolve_mixed_precision`): "fp16" needs a CUDA GPU; "bf16"
needs a GPU that supports it, or runs on CPU through torch's CPU autocast (correct, but only fast on
CPUs with native bf16). Anything a device cannot do falls back to "no" with a warning, never an error,
so that one config runs on a laptop and on a GPU node.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # accelerate is imported lazily: `import prunekit` stays lean
    from accelerate import Accelerator

MIXED_PRECISION = ("no", "fp16", "bf16")


class LaunchError(RuntimeError):
    """The launch asked for more processes than the Accelerator got (one line, with the working launch)."""


_WORKING_LAUNCH = (
    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {n} --num_machines 1 "
    "--mixed_precision no --dynamo_backend no <script> (on N GPUs: accelerate launch --multi_gpu "
    "--num_processes {n} <script>)"
)


def _launcher_argv(pid: int) -> list[str] | None:
    """The options given to ``accelerate launch`` if process ``pid`` is one, else None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or the parent is gone
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(argv):
        # `accelerate launch ...`, `accelerate-launch ...`, `python -m accelerate.commands.launch ...`
        if (arg == "launch" and i > 0 and "accelerate" in argv[i - 1]) or arg == "accelerate.commands.launch":
            return argv[i + 1 :]
        if Path(arg).name == "accelerate-launch":
            return argv[i + 1 :]
    return None


def _launch_args(argv: list[str]) -> Any:
    """The launcher's options as accelerate's own parser reads them (the script's arguments are not
    looked at); None for a command line the launcher itself would have refused."""
    import contextlib
    import io

    from accelerate.commands.launch import launch_command_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, _ = launch_command_parser().parse_known_args(argv)
    except SystemExit:
        return None
    return args


def _num_processes_from_argv(argv: list[str]) -> int | None:
    """``--num_processes`` on the launcher's command line, else None."""
    args = _launch_args(argv)
    return None if args is None else args.num_processes


def _num_processes_from_config(argv: list[str]) -> tuple[int, str] | None:
    """``num_processes`` from the accelerate config file the launcher reads when the command line has
    none: ``--config_file``, else the default file (which accelerate skips under ``--cpu``)."""
    args = _launch_args(argv)
    if args is None or args.num_processes is not None:
        return None
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file

    path = args.config_file or (default_config_file if not args.cpu else None)
    if not path or not os.path.isfile(path):
        return None
    try:
        n = load_config_from_file(path).num_processes
    except Exception:  # noqa: BLE001 - a config the launcher could not read either: nothing to check
        return None
    return (int(n), f"num_processes: {n} in {path}") if isinstance(n, int) else None


def requested_processes() -> tuple[int, str]:
    """How many processes the launch asked for, and where that number came from.

    WORLD_SIZE is set by every multi-process launcher (torchrun, ``accelerate launch --multi_gpu``);
    ``accelerate launch --cpu`` sets nothing, so the launcher's ``--num_processes`` is read from its
    command line, or from the accelerate config file it read. Returns ``(1, "")`` for a plain
    ``python script.py``.
    """
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        return int(world), f"WORLD_SIZE={world}"
    argv = _launcher_argv(os.getppid())
    if argv is None:
        return 1, ""
    n = _num_processes_from_argv(argv)
    if n is not None and n > 1:
        return n, f"accelerate launch --num_processes {n}"
    found = _num_processes_from_config(argv) if n is None else None
    if found is not None and found[0] > 1:
        return found
    return 1, ""


def check_launch(accelerator: Accelerator) -> None:
    """Raise a one-line RuntimeError when the launch asked for more processes than ``accelerator`` has."""
    asked, source = requested_processes()
    have = int(accelerator.num_processes)
    if asked <= have:
        return
    if "WORLD_SIZE" in source:
        what = (
            f"{asked} processes were started ({source}) but this Accelerator sees {have}: each process "
            "is training alone on all the data (a plain Accelerator() on a machine without a GPU forms "
            "no process group)"
        )
    else:
        what = (
            f"the launch asked for {asked} processes ({source}) but only {have} is running: without "
            "--multi_gpu (or with --cpu) accelerate uses its one-process launcher, which ignores the process count"
        )
    raise LaunchError(f"{what}; launch with: {_WORKING_LAUNCH.format(n=asked)}")


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def resolve_mixed_precision(requested: str, cpu: bool) -> str:
    """The mixed-precision mode this device can run: the requested one, or "no" with a warning."""
    if requested not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={requested!r} is not one of {MIXED_PRECISION}: pick one of them")
    if requested == "no":
        return "no"
    on_gpu = not cpu and _has_gpu()
    if requested == "fp16" and not on_gpu:
        warnings.warn(
            "mixed_precision='fp16' needs a CUDA GPU; running in full precision ('no') on CPU", stacklevel=3
        )
        return "no"
    if requested == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU does not support bf16; running in full precision ('no')", stacklevel=3)
        return "no"
    return requested  # bf16 on CPU runs through torch's CPU autocast


def _allow_new_precision(precision: str) -> None:
    """Let a process switch mixed-precision mode between stages.

    accelerate keeps one AcceleratorState per process and refuses an Accelerator with another
    ``mixed_precision`` ("restart your runtime"). Clearing that state (not the process group, which
    lives in PartialState) lets the new Accelerator set it; Accelerators built earlier share the state
    and follow the new mode.
    """
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(
    mixed_precision: str = "no",
    grad_accum_steps: int = 1,
    *,
    seed: int | None = 0,
    cpu: bool | None = None,
) -> Accelerator:
    """An Accelerator for this launch: one process, or DDP over the processes `accelerate launch` started.

    ``cpu=None`` means "CPU when there is no CUDA GPU or ACCELERATE_USE_CPU is set"; running on CPU
    with ``cpu=True`` passed to accelerate is what lets a multi-process launch form a gloo process
    group. ``seed`` seeds python, numpy and torch on
    every process (None leaves the RNGs alone). Raises RuntimeError for the launches described above.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(
            f"grad_accum_steps={grad_accum_steps!r} must be a positive integer (1 = no accumulation)"
        )
    from accelerate.utils import parse_flag_from_env

    # accelerate itself forces CPU when ACCELERATE_USE_CPU is set, whatever `cpu` says
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or ((not _has_gpu()) if cpu is None else bool(cpu))
    precision = resolve_mixed_precision(mixed_precision, use_cpu)
    _allow_new_precision(precision)
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision=precision, gradient_accumulation_steps=grad_accum_steps
    )
    check_launch(accelerator)
    if seed is not None:
        set_seed(seed)
    return accelerator
