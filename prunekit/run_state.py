"""The output folder of a run and its resume record, ``state.json``.

A stage or level is recorded as finished only after its outputs are on disk (written atomically),
so a run killed at any point — SIGKILL included — resumes by skipping what is recorded and redoing
the rest. Each level is pruned from the saved dense checkpoint with its own seed, so redone work
gives the same result as an uninterrupted run.

``state.json`` is also what marks a folder as a prunekit run folder: ``--overwrite`` empties only
such a folder (of another config), never one without it, whatever else it holds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from prunekit.atomic import is_stale_temp, remove_stale_temps, write_json
from prunekit.errors import UserError
from prunekit.lock import LOCK_FILE

STATE = "state.json"
STATE_VERSION = 1


def check_output_folder(folder: str | Path) -> None:
    """Refuse, in one line, an output path that cannot become a writable folder: a file, a path
    under a file, or a folder (or nearest existing parent) this process may not write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output folder '{folder}' is a file: choose a folder path with --output")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != folder and not existing.is_dir():
        raise UserError(
            f"output folder '{folder}' is under '{existing}', which is a file: choose another --output"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = f"output folder '{folder}'" if existing == folder else f"'{existing}' (parent of '{folder}')"
        raise UserError(f"{where} is not writable: fix its permissions or choose another --output")


def _own_entries(folder: Path) -> list[Path]:
    """What is in ``folder`` besides prunekit's lock and stale temporaries."""
    return [c for c in folder.iterdir() if c.name != LOCK_FILE and not is_stale_temp(c.name)]


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"'{path}' is not a prunekit state file ({type(err).__name__}): prunekit will not touch "
            f"'{path.parent}'; choose another --output"
        ) from None
    if not (isinstance(data, dict) and isinstance(data.get("done"), dict) and "fingerprint" in data):
        raise UserError(
            f"'{path}' is not a prunekit state file (no fingerprint / done record): prunekit will not "
            f"touch '{path.parent}'; choose another --output"
        )
    return data


class RunState:
    def __init__(self, folder: Path, fingerprint: str, config: dict[str, Any]):
        self.folder = folder
        self.fingerprint = fingerprint
        self.config = config
        self.data: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": fingerprint, "done": {}}
        self.replace_contents = False  # set by open(..., overwrite=True); done in start()

    @classmethod
    def open(cls, folder: str | Path, fingerprint: str, config: dict[str, Any], overwrite: bool) -> RunState:
        """Open (or prepare) ``folder``; refuse a folder that holds another config's results, and
        any non-empty folder that is not a prunekit run folder (with or without ``overwrite``)."""
        folder = Path(folder)
        state = cls(folder, fingerprint, config)
        path = folder / STATE
        if path.is_file():
            previous = _read_state(path)
            if previous.get("fingerprint") == fingerprint:
                state.data = previous
            elif not overwrite:
                raise UserError(
                    f"output folder '{folder}' holds results of a different config "
                    f"(fingerprint {previous.get('fingerprint')} vs {fingerprint}): pass --overwrite to "
                    "replace them, or choose another --output"
                )
            else:
                state.replace_contents = True
        elif folder.is_dir() and _own_entries(folder):
            raise UserError(
                f"output folder '{folder}' is not empty and is not a prunekit run folder (no {STATE}): "
                "prunekit never deletes it, even with --overwrite; choose another --output"
            )
        return state

    def clear(self) -> None:
        for child in self.folder.iterdir():
            if child.name == LOCK_FILE:  # held by this run: deleting it would let another run lock anew
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def start(self) -> None:
        """Create (or, with --overwrite, empty) the folder and write the config it belongs to.

        Called only after the config, data and model were validated, and with the folder's lock
        held, so bad input never touches it and no other run writes beside this one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.replace_contents:
            self.clear()
            self.replace_contents = False
        remove_stale_temps(self.folder)  # left by a run killed mid-write; nobody else writes here now
        self._flush()  # state.json first: it is what marks the folder as this run's, should we die next
        write_json(self.folder / "config.json", self.config)

    def is_done(self, key: str) -> bool:
        return key in self.data["done"]

    def result(self, key: str) -> Any:
        return self.data["done"][key]

    def mark_done(self, key: str, result: Any) -> None:
        self.data["done"][key] = result
        self._flush()

    def _flush(self) -> None:
        write_json(self.folder / STATE, self.data)
