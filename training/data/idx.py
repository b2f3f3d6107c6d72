"""Reading IDX files (the MNIST family's format), with SHA-256 verification."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from serving.bundle import sha256_file

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataNotFoundError(FileNotFoundError):
    """A data set is missing; the message names the fix."""


class DataIntegrityError(ValueError):
    """A data file does not match its expected SHA-256."""


def read_idx(path: Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array.

    Args:
        path: the file.
        expected_sha256: when given, the file's digest must match it.
    """
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise DataIntegrityError(
                f"{path} has SHA-256 {actual}, expected {expected_sha256}: "
                "the file is corrupt or not the official release; reinstall it"
            )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataIntegrityError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _DTYPES.get(raw[2]), raw[3]
    if dtype is None:
        raise DataIntegrityError(f"{path}: unknown IDX type code {raw[2]:#x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataIntegrityError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def find_idx(data_dir: Path, stem: str) -> Path | None:
    """The file `stem` in `data_dir`, gzip-compressed or not, or None."""
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        candidate = Path(data_dir) / name
        if candidate.exists():
            return candidate
    return None
