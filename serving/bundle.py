"""Bundles on disk: `model_store/<name>/<version>/manifest.json` plus the files it names.

The manifest is the contract between training (which writes it) and serving (which loads
and verifies it). Loading checks every file's SHA-256 and refuses a mismatch, naming the file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ROLES = ("primary", "fallback", "detector", "standard")


class BundleError(ValueError):
    """A bundle is missing, malformed, or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """What the primary model takes: N x C x H x W float32 pixels in [0, 1]."""

    shape: tuple[int, int, int]
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    layout: str = "NCHW"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    normalization: str = "inside the model (first layer)"

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


@dataclass(frozen=True)
class ModelFile:
    file: str
    sha256: str
    role: str
    arch: str = ""
    outputs: str = "logits"
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    name: str
    version: str
    created: str
    dataset: str
    labels: tuple[str, ...]
    input: InputSpec
    models: tuple[ModelFile, ...]
    guard: dict
    robustness: dict
    raw: dict

    def file(self, role: str) -> ModelFile | None:
        return next((m for m in self.models if m.role == role), None)

    def models_with_role(self, role: str) -> list[ModelFile]:
        return [m for m in self.models if m.role == role]

    @property
    def primary(self) -> ModelFile:
        model = self.file("primary")
        assert model is not None  # checked at load
        return model


def _require(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: manifest lacks {key!r}")
    return data[key]


def load_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Load `path/manifest.json`, check its schema and every file's SHA-256.

    Example: `bundle = load_bundle("model_store/fmnist-cnn/1")`
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"no {MANIFEST} in {path}: export one with `advguard export`")
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path} is not valid JSON: {err}") from err
    where = str(manifest_path)
    schema = _require(data, "schema_version", where)
    if schema != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {schema}, this server reads {SCHEMA_VERSION}")
    spec = _require(data, "input", where)
    input_spec = InputSpec(shape=tuple(spec["shape"]), dtype=spec.get("dtype", "float32"),
                           value_range=tuple(spec.get("value_range", (0.0, 1.0))),
                           layout=spec.get("layout", "NCHW"), mean=tuple(spec.get("mean", ())),
                           std=tuple(spec.get("std", ())),
                           normalization=spec.get("normalization", ""))
    models = []
    for entry in _require(data, "models", where):
        model = ModelFile(file=entry["file"], sha256=entry["sha256"], role=entry["role"],
                          arch=entry.get("arch", ""), outputs=entry.get("outputs", "logits"),
                          extra=entry.get("extra", {}))
        if model.role not in ROLES:
            raise BundleError(f"{where}: {model.file} has unknown role {model.role!r}; known: {', '.join(ROLES)}")
        file_path = path / model.file
        if not file_path.exists():
            raise BundleError(f"{path}: manifest names {model.file}, which is missing")
        if verify:
            actual = sha256_file(file_path)
            if actual != model.sha256:
                raise BundleError(f"{file_path}: SHA-256 {actual} does not match the manifest's "
                                  f"{model.sha256}; refusing to load a modified bundle")
        models.append(model)
    if not any(m.role == "primary" for m in models):
        raise BundleError(f"{where}: no model with role 'primary'")
    return Bundle(path=path, name=_require(data, "name", where), version=str(_require(data, "version", where)),
                  created=data.get("created", ""), dataset=data.get("dataset", ""),
                  labels=tuple(_require(data, "labels", where)), input=input_spec, models=tuple(models),
                  guard=data.get("guard", {}), robustness=data.get("robustness", {}), raw=data)


def version_dirs(store: Path, name: str) -> list[Path]:
    """Version folders of bundle `name`, oldest first (numeric versions sort numerically).
    Hidden folders (`.staging` and the like, where a version is assembled) are not versions."""
    root = Path(store) / name
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).exists()]
    return sorted(dirs, key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))


def bundle_names(store: Path) -> list[str]:
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(d.name for d in store.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and version_dirs(store, d.name))


def next_version(store: Path, name: str) -> str:
    numeric = [int(d.name) for d in version_dirs(store, name) if d.name.isdigit()]
    return str(max(numeric, default=0) + 1)


def write_manifest(path: Path, manifest: dict) -> None:
    """Write `path/manifest.json` atomically (a temporary file renamed over it), so a server
    polling the store never reads half a manifest."""
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    tmp = Path(path) / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(Path(path) / MANIFEST)
