"""`fast-at` (Wong, Rice & Kolter, 2020, "Fast is better than free"): FGSM from a random start
with step 1.25 * eps, a cyclic (one-cycle) learning rate, and early stopping on the PGD accuracy
of a held-out subset to catch catastrophic overfitting."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import PGD, eval_mode
from training.checkpoint import save_atomic
from training.data import Split, Splits
from training.distributed import agree, rank, shard, unwrap
from training.defenses.base import Defense, DefenseConfig
from training.defenses.common import StepSeeds, build_model, finalize, project_linf, resumable, run_training
from training.trainer import TrainConfig

log = logging.getLogger(__name__)
STATE_FILE = "fast_at_state.pt"


@dataclass(frozen=True)
class FastATConfig(DefenseConfig):
    """Args:
        eps: L-inf radius.
        step_ratio: FGSM step as a multiple of eps (Wong et al.: 1.25).
        holdout: validation images for the per-epoch PGD check.
        holdout_steps: PGD steps of that check (step eps / 4).
        overfit_drop: stop once held-out PGD accuracy falls this far below its best.
    """

    eps: float = 0.1
    step_ratio: float = 1.25
    holdout: int = 512
    holdout_steps: int = 10
    overfit_drop: float = 0.2

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.step_ratio <= 0:
            raise ValueError(f"step_ratio must be > 0, got {self.step_ratio}")
        if self.holdout < 1 or self.holdout_steps < 1:
            raise ValueError("holdout and holdout_steps must be >= 1")
        if not 0 < self.overfit_drop <= 1:
            raise ValueError(f"overfit_drop must be in (0, 1], got {self.overfit_drop}")


def fgsm_random_start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float,
                      seed: int) -> torch.Tensor:
    """One signed-gradient step of size `step` from a uniform point of the eps-ball."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    start = project_linf(x, x + (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps, eps)
    with eval_mode(model):
        start.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
    return project_linf(x, start.detach() + step * grad.sign(), eps)


class RobustEarlyStop:
    """Held-out PGD accuracy after each epoch; on a collapse of `drop` below the best, the best
    weights come back and training stops (the trainer then sees no gradient)."""

    def __init__(self, holdout: Split, eps: float, steps: int, drop: float) -> None:
        self.holdout, self.eps, self.steps, self.drop = holdout, eps, steps, drop
        self.best_accuracy, self.best_state, self.best_epoch = -1.0, None, 0
        self.history: list[float] = []
        self.stopped_after: int | None = None

    def robust_accuracy(self, model: nn.Module) -> float:
        x_adv = PGD(model, eps=self.eps, alpha=self.eps / 4, steps=self.steps, seed=0)(self.holdout.x, self.holdout.y)
        with torch.no_grad(), eval_mode(model):
            return (model(x_adv).argmax(1) == self.holdout.y).float().mean().item()

    def check(self, model: nn.Module) -> bool:
        """Record this epoch; True when training must stop (best weights restored)."""
        accuracy = self.robust_accuracy(model)
        self.history.append(round(accuracy, 4))
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, len(self.history)
            self.best_state = copy.deepcopy(model.state_dict())
        collapsed = agree(accuracy < self.best_accuracy - self.drop)
        if collapsed:
            model.load_state_dict(self.best_state)
            self.stopped_after = len(self.history)
            log.warning("catastrophic overfitting: held-out PGD accuracy %.3f (best %.3f at epoch %d); "
                        "stopping with the best weights", accuracy, self.best_accuracy, self.best_epoch)
        return collapsed

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("best_accuracy", "best_state", "best_epoch", "history", "stopped_after")}

    def load(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class FastAT(Defense):
    """FGSM-RS adversarial training with a held-out PGD check after each epoch.

    Use the default one-cycle schedule (`--schedule onecycle`): Wong et al.'s cyclic rate.
    Example: `create_defense("fast-at", {"eps": "0.1"}).fit("fmnist-cnn", splits, ...)`
    """

    Config = FastATConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        cfg, seeds = self.config, StepSeeds()
        model, spec = build_model(model_name, splits, train.seed)
        stopper = RobustEarlyStop(splits.val.take(cfg.holdout), cfg.eps, cfg.holdout_steps, cfg.overfit_drop)
        state_file = Path(out_dir) / STATE_FILE
        if resume and state_file.exists():
            stopper.load(torch.load(state_file, map_location="cpu", weights_only=True))
        local_splits, local_config = shard(splits, train)
        steps_per_epoch = -(-len(local_splits.train) // local_config.batch_size)
        counter = {"step": 0}

        def loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if stopper.stopped_after is not None:  # frozen: no gradient, so no optimizer update
                net.requires_grad_(False)
                return torch.zeros((), requires_grad=True)
            x_adv = fgsm_random_start(unwrap(net), x, y, cfg.eps, cfg.step_ratio * cfg.eps, seeds())
            return F.cross_entropy(net(x_adv), y)

        def after_step(net: nn.Module) -> None:
            counter["step"] += 1
            if stopper.stopped_after is None and counter["step"] % steps_per_epoch == 0:
                stopper.check(unwrap(net))
                if rank() == 0:
                    save_atomic(stopper.state(), state_file)

        metrics = run_training(self, model, spec, splits, train, out_dir, resumable(loss, seeds), run_config,
                               resume, trainable=list(model.parameters()), after_step=after_step)
        model.requires_grad_(True)
        trained = stopper.stopped_after or len(metrics["history"])
        metrics.update(holdout_pgd_accuracy=stopper.history, best_holdout_epoch=stopper.best_epoch,
                       early_stopped_after_epoch=stopper.stopped_after,
                       history=metrics["history"][:trained])
        return finalize(out_dir, model, spec, metrics)
