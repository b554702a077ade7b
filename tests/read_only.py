"""Outputs that cannot be written, as a user meets them: a read-only mount and an
immutable folder (``chattr +i``). Permission bits do not stop root (CI runs as root),
so these are real mounts and attributes; a test skips, saying why, where this
process may not mount or set attributes."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


def _unmount(mountpoint: Path) -> None:
    """Unmount, lazily where a file is still open there (a failed write's handle)."""
    if _run("umount", str(mountpoint)).returncode:
        _run("umount", "-l", str(mountpoint))


@contextlib.contextmanager
def read_only_view(folder: Path, mountpoint: Path):
    """``folder`` seen read-only at ``mountpoint`` (a read-only bind mount), or an empty
    read-only tmpfs there when ``folder`` is None."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    first = _run("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mountpoint)) \
        if folder is None else _run("mount", "--bind", str(folder), str(mountpoint))
    if first.returncode:
        pytest.skip(f"cannot mount here (needs root): {first.stderr.strip()}")
    try:
        if folder is not None:
            second = _run("mount", "-o", "remount,bind,ro", str(mountpoint))
            if second.returncode:
                pytest.skip(f"cannot remount read-only here: {second.stderr.strip()}")
        yield mountpoint
    finally:
        _unmount(mountpoint)


@contextlib.contextmanager
def immutable(*paths: Path):
    """``paths`` made immutable (``chattr +i``: nothing in a folder can be created, removed
    or renamed, also by root) while the block runs."""
    done = []
    try:
        for p in paths:
            result = _run("chattr", "+i", str(p))
            if result.returncode:
                pytest.skip(f"chattr +i fails here: {result.stderr.strip()}")
            done.append(p)
        yield
    finally:
        for p in reversed(done):
            _run("chattr", "-i", str(p))


@contextlib.contextmanager
def small_disk(mountpoint: Path, size: str = "256k"):
    """A tmpfs of ``size`` at ``mountpoint``: a disk that fills up."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint))
    if result.returncode:
        pytest.skip(f"cannot mount here (needs root): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)
