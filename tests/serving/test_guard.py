"""The guard core over arrays: squeezers, thresholds, policy, pipeline masks."""
from __future__ import annotations

import numpy as np
import pytest

from serving.guard import CalibratedDetector, Outputs, Policy, Verdict, run_guard, threshold_for_fpr
from serving.guard.squeezing import median_smooth_2x2, reduce_bit_depth


def test_median_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((3, 2, 9, 7)).astype(np.float32)
    expected = ndimage.median_filter(x, size=(1, 1, 2, 2), mode="reflect")
    np.testing.assert_array_equal(median_smooth_2x2(x), expected)


def test_bit_depth_keeps_2_to_the_bits_levels():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    for bits in (1, 4):
        squeezed = reduce_bit_depth(x, bits)
        assert len(np.unique(squeezed)) == 2 ** bits
        assert np.abs(squeezed - x).max() <= 0.5 / (2 ** bits - 1) + 1e-6
        np.testing.assert_array_equal(reduce_bit_depth(squeezed, bits), squeezed)


def test_threshold_flags_at_most_the_target_rate():
    scores = np.random.default_rng(1).random(1000)
    threshold = threshold_for_fpr(scores, 0.05)
    assert np.sum(scores > threshold) == 50
    with pytest.raises(ValueError, match="target_fpr must be in"):
        threshold_for_fpr(scores, 1.5)


class FixedScores:
    """A detector whose scores are given (the policy test needs exact flags)."""

    views: dict = {}

    def __init__(self, name: str, scores: list[float]) -> None:
        self.name, self.scores = name, np.asarray(scores, dtype=np.float32)

    def score(self, x, outputs):
        return self.scores


