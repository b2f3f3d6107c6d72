"""Slice orders one pixel cannot flip (issue 17): fixed from training statistics, robust ranking."""
import pytest
import torch

from training.defenses.volumized.ordering import fixed_order_from, median3, order_flips
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def images(fmnist_small):
    return fmnist_small.test.x[:48]


def test_fixed_order_ranks_the_training_mean_and_ignores_the_input(fmnist_small, images):
    train = fmnist_small.train.x[:500]
    metric = Volumizer(VolumizerConfig(7, 7, "mi"))
    order = fixed_order_from(train, metric)
    mean = metric.per_image_scores(train).mean(dim=0)
    assert sorted(order) == list(range(16))
    assert (mean[list(order)][1:] >= mean[list(order)][:-1] - 1e-9).all()  # ascending mean score
    fixed = Volumizer(VolumizerConfig(7, 7, "mi", ranking="fixed", fixed_order=order))
    perturbed = images.clone()
    perturbed[:, :, 3, 20] = 1.0 - perturbed[:, :, 3, 20]
    expected = torch.tensor(order).expand(len(images), 16)
    assert torch.equal(fixed.order(images), expected) and torch.equal(fixed.order(perturbed), expected)
    assert order_flips(fixed, images, trials=3)["reordered_share"] == 0.0
    # the volume is still the image's pixels in that order, and inverts exactly
    assert torch.equal(fixed.unvolumize(fixed(images), fixed.order(images), 28, 28), images)


def test_median3_matches_a_direct_median_and_ignores_one_outlier():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 9, 11)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    direct = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(3, 2, 9, 11, 9).median(dim=-1).values
    assert torch.equal(median3(x), direct)
    flat = torch.full((1, 1, 8, 8), 0.3)
    spiked = flat.clone()
    spiked[0, 0, 4, 4] = 1.0
    assert torch.equal(median3(spiked), flat)


def test_robust_ranking_reorders_far_fewer_images_than_per_image_ranking(images):
    per_image = order_flips(Volumizer(VolumizerConfig(7, 7, "mi")), images, trials=5)
    robust = order_flips(Volumizer(VolumizerConfig(7, 7, "mi", ranking="robust", quantum=0.2)), images, trials=5)
    assert per_image["reordered_share"] > 0.2  # paper 004's ranking: one pixel re-orders many images
    assert robust["reordered_share"] < 0.5 * per_image["reordered_share"], (robust, per_image)


def test_bad_orderings_are_refused():
    with pytest.raises(ValueError, match="permutation"):
        VolumizerConfig(ranking="fixed", fixed_order=(0, 0, 1))
    with pytest.raises(ValueError, match="unknown ranking"):
        VolumizerConfig(ranking="sometimes")
    with pytest.raises(ValueError, match="16 slices"):
        Volumizer(VolumizerConfig(ranking="fixed", fixed_order=(1, 0)))(torch.rand(1, 1, 28, 28))
