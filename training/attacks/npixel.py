"""N-pixel attack (Su et al., 2019): differential evolution over (row, col, value), L0."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from training.attacks._base import Attack, AttackConfig, eval_mode
from training.attacks._fusion import fused_eval_view
from training.attacks._local_eval import LocalEvaluator
from training.attacks._losses import succeeded

log = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class NPixelConfig(AttackConfig):
    pixels: int = 1
    popsize: int = 400
    steps: int = 100
    max_queries: int = 0
    mutation: float = 0.5
    crossover: float = 1.0
    batch_size: int = 256
    local_eval: bool = True
    precision: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.pixels <= 16:
            raise ValueError(f"pixels must be in 1..16, got {self.pixels}")
        if self.popsize < 4:
            raise ValueError(f"popsize must be >= 4, got {self.popsize}")
        if self.max_queries and self.max_queries < self.popsize:
            raise ValueError(f"max_queries must be 0 (steps decide) or >= popsize, got {self.max_queries}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.crossover <= 1 or self.mutation <= 0:
            raise ValueError(f"need 0 < crossover <= 1 and mutation > 0, "
                             f"got {self.crossover}, {self.mutation}")

    @property
    def generations(self) -> int:
        """Generations after the initial population, capped by the per-image query budget."""
        if not self.max_queries:
            return self.steps
        return min(self.steps, self.max_queries // self.popsize - 1)


@dataclass
class NPixelResult:
    """Adversarial images, per-image success (checked on a full forward pass) and the model
    queries spent on each image."""

    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor


def _decode(cand: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer rows and cols (M, N) and values (M, N, C) of candidates (M, N, 2 + C)."""
    rows = cand[..., 0].clamp(0, h - 1).round().long()
    cols = cand[..., 1].clamp(0, w - 1).round().long()
    return rows, cols, cand[..., 2:].clamp(0, 1)


