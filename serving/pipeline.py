"""One servable model: primary ONNX model + guard, over N x C x H x W float32 batches.

Pure core shared by the gRPC server and the TorchServe handler: no grpc, no prometheus.
The input and every view the detectors need (squeezed copies) go through the primary model
in one ONNX Runtime call. `Pipeline.steps` is `Pipeline.run` as a generator that yields its
blocking calls (model runs) instead of making them, so the server's batcher runs only those
off its event loop; `serving.runtime.offload.drive` runs them in the calling thread.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.bundle import Bundle, BundleChecks, BundleError, load_bundle
from serving.engine import EngineOptions, OnnxModel, softmax, verified_models
from serving.guard import (
    CalibratedDetector, DetectorOutcome, GuardResult, Outputs, Policy, Verdict, View,
    required_views, run_guard,
)
from serving.guard.policy import ADVERSARIAL
from serving.runtime.offload import drive


def model_outputs(model: OnnxModel, x: np.ndarray, views: dict[str, View],
                  reference: OnnxModel | None = None) -> Outputs:
    """The model's probabilities on `x` and on each view of `x`, from one batched run (and the
    reference model's on `x`, from a second run, when given)."""
    return drive(output_steps(model, x, views, reference))


def output_steps(model: OnnxModel, x: np.ndarray, views: dict[str, View], reference: OnnxModel | None = None):
    """`model_outputs` as steps: yields its blocking model calls (see serving.runtime.offload)."""
    ref = softmax((yield functools.partial(reference.logits, x))) if reference is not None else None
    if not views:
        return Outputs(softmax((yield functools.partial(model.logits, x))), reference=ref)
    batch = np.concatenate([x] + [view(x) for view in views.values()])
    probs = softmax((yield functools.partial(model.logits, batch)))
    n = len(x)
    return Outputs(probs[:n], {name: probs[n * (i + 1):n * (i + 2)] for i, name in enumerate(views)}, ref)


