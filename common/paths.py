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


def is_disk_full(err: BaseException) -> bool:
    """True for "no space left on device" and "disk quota exceeded"."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: str | Path) -> str:
    """One line naming the full disk by its mount point and the path being written."""
    return f"disk full: no space left on the file system mounted at {mount_point(path)} " \
           f"(writing {path})"
