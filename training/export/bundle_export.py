"""`advguard export`: a training run -> `model_store/<name>/<version>/` (ONNX + manifest)."""
from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from serving.bundle import BundleError, load_bundle, next_version, sha256_file, write_manifest
from serving.engine import OnnxModel
from training.checkpoint import MODEL_FILE, load_model, read_json
from training.data import DataConfig, load_splits
from training.evaluate.twin import TWINS
from training.export.calibrate import GuardSpec, calibrate
from training.export.onnx_export import OPSET, export_onnx, onnx_parity

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


def export_bundle(run: Path, name: str, store: Path = Path("model_store"), version: str | None = None,
                  dataset_limit: int = 256, guard: dict | GuardSpec | None = None,
                  torchserve: bool = False, mia_run: Path | None = None) -> Path:
    """Export `run`'s model as a new bundle version; never overwrites an existing one.

    Checks ONNX parity on `dataset_limit` test images (max |p_torch - p_onnx| <= 1e-4).
    `guard`: the manifest's guard section as is (dict), or a GuardSpec whose detectors are
    calibrated on the run's validation split (held out from training) to its target
    false-positive rate; None: no detectors.
    `torchserve`: also build `<name>.mar` into the bundle (recorded under `archives`).
    `mia_run`: an `advguard train --defense mia` run whose ensemble becomes `mia.onnx`, the graph
    of the `mia-vote` detector (which `guard` must then name; see `export_mia_detector`).
    The version is assembled in a hidden staging folder and renamed into place at the end, so a
    server polling the store never sees a half-written version.
    """
    # imported here, not at the top: training.defenses.mia.export imports training.export back
    from training.defenses.mia.detector import MIA_DETECTOR, check_mia_request, export_mia_detector, load_mia_run

    run = Path(run)
    check_mia_request(_detector_names(guard), mia_run)
    model, spec = load_model(run)
    config = read_json(run / "config.json")
    data = DataConfig(**{k: v for k, v in config.get("data", {}).items()
                         if k in DataConfig.__dataclass_fields__})
    # the run's own split (same seed and val_size), so the validation images are the held-out ones
    splits = load_splits(replace(data, limit_test=dataset_limit))
    ensemble = (load_mia_run(mia_run, tuple(splits.input_shape), tuple(splits.labels), splits.name)
                if mia_run is not None else None)
    version = version or next_version(store, name)
    final = Path(store) / name / version
    if final.exists():
        raise BundleError(f"{final} already exists; bundles are never overwritten (choose another --version)")
    out = Path(store) / name / f".staging-{version}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    onnx_path = export_onnx(model, out / "model.onnx", tuple(splits.input_shape))
    parity = onnx_parity(model, onnx_path, splits.test.x)
    if parity > PARITY_TOLERANCE:
        raise BundleError(f"ONNX parity failed: max probability difference {parity:.2e} > {PARITY_TOLERANCE}")
    models = [{"file": "model.onnx", "sha256": sha256_file(onnx_path), "role": "primary", "arch": spec.name,
               "outputs": "logits", "extra": {"opset": OPSET, "parity_max_abs_diff": parity}}]
    if ensemble is not None:
        models.append(export_mia_detector(ensemble, mia_run, out, tuple(splits.input_shape), splits.test.x))
        if isinstance(guard, GuardSpec):
            guard = replace(guard, options={**guard.options, MIA_DETECTOR: {"file": models[-1]["file"]}})
    if isinstance(guard, GuardSpec):
        guard = calibrate(OnnxModel.load(onnx_path), splits.val.x.numpy(), guard, bundle_dir=out)
        log.info("guard calibrated on %d validation images: %s", len(splits.val),
                 ", ".join(f"{d['name']} > {d['threshold']:.4g}" for d in guard["detectors"]))
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    manifest = {
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": splits.name,
        "labels": list(splits.labels),
        "input": {"shape": list(splits.input_shape), "dtype": "float32", "value_range": [0.0, 1.0],
                  "layout": "NCHW", "mean": list(spec.mean), "std": list(spec.std),
                  "normalization": "inside the model (first layer)"},
        "models": models,
        "guard": guard or {"detectors": [], "policy": "any", "action": "flag"},
        "robustness": {},
        "training": {"run": str(run), "defense": config.get("defense", "standard"),
                     "test_accuracy": metrics.get("test_accuracy"), "test_size": metrics.get("test_size")},
    }
    write_manifest(out, manifest)
    load_bundle(out)  # verify what we wrote
    if torchserve:
        from training.export.torchserve import build_mar

        mar = build_mar(out)
        manifest["archives"] = [{"file": mar.name, "sha256": sha256_file(mar), "kind": "torchserve"}]
        write_manifest(out, manifest)
    out.rename(final)
    log.info("exported %s (parity %.2e)", final, parity)
    return final


def copy_twin(run: Path, of: str, out: Path) -> dict:
    """Keep `run`'s checkpoint as the PyTorch twin of the bundle's model file `of`, under
    `out/twins/`; returns the manifest's `twins` entry (file, sha256, of)."""
    twin = Path(out) / TWINS / f"{Path(of).stem}.pt"
    twin.parent.mkdir(exist_ok=True)
    shutil.copyfile(Path(run) / MODEL_FILE, twin)
    return {"file": str(twin.relative_to(out)), "sha256": sha256_file(twin), "of": of}


def add_mia_detector(mia_run: Path, out: Path, splits, images) -> tuple[dict, dict]:
    """`advguard bundle`'s MIA ensemble: `mia_run`'s ensemble, checked against the primary's data
    (`splits`: input shape, labels, data set), exported to `out/mia.onnx` (parity on `images`),
    its checkpoint kept as the twin the robustness card attacks. Returns (models entry, twins entry)."""
    from training.defenses.mia.detector import export_mia_detector, load_mia_run

    shape = tuple(splits.input_shape)
    ensemble = load_mia_run(Path(mia_run), shape, tuple(splits.labels), splits.name)
    entry = export_mia_detector(ensemble, Path(mia_run), Path(out), shape, images)
    return entry, copy_twin(Path(mia_run), entry["file"], Path(out))


def _detector_names(guard: dict | GuardSpec | None) -> tuple[str, ...]:
    if isinstance(guard, GuardSpec):
        return guard.detectors
    return tuple(d["name"] for d in (guard or {}).get("detectors", []))
