"""Attacks: one small module per attack behind one interface (`attack(x, y) -> x_adv`).

Registered explicitly here (no import-time magic): `create_attack("pgd", model, eps=0.1)`.
"""
from training.attacks._base import Attack, AttackConfig, eval_mode
from training.attacks.bim import BIM, BIMConfig
from training.attacks.cw import CW, CWConfig
from training.attacks.fgsm import FGSM, FGSMConfig
from training.attacks.gma import GMA, GMAConfig, GMAResult, perturbation_grid
from training.attacks.lbfgs import LBFGS, LBFGSConfig
from training.attacks.npixel import NPixel, NPixelConfig, NPixelResult
from training.attacks.patch import AdversarialPatch, PatchConfig, save_png
from training.attacks.pgd import PGD, PGDConfig
from training.attacks._registry import attack_class, create_attack, known_attacks, register_attack
from training.attacks.square import Square, SquareConfig, SquareResult
from training.attacks._targets import (
    every_other_class, least_likely_targets, random_targets, select_targets,
)

register_attack("fgsm")(FGSM)
register_attack("bim")(BIM)
register_attack("pgd")(PGD)
register_attack("cw")(CW)
register_attack("lbfgs")(LBFGS)
register_attack("gma")(GMA)
register_attack("npixel")(NPixel)
register_attack("patch")(AdversarialPatch)
register_attack("square")(Square)

__all__ = [
    "AdversarialPatch", "Attack", "AttackConfig", "BIM", "BIMConfig", "CW", "CWConfig", "FGSM",
    "FGSMConfig", "GMA", "GMAConfig", "GMAResult", "LBFGS", "LBFGSConfig", "NPixel", "NPixelConfig",
    "NPixelResult", "PGD", "PGDConfig", "PatchConfig", "Square", "SquareConfig", "SquareResult",
    "attack_class", "create_attack", "eval_mode", "every_other_class", "known_attacks",
    "least_likely_targets", "perturbation_grid", "random_targets", "register_attack", "save_png",
    "select_targets",
]
