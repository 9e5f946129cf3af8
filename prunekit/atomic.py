"""Write files and folders so that a crash at any point leaves either the old or the new version.

Everything prunekit writes into an output folder goes through here: a temporary sibling is written
in full, flushed, then renamed over the destination (rename is atomic on POSIX filesystems). A kill
in the middle leaves a hidden temporary (``.<name>.*.tmp``, ``.<name>.old``) that the next run
removes (:func:`remove_stale_temps`, called under the folder's lock).

Permissions: outputs are meant to be shared, so files get 0666 and folders 0777 minus the umask
(0644 / 0755 with the usual umask 022), whatever wrote them (mkstemp makes 0600, mkdtemp 0700, a
copied tokenizer file keeps its source's mode).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def folder_mode() -> int:
    return 0o777 & ~_umask()


def _normalise_modes(folder: Path) -> None:
    files, folders = file_mode(), folder_mode()
    os.chmod(folder, folders)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, folders)
        for n in names:
            os.chmod(Path(root) / n, files)


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_folder(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Create folder ``path`` by calling ``fill(tmp_folder)``, then swap it in whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        _normalise_modes(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_stale_temp(name: str) -> bool:
    """Whether ``name`` is a temporary that one of the writers above (or the report's plot) leaves
    behind when killed: hidden, with ``.tmp`` in it or ending ``.old``."""
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Delete the stale temporaries directly in ``folder``; returns their names. Call it only while
    holding the folder's lock: another writer's temporaries are not stale."""
    removed = []
    for child in Path(folder).iterdir():
        if is_stale_temp(child.name):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child.name)
    return sorted(removed)
