"""Exclusive claims on directories: a run directory, a sweep, a weights cache entry.

A claim is ``fcntl.flock(LOCK_EX)`` on ``DIR/.lock``, with the holder's PID
written into the file for the error message of whoever comes second. The
kernel releases a flock when the last process holding the open file exits,
however it exits (SIGKILL included), so a crashed holder never leaves a stale
claim behind, and a claim handed to a child process (``pass_fds``) is held by
that child for as long as it lives.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".lock"


class DirectoryBusy(Exception):
    """``directory`` is claimed by the live process ``pid`` (None when it could not be read)."""

    def __init__(self, directory: Path, pid: int | None):
        self.directory, self.pid = Path(directory), pid
        super().__init__(f"{directory} is in use by {'PID ' + str(pid) if pid else 'another process'}")


class DirectoryClaim:
    """An exclusive flock on ``DIR/.lock``; ``fd`` can be passed to a child process."""

    def __init__(self, directory: Path, fd: int):
        self.directory, self.fd = Path(directory), fd

    def set_holder(self, pid: int) -> None:
        """Record ``pid`` (e.g. the worker that inherits this claim) as the holder."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        """Close this process's handle (a child that inherited it keeps the claim)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DirectoryClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_pid(directory: Path) -> int | None:
    """The PID recorded in ``directory/.lock`` (whether or not it still holds it)."""
    try:
        return int((Path(directory) / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def live_holder(directory: Path) -> int | None:
    """The PID holding ``directory``'s claim (0 when unreadable), or None when it is free;
    creates nothing."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return holder_pid(directory) or 0
    finally:
        os.close(fd)  # also releases the probe's own lock


def claim_directory(directory: Path, wait: float | None = 0.0) -> DirectoryClaim:
    """Claim ``directory`` (created if missing) for this process.

    ``wait``: seconds to keep trying (0: fail at once; None: block until free).
    Raises ``DirectoryBusy`` naming the holder's PID when it stays claimed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if wait is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DirectoryBusy(directory, holder_pid(directory)) from None
                    time.sleep(0.05)
    except BaseException:
        os.close(fd)
        raise
    claim = DirectoryClaim(directory, fd)
    claim.set_holder(os.getpid())
    return claim


def adopt_claim(directory: Path, fd: int) -> DirectoryClaim:
    """The claim a parent passed down as ``fd`` (checked to be that directory's lock file)."""
    lock = Path(directory) / LOCK_FILE
    if os.fstat(fd).st_ino != lock.stat().st_ino:
        raise DirectoryBusy(directory, holder_pid(directory))
    os.set_inheritable(fd, False)
    claim = DirectoryClaim(directory, fd)
    claim.set_holder(os.getpid())
    return claim
