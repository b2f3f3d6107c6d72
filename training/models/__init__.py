"""Model registry: the papers' architectures, advguard's default, torchvision's by name."""
from training.models import paper_cnns  # noqa: F401  (registers the papers' models)
from training.models import mia_ensemble, volumetric  # noqa: F401  (issue 5: registers mia-ensemble, volumetric)
from training.models.registry import (
    ModelSpec, Normalize, count_parameters, create_model, known_models, register_model,
)
from training.models.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, register_torchvision

register_torchvision()

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelSpec", "Normalize", "count_parameters",
           "create_model", "known_models", "register_model"]
