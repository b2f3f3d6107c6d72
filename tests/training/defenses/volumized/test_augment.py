"""Random pixel and square occlusion of training images (issue 17)."""
import math

import pytest
import torch

from training.defenses.volumized.augment import OcclusionConfig, occlude


def _changed(x, out):
    return (x != out).any(dim=1)  # N x H x W


def test_pixel_occlusion_changes_one_to_max_pixels_per_image():
    x = torch.full((400, 1, 28, 28), 0.5)
    out = occlude(x, OcclusionConfig(prob=1.0, patch_share=0.0, max_pixels=5), torch.Generator().manual_seed(0))
    counts = _changed(x, out).flatten(1).sum(dim=1)
    assert counts.min() >= 1 and counts.max() <= 5
    assert set(counts.tolist()) == {1, 2, 3, 4, 5}
    assert out.min() >= 0 and out.max() <= 1


def test_square_occlusion_stays_in_one_square_of_the_configured_area():
    x = torch.full((300, 1, 28, 28), 0.5)
    config = OcclusionConfig(prob=1.0, patch_share=1.0, min_area=0.05, max_area=0.25)
    out = occlude(x, config, torch.Generator().manual_seed(1))
    lo, hi = round(math.sqrt(0.05 * 784)), round(math.sqrt(0.25 * 784))
    for mask in _changed(x, out):
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert height == width and lo <= height <= hi  # a square of side 6..14
        assert int(mask.sum()) == height * width      # filled (noise differs from 0.5 everywhere)


def test_occlusion_probability_and_zero_is_the_identity():
    x = torch.rand(2000, 1, 28, 28)
    assert torch.equal(occlude(x, OcclusionConfig(prob=0.0)), x)
    out = occlude(x, OcclusionConfig(prob=0.5), torch.Generator().manual_seed(2))
    share = _changed(x, out).flatten(1).any(dim=1).float().mean().item()
    assert 0.45 < share < 0.55


def test_bad_occlusion_configs_are_refused():
    with pytest.raises(ValueError, match="min_area"):
        OcclusionConfig(min_area=0.3, max_area=0.2)
    with pytest.raises(ValueError, match="prob"):
        OcclusionConfig(prob=1.5)
