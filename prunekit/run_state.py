"""The output folder of a run and its resume record, ``state.json``.

A stage or level is recorded as finished only after its outputs are on disk (written atomically),
so a run killed at any point — SIGKILL included — resumes by skipping what is recorded and redoing
the rest. Each level is pruned from the saved dense checkpoint with its own seed, so redone work
gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prunekit.atomic import write_json
from prunekit.errors import UserError

STATE = "state.json"
STATE_VERSION = 1


class RunState:
    def __init__(self, folder: Path, fingerprint: str, config: dict[str, Any]):
        self.folder = folder
        self.fingerprint = fingerprint
        self.config = config
        self.data: dict[str, Any] = {"version": STATE_VERSION, "fingerprint": fingerprint, "done": {}}
        self.replace_contents = False  # set by open(..., overwrite=True); done in start()

    @classmethod
    def open(cls, folder: str | Path, fingerprint: str, config: dict[str, Any], overwrite: bool) -> RunState:
        """Open (or prepare) ``folder``; refuse a folder that holds another config's results."""
        folder = Path(folder)
        state = cls(folder, fingerprint, config)
        path = folder / STATE
        if path.is_file():
            previous = json.loads(path.read_text())
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
        elif folder.exists() and any(folder.iterdir()) and not overwrite:
            raise UserError(
                f"output folder '{folder}' is not empty and was not written by prunekit run: "
                "pass --overwrite to replace its contents, or choose another --output"
            )
        elif folder.exists() and overwrite:
            state.replace_contents = True
        return state

    def clear(self) -> None:
        for child in self.folder.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def start(self) -> None:
        """Create (or, with --overwrite, empty) the folder and write the config it belongs to.

        Called only after the config, data and model were validated, so bad input never touches it."""
        if self.replace_contents:
            self.clear()
            self.replace_contents = False
        self.folder.mkdir(parents=True, exist_ok=True)
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
