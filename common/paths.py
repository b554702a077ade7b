"""Where the suite keeps what it generates and caches (framework-free).

One root, ``$TRANSFER_BENCH_DATA`` or ``./data``, holds the synthetic domains
(``synthetic/``), the source-pretrained weights (``weights/source/``), users'
checkpoints converted to another backend (``weights/converted/``), slim's
ImageNet checkpoints (``weights/imagenet/slim``) and the linear-probe feature
cache (``features/``). Nothing else is written outside ``--out``.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

CACHE_ENV = "TRANSFER_BENCH_DATA"


def cache_root() -> Path:
    """The root of generated data and caches: ``$TRANSFER_BENCH_DATA`` or ``./data``."""
    return Path(os.environ.get(CACHE_ENV, "data")).resolve()


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


# How a full disk reads where a framework's writer does not raise OSError(ENOSPC): torch.save's
# zip writer checks its position after a short write ("[enforce fail at inline_container.cc:672]
# unexpected pos"), h5py (Keras .weights.h5) and TensorFlow's checkpoint writer put the C
# library's message into their own exception types.
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "errno = 28",
                   "PytorchStreamWriter failed writing file")


def is_disk_full(err: BaseException) -> bool:
    """True for "no space left on device" and "disk quota exceeded", also where a framework
    wraps them in its own error (``DISK_FULL_TEXTS``, torch's ``unexpected pos``)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(t in text for t in DISK_FULL_TEXTS) or \
        ("inline_container.cc" in text and "unexpected pos" in text)


def written_path(err: BaseException, default: str | Path) -> str | Path:
    """The file an error was writing (``OSError.filename``), else ``default``."""
    return getattr(err, "filename", None) or default


def disk_full_message(path: str | Path) -> str:
    """One line naming the full disk by its mount point and the path being written."""
    return f"disk full: no space left on the file system mounted at {mount_point(path)} " \
           f"(writing {path})"


def kind_of(path: str | Path) -> str | None:
    """What ``path`` is, in words ("a folder", "a file", "a named pipe", ...), or None when
    nothing is there (a dangling link counts as nothing)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"),
                        (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "a special file"


def kind_problem(path: str | Path, want: str) -> str | None:
    """Why ``path`` is not the ``want`` ("file" or "folder") a command asked for: "does not
    exist", or what it is instead ("is a folder, not a file"); None when it is one."""
    kind = kind_of(path)
    if kind is None:
        return "does not exist"
    if kind != f"a {want}":
        return f"is {kind}, not a {want}"
    return None


def write_problem(directory: str | Path) -> str | None:
    """Why files cannot be written in ``directory`` (created if missing), or None: a read-only
    file system, an immutable folder (``chattr +i``), a file in the way. Checked by creating
    and removing one probe file in the nearest existing folder, so it also holds for root,
    whom permission bits do not stop; nothing is left behind."""
    p = Path(os.path.abspath(directory))
    existing = p
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is {kind_of(existing) or 'a broken link'}, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".bench-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or str(err)
    return None
