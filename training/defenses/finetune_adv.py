"""`finetune-adv` (paper 003's first "inoculation"): fine-tune a trained model on a set of
adversarial images made once, from that model, before fine-tuning starts."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from training.data import Split, Splits
from training.defenses.base import Defense, DefenseConfig
from training.defenses.common import adversarial_split, finalize, load_base, run_training
from training.trainer import TrainConfig, standard_loss


@dataclass(frozen=True)
class FinetuneAdvConfig(DefenseConfig):
    """Args:
        base_run: run folder of the trained model to fine-tune (required).
        attack: 'fgsm' or 'pgd': how the adversarial set is made (from the base model).
        eps: L-inf radius.
        steps: PGD steps (ignored for FGSM).
        include_clean: fine-tune on clean + adversarial images (else adversarial only).
    """

    base_run: str = ""
    attack: str = "fgsm"
    eps: float = 0.1
    steps: int = 10
    include_clean: bool = True

    def __post_init__(self) -> None:
        if self.attack not in ("fgsm", "pgd"):
            raise ValueError(f"attack must be 'fgsm' or 'pgd', got {self.attack!r}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def with_adversarial(splits: Splits, adversarial: Split, include_clean: bool) -> Splits:
    """`splits` whose training split is the adversarial set (after the clean images if asked)."""
    if not include_clean:
        return replace(splits, train=adversarial)
    train = Split(torch.cat([splits.train.x, adversarial.x]), torch.cat([splits.train.y, adversarial.y]))
    return replace(splits, train=train)


class FinetuneAdv(Defense):
    """Make the adversarial set once from the base model, then train on it with plain
    cross-entropy. The set is static: it does not follow the model as it changes, which is
    what `mixed-fgsm` and `pgd-at` add.
    Example: `create_defense("finetune-adv", {"base_run": "runs/std"}).fit("fmnist-cnn", ...)`
    """

    Config = FinetuneAdvConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        cfg = self.config
        model, spec = load_base(cfg.base_run, model_name, self.name)
        began = time.perf_counter()
        adversarial = adversarial_split(model, splits.train, cfg.attack, cfg.eps, cfg.steps,
                                        seed=train.seed)
        made = time.perf_counter() - began
        data = with_adversarial(splits, adversarial, cfg.include_clean)
        metrics = run_training(self, model, spec, data, train, out_dir, standard_loss, run_config, resume)
        metrics.update(adversarial_set_seconds=round(made, 2),
                       wall_seconds=round(metrics["wall_seconds"] + made, 2))
        return finalize(out_dir, model, spec, metrics)
