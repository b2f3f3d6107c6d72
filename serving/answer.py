"""The one answer builder: what a classified batch tells a caller, decided once for every front
end (the advguard API, the Open Inference Protocol, the TorchServe handler). A front end only
encodes these fields in its wire format; it never decides what to show.

Rules, the same everywhere:
- Under the `reject` action an ADVERSARIAL image's class is withheld: `class_index` -1, no class
  name and no probabilities (their argmax is the class). Wires that can omit a field omit them;
  tensor wires (OIP) send -1, an empty name and a zero row.
- An image the guard did not run on has verdict UNSPECIFIED and no detector results.
- `answered_by` names the model file that answered (the primary, or the fallback for flagged
  images under the `fallback` action); `action` is the policy's action.
- Disclosure (`DISCLOSURES`): `verdict` (the default for remote callers) shows the verdict and
  nothing of the detectors' scores, thresholds or the attack score, which would hand an attacker
  the gradient signal of the guard; `full` (operators) shows them all.
"""
from __future__ import annotations

import weakref

import numpy as np

from serving.guard import Verdict
from serving.pipeline import Pipeline, PipelineResult

VERDICT_WIRE_NAMES = tuple(v.name for v in Verdict)  # "UNSPECIFIED", "CLEAN", ...
VERDICT_WIRE_BYTES = tuple(name.encode() for name in VERDICT_WIRE_NAMES)
DISCLOSURES = ("verdict", "full")


class Words:
    """What every answer of one pipeline says the same way, worked out once per pipeline (not per
    call): detector names and thresholds as the wires list them, labels and model files encoded."""

    __slots__ = ("detector_names", "detectors", "thresholds", "labels", "files", "responses")

    def __init__(self, pipeline: Pipeline) -> None:
        self.detector_names = tuple(d.detector.name for d in pipeline.detectors)
        self.detectors = ",".join(self.detector_names)
        self.thresholds = ",".join(f"{c.threshold:.6g}" for c in pipeline.detectors)
        self.labels = tuple(label.encode() for label in pipeline.bundle.labels) + (b"",)  # [-1]: withheld
        self.files: dict[str, bytes] = {}  # model file name -> its bytes, as answers name them
        self.responses: dict = {}  # a front end's per-kind response heads (serving.grpc.inference)

    def file(self, name: str) -> bytes:
        encoded = self.files.get(name)
        if encoded is None:
            encoded = self.files[name] = name.encode()
        return encoded


_words: weakref.WeakKeyDictionary[Pipeline, Words] = weakref.WeakKeyDictionary()  # gone with its pipeline


def words_of(pipeline: Pipeline) -> Words:
    """The pipeline's `Words` (made on first use)."""
    words = _words.get(pipeline)
    if words is None:
        words = _words[pipeline] = Words(pipeline)
    return words


def check_disclosure(disclosure: str) -> str:
    if disclosure not in DISCLOSURES:
        raise ValueError(f"disclosure must be one of {', '.join(DISCLOSURES)}, got {disclosure!r}")
    return disclosure


