"""`volumized`: paper 004's volumized 3D CNN, trained with the PAL loss and a curriculum.

`advguard train --defense volumized --model fmnist-cnn --option metric=mi` builds the 3D
counterpart of the 2D model (`model`), volumizes every image inside the model (`volumizer`),
trains on the sum of per-slice cross-entropies (PAL) and feeds the samples of each epoch in a
syllabus order (`curriculum`). No adversarial training. Issue 17's variants are options: a
slice order no pixel can flip (`ranking=fixed`, computed here from the training images, or
`ranking=robust`), random pixel/patch occlusion of training images (`occlusion=0.5`), and
independent slices with a vote (`depth_kernel=1 position=true aggregation=vote`); the
defaults are paper 004's per-image design. The run folder holds a normal
checkpoint (ModelSpec 'volumetric'), so `advguard export` and every attack work on it
unchanged: the model takes N x C x H x W images.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from training.checkpoint import write_json
from training.data import Splits
from training.defenses.base import Defense, DefenseConfig
from training.defenses.volumized.augment import OcclusionConfig, occlude
from training.defenses.volumized.curriculum import PACINGS, Syllabus, SyllabusConfig
from training.defenses.volumized.model import AGGREGATIONS, VolumetricNet, pal_loss
from training.defenses.volumized.ordering import fixed_order_from
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig
from training.models import ModelSpec, count_parameters, create_model, model_spec_for
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumizedConfig(DefenseConfig):
    """Args:
        slice_h, slice_w: volumizer slice size (7 x 7: Z = 16 slices of a 28 x 28 image).
        metric, order, reference, bins: how slices are ranked (see `VolumizerConfig`).
        depth_kernel: depth of every 3D kernel (odd; 'same' padding keeps Z).
        aggregation: how slice scores combine at inference (`aggregate.AGGREGATIONS`); trim: slices
            dropped at each end by 'trimmed_mean'; abstain: a slice whose top probability is below it does
            not vote ('vote').
        ranking: 'image' (paper 004), 'fixed' (order of the training set's mean metric, computed
            at fit time from up to `order_images` training images), 'robust' (median-filtered,
            quantized to `quantum`). position: a learned vector per depth position.
        occlusion, occlusion_pixels, occlusion_min_area, occlusion_max_area: random occlusion
            of training images (`OcclusionConfig`; occlusion=0 trains on clean images only).
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
    trim: int = 4
    abstain: float = 0.0
    ranking: str = "image"
    quantum: float = 0.05
    order_images: int = 5000
    position: bool = False
    occlusion: float = 0.0
    occlusion_pixels: int = 5
    occlusion_min_area: float = 0.05
    occlusion_max_area: float = 0.25
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
        self.occlusion_config()
        if self.depth_kernel < 1 or self.depth_kernel % 2 == 0:
            raise ValueError(f"depth_kernel must be a positive odd number, got {self.depth_kernel}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        if self.pacing not in PACINGS:
            raise ValueError(f"unknown pacing {self.pacing!r}; known: {', '.join(PACINGS)}")

    def volumizer(self) -> VolumizerConfig:
        return VolumizerConfig(self.slice_h, self.slice_w, self.metric, self.order, self.reference, self.bins,
                               ranking=self.ranking, quantum=self.quantum)

    def occlusion_config(self) -> OcclusionConfig:
        return OcclusionConfig(prob=self.occlusion, max_pixels=self.occlusion_pixels,
                               min_area=self.occlusion_min_area, max_area=self.occlusion_max_area)

    def syllabus(self) -> SyllabusConfig:
        return SyllabusConfig(self.syllabus_metric, self.syllabus_order, self.pacing, self.start_fraction,
                              self.pacing_steps, self.curriculum_epochs, self.bins, self.stratify)


def volumetric_spec(spec2d: ModelSpec, config: VolumizedConfig, volumizer: VolumizerConfig | None = None) -> ModelSpec:
    """The ModelSpec of the 3D counterpart of `spec2d` (what the checkpoint records);
    `volumizer` overrides `config.volumizer()` (e.g. with a fixed order computed at fit time)."""
    vol = volumizer if volumizer is not None else config.volumizer()
    return ModelSpec(name="volumetric", num_classes=spec2d.num_classes, in_channels=spec2d.in_channels,
                     image_size=spec2d.image_size, mean=spec2d.mean, std=spec2d.std,
                     options={"base": spec2d.name, "volumizer": {**asdict(vol), "fixed_order": list(vol.fixed_order)},
                              "depth_kernel": config.depth_kernel, "aggregation": config.aggregation,
                              "position": config.position, "trim": config.trim,
                              "abstain": config.abstain})


def pal_batch_loss(model: VolumetricNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The trainer's per-batch loss: PAL over the model's per-slice scores."""
    return pal_loss(model.slice_logits(x), y)


class OccludedPalLoss:
    """PAL on randomly occluded copies of the batch (`augment.occlude`, global RNG)."""

    def __init__(self, config: OcclusionConfig) -> None:
        self.config = config

    def __call__(self, model: VolumetricNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pal_loss(model.slice_logits(occlude(x, self.config)), y)


def training_volumizer(config: VolumizedConfig, images: torch.Tensor) -> VolumizerConfig:
    """The volumizer config a run records: with ranking='fixed', the order of the mean metric
    over the first `order_images` training images."""
    vol = config.volumizer()
    if vol.ranking != "fixed":
        return vol
    order = fixed_order_from(images[:config.order_images], Volumizer(vol))
    log.info("fixed slice order from %d training images (%s, %s): %s",
             min(len(images), config.order_images), vol.metric, vol.order, list(order))
    return replace(vol, fixed_order=order)


class VolumizedDefense(Defense):
    """Volumizer + 3D CNN + PAL + curriculum (paper 004). See `VolumizedConfig`."""

    Config = VolumizedConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        volumizer = training_volumizer(self.config, splits.train.x)
        spec = volumetric_spec(model_spec_for(model_name, splits), self.config, volumizer)
        torch.manual_seed(train.seed)
        model = create_model(spec)
        syllabus = Syllabus(splits.train.x, splits.train.y, self.config.syllabus())
        first = syllabus.epoch_order(0, torch.Generator().manual_seed(train.seed * 1000))
        log.info("syllabus %s/%s: mean difficulty quantile by quarter of epoch 1: %s",
                 self.config.syllabus_metric, self.config.pacing,
                 ", ".join(f"{v:.2f}" for v in syllabus.mean_difficulty_by_position(first)))
        record = {**(run_config or {}), **self.describe(), "parameters": count_parameters(model)}
        loss = OccludedPalLoss(self.config.occlusion_config()) if self.config.occlusion > 0 else pal_batch_loss
        metrics = fit(model, spec, splits, train, Path(out_dir), batch_loss=loss,
                      run_config=record, resume=resume, epoch_order=syllabus.epoch_order)
        metrics["parameters"] = count_parameters(model)
        write_json(Path(out_dir) / "metrics.json", metrics)
        return metrics
