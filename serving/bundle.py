"""Bundles on disk: `model_store/<name>/<version>/manifest.json` plus the files it names.

The manifest is the contract between training (which writes it) and serving (which loads
and verifies it). Loading reads every file once, confined to the version folder (regular files
only, no symbolic link, no `..`, at most `BundleChecks.max_file_bytes`), checks its SHA-256 and
keeps the verified bytes for ONNX Runtime, so what was hashed is what runs; a mismatch is
refused, naming the file. With a trust key, the manifest's Ed25519 signature must verify too
(`serving.signature`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving._confined import FileMissing, FileRefused, inspect_confined, read_confined

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# primary: answers; fallback: answers what the guard flags (action `fallback`); reference: a second
# opinion for detectors that compare models (disagreement); detector: a model a detector owns
# (mia.onnx); standard: kept for old bundles. One file may serve two roles (listed twice).
ROLES = ("primary", "fallback", "reference", "detector", "standard")
MAX_FILE_BYTES = 1 << 30       # a model file larger than this is refused (BundleChecks.max_file_bytes)
MAX_MANIFEST_BYTES = 16 << 20


class BundleError(ValueError):
    """A bundle is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class BundleChecks:
    """What loading demands beyond the SHA-256s. max_file_bytes: the largest file read (1 GiB);
    trust_key: an Ed25519 public key (PEM bytes): when set, a bundle must carry a `manifest.sig`
    that verifies against it (see serving.signature); when None, signatures are not checked."""

    max_file_bytes: int = MAX_FILE_BYTES
    trust_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be >= 1, got {self.max_file_bytes}")
        if self.trust_key is not None:
            self.public_key()  # fail at start-up, not at the first bundle

    def public_key(self):
        from serving.signature import load_public_key

        return load_public_key(self.trust_key) if self.trust_key is not None else None


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
    manifest_sha256: str = ""
    # file -> the verified bytes, until the models are built (`release_bytes`)
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def model_bytes(self, file: str) -> bytes:
        """The bytes of `file` that loading verified against the manifest."""
        data = self.blobs.get(file)
        if data is None:
            raise BundleError(f"{self.path}: {file} is not a model file the manifest lists and the loader "
                              "verified (or its bytes were released once the models were built)")
        return data

    def release_bytes(self) -> None:
        """Let go of the verified bytes (once ONNX Runtime holds the models)."""
        self.blobs.clear()

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


def _read(folder: Path, name: str, limit: int) -> bytes:
    try:
        return read_confined(folder, name, limit)
    except FileMissing:
        raise BundleError(f"{folder}: manifest names {name}, which is missing") from None
    except FileRefused as err:
        raise BundleError(f"{folder}: {err}") from None


def _check_signature(path: Path, manifest: bytes, checks: BundleChecks) -> None:
    key = checks.public_key()
    if key is None:  # no trust key: signatures are not required (cryptography not even imported)
        return
    from serving.signature import SIGNATURE, verify_manifest

    try:
        signature = read_confined(path, SIGNATURE, 4096)
    except FileRefused as err:
        raise BundleError(f"{path}: {err}; this server trusts only bundles signed for its --trust-key "
                          "(serving.signature.sign_manifest)") from None
    try:
        verify_manifest(manifest, signature, key, str(path))
    except ValueError as err:
        raise BundleError(str(err)) from None


def load_bundle(path: Path | str, verify: bool = True, checks: BundleChecks | None = None) -> Bundle:
    """Load `path/manifest.json`, check its schema (and signature, with a trust key), read every
    file it lists (confined to `path`) and check its SHA-256. The bundle keeps the verified bytes
    (`model_bytes`) for ONNX Runtime. A file listed under two roles is read once; `twins`
    (PyTorch checkpoints for evaluation) are confined and size-checked, never read.

    Example: `bundle = load_bundle("model_store/fmnist-cnn/1")`
    """
    path = Path(path)
    checks = checks or BundleChecks()
    manifest_path = path / MANIFEST
    if not os.path.lexists(manifest_path):
        raise BundleError(f"no {MANIFEST} in {path}: export one with `advguard export`")
    text = _read(path, MANIFEST, MAX_MANIFEST_BYTES)
    _check_signature(path, text, checks)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path} is not valid JSON: {err}") from err
    where = str(manifest_path)
    if not isinstance(data, dict):
        raise BundleError(f"{where}: not a JSON object")
    schema = _require(data, "schema_version", where)
    if schema != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {schema}, this server reads {SCHEMA_VERSION}")
    spec = _require(data, "input", where)
    input_spec = InputSpec(shape=tuple(spec["shape"]), dtype=spec.get("dtype", "float32"),
                           value_range=tuple(spec.get("value_range", (0.0, 1.0))),
                           layout=spec.get("layout", "NCHW"), mean=tuple(spec.get("mean", ())),
                           std=tuple(spec.get("std", ())),
                           normalization=spec.get("normalization", ""))
    models, blobs, digests = [], {}, {}
    for entry in _require(data, "models", where):
        model = ModelFile(file=entry["file"], sha256=entry["sha256"], role=entry["role"],
                          arch=entry.get("arch", ""), outputs=entry.get("outputs", "logits"),
                          extra=entry.get("extra", {}))
        if model.role not in ROLES:
            raise BundleError(f"{where}: {model.file} has unknown role {model.role!r}; known: {', '.join(ROLES)}")
        if model.file in digests:  # one file under two roles: read and hashed once
            if digests[model.file] != model.sha256:
                raise BundleError(f"{where}: {model.file} is listed twice with different SHA-256s")
            models.append(model)
            continue
        content = _read(path, model.file, checks.max_file_bytes)
        if verify:
            actual = hashlib.sha256(content).hexdigest()
            if actual != model.sha256:
                raise BundleError(f"{path / model.file}: SHA-256 {actual} does not match the manifest's "
                                  f"{model.sha256}; refusing to load a modified bundle")
        digests[model.file], blobs[model.file] = model.sha256, content
        models.append(model)
    for twin in data.get("twins", []):  # evaluation checkpoints: confined, never loaded here
        try:
            inspect_confined(path, str(twin.get("file", "")) if isinstance(twin, dict) else twin,
                             checks.max_file_bytes)
        except FileRefused as err:
            raise BundleError(f"{path}: twin {err}") from None
    if not any(m.role == "primary" for m in models):
        raise BundleError(f"{where}: no model with role 'primary'")
    return Bundle(path=path, name=_require(data, "name", where), version=str(_require(data, "version", where)),
                  created=data.get("created", ""), dataset=data.get("dataset", ""),
                  labels=tuple(_require(data, "labels", where)), input=input_spec, models=tuple(models),
                  guard=data.get("guard", {}), robustness=data.get("robustness", {}), raw=data,
                  manifest_sha256=hashlib.sha256(text).hexdigest(), blobs=blobs)


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
