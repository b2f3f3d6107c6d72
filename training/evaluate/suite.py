"""Attack suites: named lists of attack settings the evaluator runs against one model."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AttackSpec:
    """One row of a robustness table.

    Args:
        label: the row's name in reports.
        attack: a registered attack name (`training.attacks.known_attacks()`).
        params: the attack's config fields (eps, steps, ...).
        logit_scale: attack the model's logits divided by this (1 = as deployed). Evaluating a
            distilled model at its training temperature T undoes its softmax saturation.
        white_box: False for score-based black-box attacks (Square), the masked-gradient check.
    """

    label: str
    attack: str
    params: dict = field(default_factory=dict)
    logit_scale: float = 1.0
    white_box: bool = True

    def __post_init__(self) -> None:
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")


def standard_suite(eps: float = 0.1, restarts: int = 5) -> tuple[AttackSpec, ...]:
    """The issue-4 table: FGSM, PGD-40 (step 0.01, `restarts` restarts) with CE and with the
    CW margin on the logits, and Square (black-box) as the gradient-masking check."""
    return (
        AttackSpec("FGSM", "fgsm", {"eps": eps}),
        AttackSpec(f"PGD-40 CE x{restarts}", "pgd", {"eps": eps, "alpha": 0.01, "steps": 40, "restarts": restarts}),
        AttackSpec(f"PGD-40 margin x{restarts}", "pgd",
                   {"eps": eps, "alpha": 0.01, "steps": 40, "restarts": restarts, "loss": "margin"}),
        AttackSpec("Square 1000q", "square", {"eps": eps, "max_queries": 1000}, white_box=False),
    )


def distill_suite(temperature: float, eps: float = 0.1, restarts: int = 5) -> tuple[AttackSpec, ...]:
    """Standard suite plus PGD on logits / T, so a masked gradient shows."""
    return standard_suite(eps, restarts) + (
        AttackSpec(f"PGD-40 CE on logits/T (T={temperature:g})", "pgd",
                   {"eps": eps, "alpha": 0.01, "steps": 40, "restarts": restarts}, logit_scale=temperature),
    )


def quick_suite(eps: float = 0.1) -> tuple[AttackSpec, ...]:
    """A fast suite for tests and smoke runs."""
    return (
        AttackSpec("FGSM", "fgsm", {"eps": eps}),
        AttackSpec("PGD-10 CE", "pgd", {"eps": eps, "alpha": 2.5 * eps / 10, "steps": 10}),
        AttackSpec("PGD-10 margin", "pgd", {"eps": eps, "alpha": 2.5 * eps / 10, "steps": 10, "loss": "margin"}),
    )


def pgd40_suite(eps: float = 0.1, restarts: int = 5) -> tuple[AttackSpec, ...]:
    """The issue-4 table's one column (PGD-40 CE with restarts), for a whole test set."""
    return standard_suite(eps, restarts)[1:2]


SUITES = {"standard": standard_suite, "quick": quick_suite, "pgd40": pgd40_suite}
