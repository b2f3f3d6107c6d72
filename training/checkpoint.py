"""Checkpoints: a state_dict plus the ModelSpec, loaded back with `weights_only=True`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from training.models import ModelSpec, create_model

MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"


def save_model(path: Path, model: nn.Module, spec: ModelSpec, extra: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": model.state_dict(), "spec": spec.to_dict(), "extra": extra or {}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
