"""The robustness card: the adaptive attack must beat the detector-ignorant one on a bundle
whose guard stops the latter, and a masked gradient must raise the evaluator's warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.evaluate.card import CardConfig, evaluate_bundle
from training.evaluate.twin import BundleTwin

SMALL = CardConfig(n=120, sweep=(), pgd_steps=20, restarts=1, cw_steps=10, cw_binary_steps=1, square_queries=300,
                   adaptive_steps=40, adaptive_restarts=1, penalties=(10.0,), batch_size=120)


@pytest.fixture(scope="module")
def card(defended_bundle, fmnist_small):
    return evaluate_bundle(defended_bundle, fmnist_small.test.x, fmnist_small.test.y, SMALL, profile="test")


def rows(card) -> dict:
    return {r["label"]: r for r in card["attacks"]}


def test_twin_equals_the_served_pipeline(card):
    parity = card["twin_parity"]
    assert parity["max_score_diff"] < 1e-3 and parity["images"] == 120
    assert card["twin_differentiable"]


def test_card_has_the_promised_rows(card, defended_bundle):
    labels = list(rows(card))
    assert labels[:2] == ["FGSM eps=0.1", "PGD-20 CE x1 eps=0.1"]
    assert "CW-L2" in labels and any(r["kind"] == "black-box" for r in card["attacks"])
    assert {r["params"]["variant"] for r in card["attacks"] if r["kind"] == "adaptive"} == {"evade", "fallback", "served"}
    for r in card["attacks"]:
        assert 0 <= r["served_accuracy"] <= 1 and r["right_or_flagged"] >= r["served_accuracy"]
    assert set(card["models"]) == {"model.onnx", "fallback.onnx"}
    assert card["clean"]["verdict_fpr"] < 0.2


def test_adaptive_attack_beats_the_detector_ignorant_one(card):
    """PGD on the primary alone is mostly flagged and answered by the robust fallback; the
    attacker who knows the guard does better (lower served accuracy)."""
    r = rows(card)
    ignorant = r["PGD-20 CE x1 eps=0.1"]["served_accuracy"]
    assert card["adaptive_worst_case_accuracy"] < ignorant - 0.05, (card["adaptive_worst_case_accuracy"], ignorant)
    assert card["worst_case_accuracy"] <= card["adaptive_worst_case_accuracy"]


def test_detection_rows_equal_the_full_cards_and_claim_no_card(card, defended_bundle, fmnist_small):
    """`rows="detection"` measures the card's own FGSM and PGD rows (same images, same seeds, the
    same figures) and nothing it cannot vouch for: no adaptive worst case, no masking verdict."""
    from advguard.cli.card import card_table

    config = CardConfig(**{**SMALL.__dict__, "rows": "detection"})
    detection = evaluate_bundle(defended_bundle, fmnist_small.test.x, fmnist_small.test.y, config, profile="test")
    assert [r["label"] for r in detection["attacks"]] == ["FGSM eps=0.1", "PGD-20 CE x1 eps=0.1"]
    for r in detection["attacks"]:
        full = rows(card)[r["label"]]
        assert {k: r[k] for k in ("served_accuracy", "flagged", "detected_among_successful", "successful")} == \
            {k: full[k] for k in ("served_accuracy", "flagged", "detected_among_successful", "successful")}
    assert detection["clean"] == card["clean"]
    assert detection["adaptive_worst_case_accuracy"] is None and detection["gradient_masking_suspected"] is None
    table = card_table({"name": "b", "version": 1, "robustness": detection})
    assert "not measured (no Square row)" in table and "not a robustness card" in table
    with pytest.raises(ValueError, match="rows must be one of"):
        CardConfig(rows="adaptive")


def test_cw_gma_rows_equal_the_full_cards_cw_and_add_gma(card, defended_bundle, fmnist_small):
    """`rows="cw-gma"`: the card's own CW-L2 row (same figures) and paper 002's GMA, whose sizes
    reach 0.3 and so stay out of the worst case at the card's eps; no worst case is claimed."""
    from advguard.cli.card import card_table

    config = CardConfig(**{**SMALL.__dict__, "rows": "cw-gma"})
    extra = evaluate_bundle(defended_bundle, fmnist_small.test.x, fmnist_small.test.y, config, profile="test")
    by_label = {r["label"]: r for r in extra["attacks"]}
    assert list(by_label) == ["CW-L2", "GMA (paper 002)"]
    keys = ("served_accuracy", "flagged", "detected_among_successful", "successful")
    assert {k: by_label["CW-L2"][k] for k in keys} == {k: rows(card)["CW-L2"][k] for k in keys}
    gma = by_label["GMA (paper 002)"]
    assert gma["params"]["eps"] == 0.3 and gma["successful"] > 0  # the grid's largest sizes fool the primary
    assert extra["worst_case_accuracy"] is None and extra["adaptive_worst_case_accuracy"] is None
    table = card_table({"name": "b", "version": 1, "robustness": extra})
    assert "not measured (no L-inf row at this eps)" in table and "CW-L2 and GMA only" in table


