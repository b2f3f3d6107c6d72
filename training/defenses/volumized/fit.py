"""`volumized`: paper 004's volumized 3D CNN, trained with the PAL loss and a curriculum.

`advguard train --defense volumized --model fmnist-cnn --option metric=mi` builds the 3D
counterpart of the 2D model (`model`), volumizes every image inside the model (`volumizer`),
trains on the sum of per-slice cross-entropies (PAL) and feeds the samples of each epoch in a
syllabus order (`curriculum`). No adversarial training. The run folder holds a normal
checkpoint (ModelSpec 'volumetric'), so `advguard export` and every attack work on it
unchanged: the model takes N x C x H x W images.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from training.checkpoint import write_json
from training.data import Splits
from training.defenses.base import Defense, DefenseConfig
from training.defenses.volumized.curriculum import PACINGS, Syllabus, SyllabusConfig
from training.defenses.volumized.model import AGGREGATIONS, VolumetricNet, pal_loss
from training.defenses.volumized.volumizer import VolumizerConfig
from training.models import ModelSpec, count_parameters, create_model, model_spec_for
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumizedConfig(DefenseConfig):
    """Args:
        slice_h, slice_w: volumizer slice size (7 x 7: Z = 16 slices of a 28 x 28 image).
        metric, order, reference, bins: how slices are ranked (see `VolumizerConfig`).
        depth_kernel: depth of every 3D kernel (odd; 'same' padding keeps Z).
        aggregation: how slice scores combine at inference (mean_log_prob, mean_prob, mean_logits).
        syllabus_metric, syllabus_order, pacing, start_fraction, pacing_steps, curriculum_epochs,
            stratify: the curriculum (see `SyllabusConfig`); pacing='none' trains without one.
    """

    slice_h: int = 7
    slice_w: int = 7
    metric: str = "mi"
    order: str = "ascending"
    reference: str = "salient"
    bins: int = 16
    depth_kernel: int = 3
    aggregation: str = "mean_log_prob"
    syllabus_metric: str = "mi"
    syllabus_order: str = "ascending"
    pacing: str = "linear"
    start_fraction: float = 0.25
    pacing_steps: int = 4
    curriculum_epochs: int = 0
    stratify: bool = True

    def __post_init__(self) -> None:
        self.volumizer()  # validates the volumizer fields
        self.syllabus()
        if self.depth_kernel < 1 or self.depth_kernel % 2 == 0:
            raise ValueError(f"depth_kernel must be a positive odd number, got {self.depth_kernel}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        if self.pacing not in PACINGS:
            raise ValueError(f"unknown pacing {self.pacing!r}; known: {', '.join(PACINGS)}")

    def volumizer(self) -> VolumizerConfig:
        return VolumizerConfig(self.slice_h, self.slice_w, self.metric, self.order, self.reference, self.bins)

    def syllabus(self) -> SyllabusConfig:
        return SyllabusConfig(self.syllabus_metric, self.syllabus_order, self.pacing, self.start_fraction,
                              self.pacing_steps, self.curriculum_epochs, self.bins, self.stratify)


def volumetric_spec(spec2d: ModelSpec, config: VolumizedConfig) -> ModelSpec:
    """The ModelSpec of the 3D counterpart of `spec2d` (what the checkpoint records)."""
    return ModelSpec(name="volumetric", num_classes=spec2d.num_classes, in_channels=spec2d.in_channels,
                     image_size=spec2d.image_size, mean=spec2d.mean, std=spec2d.std,
                     options={"base": spec2d.name, "volumizer": asdict(config.volumizer()),
                              "depth_kernel": config.depth_kernel, "aggregation": config.aggregation})


def pal_batch_loss(model: VolumetricNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The trainer's per-batch loss: PAL over the model's per-slice scores."""
    return pal_loss(model.slice_logits(x), y)


class VolumizedDefense(Defense):
    """Volumizer + 3D CNN + PAL + curriculum (paper 004). See `VolumizedConfig`."""

    Config = VolumizedConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        spec = volumetric_spec(model_spec_for(model_name, splits), self.config)
        torch.manual_seed(train.seed)
        model = create_model(spec)
        syllabus = Syllabus(splits.train.x, splits.train.y, self.config.syllabus())
        first = syllabus.epoch_order(0, torch.Generator().manual_seed(train.seed * 1000))
        log.info("syllabus %s/%s: mean difficulty quantile by quarter of epoch 1: %s",
                 self.config.syllabus_metric, self.config.pacing,
                 ", ".join(f"{v:.2f}" for v in syllabus.mean_difficulty_by_position(first)))
        record = {**(run_config or {}), **self.describe(), "parameters": count_parameters(model)}
        metrics = fit(model, spec, splits, train, Path(out_dir), batch_loss=pal_batch_loss,
                      run_config=record, resume=resume, epoch_order=syllabus.epoch_order)
        metrics["parameters"] = count_parameters(model)
        write_json(Path(out_dir) / "metrics.json", metrics)
        return metrics
