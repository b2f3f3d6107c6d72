"""The slice-vote certificate: worst-case slices a patch touches, and a case where it is exact."""
import itertools

import pytest
import torch
from torch import nn

from training.defenses.volumized.aggregate import vote_counts
from training.defenses.volumized.certify import certified, certified_curve, slices_touched, vote_margin
from training.defenses.volumized.model import VolumetricNet
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig


@pytest.mark.parametrize("side, slices", [(1, 1), (2, 4), (7, 4), (8, 4), (9, 9), (14, 9), (15, 9), (16, 16), (28, 16)])
def test_slices_touched_by_the_worst_placed_square(side, slices):
    assert slices_touched(28, 28, 7, 7, side) == slices


class _WhiteSlice(nn.Module):
    """Per slice: class 1 when every pixel of the slice is white (> 0.5), else class 0."""

    def forward(self, volume):                       # N x C x Z x h x w -> N x Z x 2
        white = (volume.amin(dim=(1, 3, 4)) > 0.5).float()
        return torch.stack([1 - white, white], dim=-1) * 10


def _toy(aggregation="vote"):
    vol = Volumizer(VolumizerConfig(7, 7, "entropy", ranking="fixed"))
    return VolumetricNet(vol, _WhiteSlice(), nn.Identity(), aggregation, depth_kernel=1).eval()


def _image(black_slices):
    """28 x 28, white except the given grid slices (black); slices 0, 1, 4, 5 meet at (7, 7)."""
    x = torch.ones(1, 1, 28, 28)
    for z in black_slices:
        r, c = divmod(z, 4)
        x[0, 0, 7 * r:7 * r + 7, 7 * c:7 * c + 7] = 0.0
    return x


def test_certificate_is_exact_for_a_2x2_patch_on_four_slices():
    model, y = _toy(), torch.tensor([1])
    k = slices_touched(28, 28, 7, 7, 2)
    assert k == 4
    far = [15, 14, 13, 11, 10, 9, 7, 3]              # black slices away from the slice corner at (7, 7)
    for n_black in range(len(far) + 1):
        x = _image(far[:n_black])
        counts = vote_counts(model.slice_logits(x))
        margin = int(vote_margin(counts, y))
        assert margin == 16 - 2 * n_black
        # every placement of a black 2 x 2 patch: the worst one flips exactly min(k, white touched) votes
        placed = torch.cat([_patched(x, r, c) for r, c in itertools.product(range(27), range(27))])
        worst = int(vote_margin(vote_counts(model.slice_logits(placed)), y.expand(len(placed))).min())
        assert worst == margin - 2 * k
        # certified <=> the true class keeps a strict majority under the worst placed patch
        assert bool(certified(counts, y, k)) == (worst > 0)


def _patched(x, r, c):
    out = x.clone()
    out[0, 0, r:r + 2, c:c + 2] = 0.0
    return out


def test_certified_curve_counts_images_and_falls_with_patch_size():
    model = _toy()
    x = torch.cat([_image([]), _image([15, 14]), _image([15, 14, 13, 11, 10])])   # margins 16, 12, 6
    y = torch.ones(3, dtype=torch.long)
    curve = certified_curve(model, x, y, sides=[1, 2, 9, 16])
    assert curve["vote_accuracy"] == 1.0
    assert curve["pixels"] == {1: 1.0, 3: pytest.approx(2 / 3), 5: pytest.approx(2 / 3)}
    assert [curve["patch"][s]["slices"] for s in (1, 2, 9, 16)] == [1, 4, 9, 16]
    assert [curve["patch"][s]["certified"] for s in (1, 2, 9, 16)] == [1.0, pytest.approx(2 / 3), 0.0, 0.0]


def test_certificate_refuses_models_whose_slices_interact():
    vol = Volumizer(VolumizerConfig(7, 7, "entropy"))  # per-image ranking, but depth kernel 3
    model = VolumetricNet(vol, _WhiteSlice(), nn.Identity(), "vote", depth_kernel=3)
    with pytest.raises(ValueError, match="independent slices"):
        certified_curve(model, _image([]), torch.ones(1, dtype=torch.long))
