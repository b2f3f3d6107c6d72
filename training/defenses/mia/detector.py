"""Put a trained MIA ensemble into a bundle as the `mia-vote` detector's graph.

`advguard export --run runs/x --name n --detectors feature-squeezing,low-confidence,mia-vote
--mia-run runs/mia` exports the ensemble of `runs/mia` (`advguard train --defense mia`) as one
ONNX graph (`training/defenses/mia/export.py`) into the bundle, checks it against PyTorch, and
lists it under the manifest's `models` (role `detector`, SHA-256) for the guard to load.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from serving.bundle import BundleError, sha256_file
from serving.guard.mia_vote import MIA_FILE, MIAVote
from training.checkpoint import MODEL_FILE, load_model, read_json
from training.defenses.mia.ensemble import MIAEnsemble
from training.defenses.mia.export import OUTPUTS, export_mia_onnx, mia_onnx_parity
from training.export.onnx_export import OPSET

log = logging.getLogger(__name__)
MIA_DETECTOR = MIAVote.name
LOGIT_TOLERANCE = 1e-4


def check_mia_request(detectors: tuple[str, ...], mia_run: Path | None) -> None:
    """mia-vote and --mia-run come together, and the run must exist: else an error that says so."""
    if MIA_DETECTOR in detectors and mia_run is None:
        raise ValueError(f"detector {MIA_DETECTOR} needs the MIA ensemble: pass --mia-run DIR "
                         "(a run of `advguard train --defense mia`)")
    if mia_run is None:
        return
    if MIA_DETECTOR not in detectors:
        raise ValueError(f"--mia-run {mia_run} given but {MIA_DETECTOR} is not among the detectors "
                         f"({', '.join(detectors) or 'none'}); add it to --detectors")
    if not (Path(mia_run) / MODEL_FILE).exists():
        raise FileNotFoundError(f"no MIA ensemble at {Path(mia_run) / MODEL_FILE}: train one with "
                                f"`advguard train --defense mia --model mia-target --out {mia_run}`")


def load_mia_run(mia_run: Path, input_shape: tuple[int, ...], labels: tuple[str, ...], dataset: str) -> MIAEnsemble:
    """The ensemble of `mia_run`, refused unless it fits the primary model: input `input_shape`
    (C, H, W), classes `labels` plus "adversarial", the same data set (when the run records it)."""
    mia_run = Path(mia_run)
    ensemble, spec = load_model(mia_run)
    if not isinstance(ensemble, MIAEnsemble):
        raise ValueError(f"{mia_run} holds model {spec.name!r}, not an MIA ensemble; "
                         "pass a run of `advguard train --defense mia`")
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    if shape != tuple(input_shape):
        raise ValueError(f"MIA ensemble {mia_run} takes {shape} images, the primary model {tuple(input_shape)}")
    if spec.num_classes != len(labels) + 1:
        raise ValueError(f"MIA ensemble {mia_run} has {spec.num_classes} classes, the primary model "
                         f"{len(labels)} (+1 'adversarial' = {len(labels) + 1} expected)")
    config = read_json(mia_run / "config.json") if (mia_run / "config.json").exists() else {}
    trained_on = config.get("data", {}).get("name")
    if trained_on and trained_on != dataset:
        raise ValueError(f"MIA ensemble {mia_run} was trained on {trained_on}, the primary model on {dataset}")
    return ensemble


def export_mia_detector(ensemble: MIAEnsemble, mia_run: Path, out: Path, input_shape: tuple[int, ...],
                        images: torch.Tensor) -> dict:
    """Write `out/mia.onnx` and return its manifest `models` entry; `images` must give the same
    votes in ONNX Runtime as in PyTorch (and decision logits within 1e-4)."""
    path = export_mia_onnx(ensemble, Path(out) / MIA_FILE, tuple(input_shape))
    parity = mia_onnx_parity(ensemble, path, images)
    if not parity["votes_equal"] or parity["max_abs_logit_diff"] > LOGIT_TOLERANCE:
        raise BundleError(f"MIA ONNX parity failed on {len(images)} images: {parity}")
    log.info("MIA ensemble of %d members from %s -> %s", len(ensemble.members), mia_run, path)
    return {"file": MIA_FILE, "sha256": sha256_file(path), "role": "detector", "arch": "mia-ensemble",
            "outputs": ",".join(OUTPUTS),
            "extra": {"opset": OPSET, "detector": MIA_DETECTOR, "run": str(mia_run),
                      "members": len(ensemble.members), "tie_break": ensemble.tie_break, "parity": parity}}
