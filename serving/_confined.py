"""Reading a bundle's files without leaving its folder.

A manifest names its files relative to the version folder. `read_confined` takes only such a
name (no absolute path, no `..`), walks it one component at a time from an open descriptor of
the folder without following a symbolic link (`O_NOFOLLOW`, `O_DIRECTORY`), opens only a
regular file (a FIFO or device is never opened for reading, so it cannot hang the loader),
checks the open file is the one it inspected, and reads at most `limit` bytes. The caller
hashes those bytes and hands the same bytes on: what was verified is what runs.

Example: `data = read_confined(Path("model_store/fmnist-cnn/1"), "model.onnx", 1 << 30)`
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileRefused(ValueError):
    """A bundle file that is outside its folder, not a regular file, missing or too large."""


class FileMissing(FileRefused):
    """A bundle file that is not there."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _parts(name: str) -> tuple[str, ...]:
    if not isinstance(name, str) or not name.strip():
        raise FileRefused(f"{name!r}: not a file name")
    if "\\" in name or "\0" in name:
        raise FileRefused(f"{name!r}: a bundle names its files with '/' only")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise FileRefused(f"{name}: an absolute path; a bundle names its files relative to its folder")
    if ".." in path.parts:
        raise FileRefused(f"{name}: '..' leaves the bundle folder; a bundle's files live inside it")
    return path.parts


def _walk(folder: Path, name: str) -> tuple[int, str]:
    """(descriptor of the folder holding `name`'s last component, that component)."""
    parts = _parts(name)
    fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                raise FileMissing(f"{name} is missing") from None
            if not stat.S_ISDIR(mode):
                raise FileRefused(f"{name}: {part} is {_kind(mode)}, not a folder inside the bundle")
            inner = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _check(st: os.stat_result, name: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{name} is {_kind(st.st_mode)}; a bundle's files must be regular files inside its folder")
    if st.st_size > limit:
        raise FileRefused(f"{name} holds {st.st_size} bytes, over the limit of {limit} "
                          "(raise it with --max-model-bytes)")


def inspect_confined(folder: Path, name: str, limit: int) -> os.stat_result:
    """Check that `name` is a regular file of at most `limit` bytes inside `folder`, opening nothing."""
    fd, last = _walk(folder, name)
    try:
        st = os.stat(last, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        raise FileMissing(f"{name} is missing") from None
    finally:
        os.close(fd)
    _check(st, name, limit)
    return st


def read_confined(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of regular file `name` inside `folder` (at most `limit`); FileRefused otherwise."""
    fd, last = _walk(folder, name)
    try:
        try:
            before = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileMissing(f"{name} is missing") from None
        _check(before, name, limit)
        try:  # O_NONBLOCK: a FIFO swapped in since the check opens without waiting for a writer
            handle = os.open(last, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            raise FileMissing(f"{name} is missing") from None
        except OSError as err:  # ELOOP: a symbolic link swapped in since the check
            raise FileRefused(f"{name} could not be opened as a regular file: {err.strerror}") from None
    finally:
        os.close(fd)
    with os.fdopen(handle, "rb") as file:
        st = os.fstat(file.fileno())
        _check(st, name, limit)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise FileRefused(f"{name} was replaced while it was being opened; try again")
        data = file.read(st.st_size)
        if len(data) != st.st_size or file.read(1):
            raise FileRefused(f"{name} changed size while it was read; try again")
    return data
