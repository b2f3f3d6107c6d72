from training.attacks import BIM, FGSM
from training.attacks.bim import BIMConfig

from .conftest import accuracy, assert_valid


def test_kurakin_step_rule():
    assert BIMConfig(eps=16 / 255).n_steps == 20      # min(16 + 4, 1.25 * 16)
    assert BIMConfig(eps=2 / 255).n_steps == 3        # min(6, 2.5) rounded up
    assert BIMConfig(eps=0.1, steps=7).n_steps == 7


def test_bim_clips_to_the_ball_and_beats_fgsm(model, test_xy):
    x, y = test_xy[0][:128], test_xy[1][:128]
    x_adv = BIM(model, eps=0.1, alpha=0.025, steps=8)(x, y)
    assert_valid(x, x_adv, linf=0.1)
    fgsm = accuracy(model, FGSM(model, eps=0.1)(x, y), y)
    assert accuracy(model, x_adv, y) < fgsm - 0.1
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.6
