"""Cheap N-pixel scoring of an independent-slice model: exact, and what NPixel uses."""
import pytest
import torch

import training.defenses  # noqa: F401  (registers 'volumetric')
from training.attacks import NPixel
from training.defenses.volumized.slice_eval import SliceEvaluator
from training.models import ModelSpec, create_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _model(**options):
    torch.manual_seed(0)
    spec = ModelSpec("volumetric", mean=(0.286,), std=(0.353,),
                     options={"base": "fmnist-cnn", **options})
    return create_model(spec).eval()


SLICES = {"volumizer": {"ranking": "fixed", "fixed_order": [3, 1, 2, 0, 4, 5, 6, 7, 15, 14, 13, 12, 11, 10, 9, 8]},
          "depth_kernel": 1, "position": True}


def test_rescoring_the_touched_slices_equals_a_full_forward():
    model = _model(**SLICES)
    with torch.no_grad():
        model.position.normal_()                   # positions matter: a wrong depth index would show
    x = torch.rand(6, 1, 28, 28)
    ev = SliceEvaluator(model, x)
    gen = torch.Generator().manual_seed(0)
    owner = torch.randint(0, 6, (40,), generator=gen)
    for h, w in ((1, 1), (3, 9), (10, 10)):        # one pixel; windows across 2 and up to 4 slices
        r0 = torch.randint(0, 28 - h + 1, (40,), generator=gen)
        c0 = torch.randint(0, 28 - w + 1, (40,), generator=gen)
        crop = torch.rand(40, 1, h, w, generator=gen)
        full = x[owner].clone()
        for m in range(40):
            full[m, :, r0[m]:r0[m] + h, c0[m]:c0[m] + w] = crop[m]
        with torch.no_grad():
            expected = model(full)
        assert torch.allclose(ev.logits(owner, r0, c0, crop), expected, atol=1e-5)
        windows = torch.stack([x[o, :, r:r + h, c:c + w] for o, r, c in zip(owner, r0, c0)])
        assert torch.equal(ev.windows(owner, r0, c0, h, w), windows)


def test_npixel_uses_it_only_when_slices_are_independent():
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    fast = NPixel(_model(**SLICES, aggregation="vote"), pixels=3, popsize=8, steps=2)
    assert isinstance(fast._evaluator(x), SliceEvaluator)
    assert not isinstance(NPixel(_model(), pixels=1)._evaluator(x), SliceEvaluator)        # depth kernel 3
    assert not isinstance(NPixel(_model(**SLICES), local_eval=False)._evaluator(x), SliceEvaluator)
    result = fast.run(x, y)
    changed = (result.x_adv != x).flatten(1).sum(dim=1)
    assert (changed <= 3).all()
    with torch.no_grad():
        assert torch.equal(result.success, fast.model(result.x_adv).argmax(1) != y)
