"""The MIA ensemble's vote as a detector (paper 002's Model Integration Approach).

The bundle carries the ensemble as one ONNX graph (`training/defenses/mia_export.py`: the
members and the hard majority vote inside; outputs `logits`, `votes`, `adversarial_score`).
score = the share of members voting "adversarial" (the extra class), in {0, 1/M, ..., 1}.

Threshold: like every detector, calibrated at export on clean held-out images to the target
false-positive rate (`score > threshold` flags), not fixed at the ensemble's own majority rule
(`score > 0.5`). The score takes only M + 1 values, so the threshold is one of the vote shares
k/M and the measured clean rate is the largest one at or below the target that the vote's
granularity allows; it equals the majority rule only when the clean data says so.

Args (manifest `options`): file (required; the graph relative to the bundle folder, 'mia.onnx' as
exported; it must be listed under the manifest's `models` with role `detector`, so its SHA-256
is checked at load).
Example: `MIAVote.from_manifest(Path("model_store/fmnist-cnn/1"), {"file": "mia.onnx"}).score(x, outputs)`
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.bundle import BundleError
from serving.engine import EngineOptions, OnnxModel
from serving.guard.policy import Outputs

MIA_FILE = "mia.onnx"
SCORE_OUTPUT = "adversarial_score"


class MIAVote:
    """score = votes for "adversarial" / members, from the bundle's MIA graph in ONNX Runtime."""

    name = "mia-vote"
    views: dict = {}
    blocking = True  # runs the MIA graph
    needs_reference = False

    def __init__(self, model: OnnxModel, file: str = MIA_FILE) -> None:
        outputs = [o.name for o in model.session.get_outputs()]
        if SCORE_OUTPUT not in outputs:
            raise BundleError(f"{model.path} has no output {SCORE_OUTPUT!r} (outputs: {', '.join(outputs)}); "
                              "export the ensemble with `advguard export --mia-run DIR`")
        self.model, self.file = model, file

    @classmethod
    def from_manifest(cls, bundle_dir: Path, options: dict, engine: EngineOptions | None = None) -> "MIAVote":
        if set(options) != {"file"}:
            raise ValueError(f"mia-vote takes one option, 'file' (the graph in the bundle), got {sorted(options)}")
        file = str(options["file"])
        path = Path(bundle_dir) / file
        if not path.exists():
            raise BundleError(f"{bundle_dir}: detector mia-vote needs {file}, which is missing; re-export with "
                              "`advguard export ... --detectors ...,mia-vote --mia-run DIR`")
        return cls(OnnxModel.load(path, engine), file)

    def options(self) -> dict:
        return {"file": self.file}

    def score(self, x: np.ndarray, outputs: Outputs) -> np.ndarray:
        feed = {self.model.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return self.model.session.run([SCORE_OUTPUT], feed)[0]
