"""An exclusive lock on a run's output folder, held for the whole run.

Two ``prunekit run`` into one folder would otherwise interleave their writes (one run's config, the
other's report). The lock is ``fcntl.flock`` on ``<folder>/.prunekit.lock``: the kernel releases it
when the holder exits, SIGKILL included, so a killed run never leaves the folder locked. The file
holds the holder's pid, for the refusal message; it is never deleted (deleting a lock file that
another process has open lets a third process lock a new one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from prunekit.errors import UserError

LOCK_FILE = ".prunekit.lock"


class FolderLock:
    """``with FolderLock(folder):`` holds the folder's lock or raises a one-line :class:`UserError`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"output folder '{self.folder}' is in use by another prunekit run (pid {self._holder()}): "
                "wait for it to finish, or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