def apply_pixels(x: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Images x (M, C, H, W) with candidate m's N pixels (M, N, 2 + C) written into image m."""
    rows, cols, vals = _decode(cand, *x.shape[-2:])
    out, idx = x.clone(), torch.arange(len(x), device=x.device)
    for k in range(cand.shape[1]):
        out[idx, :, rows[:, k], cols[:, k]] = vals[:, k]
    return out


class NPixel(Attack):
    r"""N-pixel attack: differential evolution, black-box (probabilities only).

    A candidate is N triples (row, col, value per channel). DE/rand/1: each child is
    `a + F * (b - c)` for three random members (with binomial crossover at rate `crossover`;
    1.0 is Su et al.'s "no crossover") and replaces its parent if it lowers the fitness: the
    true class's probability (untargeted) or minus the target's probability (targeted).
    Every image's whole population is evaluated in batched forward passes per generation
    (across the batch of images, not one image at a time); for `nn.Sequential` CNNs only the
    window the candidate's pixels reach is recomputed through the conv layers
    (`LocalEvaluator`, exact); a model with a `candidate_evaluator(x)` method supplies its own
    exact scorer with the same interface. An image stops spending queries once a candidate fools the
    model. Budget: `max_queries` per image (0: popsize * (steps + 1)). Changes at most N pixels.
    `precision="bfloat16"` scores candidates with a bfloat16 copy of the model (about twice
    as fast on CPUs with AVX512-BF16 or AMX): the search ranks candidates approximately, and
    success is still decided by a float32 forward pass of the original model.

    Args (NPixelConfig): pixels=1 (1..16), popsize=400, steps=100 (Su et al.'s settings),
        max_queries=0, mutation=0.5 (F), crossover=1.0, batch_size=256 (candidates per
        forward), local_eval=True, precision="float32" (or "bfloat16"), targeted=False, seed=0.
    batch_size: the candidates' feature maps should stay in cache. Measured 2026-12-07 (CPU
        us per candidate, one thread, batch 4096 / 1024 / 256 / 64): 3 pixels on `fmnist-cnn`
        984 / 880 / 620 / 412, on a 14 x 14 volumized fmnist-cnn 1428 / 1420 / 876 / 810, on
        `mia-target` 261 / 249 / 115 / 121; 1 pixel (small windows) on `fmnist-cnn` 97 / 51 /
        62 / 98. 256 is near the best in every case; 64 suits full forward passes of CNNs.
    Shape: x (N, C, H, W) in [0, 1]; y (N,); returns (N, C, H, W).
    Example: `result = NPixel(model, pixels=3, popsize=100, steps=30).run(x, y)`
    """

    Config = NPixelConfig
    name = "npixel"

    @staticmethod
    def _logits(ev: LocalEvaluator, owner: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Logits of ev.x[owner] with the candidates written in: only the bounding window of
        each candidate's pixels goes through the evaluator (in full when it spans half the image)."""
        h, w = ev.x.shape[-2:]
        rows, cols, vals = _decode(cand, h, w)
        if cand.shape[1] == 1:  # one pixel: the crop is the pixel itself
            return ev.logits(owner, rows[:, 0], cols[:, 0], vals[:, 0, :, None, None].to(ev.x.dtype))
        r_lo, c_lo = rows.min(dim=1).values, cols.min(dim=1).values
        bh = int((rows.max(dim=1).values - r_lo).max()) + 1
        bw = int((cols.max(dim=1).values - c_lo).max()) + 1
        if bh * bw * 2 > h * w:
            bh, bw = h, w
        r0, c0 = r_lo.clamp(max=h - bh), c_lo.clamp(max=w - bw)
        crop = ev.windows(owner, r0, c0, bh, bw).clone()
        idx = torch.arange(len(cand), device=cand.device)
        for k in range(cand.shape[1]):
            crop[idx, :, rows[:, k] - r0, cols[:, k] - c0] = vals[:, k].to(crop.dtype)
        return ev.logits(owner, r0, c0, crop)

    @torch.no_grad()
    def _evaluate(self, ev: LocalEvaluator, x: torch.Tensor, idx: torch.Tensor, y: torch.Tensor,
                  pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitness (lower is better) and success of pop (B, P, N, 2 + C) on images x[idx].
        Scored in ev's precision; below float32 each apparent success is re-checked in float32."""
        b, p = pop.shape[:2]
        flat, owner = pop.reshape(b * p, *pop.shape[2:]), idx.repeat_interleave(p)
        fitness, success = [], []
        for start in range(0, b * p, self.config.batch_size):
            sl = slice(start, start + self.config.batch_size)
            logits = self._logits(ev, owner[sl], flat[sl]).float()
            prob = logits.softmax(dim=1).gather(1, y[owner[sl], None]).squeeze(1)
            fitness.append(-prob if self.config.targeted else prob)
            ok = succeeded(logits, y[owner[sl]], self.config.targeted)
            hit = ok.nonzero().squeeze(1)
            if ev.x.dtype != x.dtype and len(hit):
                who = owner[sl][hit]
                ok[hit] = succeeded(self.model(apply_pixels(x[who], flat[sl][hit])), y[who], self.config.targeted)
            success.append(ok)
        return torch.cat(fitness).view(b, p), torch.cat(success).view(b, p)

    def _mutate(self, pop: torch.Tensor, limits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """DE/rand/1 children for pop (B, P, N, 2 + C), clipped to [0, limits]."""
        cfg = self.config
        b, p = pop.shape[:2]
        own = torch.arange(p, device=pop.device).view(1, p, 1)
        picks = (own + torch.randint(1, p, (b, p, 3), generator=gen, device=pop.device)) % p
        take = lambda j: pop.gather(1, picks[..., j, None, None].expand_as(pop))  # noqa: E731
        mutant = take(0) + cfg.mutation * (take(1) - take(2))
        if cfg.crossover < 1:
            keep = torch.rand(pop.shape, generator=gen, device=pop.device) >= cfg.crossover
            mutant = torch.where(keep, pop, mutant)
        return torch.minimum(mutant.clamp_min(0), limits)

    def _evaluator(self, x: torch.Tensor) -> LocalEvaluator:
        """The candidate scorer: the model's own when it offers one (`candidate_evaluator(x)`,
        e.g. a volumized model that rescores only the slices a candidate touches; float32),
        else the batch-norm-folded model, in the configured precision."""
        own = getattr(self.model, "candidate_evaluator", None)
        custom = own(x) if own is not None and self.config.local_eval else None
        if custom is not None:
            return custom
        view, dtype = fused_eval_view(self.model), PRECISIONS[self.config.precision]
        if dtype != x.dtype:
            view = copy.deepcopy(view).to(dtype)
        return LocalEvaluator(view, x.to(dtype), local=self.config.local_eval)

    @torch.no_grad()
    def run(self, x: torch.Tensor, y: torch.Tensor) -> NPixelResult:
        """The attack with its bookkeeping: success and queries per image."""
        cfg = self.config
        x, y = x.detach(), y.detach().to(x.device)
        b, c, h, w = x.shape
        gen = self.generator(x.device)
        limits = torch.tensor([h - 1, w - 1] + [1] * c, device=x.device, dtype=x.dtype)
        pop = torch.rand((b, cfg.popsize, cfg.pixels, 2 + c), generator=gen, device=x.device,
                         dtype=x.dtype) * limits
        queries = torch.full((b,), cfg.popsize, dtype=torch.long, device=x.device)
        with eval_mode(self.model):
            ev = self._evaluator(x)
            fit, ok = self._evaluate(ev, x, torch.arange(b, device=x.device), y, pop)
            done = ok.any(dim=1)
            best = pop[torch.arange(b), torch.where(done, ok.int().argmax(dim=1), fit.argmin(dim=1))]
            for step in range(cfg.generations):
                active = (~done).nonzero().squeeze(1)
                if not len(active):
                    break
                rows = torch.arange(len(active), device=x.device)
                child = self._mutate(pop[active], limits, gen)
                child_fit, child_ok = self._evaluate(ev, x, active, y, child)
                queries[active] += cfg.popsize
                better = child_fit < fit[active]
                pop[active] = torch.where(better[..., None, None], child, pop[active])
                fit[active] = torch.where(better, child_fit, fit[active])
                hit = child_ok.any(dim=1)
                best[active] = torch.where(hit[:, None, None], child[rows, child_ok.int().argmax(dim=1)],
                                           pop[active][rows, fit[active].argmin(dim=1)])
                done[active] = hit
                log.debug("N-pixel generation %d: %d/%d fooled", step + 1, int(done.sum()), b)
            x_adv = apply_pixels(x, best)
            success = succeeded(self.model(x_adv), y, cfg.targeted)  # full forward pass, not the search's
        return NPixelResult(x_adv, success, queries)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y).x_adv
