"""`MIAConfig` and the named cost profiles (`--option profile=full-cpu`).

A profile fixes what a run costs: the attacks' budgets (CW Adam steps and binary-search steps,
GMA iterations and tries, PGD steps) and the epochs of each training stage. An option given
explicitly (`--option cw_steps=200`, or `steps=` inside `--option attacks=...`) wins over the
profile; the run records the resolved budget in config.json and metrics.json.

- `paper` (the default, the reference): paper 002's Table 2 settings, 1,000 iterations for CW,
  10 for GMA, FGSM and PGD (CW's binary-search steps are not given; 5, Carlini and Wagner's and
  cleverhans' default), GMA's 3 tries (Algorithm 2); epochs from `--epochs` (the paper trains
  the EAT models ~10 epochs and the ensemble 50: `--option eat_epochs=10 --option member_epochs=50`).
- `full-cpu`: all 55,000 Fashion-MNIST training images (pool 55,000 + 5,000 val + 4 x 10,000
  test images) in about 8-12 hours of one core of this project's 2-core VM (more when other jobs
  share it). Against `paper` it cuts CW to 200 Adam steps x 5 binary-search steps and fixes the
  epochs: source 5, each EAT cycle 10 (the paper's ~10), each bagged member 10 (the paper: 50).
  Why CW 200: with abort_early this package's CW stops once its loss stalls, and on the trained
  source model (64 images) 100, 200 and 300 steps x 5 all fooled 100% with median L2 0.657,
  0.651, 0.651 at 0.26, 0.38, 0.44 s/image; 1,000 steps x 5 measured 2.1 s/image on an
  undertrained model (~15 h of CW alone here), for no smaller perturbation.
  Rates measured 2026-12-01, OMP_NUM_THREADS=1, load average ~8 (other jobs): GMA (3 tries)
  9-21 ms/image, PGD-10 5-9 ms, FGSM 0.5-0.8 ms; training (s per image-epoch, with validation)
  mia-target 0.49 ms, eat1 ~0.6-1.1, eat2 ~0.5-1.6, eat3 ~2.8-4 ms. Estimate: CW 2.6 h, the other
  attacks 0.2 h, source 0.04 h, EAT 3.6-6 h, members 1-1.5 h. `plan` re-estimates from the
  run's own rates as it goes.
- `session-cpu`: the same data (all 55,000 training images, all 10,000 test images per attack)
  sized to finish inside one working session of one core (about 2 hours), because this project's
  checkouts do not keep ignored run folders from one session to the next, so a run of more than
  a session never ends. Against `full-cpu`: CW 100 Adam steps x 3 binary-search steps (the
  card's full profile; at 100 steps CW still fooled 100% with the same median L2, see above),
  EAT 2 epochs per cycle (8 over the four cycles, the model carrying over), members 3 epochs
  each from their EAT model, source 5.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from training.data import Splits
from training.defenses.base import DefenseConfig
from training.defenses.mia.data import AttackSpec, adversarial_count, parse_attacks
from training.defenses.mia.ensemble import TIE_BREAKS


@dataclass(frozen=True)
class Budget:
    """Attack budgets and stage epochs (0 epochs: `--epochs`)."""

    cw_steps: int
    cw_binary_steps: int
    gma_steps: int
    gma_tries: int
    pgd_steps: int
    source_epochs: int = 0
    eat_epochs: int = 0
    member_epochs: int = 0


PROFILES: dict[str, Budget] = {
    "paper": Budget(cw_steps=1000, cw_binary_steps=5, gma_steps=10, gma_tries=3, pgd_steps=10),
    "full-cpu": Budget(cw_steps=200, cw_binary_steps=5, gma_steps=10, gma_tries=3, pgd_steps=10,
                       source_epochs=5, eat_epochs=10, member_epochs=10),
    "session-cpu": Budget(cw_steps=100, cw_binary_steps=3, gma_steps=10, gma_tries=3, pgd_steps=10,
                          source_epochs=5, eat_epochs=2, member_epochs=3),
}
# attack name -> (its config field, Budget field)
_BUDGET_FIELDS = {"cw": (("steps", "cw_steps"), ("binary_steps", "cw_binary_steps")),
                  "gma": (("steps", "gma_steps"), ("tries", "gma_tries")),
                  "pgd": (("steps", "pgd_steps"),)}


@dataclass(frozen=True)
class MIAConfig(DefenseConfig):
    """Args:
        attacks: attacks for the augmented set, 'name[:field=value;...]' separated by ','; the
            profile fills in the budget fields an attack does not set itself.
        profile: cost profile, one of PROFILES ('paper', 'full-cpu', 'session-cpu').
        cw_steps, cw_binary_steps, gma_steps, gma_tries, pgd_steps: budget overrides (0: the profile's).
        shares: EAT cycles' adversarial shares of the augmented set.
        share: the share used for bagging (must be one of `shares` when init_from_eat).
        members: member architectures; member i is members[i mod len].
        n_bootstraps: ensemble size (bootstrap samples, with replacement).
        bootstrap_fraction: bootstrap size / augmented set size.
        eat_epochs, member_epochs, source_epochs: epochs per stage (0: the profile's, else --epochs).
        init_from_eat: start each member from its architecture's EAT model at `share`.
        source_run: a trained run to attack instead of training `--model` on clean data.
        only_fooled: put only adversarial images that fooled the source model in the set.
        tie_break: 'probability' | 'adversarial' (see `training.defenses.mia.ensemble`).
        eval_size: test images attacked per attack for the metrics (0: the whole test split).
        val_size: validation images used (clean, plus their adversarial share; 0: all).
        attack_batch: batch size of the attacks.
        shard_size: adversarial images per attack per shard file (the unit a stop can lose).
    """

    attacks: str = "gma,pgd:eps=0.1;alpha=0.025,fgsm:eps=0.1,cw"
    profile: str = "paper"
    cw_steps: int = 0
    cw_binary_steps: int = 0
    gma_steps: int = 0
    gma_tries: int = 0
    pgd_steps: int = 0
    shares: tuple[float, ...] = (0.15, 0.25, 0.4, 0.5)
    share: float = 0.4
    members: tuple[str, ...] = ("eat1", "eat2", "eat3")
    n_bootstraps: int = 3
    bootstrap_fraction: float = 1.0
    eat_epochs: int = 0
    member_epochs: int = 0
    source_epochs: int = 0
    init_from_eat: bool = True
    source_run: str = ""
    only_fooled: bool = False
    tie_break: str = "probability"
    eval_size: int = 0
    val_size: int = 0
    attack_batch: int = 256
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        parse_attacks(self.attacks)
        for s in (*self.shares, self.share):
            adversarial_count(1, s)  # 0 <= share < 1
        if self.init_from_eat and self.share not in self.shares:
            raise ValueError(f"share {self.share} is not an EAT cycle {self.shares}; add it to shares "
                             "or set init_from_eat=false")
        if not self.members or self.n_bootstraps < 1 or self.bootstrap_fraction <= 0:
            raise ValueError("need at least one member architecture, n_bootstraps >= 1, bootstrap_fraction > 0")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {self.tie_break!r}; known: {', '.join(TIE_BREAKS)}")
        counts = {f.name: getattr(self, f.name) for f in fields(Budget)}
        counts.update(eval_size=self.eval_size, val_size=self.val_size)
        negative = sorted(k for k, v in counts.items() if v < 0)
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0")
        if self.shard_size < 1 or self.attack_batch < 1:
            raise ValueError(f"shard_size and attack_batch must be >= 1, got {self.shard_size}, {self.attack_batch}")

    def used_splits(self, splits: Splits) -> Splits:
        """`splits` with the validation images this config uses (val_size; 0: all)."""
        if not self.val_size:
            return splits
        return Splits(splits.train, splits.val.take(self.val_size), splits.test, splits.labels, splits.name)

    def budget(self) -> Budget:
        """The profile's budget with this config's non-zero overrides."""
        base = PROFILES[self.profile]
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(Budget) if getattr(self, f.name)})

    def attack_specs(self) -> list[AttackSpec]:
        """`attacks` with the budget filled in where an attack does not set a field itself."""
        budget, specs = self.budget(), []
        for spec in parse_attacks(self.attacks):
            given = dict(spec.options)
            extra = tuple((name, str(getattr(budget, source))) for name, source in _BUDGET_FIELDS.get(spec.name, ())
                          if name not in given)
            specs.append(AttackSpec(spec.name, spec.options + extra))
        return specs

    def epochs(self, stage: str, default: int) -> int:
        """Epochs of a stage ('source', 'eat', 'member'): the option, else the profile's, else `default`."""
        return getattr(self.budget(), f"{stage}_epochs") or default
