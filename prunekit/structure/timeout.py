"""Run a graph build under a wall-clock limit.

torch-pruning's dependency graph can loop for ever on some models (grouped-query attention is the known
case), so every trace runs in a worker thread. A Python thread cannot be killed, but it can be handed an
asynchronous exception, which the interpreter raises at the next bytecode it runs: the trace is a Python
loop, so this stops it within moments instead of leaving it to burn a core. Works from any thread (unlike
``signal.alarm``, which only the main thread may use).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GraphTimeoutError(TimeoutError):
    """Building a model's dependency graph took longer than the allowed time."""


class _Stop(BaseException):
    """Injected into the worker thread; a BaseException so that ``except Exception`` cannot swallow it."""


def _interrupt(thread: threading.Thread) -> None:
    ident = thread.ident
    if ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_Stop))


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Return ``fn()``, or raise :class:`GraphTimeoutError` naming ``what`` after ``timeout_s`` seconds."""
    if timeout_s is None or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
            box["seconds"] = time.monotonic() - start
        except _Stop:
            box["stopped"] = True
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=target, name="prunekit-graph-build", daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(timeout_s)
    # past the limit is an error, even if the build completes while it is being stopped
    late = worker.is_alive() or box.get("seconds", 0.0) > timeout_s
    for _ in range(20):  # repeat: a bare ``except:`` in traced code may swallow one interruption
        if not worker.is_alive():
            break
        _interrupt(worker)
        worker.join(0.5)  # it stops at its next bytecode; a slow C call may take a moment to return
    if late or ("value" not in box and "error" not in box):
        raise GraphTimeoutError(
            f"building the dependency graph of {what} took longer than {timeout_s:g} s; raise timeout_s if "
            f"the model is just large. Attention that prunekit does not recognise is traced and can stall "
            f"(grouped-query attention never finishes): prunekit prunes BERT-, DistilBERT-, ViT- and "
            f"LLaMA-style attention directly"
        )
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
