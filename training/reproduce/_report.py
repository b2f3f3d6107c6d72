"""The files a paper reproduction writes: results.json (every measured number under `measured`,
the table's rows, the verdict), results.md (the table with the columns `COLUMNS`) and plots."""
from __future__ import annotations

import datetime as dt
import logging
import platform
import subprocess
from pathlib import Path

import torch

from training.checkpoint import write_json

log = logging.getLogger(__name__)

COLUMNS = ("paper's figure", "ours, paper's setting", "ours, strong or adaptive attack", "data, scale and command")
ROW_KEYS = ("paper", "ours_paper_setting", "ours_strong", "data")
QUICK_NOTE = ("**Scale `quick`: a pipeline check on a tiny subset (1 epoch, few attack steps). "
              "These numbers are not results; see docs/REPRODUCTION.md.**")


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parents[2])
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training"], capture_output=True, text=True,
                               timeout=10, cwd=Path(__file__).resolve().parents[2])
        return done.stdout.strip() + (" (training/ modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bar_plot(path: Path, groups: dict[str, dict[str, float]], title: str) -> None:
    """Grouped bars: one group per model, one bar per measurement (accuracies in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(k for g in groups.values() for k in g))
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4))
    for i, (group, values) in enumerate(groups.items()):
        xs = [j + i * width for j, k in enumerate(labels) if k in values]
        ax.bar(xs, [100 * values[k] for k in labels if k in values], width, label=group)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(labels))], labels, rotation=25,
                  ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(result: dict) -> str:
    lines = [f"# Paper {result['paper']}: {result['title']}", ""]
    if result["scale"] == "quick":
        lines += [QUICK_NOTE, ""]
    lines += [f"Scale `{result['scale']}`; written {result['date']} on {result['machine']}; commit "
              f"{result['commit']} (stages reused from an earlier run keep their own figures).", "", f"Command: `{result['command']}`", "",
              "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(str(row[k]).replace("|", "/") for k in ROW_KEYS) + " |")
    lines += ["", f"**Verdict: {result['verdict']}.** {result['why']}", ""]
    lines += [f"- {note}" for note in result.get("notes", [])]
    if result.get("plots"):
        lines += ["", *[f"![{p}]({p})" for p in result["plots"]]]
    return "\n".join(lines) + "\n"


def write_results(ctx, title: str, rows: list[dict], verdict: str, why: str, measured: dict,
                  notes: list[str] = (), plots: list[str] = ()) -> dict:
    """Write OUT/<paper>/results.json and results.md; return the result."""
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"paper {ctx.paper}: a table row lacks {missing}: {row}")
    if ctx.quick:
        verdict = f"none at scale quick (the rule on these pipeline-check numbers gives: {verdict})"
    result = {"paper": ctx.paper, "title": title, "scale": ctx.scale, "quick": ctx.quick,
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU used",
              "commit": commit(), "command": ctx.command(), "columns": list(COLUMNS), "rows": rows,
              "verdict": verdict, "why": why, "measured": measured, "notes": list(notes), "plots": list(plots)}
    write_json(ctx.out / "results.json", result)
    (ctx.out / "results.md").write_text(to_markdown(result))
    log.info("paper %s: written %s and results.md", ctx.paper, ctx.out / "results.json")
    return result
