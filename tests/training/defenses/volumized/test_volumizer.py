"""The volumizer (paper 004): shape, a pure pixel permutation, exact inversion, metric order."""
import pytest
import torch

from training.defenses.volumized.metrics import KEY_SCALE, METRICS
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig, slice_grid


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def images(fmnist_small):
    return fmnist_small.test.x[:48]


def test_volume_shape_is_c_by_z_by_slice():
    gray = torch.rand(4, 1, 28, 28)
    assert Volumizer(VolumizerConfig(7, 7, "entropy"))(gray).shape == (4, 1, 16, 7, 7)
    rgb = torch.rand(2, 3, 32, 32)
    assert Volumizer(VolumizerConfig(8, 16, "mse"))(rgb).shape == (2, 3, 8, 8, 16)


def test_image_not_divisible_into_slices_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        Volumizer(VolumizerConfig(5, 5, "entropy"))(torch.rand(1, 1, 28, 28))


@pytest.mark.parametrize("order", ["ascending", "descending"])
@pytest.mark.parametrize("metric", METRICS)
def test_volume_is_a_pixel_permutation_that_inverts_exactly(images, metric, order):
    vol = Volumizer(VolumizerConfig(7, 7, metric, order))
    volume = vol(images)
    perm = vol.pixel_permutation(images)
    n_pixels = images[0].numel()
    # every pixel index appears exactly once, and the volume is the image read in that order
    assert torch.equal(perm.sort(dim=1).values, torch.arange(n_pixels).expand(len(images), -1))
    assert torch.equal(volume.flatten(1), images.flatten(1).gather(1, perm))
    restored = vol.unvolumize(volume, vol.order(images), 28, 28)
    assert torch.equal(restored, images)


@pytest.mark.parametrize("metric", ["entropy", "mi", "ssim", "psnr"])
def test_slices_are_stacked_in_metric_order(images, metric):
    for order in ("ascending", "descending"):
        vol = Volumizer(VolumizerConfig(7, 7, metric, order))
        ranked = vol.scores(images).gather(1, vol.order(images))
        steps = ranked[:, 1:] - ranked[:, :-1]
        tolerance = 1.0 / KEY_SCALE  # the ranking key rounds to 2^-20
        if order == "ascending":
            assert (steps >= -tolerance).all()
        else:
            assert (steps <= tolerance).all()


def test_distance_metrics_measure_from_the_most_salient_slice(images):
    vol = Volumizer(VolumizerConfig(7, 7, "mse", "ascending"))
    volume = vol(images)
    slices = slice_grid(images, 7, 7)
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs()
    energy = torch.zeros_like(images, dtype=torch.float64)
    energy[..., :, 1:] += dx.double()
    energy[..., 1:, :] += dy.double()
    salient = slice_grid(energy, 7, 7).sum(dim=(1, 3, 4)).argmax(dim=1)
    reference = slices[torch.arange(len(images)), :, salient]
    # MSE to itself is 0, the smallest value: the reference (or an identical slice) comes first
    assert torch.equal(volume[:, :, 0], reference)
