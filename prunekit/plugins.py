"""Extensions without editing prunekit: the run config's ``imports`` list.

Each entry is a module name (``my_lab.planners``, found on the import path) or the path of a ``.py``
file (``plugins/my_planners.py``, relative to the current directory). They are imported before the rest
of the config is checked, so whatever they register (``register_planner``, ``register_criterion``,
``register_model``, ``register_dataset``) can be named, with its options, in the same config. A module
that cannot be imported stops the run with one line naming it and the error.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_FILES: dict[Path, ModuleType] = {}  # .py files imported so far, by resolved path: each runs once


def import_plugins(entries: Sequence[str]) -> list[str]:
    """Import every entry (a module name or a ``.py`` path); return the entries unchanged.

    Raises ValueError with one line naming the entry and the import error. Importing the same entry
    again (a config read twice) does not run the module again.
    """
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"an imports entry must be a module name or a .py path, got {entry!r}")
        try:
            _import_file(Path(entry)) if entry.endswith(".py") else importlib.import_module(entry)
        except Exception as err:  # any failure of the user's module is reported, in one line
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"cannot import plugin module '{entry}': {type(err).__name__}"
                + (f": {detail}" if detail else "")
            ) from None
    return list(entries)


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    if resolved in _FILES:
        return _FILES[resolved]
    if not resolved.is_file():
        raise FileNotFoundError(f"no file {path} (relative paths start at the current directory)")
    name = resolved.stem
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that the module's own dataclasses and pickles can find it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _FILES[resolved] = module
    return module
