"""The 3D CNN built from a 2D spec: layer conversion, per-slice head, PAL, aggregation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models import ModelSpec, create_model
from training.defenses.volumized.model import pal_loss, to_volumetric
from training.defenses.volumized.volumizer import VolumizerConfig

SPEC = ModelSpec("fmnist-cnn", mean=(0.286,), std=(0.353,))


pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_every_2d_layer_becomes_its_3d_counterpart():
    torch.manual_seed(0)
    model = to_volumetric(SPEC, VolumizerConfig(7, 7, "entropy"), depth_kernel=3)
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) for c in convs)
    assert all(p.kernel_size == (1, 2, 2) for p in model.modules() if isinstance(p, nn.MaxPool3d))
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == 4
    x = torch.rand(5, 1, 28, 28)
    assert model.slice_logits(x).shape == (5, 16, 10)  # one score row per slice
    assert model.eval()(x).shape == (5, 10)


def test_pal_is_the_sum_of_the_slice_cross_entropies():
    torch.manual_seed(0)
    model = to_volumetric(SPEC, VolumizerConfig(7, 7, "mi")).eval()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    slice_logits = model.slice_logits(x)
    by_hand = sum(F.cross_entropy(slice_logits[:, z], y) for z in range(slice_logits.shape[1]))
    assert torch.allclose(pal_loss(slice_logits, y), by_hand, rtol=1e-6, atol=1e-6)
    per_image = torch.stack([sum(F.cross_entropy(slice_logits[i, z:z + 1], y[i:i + 1]) for z in range(16))
                             for i in range(6)])
    assert torch.allclose(pal_loss(slice_logits, y), per_image.mean(), rtol=1e-6, atol=1e-6)


def test_aggregations_follow_their_definitions():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    for aggregation in ("mean_log_prob", "mean_prob", "mean_logits"):
        torch.manual_seed(0)
        model = to_volumetric(SPEC, VolumizerConfig(7, 7, "entropy"), aggregation=aggregation).eval()
        with torch.no_grad():
            s = model.slice_logits(x)
            out = model(x)
        expected = {"mean_log_prob": F.log_softmax(s, -1).mean(1),
                    "mean_prob": torch.log(F.softmax(s, -1).mean(1)),
                    "mean_logits": s.mean(1)}[aggregation]
        assert torch.allclose(out, expected, atol=1e-5), aggregation


def test_registered_spec_rebuilds_the_same_architecture():
    spec = ModelSpec("volumetric", mean=(0.286,), std=(0.353,),
                     options={"base": "fmnist-cnn", "volumizer": {"metric": "kl", "slice_h": 14, "slice_w": 14},
                              "depth_kernel": 1, "aggregation": "mean_prob"})
    model = create_model(spec)
    assert model.volumizer.config.metric == "kl" and model.aggregation == "mean_prob"
    assert model.slice_logits(torch.rand(2, 1, 28, 28)).shape == (2, 4, 10)


class _LabelFromPixel(nn.Module):
    """Predicts the class written in pixel (0, 0) as value / 10 (a transparent classifier)."""

    def forward(self, x):
        return F.one_hot((x[:, 0, 0, 0] * 10).round().long().clamp(0, 9), 10).float()


def test_delta_and_beta_follow_paper_004s_definitions():
    from training.defenses.volumized.eval import _scores

    y = torch.arange(10)
    x = torch.zeros(10, 1, 4, 4)
    x[:, 0, 0, 0] = y / 10
    x[8:, 0, 0, 0] = 0.0                     # images 8, 9 are misclassified when clean (as class 0)
    x_adv = x.clone()
    x_adv[1:3, 0, 0, 0] = 0.5                # the attack flips two correct images...
    x_adv[9, 0, 0, 0] = 0.9                  # ...and one wrong image happens to become right
    r = _scores(_LabelFromPixel(), x, y, x_adv)
    assert r["acc_clean"] == pytest.approx(0.8) and r["acc_attack"] == pytest.approx(0.7)
    assert r["delta"] == pytest.approx(0.1)
    assert r["beta"] == pytest.approx(6 / 8)  # attacks defended among the 8 clean-correct images