def test_policy_any_and_majority():
    detectors = [CalibratedDetector(FixedScores("a", [0.0, 2.0, 2.0]), 1.0, 0.05),
                 CalibratedDetector(FixedScores("b", [0.0, 0.0, 3.0]), 1.0, 0.05)]
    x, outputs = np.zeros((3, 1, 2, 2), np.float32), Outputs(np.full((3, 2), 0.5, np.float32))
    any_ = run_guard(detectors, Policy("any"), x, outputs)
    assert any_.verdicts.tolist() == [Verdict.CLEAN, Verdict.ADVERSARIAL, Verdict.ADVERSARIAL]
    majority = run_guard(detectors, Policy("majority"), x, outputs)
    assert majority.verdicts.tolist() == [Verdict.CLEAN, Verdict.SUSPICIOUS, Verdict.ADVERSARIAL]
    np.testing.assert_allclose(majority.attack_scores, [0.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="combine must be"):
        Policy("most")


def test_pipeline_guards_only_the_masked_samples(guarded_bundle, clean_images):
    from serving.pipeline import Pipeline

    pipeline = Pipeline.load(guarded_bundle)
    x = clean_images[0][:6].astype(np.float32) / 255
    mask = np.array([True, False, True, False, False, True])
    mixed = pipeline.run(x, mask)
    full = pipeline.run(x)
    np.testing.assert_allclose(mixed.probs, full.probs, atol=1e-5)
    assert mixed.guarded.tolist() == mask.tolist()
    assert (mixed.guard.verdicts[~mask] == Verdict.UNSPECIFIED).all()
    np.testing.assert_array_equal(mixed.guard.verdicts[mask], full.guard.verdicts[mask])
    part = mixed.take(slice(1, 2))
    assert part.guard is None and part.classes.tolist() == full.classes[1:2].tolist()


class BlockingScores(FixedScores):
    """A detector that says it runs a model of its own (as mia-vote does)."""

    blocking = True


def _blocking_calls(steps) -> tuple[int, object]:
    """Drive `steps` inline; (how many blocking calls it yielded, its result)."""
    calls, call = 0, next(steps)
    try:
        while True:
            calls += 1
            call = steps.send(call())
    except StopIteration as stop:
        return calls, stop.value


def test_pipeline_steps_yield_the_model_run_and_a_detector_that_runs_its_own_model(guarded_bundle, clean_images):
    from serving.pipeline import Pipeline

    pipeline = Pipeline.load(guarded_bundle)
    x = clean_images[0][:3].astype(np.float32) / 255
    calls, result = _blocking_calls(pipeline.steps(x))
    assert calls == 1  # one model run for the input and all its squeezed views; the guard runs inline
    np.testing.assert_array_equal(result.guard.verdicts, pipeline.run(x).guard.verdicts)
    own = CalibratedDetector(BlockingScores("own-model", [0.0, 2.0, 0.0]), 1.0, 0.05)
    with_own = Pipeline(pipeline.bundle, pipeline.primary, [*pipeline.detectors, own], pipeline.policy)
    calls, result = _blocking_calls(with_own.steps(x))
    assert calls == 2  # the guard itself went to the executor
    assert result.guard.outcomes[-1].flagged.tolist() == [False, True, False]


def test_fallback_answers_flagged_samples(guarded_bundle, tools, tmp_path, clean_images):
    import json
    import shutil

    from serving.bundle import sha256_file
    from serving.pipeline import Pipeline

    folder = tools.clone_bundle(guarded_bundle, tmp_path, "fb", "1", guard={
        "detectors": [{"name": "low-confidence", "threshold": 0.3, "target_fpr": 0.05, "options": {}}],
        "policy": "any", "action": "fallback"})
    shutil.copy(folder / "model.onnx", folder / "fallback.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"].append({"file": "fallback.onnx", "sha256": sha256_file(folder / "fallback.onnx"), "role": "fallback"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pipeline = Pipeline.load(folder)
    x = np.concatenate([clean_images[0][:20].astype(np.float32) / 255, np.full((4, 1, 28, 28), 0.5, np.float32)])
    result = pipeline.run(x)
    flagged = result.guard.verdicts == Verdict.ADVERSARIAL
    assert flagged.any() and not flagged.all()
    assert set(result.answered_by[flagged]) == {"fallback.onnx"}
    assert set(result.answered_by[~flagged]) == {"model.onnx"}
    assert not result.rejected.any()


def test_verdict_counter_counts_guarded_images_and_flags():
    from serving.guard import DetectorOutcome, GuardResult
    from serving.metrics import Metrics
    from serving.pipeline import PipelineResult
    from serving.runtime.models import verdict_counter

    def result(verdicts: list[int], guarded: list[bool], flagged: list[bool]) -> PipelineResult:
        n = len(verdicts)
        outcome = DetectorOutcome("a", np.zeros(n, np.float32), 1.0, np.array(flagged), 0.05)
        guard = GuardResult(np.array(verdicts, np.int32), np.zeros(n, np.float32), [outcome])
        return PipelineResult(np.zeros((n, 2)), np.zeros(n, int), guard, np.array(guarded),
                              np.full(n, "model.onnx", dtype=object), np.zeros(n, bool))

    metrics = Metrics()
    count = verdict_counter(metrics, "m")
    count(result([Verdict.ADVERSARIAL, Verdict.UNSPECIFIED, Verdict.CLEAN, Verdict.SUSPICIOUS],
                 [True, False, True, True], [True, True, False, False]))  # the unguarded sample's flag is not counted
    count(result([Verdict.ADVERSARIAL], [True], [True]))  # a batch of one
    count(result([Verdict.CLEAN, Verdict.CLEAN], [True, True], [False, False]))

    def value(name: str, **labels) -> float:
        return metrics.registry.get_sample_value(name, {"model": "m", **labels}) or 0.0

    assert [value("advguard_verdicts_total", verdict=v) for v in ("clean", "suspicious", "adversarial", "unguarded")] \
        == [3, 1, 2, 1]
    assert value("advguard_attacks_flagged_total", detector="a") == 2
