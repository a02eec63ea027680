"""Exclusive use of a run directory and of a bundle folder for the length of a run.

Two runs on the same run directory or the same `--out` would otherwise delete each other's
partial work as stale and both report success. The lock is an flock on a small file beside
what it guards: the kernel releases it when the process ends, however it ends (a SIGKILL leaves
no stale lock), and the file records the holder so that a refused run can name it. The file is
removed when the run ends, while still locked; a process that opened it just before then sees
that the path no longer names the file it locked, and takes the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ground.errors import SlimshipError


class Busy(SlimshipError):
    """Another process holds the lock."""


@contextmanager
def exclusive(lock_file: Path, what: str, tidy_folder: bool = False):
    """Hold `lock_file` for the block; if another process holds it, fail at once naming it.
    With tidy_folder, the lock's folder is removed afterwards if nothing else is in it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_file, what)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        if tidy_folder and not any(lock_file.parent.iterdir()):
            lock_file.parent.rmdir()
        os.close(fd)  # releases the flock


def _acquire(lock_file: Path, what: str) -> int:
    for _ in range(100):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(
                f"{what} is in use by {_holder(lock_file)}; wait for that run to finish or "
                "give this one another --out / --run-dir"
            ) from None
        if _same_file(fd, lock_file):
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # its holder removed it while we opened it: lock the new one
    raise Busy(f"{what}: its lock file keeps being replaced ({lock_file})")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(lock_file: Path) -> str:
    try:
        h = json.loads(lock_file.read_text())
        return f"pid {h['pid']} on {h['host']} (since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not recorded itself yet)"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
