"""`filter-finetune` (paper 000, Algorithm 2): adversarially fine-tune only the dominant
filters of a trained model; every other weight stays bit-identical."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import FGSM, PGD
from training.checkpoint import write_json
from training.data import Splits
from training.distributed import rank, unwrap
from training.defenses.base import Defense, DefenseConfig
from training.defenses.common import (
    StepSeeds, adversarial_split, auto_alpha, finalize, load_base, resumable, run_training,
)
from training.defenses.dominant_filters import (
    conv_layers, eps_overlap, find_dominant_filters, plot_histograms, top_share,
)
from training.defenses.finetune_adv import with_adversarial
from training.models import ModelSpec, create_model
from training.trainer import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterFinetuneConfig(DefenseConfig):
    """Args:
        base_run: run folder of the trained model (required).
        fraction: share of each conv layer's filters fine-tuned (paper: 0.1, 0.2, 0.5).
        attack, eps, steps: the fine-tuning adversary ('fgsm' | 'pgd', L-inf).
        data: 'static' (paper: adversarial set made once from the base model) or 'online'
            (made from the current model every batch).
        include_clean: fine-tune on benign + adversarial images (paper's best setting).
        train_dense: also train the dense layers (what paper 000's Table 12 counts).
        per_class, identify_eps (0: eps), identify_steps, top_fraction: Algorithm 1.
        overlap_eps: further eps at which to rerun Algorithm 1 to measure overlap.
        optimizer: overrides the run's optimizer (paper: RMSprop, eps 1e-8).
    """

    base_run: str = ""
    fraction: float = 0.1
    attack: str = "pgd"
    eps: float = 0.1
    steps: int = 10
    data: str = "static"
    include_clean: bool = True
    train_dense: bool = False
    per_class: int = 100
    identify_eps: float = 0.0
    identify_steps: int = 20
    top_fraction: float = 0.1
    overlap_eps: tuple[float, ...] = ()
    optimizer: str = "rmsprop"

    def __post_init__(self) -> None:
        for name in ("fraction", "top_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.attack not in ("fgsm", "pgd"):
            raise ValueError(f"attack must be 'fgsm' or 'pgd', got {self.attack!r}")
        if self.data not in ("static", "online"):
            raise ValueError(f"data must be 'static' or 'online', got {self.data!r}")
        if self.eps <= 0 or self.per_class < 1:
            raise ValueError("eps must be > 0 and per_class >= 1")


class FilterMask:
    """Trainable dominant rows of each conv layer: a gradient mask zeroes the others' gradients
    and `restore` copies their original values back after every step, so that they stay
    bit-identical whatever the optimizer does (weight decay, momentum)."""

    def __init__(self, model: nn.Module, dominant: dict[str, list[int]], train_dense: bool) -> None:
        model.requires_grad_(False)
        self.frozen: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for name, conv in conv_layers(model):
            rows = torch.zeros(conv.out_channels, dtype=torch.bool)
            rows[dominant[name]] = True
            for p in (conv.weight, conv.bias):
                if p is None or not rows.any():
                    continue
                mask = rows.view(-1, *([1] * (p.ndim - 1))).to(p.dtype)
                p.requires_grad_(True)
                p.register_hook(lambda g, m=mask: g * m)
                self.frozen.append((p, mask.bool().expand_as(p), p.detach().clone()))
        if train_dense:
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    m.requires_grad_(True)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def restore(self, _model: nn.Module | None = None) -> None:
        for p, keep, original in self.frozen:
            p.copy_(torch.where(keep, p, original))


def parameter_table(model: nn.Module, dominant: dict[str, list[int]], train_dense: bool) -> dict:
    """Count what is trained. `paper_reduction` is what paper 000's Table 12 reports: the
    parameters of the non-dominant conv filters as a share of all parameters (dense layers
    trainable); `reduction` is our share of frozen parameters."""
    total = sum(p.numel() for p in model.parameters())
    dense = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    filters = trainable_filters = conv_params = trainable_conv = 0
    for name, conv in conv_layers(model):
        per_filter = conv.weight[0].numel() + (1 if conv.bias is not None else 0)
        filters, trainable_filters = filters + conv.out_channels, trainable_filters + len(dominant[name])
        conv_params += per_filter * conv.out_channels
        trainable_conv += per_filter * len(dominant[name])
    trainable = trainable_conv + (dense if train_dense else 0)
    return {"parameters": total, "conv_parameters": conv_params, "trainable_parameters": trainable,
            "filters": filters, "trainable_filters": trainable_filters,
            "reduction": round(1 - trainable / total, 6),
            "paper_reduction": round((conv_params - trainable_conv) / total, 6)}


def table12(models: tuple[str, ...] = ("mnist-shallow", "mnist-base", "mnist-dense"),
            fractions: tuple[float, ...] = (0.1, 0.2, 0.5)) -> list[dict]:
    """Paper 000's Table 12, counted: one row per (fraction, model) on 28x28x1 inputs."""
    rows = []
    for fraction in fractions:
        for name in models:
            model = create_model(ModelSpec(name=name))
            dominant = {n: list(range(top_share(c.out_channels, fraction))) for n, c in conv_layers(model)}
            rows.append({"model": name, "fraction": fraction, **parameter_table(model, dominant, False)})
    return rows


class FilterFinetune(Defense):
    """Algorithm 1 picks the dominant filters; Algorithm 2 fine-tunes them alone.

    Writes dominant_filters.json (sets, counts, overlap across classes and eps), one histogram
    PNG per conv layer under dominant_filters/, and trainable_parameters.json.
    Example: `create_defense("filter-finetune", {"base_run": "runs/std"}).fit("mnist-base", ...)`
    """

    Config = FilterFinetuneConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        cfg, out_dir = self.config, Path(out_dir)
        model, spec = load_base(cfg.base_run, model_name, self.name)
        began = time.perf_counter()
        if cfg.fraction >= 1:  # every filter: full fine-tuning, nothing to identify
            dominant = {name: list(range(conv.out_channels)) for name, conv in conv_layers(model)}
        else:
            dominant = self.identify(model, splits, spec.num_classes, train.seed, out_dir)
        identify = time.perf_counter() - began
        mask = FilterMask(model, dominant, cfg.train_dense)
        table = parameter_table(model, dominant, cfg.train_dense)
        began = time.perf_counter()
        data = splits
        if cfg.data == "static":
            adv = adversarial_split(model, splits.train, cfg.attack, cfg.eps, cfg.steps, seed=train.seed)
            data = with_adversarial(splits, adv, cfg.include_clean)
        made = time.perf_counter() - began
        config = replace(train, optimizer=cfg.optimizer)
        metrics = run_training(self, model, spec, data, config, out_dir, self.batch_loss(), run_config,
                               resume, trainable=mask.trainable, after_step=mask.restore)
        metrics.update(identify_seconds=round(identify, 2), adversarial_set_seconds=round(made, 2),
                       finetune_seconds=metrics["wall_seconds"],
                       wall_seconds=round(metrics["wall_seconds"] + identify + made, 2),
                       dominant_filters=dominant, trainable=table)
        if rank() == 0:
            write_json(out_dir / "trainable_parameters.json", table)
        return finalize(out_dir, model, spec, metrics)

    def identify(self, model: nn.Module, splits: Splits, num_classes: int, seed: int,
                 out_dir: Path) -> dict[str, list[int]]:
        """Algorithm 1 at the main eps (and at `overlap_eps`); writes the JSON and the PNGs."""
        cfg = self.config
        found = [find_dominant_filters(model, splits.val, num_classes, cfg.fraction, cfg.per_class,
                                       eps, cfg.identify_steps, cfg.top_fraction, seed)
                 for eps in (cfg.identify_eps or cfg.eps, *cfg.overlap_eps)]
        main = found[0]
        if rank() == 0:
            write_json(out_dir / "dominant_filters.json", {**main, "eps_overlap": eps_overlap(main, found[1:])})
            plot_histograms(main, out_dir / "dominant_filters")
        return {name: layer["dominant"] for name, layer in main["layers"].items()}

    def batch_loss(self):
        cfg, seeds = self.config, StepSeeds()

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            for m in model.modules():  # batch-norm statistics are frozen parameters too
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            if cfg.data == "static":
                return F.cross_entropy(model(x), y)
            net = unwrap(model)
            attack = (FGSM(net, eps=cfg.eps) if cfg.attack == "fgsm" else
                      PGD(net, eps=cfg.eps, alpha=auto_alpha(0.0, cfg.eps, cfg.steps), steps=cfg.steps, seed=seeds()))
            x_adv = attack(x, y)
            if not cfg.include_clean:
                return F.cross_entropy(model(x_adv), y)
            return F.cross_entropy(model(torch.cat([x, x_adv])), torch.cat([y, y]))

        return resumable(loss, seeds)
