"""The robustness card's settings: `CardConfig`, its row sets and the named profiles
(`advguard evaluate --profile`, `advguard bundle --card`). `training.evaluate.card` runs them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CardConfig:
    """Args: n test images (the first n); eps; sweep: extra eps for FGSM/PGD; pgd_steps, restarts;
    cw_steps, cw_binary_steps; square_queries; adaptive_steps, adaptive_restarts, penalties (one
    `evade` run per weight); batch_size; masking_margin (Square beating the white-box worst case
    by more than this share marks the white-box figures as gradient-masked); shard: images per
    resumable shard (see `evaluate_bundle`)."""

    n: int = 500
    eps: float = 0.1
    sweep: tuple[float, ...] = (0.05, 0.15)
    pgd_steps: int = 40
    restarts: int = 2
    cw_steps: int = 50
    cw_binary_steps: int = 3
    square_queries: int = 1000
    adaptive_steps: int = 100
    adaptive_restarts: int = 2
    penalties: tuple[float, ...] = (1.0, 10.0)
    batch_size: int = 500
    masking_margin: float = 0.02
    shard: int = 500
    rows: str = "all"

    def __post_init__(self) -> None:
        if self.n < 1 or self.eps <= 0 or self.shard < 1:
            raise ValueError(f"n and shard must be >= 1 and eps > 0, got n={self.n}, shard={self.shard}, eps={self.eps}")
        if self.rows not in ROW_SETS:
            raise ValueError(f"rows must be one of {', '.join(ROW_SETS)}, got {self.rows!r}")


ROW_SETS = ("all", "detection", "cw-gma")
GMA_ROW = {"tries": 3, "eps": 0.3, "grid": "Tr(eps) 1e-7..0.3"}  # paper 002's GMA: sizes up to 0.3, not the card's eps


PROFILES = {
    # `make serve`'s card: fits the default bundle's 10-minute build on 2 cores
    "quick": CardConfig(n=500, restarts=1, cw_steps=50, cw_binary_steps=3, square_queries=500,
                        adaptive_steps=50, adaptive_restarts=1, penalties=(10.0,)),
    # `make bundle-best`'s card: every test image, more restarts, steps, queries and penalty weights
    # (sized so that the 20 shards fit a night of 2 cores; each shard resumes on its own)
    "full": CardConfig(n=10_000, restarts=2, cw_steps=100, cw_binary_steps=3, square_queries=1000,
                       adaptive_steps=100, adaptive_restarts=2, penalties=(1.0, 10.0, 100.0)),
    # the full card's FGSM and PGD rows at eps only, on every test image: a detector's detection
    # rate on the whole test set (~30 min of one core per bundle; not a card: no adaptive rows)
    "detection": CardConfig(n=10_000, sweep=(), restarts=2, rows="detection"),
    # the quick card's CW-L2 and paper 002's GMA (the smallest Tr(eps) size that fools the primary,
    # up to 0.3, 3 tries) on every test image: what an MIA bundle's detection of them is
    "cw-gma": CardConfig(n=10_000, sweep=(), cw_steps=50, cw_binary_steps=3, rows="cw-gma"),
}