class Answers:
    """A batch's answers, by image (`class_index(i)`, `as_dict(i)`, ...) or by column
    (`class_indices()`, `probability_rows()`, ...). Example: `Answers(pipeline, result).as_dict(0)`."""

    __slots__ = ("pipeline", "result", "n", "full", "words", "_indices")

    def __init__(self, pipeline: Pipeline, result: PipelineResult, disclosure: str = "verdict") -> None:
        self.pipeline, self.result, self.n = pipeline, result, len(result.classes)
        self.full = disclosure == "full"
        self.words = words_of(pipeline)
        self._indices: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def model(self) -> str:
        return self.pipeline.bundle.name

    @property
    def model_version(self) -> str:
        return self.pipeline.bundle.version

    @property
    def action(self) -> str:
        return self.pipeline.policy.action

    @property
    def detector_names(self) -> tuple[str, ...]:
        return self.words.detector_names

    # -- one image --------------------------------------------------------------------------
    def withheld(self, i: int) -> bool:
        return bool(self.result.rejected[i])

    def class_index(self, i: int) -> int:
        return -1 if self.result.rejected[i] else int(self.result.classes[i])

    def class_name(self, i: int) -> str:
        return "" if self.result.rejected[i] else self.pipeline.bundle.labels[int(self.result.classes[i])]

    def probabilities(self, i: int) -> list[float] | None:
        return None if self.result.rejected[i] else self.result.probs[i].tolist()

    def answered_by(self, i: int) -> str:
        return str(self.result.answered_by[i])

    def guarded(self, i: int) -> bool:
        return self.result.guard is not None and bool(self.result.guarded[i])

    def verdict(self, i: int) -> int:
        return int(self.result.guard.verdicts[i]) if self.guarded(i) else int(Verdict.UNSPECIFIED)

    def attack_score(self, i: int) -> float:
        """The largest score/threshold ratio (0.0 when not disclosed or not guarded)."""
        return float(self.result.guard.attack_scores[i]) if self.full and self.guarded(i) else 0.0

    def detectors(self, i: int) -> list[dict]:
        """Each detector's result for image i: name, score, threshold, flagged, calibrated_fpr
        (none unless disclosure is `full`)."""
        if not self.full or not self.guarded(i):
            return []
        return [{"name": o.name, "score": float(o.scores[i]), "threshold": float(o.threshold),
                 "flagged": bool(o.flagged[i]), "calibrated_fpr": float(o.target_fpr)}
                for o in self.result.guard.outcomes]

    def as_dict(self, i: int) -> dict:
        """Image i as JSON-ready fields, named as in advguard.v1.ClassifyResponse (the TorchServe
        handler's answer; fields withheld or absent are left out, as protobuf leaves them)."""
        answer: dict = {"class_index": self.class_index(i), "model": self.model,
                        "model_version": self.model_version, "answered_by": self.answered_by(i),
                        "action": self.action}
        if self.withheld(i):
            answer["rejected"] = True
        else:
            answer["class_name"] = self.class_name(i)
            answer["probabilities"] = self.probabilities(i)
        if self.guarded(i):
            answer["verdict"] = VERDICT_WIRE_NAMES[self.verdict(i)]
            if self.full:
                answer["attack_score"] = self.attack_score(i)
                answer["detectors"] = self.detectors(i)
        else:
            answer["verdict"] = VERDICT_WIRE_NAMES[Verdict.UNSPECIFIED]
        return answer

    # -- columns (tensor wires) -------------------------------------------------------------
    def class_indices(self) -> np.ndarray:
        if self._indices is None:
            self._indices = np.where(self.result.rejected, -1, self.result.classes).astype("<i8")
        return self._indices

    def class_names(self) -> list[bytes]:
        labels = self.words.labels  # labels[-1] is b"": a withheld class has no name
        return [labels[c] for c in self.class_indices().tolist()]

    def probability_rows(self) -> np.ndarray:
        """N x K float32; a withheld image's row is zeros."""
        probs = self.result.probs
        if self.result.rejected.any():
            probs = np.where(self.result.rejected[:, None], 0.0, probs)
        return probs.astype("<f4", copy=False)

    def verdicts(self) -> np.ndarray:
        guard = self.result.guard
        if guard is None:
            return np.zeros(self.n, dtype=np.int32)
        return np.where(self.result.guarded, guard.verdicts, int(Verdict.UNSPECIFIED))

    def verdict_names(self) -> list[bytes]:
        return [VERDICT_WIRE_BYTES[v] for v in self.verdicts().tolist()]

    def answered_by_names(self) -> list[bytes]:
        file = self.words.file
        return [file(name) for name in self.result.answered_by.tolist()]

    def attack_scores(self) -> np.ndarray:
        guard = self.result.guard
        return np.zeros(self.n, dtype="<f4") if guard is None else np.asarray(guard.attack_scores, dtype="<f4")

    def detector_scores(self) -> np.ndarray:
        """N x D float32 (zeros where the guard did not run)."""
        guard, d = self.result.guard, len(self.pipeline.detectors)
        if guard is None or not guard.outcomes:
            return np.zeros((self.n, d), dtype="<f4")
        return np.stack([o.scores for o in guard.outcomes], axis=1).astype("<f4")

    def detector_flags(self) -> np.ndarray:
        guard, d = self.result.guard, len(self.pipeline.detectors)
        if guard is None or not guard.outcomes:
            return np.zeros((self.n, d), dtype=np.bool_)
        return np.stack([o.flagged for o in guard.outcomes], axis=1).astype(np.bool_)


# The Open Inference Protocol's outputs, the same on gRPC and REST: name -> datatype, in the order
# they are offered; `oip_shape` and `oip_column` give each one's shape and values for a batch.
OIP_OUTPUTS = {"probabilities": "FP32", "class_index": "INT64", "class_name": "BYTES", "verdict": "BYTES",
               "attack_score": "FP32", "detector_scores": "FP32", "detector_flags": "BOOL", "answered_by": "BYTES"}


def oip_shape(name: str, n: int, k: int, d: int) -> list[int]:
    """Output `name`'s shape for N images (-1: any), K classes, D detectors."""
    return [n, k] if name == "probabilities" else [n, d] if name.startswith("detector_") else [n]


def oip_column(answers: Answers, name: str) -> np.ndarray | list[bytes]:
    """Output `name` of a batch's answers, as the tensor wires send it."""
    if name == "probabilities":
        return answers.probability_rows()
    if name == "class_index":
        return answers.class_indices()
    if name == "class_name":
        return answers.class_names()
    if name == "verdict":
        return answers.verdict_names()
    if name == "attack_score":
        return answers.attack_scores()
    if name == "detector_scores":
        return answers.detector_scores()
    if name == "detector_flags":
        return answers.detector_flags()
    return answers.answered_by_names()
