"""Defences: one module per defence (a folder for a multi-file one), registered here explicitly,
with the models a defence brings (registered in the model registry, so `load_model` rebuilds them)."""
from training.defenses.base import Defense, DefenseConfig, create_defense, known_defenses, register_defense
from training.defenses.distill import Distill
from training.defenses.fast_at import FastAT
from training.defenses.filter_finetune import FilterFinetune
from training.defenses.finetune_adv import FinetuneAdv
from training.defenses.mixed_fgsm import MixedFGSM
from training.defenses.pgd_at import PGDAT
from training.defenses.trades import TRADES
from training.defenses.mia import MIADefense, mia_ensemble
from training.defenses.volumized import VolumizedDefense, volumetric
from training.models import register_model

register_defense("mia")(MIADefense)
register_defense("volumized")(VolumizedDefense)
register_model("volumetric")(volumetric)  # the volumized defence's 3D model (load_model needs it)
register_model("mia-ensemble")(mia_ensemble)  # the mia defence's ensemble (load_model needs it)
register_defense("mixed-fgsm")(MixedFGSM)
register_defense("finetune-adv")(FinetuneAdv)
register_defense("pgd-at")(PGDAT)
register_defense("fast-at")(FastAT)
register_defense("trades")(TRADES)
register_defense("filter-finetune")(FilterFinetune)
register_defense("distill")(Distill)

__all__ = ["Defense", "DefenseConfig", "create_defense", "known_defenses", "register_defense"]
