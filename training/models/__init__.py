"""Model registry: the papers' architectures, advguard's default, torchvision's by name.

A defence's own model lives in its folder and is registered by `training.defenses` (e.g.
`volumetric`, from `training.defenses.volumized`; `mia-ensemble`, from `training.defenses.mia`);
`training.checkpoint.load_model` imports it.
"""
from training.models import paper_cnns  # noqa: F401  (registers the papers' models)
from training.models.dataset_spec import DATASET_STATS, model_spec_for
from training.models.registry import (
    ModelSpec, Normalize, count_parameters, create_model, known_models, register_model,
)
from training.models.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, register_torchvision

register_torchvision()

__all__ = ["DATASET_STATS", "IMAGENET_MEAN", "IMAGENET_STD", "ModelSpec", "Normalize", "count_parameters",
           "create_model", "known_models", "model_spec_for", "register_model"]
