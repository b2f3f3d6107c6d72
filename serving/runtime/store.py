"""What a model store holds right now, for hot reload: its version folders and a fingerprint of
each (every file's name, type, size, mtime, ctime and inode, without following links or
opening anything), so a version copied in place file by file, or overwritten, is noticed
whatever order its files land in.

A store that cannot be listed (missing for a moment, unreadable) raises StoreUnavailableError:
the caller keeps what it serves. A model folder that cannot be listed is reported in
`unreadable`, so its loaded versions are kept too. Hidden folders (`.3.staging`) are not versions.

Example: `survey(Path("model_store")).versions[("fmnist-cnn", "1")]`
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from serving.bundle import MANIFEST

MAX_DEPTH = 4            # version/twins/... : deeper files do not count
MAX_ENTRIES = 10_000     # a folder with more entries is fingerprinted by its first ones


class StoreUnavailableError(OSError):
    """The model store folder is missing or cannot be listed."""


@dataclass
class Survey:
    versions: dict[tuple[str, str], Path] = field(default_factory=dict)   # folders with a manifest
    fingerprints: dict[tuple[str, str], str] = field(default_factory=dict)  # of those ('' if changing)
    present: set[tuple[str, str]] = field(default_factory=set)            # every version folder
    unreadable: set[str] = field(default_factory=set)                     # model folders not listed


def fingerprint(folder: Path) -> str:
    """A digest of the folder's entries (recursively, links not followed); OSError if it vanishes."""
    digest = hashlib.sha256()
    stack, seen = [("", str(folder), 0)], 0
    while stack:
        prefix, path, depth = stack.pop()
        with os.scandir(path) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries[:MAX_ENTRIES - seen]:
            st = entry.stat(follow_symlinks=False)
            digest.update(f"{prefix}{entry.name}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0"
                          f"{st.st_ctime_ns}\0{st.st_ino}\n".encode("utf-8", "surrogateescape"))
            seen += 1
            if entry.is_dir(follow_symlinks=False) and depth + 1 < MAX_DEPTH:
                stack.append((f"{prefix}{entry.name}/", entry.path, depth + 1))
    return digest.hexdigest()


def _dirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as listing:
        return [e for e in listing if not e.name.startswith(".") and e.is_dir()]


def survey(store: Path) -> Survey:
    """Every version folder of every model in `store`, with fingerprints of those with a manifest."""
    store = Path(store)
    try:
        models = _dirs(store)
    except OSError as err:
        raise StoreUnavailableError(err.errno, f"model store {store} cannot be listed: {err.strerror}") from err
    found = Survey()
    for model in models:
        try:
            versions = _dirs(Path(model.path))
        except OSError:
            found.unreadable.add(model.name)
            continue
        for version in versions:
            key, folder = (model.name, version.name), Path(version.path)
            found.present.add(key)
            if not os.path.lexists(folder / MANIFEST):
                continue  # being copied (manifest last), or not a bundle
            found.versions[key] = folder
            try:
                found.fingerprints[key] = fingerprint(folder)
            except OSError:
                found.fingerprints[key] = ""  # changing under us: next round
    return found
