"""Claim files: several processes share one long piece of work split into parts (card shards,
adversarial-image shards) by claiming a part before doing it.

A claim is a file created exclusively (`O_CREAT | O_EXCL`) holding the claimant's pid and host;
another process sees the claim and leaves the part alone, and takes it over only when the
claimant's process is gone (same host). Release the claim once the part's result is written.

Example:
    if claim(folder / "shard-0003.claim"):
        try:
            ...  # compute and write shard 3
        finally:
            release(folder / "shard-0003.claim")
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


def claim(path: Path) -> bool:
    """Claim `path` for this process; False while another live process on this host holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, host = path.read_text().split()
            except (OSError, ValueError):
                return False  # being written this instant
            if host == socket.gethostname() and not alive(int(pid)):
                path.unlink(missing_ok=True)  # its process is gone: take over
                continue
            return pid == str(os.getpid()) and host == socket.gethostname()
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def release(path: Path) -> None:
    Path(path).unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
