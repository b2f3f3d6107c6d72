"""Checkpoints: a state_dict plus the ModelSpec, loaded back with `weights_only=True`.

Every file here is written whole or not at all (`write_atomic`): a run killed mid-write keeps
the previous version of the file, so `--resume` finds a loadable last.pt and readable JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

from training.models import ModelSpec, create_model

MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` whole or not at all: `write(handle)` fills `<path>.tmp` in the same folder,
    which is flushed, fsynced and renamed over `path` (the folder fsynced too). If `write` fails
    the temporary file is removed and `path` keeps its previous content; a kill mid-write leaves
    `path` untouched (and a stale `.tmp`, overwritten by the next write).

    Example: `write_atomic(out / "last.pt", lambda f: torch.save(state, f))`
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def save_atomic(payload: object, path: Path) -> None:
    """`torch.save(payload, path)`, written whole or not at all (`write_atomic`)."""
    write_atomic(path, lambda handle: torch.save(payload, handle))


def model_sha256(model: nn.Module) -> str:
    """SHA-256 over the state_dict's names and bytes (stable across saves and loads): the key of
    results that hold for these exact weights (an MIA pool, cached attack results)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_model(path: Path, model: nn.Module, spec: ModelSpec, extra: dict | None = None) -> None:
    save_atomic({"state_dict": model.state_dict(), "spec": spec.to_dict(), "extra": extra or {}}, path)


def load_model(path: Path | str, map_location: str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model from a checkpoint file or a run folder (uses its model.pt).

    Example: `model, spec = load_model("runs/fmnist-cnn")`
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `advguard train --out {path.parent}`")
    import training.defenses  # noqa: F401  (registers the defences' own models, e.g. volumetric)

    payload = torch.load(path, map_location=map_location, weights_only=True)
    spec = ModelSpec.from_dict(payload["spec"])
    model = create_model(spec)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, spec


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON, written whole or not at all (`write_atomic`)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
