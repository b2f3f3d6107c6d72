"""`advguard bundle`: one versioned bundle composed from several training runs.

Roles (ARCHITECTURE.md's bundle contract): `primary` answers; `fallback` answers what the guard
flags (action `fallback`); `reference` is the second opinion of detectors that compare models
(`disagreement`); `mia_run` becomes `mia.onnx`, the graph of the `mia-vote` detector. Each run is
exported to ONNX once (a run used for two roles is one file listed twice), parity-checked
against PyTorch, hashed, and its checkpoint kept under `twins/` (so `advguard evaluate --bundle`
can attack the exact models). The guard is calibrated jointly (`training.export.calibrate`) on
the primary run's validation split; the verdict's rate is measured again on the test split.
With `card` set, the robustness card is computed on the staged bundle before it is published.

Example (bundle.yaml):
    name: fmnist-guarded
    primary: runs/fmnist-fast-std
    fallback: runs/fmnist-fast-fastat
    reference: runs/fmnist-fast-fastat
    detectors: [{name: disagreement, options: {score: margin}}]
    action: fallback
    card: quick
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from serving.bundle import BundleError, load_bundle, next_version, sha256_file, write_manifest
from serving.engine import OnnxModel
from training.checkpoint import load_model, read_json
from training.data import DataConfig, load_splits
from training.export.bundle_export import add_mia_detector, copy_twin
from training.export.calibrate import GuardSpec, calibrate
from training.export.onnx_export import OPSET, export_onnx, onnx_parity

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4
CARDS = ("none", "quick", "full")


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BundleConfig:
    """A bundle's composition. Runs are `advguard train` folders; `fallback`/`reference` may be
    the same run. `detectors` in guard order; `card`: none | quick (500 test images) | full (all);
    `card_shards`: folder of the card's finished shards (default `<store>/<name>/.card-<card>`),
    each keyed by the models' SHA-256, thresholds and card config, so a card resumes from any
    folder that holds shards of the same bundle and ignores shards of another."""

    name: str
    primary: Path
    fallback: Path | None = None
    reference: Path | None = None
    mia_run: Path | None = None
    detectors: tuple[DetectorEntry, ...] = (DetectorEntry("disagreement"),)
    target_fpr: float = 0.05
    policy: str = "any"
    action: str = "fallback"
    calibration_images: int | None = None
    parity_images: int = 256
    card: str = "quick"
    card_shards: Path | None = None
    torchserve: bool = False
    version: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"bundle name must be a plain folder name, got {self.name!r}")
        if self.card not in CARDS:
            raise ValueError(f"card must be one of {', '.join(CARDS)}, got {self.card!r}")
        GuardSpec(detectors=self.detector_names, target_fpr=self.target_fpr, policy=self.policy,
                  action=self.action)  # validates names, rate, policy, action
        if self.action == "fallback" and self.fallback is None:
            raise ValueError("action 'fallback' needs a fallback run (`fallback:` in the config, --fallback RUN)")
        if "disagreement" in self.detector_names and self.reference is None:
            raise ValueError("detector 'disagreement' needs a reference run (`reference:` in the config, "
                             "--reference RUN)")
        if "mia-vote" in self.detector_names and self.mia_run is None:
            raise ValueError("detector 'mia-vote' needs an MIA ensemble run (`mia_run:`, --mia-run DIR)")

    @property
    def detector_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detectors)

    def guard_spec(self) -> GuardSpec:
        return GuardSpec(detectors=self.detector_names, target_fpr=self.target_fpr, policy=self.policy,
                         action=self.action, options={d.name: dict(d.options) for d in self.detectors},
                         max_images=self.calibration_images)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "BundleConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown bundle config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("primary", "fallback", "reference", "mia_run", "card_shards"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        if "detectors" in data:
            data["detectors"] = tuple(DetectorEntry(d) if isinstance(d, str) else DetectorEntry(d["name"], d.get("options", {}))
                                      for d in data["detectors"])
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> "BundleConfig":
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a bundle config is a mapping (name: ..., primary: RUN, ...)")
        return cls.from_dict(data, **overrides)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("primary", "fallback", "reference", "mia_run", "card_shards"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out


def _export_run(run: Path, file: str, out: Path, input_shape: tuple, test_x) -> tuple[dict, dict]:
    """ONNX + parity + SHA-256 for one run, and its PyTorch twin: (models entry, twins entry)."""
    model, spec = load_model(run)
    onnx_path = export_onnx(model, out / file, input_shape)
    parity = onnx_parity(model, onnx_path, test_x)
    if parity > PARITY_TOLERANCE:
        raise BundleError(f"{run}: ONNX parity failed, max probability difference {parity:.2e} > {PARITY_TOLERANCE}")
    twin = copy_twin(run, file, out)
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    config = read_json(run / "config.json") if (run / "config.json").exists() else {}
    entry = {"file": file, "sha256": sha256_file(onnx_path), "arch": spec.name, "outputs": "logits",
             "extra": {"opset": OPSET, "parity_max_abs_diff": parity, "run": str(run),
                       "defense": config.get("defense", "standard"), "test_accuracy": metrics.get("test_accuracy")}}
    entry["extra"]["mean"], entry["extra"]["std"] = list(spec.mean), list(spec.std)
    return entry, twin


def compose_bundle(config: BundleConfig, store: Path = Path("model_store"), card_jobs: int = 1) -> Path:
    """Build, calibrate, card and publish one bundle version; returns its folder. `card_jobs`:
    processes sharing the card's shards (a property of the machine, not of the bundle)."""
    primary_config = read_json(config.primary / "config.json")
    data = DataConfig(**{k: v for k, v in primary_config.get("data", {}).items() if k in DataConfig.__dataclass_fields__})
    splits = load_splits(replace(data, limit_test=None))
    shape = tuple(splits.input_shape)
    version = config.version or next_version(store, config.name)
    final = Path(store) / config.name / version
    if final.exists():
        raise BundleError(f"{final} already exists; bundles are never overwritten (choose another --version)")
    out = Path(store) / config.name / f".staging-{version}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    parity_x = splits.test.x[:config.parity_images]
    models, twins, files = [], [], {}
    for role in ("primary", "fallback", "reference"):
        run = getattr(config, role)
        if run is None:
            continue
        run = Path(run)
        if run.resolve() not in files:
            file = "model.onnx" if role == "primary" else f"{role}.onnx"
            entry, twin = _export_run(run, file, out, shape, parity_x)
            files[run.resolve()] = entry
            twins.append(twin)
            log.info("%s: %s -> %s (parity %.1e)", role, run, file, entry["extra"]["parity_max_abs_diff"])
        models.append({**files[run.resolve()], "role": role})
    spec = config.guard_spec()
    if config.mia_run is not None:
        mia_entry, mia_twin = add_mia_detector(Path(config.mia_run), out, splits, parity_x)
        models.append(mia_entry)
        twins.append(mia_twin)
        spec = replace(spec, options={**spec.options, "mia-vote": {"file": mia_entry["file"]}})
    reference = OnnxModel.load(out / files[Path(config.reference).resolve()]["file"]) if config.reference else None
    guard = calibrate(OnnxModel.load(out / "model.onnx"), splits.val.x.numpy(), spec, bundle_dir=out,
                      reference=reference, x_fresh=splits.test.x.numpy())
    log.info("guard calibrated: verdict FPR %.4f on %d validation images, %.4f on %d test images",
             guard["verdict"]["calibration"]["measured_fpr"], guard["verdict"]["calibration"]["images"],
             guard["verdict"]["fresh"]["measured_fpr"], guard["verdict"]["fresh"]["images"])
    manifest = {
        "name": config.name, "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": splits.name, "labels": list(splits.labels),
        "input": {"shape": list(shape), "dtype": "float32", "value_range": [0.0, 1.0], "layout": "NCHW",
                  "mean": models[0]["extra"]["mean"], "std": models[0]["extra"]["std"],
                  "normalization": "inside the model (first layer)"},
        "models": models, "twins": twins, "guard": guard, "robustness": {},
        "composition": config.to_dict(),
    }
    write_manifest(out, manifest)
    from serving.pipeline import Pipeline

    Pipeline.load(out)  # verify: every file, and every model the guard needs
    if config.card != "none":
        from training.evaluate.card import PROFILES, evaluate_bundle

        card_config = PROFILES[config.card]
        # finished shards live beside the bundle versions, so a rerun after an interruption resumes
        shards = config.card_shards or Path(store) / config.name / f".card-{config.card}"
        manifest["robustness"] = evaluate_bundle(out, splits.test.x, splits.test.y, card_config, profile=config.card,
                                                 work_dir=shards, jobs=card_jobs)
        write_manifest(out, manifest)
    if config.torchserve:
        from training.export.torchserve import build_mar

        mar = build_mar(out)
        manifest["archives"] = [{"file": mar.name, "sha256": sha256_file(mar), "kind": "torchserve"}]
        write_manifest(out, manifest)
    load_bundle(out)
    out.rename(final)
    log.info("bundle written: %s", final)
    return final
