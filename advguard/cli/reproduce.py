"""`advguard reproduce`: full-size (or reduced) reproduction runs of the defences' table.

The runs, scales and table are `training.reproduce`'s; this module holds only the flags.
Building the full parser imports `training.reproduce` (torch) to list its scales.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "full-size (or reduced) reproduction runs of the defences' table"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training import reproduce

    p.description = reproduce.__doc__
    p.add_argument("what", choices=["defenses", "filters"],
                   help="defenses: the table; filters: Algorithm 1 across eps on OUT/standard")
    p.add_argument("--scale", choices=sorted(reproduce.SCALES), default="full", help="%(choices)s (default full)")
    p.add_argument("--out", default=None, help="default: runs/reproduce-defenses-<scale>")
    p.add_argument("--only", nargs="*", help="run names to do (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from training.reproduce import reproduce_defenses, reproduce_filters, to_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/reproduce-defenses-{args.scale}")
    if args.what == "filters":
        log.info("written %s:\n%s", out / "dominant_filters_eps.json",
                 json.dumps(reproduce_filters(args.scale, out), indent=2))
        return 0
    rows = reproduce_defenses(args.scale, out, args.only)
    log.info("written under %s:\n%s", out, to_markdown(rows, args.scale))
    return 0
