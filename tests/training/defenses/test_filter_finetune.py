import json

import pytest
import torch

from training.attacks import PGD
from training.checkpoint import load_model
from training.defenses import create_defense
from training.defenses.dominant_filters import conv_layers, find_dominant_filters
from training.defenses.filter_finetune import FilterMask, table12
from training.models import create_model
from training.trainer import TrainConfig

OPTIONS = {"fraction": "0.2", "attack": "pgd", "eps": "0.1", "steps": "3", "per_class": "4",
           "identify_steps": "5", "overlap_eps": "0.05"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, defense_splits, standard_run, one_thread):
    out = tmp_path_factory.mktemp("filter-finetune")
    with one_thread():
        metrics = create_defense("filter-finetune", {"base_run": str(standard_run), **OPTIONS}).fit(
            "mnist-shallow", defense_splits, TrainConfig(epochs=1, batch_size=64, lr=3e-3), out)
    return out, metrics


@pytest.mark.slow
def test_every_non_dominant_weight_is_bit_identical(finetuned, standard_run):
    out, metrics = finetuned
    base = load_model(standard_run)[0].state_dict()
    tuned_model = load_model(out)[0]
    tuned = tuned_model.state_dict()
    dominant = metrics["dominant_filters"]
    assert set(dominant) == {name for name, _ in conv_layers(tuned_model)}
    checked = set()
    for name, rows in dominant.items():
        assert len(rows) == -(-tuned_model.get_submodule(name).out_channels // 5)  # 20%, rounded up
        for suffix in ("weight", "bias"):
            key = f"{name}.{suffix}"
            keep = torch.ones(len(base[key]), dtype=torch.bool)
            keep[rows] = False
            assert torch.equal(tuned[key][keep], base[key][keep])  # frozen rows: bit-identical
            assert not torch.equal(tuned[key][~keep], base[key][~keep])  # dominant rows trained
            checked.add(key)
    for key, value in base.items():
        if key not in checked:
            assert torch.equal(tuned[key], value), key


@pytest.mark.slow
def test_algorithm1_writes_histograms_and_overlap(finetuned):
    out, metrics = finetuned
    report = json.loads((out / "dominant_filters.json").read_text())
    assert report["pairs"] == 4 * 10 * 9  # per class x classes x targets
    for name, layer in report["layers"].items():
        top = -(-layer["filters"] // 10)
        assert sum(layer["counts"]) == report["pairs"] * top  # top 10% of filters per pair
        assert 0 <= layer["class_overlap"] <= 1 and 0 < layer["chance"] < 1
        assert set(report["eps_overlap"][name]) == {"0.05"}
        png = out / "dominant_filters" / f"layer-{name.replace('.', '_')}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((out / "trainable_parameters.json").read_text())
    assert table["trainable_filters"] == sum(len(v) for v in metrics["dominant_filters"].values())
    assert metrics["identify_seconds"] > 0 and metrics["wall_seconds"] > metrics["finetune_seconds"]


@pytest.mark.slow
def test_finetuned_filters_resist_the_base_models_adversarial_images(finetuned, standard_run, defense_splits):
    """Paper 000's setting: test images attacked once, against the *base* model."""
    base, _ = load_model(standard_run)
    tuned, _ = load_model(finetuned[0])
    x, y = defense_splits.test.x, defense_splits.test.y
    x_adv = PGD(base, eps=0.1, alpha=0.025, steps=10)(x, y)
    with torch.no_grad():
        before = (base(x_adv).argmax(1) == y).float().mean().item()
        after = (tuned(x_adv).argmax(1) == y).float().mean().item()
    assert after >= before + 0.12, (before, after)


def test_table12_counts_match_the_papers_numbers():
    """Paper 000's Table 12 is the share of all parameters in non-dominant conv filters."""
    paper = {(0.1, "mnist-shallow"): 7.96, (0.1, "mnist-base"): 14.33, (0.1, "mnist-dense"): 64.07,
             (0.2, "mnist-shallow"): 7.08, (0.2, "mnist-base"): 12.81, (0.2, "mnist-dense"): 56.93,
             (0.5, "mnist-shallow"): 4.54, (0.5, "mnist-base"): 8.05, (0.5, "mnist-dense"): 35.73}
    rows = table12()
    assert len(rows) == 9
    for row in rows:
        assert abs(100 * row["paper_reduction"] - paper[(row["fraction"], row["model"])]) < 0.015, row
        assert row["reduction"] > row["paper_reduction"]  # dense layers frozen too


def test_mask_keeps_frozen_rows_exact_under_weight_decay_and_momentum():
    torch.manual_seed(0)
    model = create_model("mnist-shallow")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = FilterMask(model, {"1": [0, 3], "5": [1]}, train_dense=False)
    opt = torch.optim.SGD(mask.trainable, lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        loss = model(torch.rand(8, 1, 28, 28)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mask.restore()
    after = model.state_dict()
    assert not torch.equal(after["1.weight"][[0, 3]], before["1.weight"][[0, 3]])
    assert torch.equal(after["1.weight"][[1, 2, 4]], before["1.weight"][[1, 2, 4]])
    assert torch.equal(after["5.weight"][2:], before["5.weight"][2:])
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith(("1.", "5.")))


def test_dominant_filters_are_stable_for_one_seed(standard_run, defense_splits):
    model, _ = load_model(standard_run)
    a = find_dominant_filters(model, defense_splits.val, 10, per_class=2, eps=0.1, steps=2)
    b = find_dominant_filters(model, defense_splits.val, 10, per_class=2, eps=0.1, steps=2)
    assert a["layers"] == b["layers"]