def _scatter(result: GuardResult, mask: np.ndarray) -> GuardResult:
    """Spread a guard result over the samples of a larger batch (others: UNSPECIFIED, 0)."""
    n = len(mask)

    def full(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(n, fill, dtype=values.dtype)
        out[mask] = values
        return out

    return GuardResult(full(result.verdicts, Verdict.UNSPECIFIED), full(result.attack_scores, 0.0),
                       [DetectorOutcome(o.name, full(o.scores, 0.0), o.threshold, full(o.flagged, False),
                                        o.target_fpr) for o in result.outcomes])


@dataclass(slots=True)  # not frozen: one per call's share of a batch (see guard.DetectorOutcome)
class PipelineResult:
    probs: np.ndarray          # N x classes, from the model that answered
    classes: np.ndarray        # N
    guard: GuardResult | None  # None when the guard ran for no sample
    guarded: np.ndarray        # N bool: the guard ran for this sample
    answered_by: np.ndarray    # N model file names (primary, or fallback for flagged samples)
    rejected: np.ndarray       # N bool: class withheld (action 'reject', verdict ADVERSARIAL)

    def take(self, index: slice | np.ndarray) -> "PipelineResult":
        guard = self.guard.take(index) if self.guard is not None else None
        guarded = self.guarded[index]
        return PipelineResult(self.probs[index], self.classes[index], guard if any(guarded.tolist()) else None,
                              guarded, self.answered_by[index], self.rejected[index])


class Pipeline:
    """Classify and guard a batch. Example: `Pipeline.load("model_store/fmnist-cnn/1").run(x)`."""

    def __init__(self, bundle: Bundle, primary: OnnxModel, detectors: list[CalibratedDetector],
                 policy: Policy, fallback: OnnxModel | None = None, reference: OnnxModel | None = None) -> None:
        self.bundle = bundle
        self.primary = primary
        self.detectors = detectors
        self.policy = policy
        self.fallback = fallback
        self.views = required_views(detectors)
        self.blocking_guard = any(getattr(d.detector, "blocking", False) for d in detectors)
        needs_reference = [d.detector.name for d in detectors if getattr(d.detector, "needs_reference", False)]
        if needs_reference and reference is None:
            raise BundleError(f"{bundle.path}: detector {needs_reference[0]!r} compares the primary with a "
                              "model of role 'reference', and the bundle has none; rebuild it with "
                              "`advguard bundle` and a `reference:` run")
        if policy.action == "fallback" and fallback is None:
            raise BundleError(f"{bundle.path}: the guard's action is 'fallback' but the bundle has no model "
                              "of role 'fallback'; rebuild it with `advguard bundle` and a `fallback:` run")
        self.reference = reference if needs_reference else None
        fallback_entry, reference_entry = bundle.file("fallback"), bundle.file("reference")
        # the fallback's answers come free when it is the reference model, which ran already
        self.fallback_is_reference = (self.reference is not None and fallback_entry is not None
                                      and reference_entry is not None and fallback_entry.file == reference_entry.file)
        self.fallback_file = fallback_entry.file if fallback_entry is not None else ""

    @classmethod
    def load(cls, path: Path | str, engine: EngineOptions | None = None,
             checks: BundleChecks | None = None) -> "Pipeline":
        return cls.from_bundle(load_bundle(path, checks=checks), engine)

    @classmethod
    def from_bundle(cls, bundle: Bundle, engine: EngineOptions | None = None) -> "Pipeline":
        """Build from a loaded bundle: every model runs the bytes `load_bundle` verified (each
        file once, whatever roles it has); the bundle lets go of those bytes afterwards. A bundle
        whose answering models do not output one score per label is refused (`check_outputs`)."""
        from serving.guard.registry import build_detectors

        loaded: dict[str, OnnxModel] = {}

        def model(role: str) -> OnnxModel | None:
            entry = bundle.file(role)
            if entry is None:
                return None
            if entry.file not in loaded:
                loaded[entry.file] = OnnxModel.load(bundle.path / entry.file, engine)
            return loaded[entry.file]

        guard = bundle.guard or {}
        policy = Policy(combine=guard.get("policy", "any"), action=guard.get("action", "flag"))
        with verified_models(bundle):
            pipeline = cls(bundle, model("primary"), build_detectors(bundle, engine), policy, model("fallback"),
                           model("reference"))
        bundle.release_bytes()
        pipeline.check_outputs()
        return pipeline

    def check_outputs(self) -> None:
        """Each answering model (primary, fallback, reference) outputs one score per label, or a
        BundleError names the model file, its output width and the manifest's label count."""
        answering: dict[str, tuple[str, OnnxModel]] = {}  # file -> (first role, model): each file runs once
        for role, model in (("primary", self.primary), ("fallback", self.fallback), ("reference", self.reference)):
            if model is not None:
                answering.setdefault(self.bundle.file(role).file, (role, model))
        x = np.zeros((1, *self.bundle.input.shape), dtype=np.float32)
        for file, (role, model) in answering.items():
            classes = int(model.logits(x).shape[-1])
            if classes != len(self.labels):
                raise BundleError(f"{self.bundle.path}: the {role} model ({file}) outputs {classes} classes but "
                                  f"the manifest lists {len(self.labels)} labels; export the bundle again")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    def warm_up(self) -> None:
        """One run on a blank image, so the first request does not pay ONNX Runtime's set-up."""
        self.run(np.zeros((1, *self.bundle.input.shape), dtype=np.float32))

    def run(self, x: np.ndarray, guard: bool | np.ndarray = True) -> PipelineResult:
        """Classify `x` (N x C x H x W); guard the samples where `guard` (bool or N bools) holds."""
        return drive(self.steps(x, guard))

    def steps(self, x: np.ndarray, guard: bool | np.ndarray = True):
        """`run` as steps that yield its blocking model calls (see serving.runtime.offload)."""
        n = len(x)
        mask = np.full(n, guard) if isinstance(guard, bool) else np.broadcast_to(np.asarray(guard, dtype=bool), (n,))
        answered_by = np.full(n, self.bundle.primary.file, dtype=object)
        rejected = np.zeros(n, dtype=bool)
        if not mask.any() or not self.detectors:
            probs = softmax((yield functools.partial(self.primary.logits, x)))
            guard_result = None
            if mask.any():  # no detectors: every guarded sample is CLEAN
                guard_result = GuardResult(np.where(mask, Verdict.CLEAN, Verdict.UNSPECIFIED).astype(np.int32),
                                           np.zeros(n, dtype=np.float32))
            return PipelineResult(probs, probs.argmax(axis=1), guard_result, mask.copy(), answered_by, rejected)
        reference = None
        if mask.all():
            outputs = yield from output_steps(self.primary, x, self.views, self.reference)
            probs, guard_result, reference = outputs.probs, (yield from self._guard(x, outputs)), outputs.reference
        else:
            guarded = yield from output_steps(self.primary, x[mask], self.views, self.reference)
            probs = np.empty((n, guarded.probs.shape[1]), dtype=guarded.probs.dtype)
            probs[mask] = guarded.probs
            probs[~mask] = softmax((yield functools.partial(self.primary.logits, x[~mask])))
            guard_result = _scatter((yield from self._guard(x[mask], guarded)), mask)
            if guarded.reference is not None:
                reference = np.zeros_like(probs)
                reference[mask] = guarded.reference
        adversarial = guard_result.verdicts == ADVERSARIAL
        if adversarial.any() and self.policy.action == "fallback":
            probs = probs.copy()
            if self.fallback_is_reference:
                probs[adversarial] = reference[adversarial]
            else:
                probs[adversarial] = softmax((yield functools.partial(self.fallback.logits, x[adversarial])))
            answered_by[adversarial] = self.fallback_file
        elif self.policy.action == "reject":
            rejected = adversarial
        return PipelineResult(probs, probs.argmax(axis=1), guard_result, mask.copy(), answered_by, rejected)

    def _guard(self, x: np.ndarray, outputs: Outputs):
        """run_guard as a step: a blocking call of its own when a detector runs a model."""
        call = functools.partial(run_guard, self.detectors, self.policy, x, outputs)
        return (yield call) if self.blocking_guard else call()
