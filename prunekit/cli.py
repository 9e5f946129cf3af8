"""The ``prunekit`` command line: run, plan, estimate, evaluate, validate, info.

This module only parses arguments and dispatches to :mod:`prunekit.commands` (one module per
subcommand, where the work is done); it owns how a command ends.

Expected failures (a bad config, a missing or unreadable file, an unknown name, a locked output
folder, a full disk) end with one ``prunekit: error:`` line on stderr and exit code 2, never a
traceback. Anything else is a bug: a short traceback, "this is a bug in prunekit, please report it"
and exit code 1, so it is never passed off as the user's mistake. ``PRUNEKIT_DEBUG=1`` re-raises.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BUG = 1
PACKAGE_DIR = Path(__file__).resolve().parent

EPILOG = "Example: prunekit run configs/quickstart.yaml --set finetune.epochs=2 --output runs/try"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set finetune.epochs=2 (repeatable)",
    )
    p.add_argument("--output", default=None, help="output folder (default: runs/<name>)")


def _add_checkpoint_trust_args(p: argparse.ArgumentParser, remote_code: bool = True) -> None:
    """Whether a checkpoint's own code may run, and which checkpoint it must be: the caller's word only."""
    if remote_code:
        p.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="allow an HF checkpoint whose model type needs its own Python code (runs that code)",
        )
    p.add_argument(
        "--sha256",
        default=None,
        metavar="HEX",
        help="the checkpoint_sha256 the publisher gave (`prunekit info` prints it): refuse any other folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Theory-guided structured pruning: estimate, plan, prune, verify.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="dense model -> plan -> prune -> fine-tune -> evaluate -> report")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an output folder made by another config")

    p = sub.add_parser("plan", help="show the plan for each level; change nothing")
    _add_config_args(p)
    p.add_argument("--json", default=None, metavar="PATH", help="write plans, curves, schedule as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="draw keep fractions, curves (.png/.svg)")

    p = sub.add_parser("estimate", help="C_arch, T_opt, n, d_eff, the bound and per-group contributions")
    _add_config_args(p)
    p.description = "CONFIG may also be a checkpoint folder (e.g. runs/x/level-70): its model is estimated."
    _add_checkpoint_trust_args(p)

    p = sub.add_parser("evaluate", help="accuracy / params / MACs / latency of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder written by prunekit (e.g. runs/x/level-70)")
    p.add_argument("--config", default=None, help="config whose test data to use (default: the checkpoint's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_checkpoint_trust_args(p)

    p = sub.add_parser("validate", help="does the bound predict? rank equal-size candidates (validity study)")
    _add_config_args(p)

    p = sub.add_parser("info", help="what a checkpoint is: base model, plan, sizes, hashes")
    p.add_argument("checkpoint", help="a checkpoint folder written by prunekit")
    _add_checkpoint_trust_args(p, remote_code=False)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from prunekit.commands.run import run_command

    run_command(args.config, args.overrides, args.output, overwrite=args.overwrite)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from prunekit.commands.plan import plan_command
    from prunekit.config import load_config

    plan_command(load_config(args.config, args.overrides), args.output, args.json, args.plot)
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from prunekit.commands.estimate import estimate_command

    estimate_command(
        args.config,
        overrides=args.overrides,
        output=args.output,
        expected_sha256=args.sha256,
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from prunekit.commands.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        config_path=args.config,
        overrides=args.overrides,
        trust_remote_code=args.trust_remote_code,
        expected_sha256=args.sha256,
    )
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from prunekit.commands.validate import validate_command

    validate_command(args.config, args.overrides, args.output)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from prunekit.commands.info import info_command

    print(json.dumps(info_command(args.checkpoint, args.sha256), indent=2, sort_keys=True))
    return 0


COMMANDS = {
    "run": _cmd_run,
    "plan": _cmd_plan,
    "estimate": _cmd_estimate,
    "evaluate": _cmd_evaluate,
    "info": _cmd_info,
    "validate": _cmd_validate,
}


def _raised_by_prunekit(err: BaseException) -> bool:
    """Whether the innermost frame that raised ``err`` is prunekit's own code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def expected_message(err: BaseException) -> str | None:
    """The one-line message of an expected failure, or None when ``err`` is a bug."""
    from prunekit.errors import UserError, clip
    from prunekit.train.accel import LaunchError

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, (UserError, LaunchError)):
        return clip(first, 500)
    if isinstance(err, ValueError) and _raised_by_prunekit(err):
        # ValueError is how prunekit's validators report bad input (peft style); one from a library
        # is input prunekit failed to check: a bug.
        return clip(first, 500)
    if isinstance(err, OSError) and err.errno is not None:  # the file system said no
        where = f": '{err.filename}'" if err.filename else ""
        return clip(f"{err.strerror or first}{where}: check the path, its permissions and free space", 500)
    if isinstance(err, FileNotFoundError):
        return clip(first, 500)
    # torch's CPU allocator says "can't allocate memory" in a plain RuntimeError
    if (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in first
    ):
        return "out of memory: lower batch_size (train / finetune / data) or the model size (model.kwargs)"
    return None


def report_failure(err: BaseException) -> int:
    """Print ``err`` as the command line ends on it and return the exit code."""
    import traceback

    if isinstance(err, KeyboardInterrupt):
        print("prunekit: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    message = expected_message(err)
    if message is not None:
        print(f"prunekit: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    short = traceback.format_exception(type(err), err, err.__traceback__, limit=-6)
    sys.stderr.write("".join(short))
    print(
        "prunekit: internal error: this is a bug in prunekit, please report it with the command and "
        "the traceback above (PRUNEKIT_DEBUG=1 shows the whole traceback)",
        file=sys.stderr,
    )
    return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        return report_failure(err)


if __name__ == "__main__":
    sys.exit(main())
