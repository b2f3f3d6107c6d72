"""The MIA augmented data set: labels (adversarial -> index 10), shares, pool balance, bagging."""
import pytest
import torch

from training.data import Split
from training.defenses.mia.craft import craft_per_attack, craft_pool
from training.defenses.mia.data import adversarial_count, augmented, bootstraps, parse_attacks
from training.models import create_model

EPS = 0.1


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def clean(fmnist_small):
    return fmnist_small.train.take(300)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return create_model("mia-target", mean=(0.286,), std=(0.353,)).eval()


@pytest.fixture(scope="module")
def pool(source, clean):
    attacks = parse_attacks(f"fgsm:eps={EPS},pgd:eps={EPS};steps=2;alpha=0.05")
    return craft_pool(source, clean, attacks, size=adversarial_count(len(clean), 0.5), seed=0)


def test_attack_specs_parse_into_typed_configs(source):
    specs = parse_attacks("gma:values=0.1|0.5;steps=5, pgd:eps=0.03;steps=7, cw")
    assert [s.name for s in specs] == ["gma", "pgd", "cw"]
    assert dict(specs[0].options) == {"values": "0.1,0.5", "steps": "5"}
    pgd = specs[1].build(source)
    assert pgd.config.eps == 0.03 and pgd.config.steps == 7 and isinstance(pgd.config.steps, int)
    with pytest.raises(ValueError, match="once"):
        parse_attacks("fgsm,fgsm")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_attacks("pgd:eps")


def test_augmented_set_keeps_clean_labels_and_labels_adversarial_10(clean, pool):
    aug = augmented(clean, pool, share=0.4, num_classes=10)
    n_adv = adversarial_count(len(clean), 0.4)
    assert n_adv == 200 and len(aug) == len(clean) + n_adv
    assert abs(n_adv / len(aug) - 0.4) < 1e-9
    assert torch.equal(aug.y[:len(clean)], clean.y) and torch.equal(aug.x[:len(clean)], clean.x)
    assert (aug.y[len(clean):] == 10).all()
    assert torch.equal(aug.x[len(clean):], pool.x[:n_adv])


def test_pool_images_are_real_attacks_on_their_source_images(clean, pool):
    origin = clean.x[pool.source_index]
    assert torch.equal(pool.y, clean.y[pool.source_index])  # the true class is kept alongside
    linf = (pool.x - origin).flatten(1).abs().max(dim=1).values
    assert (linf <= EPS + 1e-6).all() and (linf > EPS / 2).all()
    assert pool.fooled.any()


def test_pool_prefixes_are_balanced_and_shares_nest(clean, pool):
    for n in (10, 45, 100, len(pool)):
        counts = torch.bincount(pool.attack[:n], minlength=2)
        assert counts.max() - counts.min() <= 1
    small = augmented(clean, pool, 0.25, 10)
    large = augmented(clean, pool, 0.5, 10)
    assert torch.equal(large.x[:len(small)], small.x)  # each EAT cycle adds to the previous one


def test_share_beyond_the_pool_and_only_fooled(clean, pool):
    with pytest.raises(ValueError, match="needs"):
        augmented(clean, pool, 0.6, 10)
    fooled = pool.select(pool.fooled)
    share = len(fooled) / (len(fooled) + len(clean)) * 0.99
    aug = augmented(clean, pool, share, 10, only_fooled=True)
    adv = aug.x[len(clean):]
    assert torch.equal(adv, fooled.x[:len(adv)])


def test_per_attack_test_sets_attack_every_image_once_per_attack(source, clean):
    attacks = parse_attacks(f"fgsm:eps={EPS},pgd:eps={EPS};steps=1;alpha={EPS}")
    sets = craft_per_attack(source, clean.take(20), attacks)
    assert len(sets) == 40 and sets.names == ("fgsm", "pgd")
    assert torch.equal(sets.of("pgd").source_index, torch.arange(20))


def test_bootstraps_sample_with_replacement():
    x = torch.arange(500, dtype=torch.float32).view(500, 1, 1, 1) / 500
    split = Split(x, torch.arange(500) % 11)
    samples = bootstraps(split, 3, seed=0)
    assert len(samples) == 3 and all(len(s) == 500 for s in samples)
    for s in samples:
        index = (s.x.flatten() * 500).round().long()
        assert torch.equal(s.y, index % 11)           # rows stay whole
        assert len(index.unique()) < 450               # repeats: drawn with replacement
    assert not torch.equal(samples[0].x, samples[1].x)
    again = bootstraps(split, 3, seed=0)
    assert all(torch.equal(a.x, b.x) for a, b in zip(samples, again))


def test_shards_claimed_by_another_live_process_are_waited_for_not_remade(source, clean, tmp_path, monkeypatch):
    """Two processes on one shard folder (`mia.eval --craft-only` beside the evaluation): the shard
    another live process claimed is not made here; this process makes the others, waits for that
    shard's file and ends with the same images as a process alone."""
    import socket
    import subprocess
    import threading

    import training.defenses.mia.craft as craft

    monkeypatch.setattr(craft, "CLAIM_POLL_SECONDS", 0.05)
    spec = parse_attacks(f"pgd:eps={EPS};steps=2;alpha=0.05")[0]
    x, y = clean.x[:60], clean.y[:60]
    alone = craft.craft_attack(source, spec, x, y, seed=3, shard_size=20, folder=tmp_path / "alone")
    shared = tmp_path / "shared"
    shared.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (shared / "00001.claim").write_text(f"{other.pid} {socket.gethostname()}")
        result = {}
        worker = threading.Thread(target=lambda: result.update(
            x=craft.craft_attack(source, spec, x, y, seed=3, shard_size=20, folder=shared)))
        worker.start()
        while worker.is_alive() and not (shared / "00002.pt").exists():  # shards 0 and 2 made here, not 1
            worker.join(0.05)
        worker.join(0.3)
        assert worker.is_alive() and not (shared / "00001.pt").exists()
        (shared / "00001.pt").write_bytes((tmp_path / "alone" / "00001.pt").read_bytes())  # the other process's
        worker.join(30)
        assert not worker.is_alive()
    finally:
        other.kill()
    assert torch.equal(result["x"], alone)
    assert not list(shared.glob("*.claim"))[1:]  # only the other process's claim may remain
