"""Attacks: one small module per attack behind one interface (`attack(x, y) -> x_adv`)."""
from training.attacks.base import Attack, AttackConfig, eval_mode
from training.attacks.fgsm import FGSM, FGSMConfig
from training.attacks.pgd import PGD, PGDConfig
from training.attacks.registry import attack_class, create_attack, known_attacks, register_attack

register_attack("fgsm")(FGSM)
register_attack("pgd")(PGD)

__all__ = ["Attack", "AttackConfig", "FGSM", "FGSMConfig", "PGD", "PGDConfig", "attack_class",
           "create_attack", "eval_mode", "known_attacks", "register_attack"]