class GradientMasked(nn.Module):
    """The same function as `model` with no gradient reaching the input (a shattered gradient,
    as an input quantizer without BPDA gives)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach()) + 0.0 * x.sum()  # the input in the graph, its gradient zero


def test_masked_gradient_raises_the_warning(defended_bundle, fmnist_small, monkeypatch, tmp_path):
    """The twin computes the served function exactly but hides its gradient: the white-box
    attacks stall, the black-box Square attack on the served answer does not, and the card says
    so. (The bundle's action is `flag`, so the served answer is the standard primary's, which a
    black-box attack can move.)"""
    import json
    import shutil

    bundle = tmp_path / "flag"
    shutil.copytree(defended_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["guard"]["action"] = "flag"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    load = BundleTwin.load

    def masked(path):
        twin = load(path)
        for key in list(twin.files):
            twin.files[key] = GradientMasked(twin.files[key])
        return twin

    monkeypatch.setattr(BundleTwin, "load", staticmethod(masked))
    config = CardConfig(n=80, sweep=(), pgd_steps=10, restarts=1, cw_steps=5, cw_binary_steps=1, square_queries=300,
                        adaptive_steps=10, adaptive_restarts=1, penalties=(10.0,), batch_size=80)
    masked_card = evaluate_bundle(bundle, fmnist_small.test.x, fmnist_small.test.y, config)
    rows = {r["kind"]: r for r in masked_card["attacks"]}
    assert masked_card["gradient_masking_suspected"], rows


def test_an_interrupted_card_resumes_from_its_finished_shards(defended_bundle, fmnist_small, tmp_path, monkeypatch):
    """A card in shards of 40 images: the shards a first call finished are read back, not
    evaluated again, and the card built from them equals the one computed in one go."""
    import training.evaluate.card as card_module

    config = CardConfig(n=80, sweep=(), pgd_steps=5, restarts=1, cw_steps=3, cw_binary_steps=1, square_queries=50,
                        adaptive_steps=5, adaptive_restarts=1, penalties=(10.0,), batch_size=40, shard=40)
    x, y = fmnist_small.test.x, fmnist_small.test.y
    whole = evaluate_bundle(defended_bundle, x, y, config, work_dir=tmp_path / "shards")
    assert whole["complete"] and whole["n"] == 80 and len(list((tmp_path / "shards").glob("shard-*.npz"))) == 2
    (tmp_path / "shards" / "shard-0001.npz").unlink()  # as if it had stopped during shard 1

    partial = evaluate_bundle(defended_bundle, x, y, config, work_dir=tmp_path / "shards", partial=True)
    assert not partial["complete"] and partial["n"] == 40 and partial["images_planned"] == 80

    evaluated = []
    real = card_module.evaluate_shard
    monkeypatch.setattr(card_module, "evaluate_shard", lambda *a: evaluated.append(len(a[2])) or real(*a))
    resumed = evaluate_bundle(defended_bundle, x, y, config, work_dir=tmp_path / "shards")
    assert evaluated == [40]  # only the missing shard
    for key in ("clean", "adaptive_worst_case_accuracy", "worst_case_accuracy", "n", "complete"):
        assert resumed[key] == whole[key], key
    assert [r["served_accuracy"] for r in resumed["attacks"]] == [r["served_accuracy"] for r in whole["attacks"]]

    other = CardConfig(**{**config.__dict__, "pgd_steps": 6})  # another config: the shards do not count
    evaluated.clear()
    evaluate_bundle(defended_bundle, x, y, other, work_dir=tmp_path / "shards")
    assert evaluated == [40, 40]

    evaluated.clear()  # two processes (jobs=2): the helper claims shard 0 before this one starts, which does shard 1
    shared = evaluate_bundle(defended_bundle, x, y, config, work_dir=tmp_path / "jobs", jobs=2)
    assert evaluated == [40] and len(list((tmp_path / "jobs").glob("shard-*.npz"))) == 2
    assert not list((tmp_path / "jobs").glob("*.claim"))
    for key in ("clean", "adaptive_worst_case_accuracy", "worst_case_accuracy", "n", "complete"):
        assert shared[key] == whole[key], key
    assert [r["served_accuracy"] for r in shared["attacks"]] == [r["served_accuracy"] for r in whole["attacks"]]


def test_shard_claims_are_exclusive_and_a_dead_claimant_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess

    from training.evaluate.card_shards import ShardStore

    store = ShardStore(tmp_path, "key")
    assert store.claim(0) and store.claim(0)  # ours, and still ours
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other = tmp_path / "shard-0001.claim"
        other.write_text(f"{sleeper.pid} {socket.gethostname()}")
        assert not store.claim(1)  # a live process holds it
        sleeper.kill()
        sleeper.wait()
        assert store.claim(1)  # its process is gone: taken over
        assert other.read_text().split()[0] == str(os.getpid())
    finally:
        sleeper.kill()
    store.release(1)
    assert not other.exists()


def test_a_card_waits_for_a_shard_another_process_claimed(defended_bundle, fmnist_small, tmp_path, monkeypatch):
    """Two processes on one card: the shard the other one claimed is not evaluated twice; when
    the other process dies without finishing it, this one takes it over and the card completes."""
    import socket
    import subprocess
    import threading

    import training.evaluate.card as card_module

    config = CardConfig(n=80, sweep=(), pgd_steps=5, restarts=1, cw_steps=3, cw_binary_steps=1, square_queries=50,
                        adaptive_steps=5, adaptive_restarts=1, penalties=(10.0,), batch_size=40, shard=40)
    x, y = fmnist_small.test.x, fmnist_small.test.y
    shards = tmp_path / "shards"
    shards.mkdir()
    other = subprocess.Popen(["sleep", "120"])
    (shards / "shard-0001.claim").write_text(f"{other.pid} {socket.gethostname()}")
    evaluated: list[int] = []
    real = card_module.evaluate_shard

    def counted(*args):
        evaluated.append(int(args[2][0].sum() * 1000))  # which shard, by its images
        if len(evaluated) == 1:  # shard 0 done here: now the claimant of shard 1 dies
            threading.Timer(0.5, lambda: (other.kill(), other.wait())).start()
        return real(*args)

    monkeypatch.setattr(card_module, "evaluate_shard", counted)
    monkeypatch.setattr(card_module, "CLAIM_POLL_SECONDS", 0.1)
    try:
        card = evaluate_bundle(defended_bundle, x, y, config, work_dir=shards)
    finally:
        other.kill()
        other.wait()
    assert card["complete"] and card["n"] == 80
    assert len(evaluated) == 2 and evaluated[0] != evaluated[1]  # each shard once
    assert not list(shards.glob("*.claim"))
