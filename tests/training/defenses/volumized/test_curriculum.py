"""The syllabus (paper 004's curriculum): an epoch ordered from simple to complex, paced."""
import pytest
import torch

from training.defenses.volumized.curriculum import Syllabus, SyllabusConfig


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def train_images(fmnist_small):
    return fmnist_small.train.x[:2000], fmnist_small.train.y[:2000]


def _order(syllabus: Syllabus, epoch: int = 0) -> torch.Tensor:
    return syllabus.epoch_order(epoch, torch.Generator().manual_seed(epoch))


@pytest.mark.parametrize("pacing", ["linear", "root", "step", "sorted", "none"])
def test_every_epoch_visits_each_sample_once(train_images, pacing):
    x, y = train_images
    order = _order(Syllabus(x, y, SyllabusConfig(metric="entropy", pacing=pacing)))
    assert torch.equal(order.sort().values, torch.arange(len(x)))


def test_linear_pacing_goes_from_simple_to_complex(train_images):
    x, y = train_images
    syllabus = Syllabus(x, y, SyllabusConfig(metric="mi", pacing="linear", start_fraction=0.25))
    quarters = syllabus.mean_difficulty_by_position(_order(syllabus), parts=4)
    assert all(a < b for a, b in zip(quarters, quarters[1:])), quarters
    assert quarters[-1] - quarters[0] > 0.3
    # the hardest sample of each class becomes available at t = 1: it closes the epoch
    hardest = set((syllabus.q == 1.0).nonzero().squeeze(1).tolist())
    assert set(_order(syllabus)[-len(hardest):].tolist()) == hardest


def test_sorted_pacing_is_the_strict_order_and_none_is_uniform(train_images):
    x, y = train_images
    strict = Syllabus(x, y, SyllabusConfig(metric="entropy", pacing="sorted"))
    q = strict.q[_order(strict)]
    assert (q[1:] >= q[:-1]).all()
    flat = Syllabus(x, y, SyllabusConfig(metric="entropy", pacing="none"))
    assert all(abs(m - 0.5) < 0.1 for m in flat.mean_difficulty_by_position(_order(flat)))


def test_descending_order_flips_the_difficulty(train_images):
    x, y = train_images
    up = Syllabus(x, y, SyllabusConfig(metric="entropy", order="ascending"))
    down = Syllabus(x, y, SyllabusConfig(metric="entropy", order="descending"))
    assert torch.corrcoef(torch.stack([up.q, down.q]))[0, 1] < -0.99


def test_stratified_syllabus_starts_with_every_class(train_images):
    x, y = train_images
    syllabus = Syllabus(x, y, SyllabusConfig(metric="entropy", pacing="sorted", stratify=True))
    first = y[_order(syllabus)[:200]]
    shares = torch.bincount(first, minlength=10).float() / len(first)
    assert shares.min() > 0.05 and shares.max() < 0.15


def test_trainer_feeds_batches_in_the_syllabus_order(fmnist_small, tmp_path):
    from training.models import create_model, model_spec_for
    from training.trainer import TrainConfig, fit

    small = fmnist_small.__class__(train=fmnist_small.train.take(128), val=fmnist_small.val.take(32),
                                   test=fmnist_small.test.take(32), labels=fmnist_small.labels,
                                   name=fmnist_small.name)
    spec = model_spec_for("mia-target", small)
    seen = []

    def loss(model, xb, yb):
        seen.append(xb.clone())
        return torch.nn.functional.cross_entropy(model(xb), yb)

    order = torch.arange(127, -1, -1)
    fit(create_model(spec), spec, small, TrainConfig(epochs=1, batch_size=32), tmp_path,
        batch_loss=loss, epoch_order=lambda epoch, gen: order)
    assert torch.equal(torch.cat(seen), small.train.x[order])
