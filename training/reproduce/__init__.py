"""Reproductions: the five source papers (`reproduce_paper`, one module per paper) and issue 4's
defences table (`defenses`: `reproduce_defenses`, `reproduce_filters`).

`advguard reproduce --paper 000|001|002|003|004 --scale quick|full-cpu [--out reproduction]`
writes OUT/<paper>/results.json, results.md and PNG plots, with the trained runs under
RUNS (default runs/reproduce-papers-<scale>/<paper>; reused when done; every stage resumes). docs/REPRODUCTION.md is the table
of what was measured. `quick` checks the pipeline on a tiny subset; its numbers are not results.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

from training.reproduce.defenses import (  # issue 4's table (bench/train.py uses these names)
    SCALES, RunSpec, Scale, evaluate_run, plan, reproduce_defenses, reproduce_filters, to_markdown,
    train_run, transfer_accuracy,
)
from training.reproduce._common import COLUMNS, ROW_KEYS, SCALE_NAMES, Context
from training.reproduce import paper000, paper001, paper002, paper003, paper004

log = logging.getLogger(__name__)

PAPERS: dict[str, ModuleType] = {"000": paper000, "001": paper001, "002": paper002, "003": paper003,
                                 "004": paper004}


def reproduce_paper(paper: str, scale: str, out: Path | str = "reproduction", mnist_dir: str | None = None,
                    mia_run: Path | str = "runs/mia-full", resume: bool = True,
                    runs: Path | str | None = None) -> dict:
    """Run paper `paper`'s reproduction at `scale` into OUT/<paper>; return its results.

    Example: `reproduce_paper("003", "quick", "runs/reproduction-quick")["rows"]`
    """
    module = PAPERS.get(paper)
    if module is None:
        raise KeyError(f"unknown paper {paper!r}; known: {', '.join(PAPERS)}")
    folder = Path(out) / paper
    runs_dir = Path(runs) / paper if runs else Path("runs") / f"reproduce-papers-{scale}" / paper
    if not resume and runs_dir.exists() and any(runs_dir.iterdir()):
        raise ValueError(f"{runs_dir} already holds trained runs: remove it, pass another --runs, or drop --no-resume")
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(paper, scale, folder, runs_dir, mnist_dir=mnist_dir, mia_run=Path(mia_run), resume=resume)
    log.info("paper %s (%s): scale %s into %s", paper, module.TITLE, scale, folder)
    return module.reproduce(ctx)


__all__ = ["COLUMNS", "PAPERS", "ROW_KEYS", "SCALES", "SCALE_NAMES", "RunSpec", "Scale", "evaluate_run", "plan",
           "reproduce_defenses", "reproduce_filters", "reproduce_paper", "to_markdown", "train_run",
           "transfer_accuracy"]
