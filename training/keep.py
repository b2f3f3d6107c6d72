"""Keep a long run's finished stages in the repository, so that it resumes in a fresh checkout.

    python -m training.keep save runs/mia-full-cpu kept/mia-full-cpu
    python -m training.keep restore kept/mia-full-cpu runs/mia-full-cpu

This project's working checkouts do not keep ignored folders (runs/) from one session to the
next, and a run such as `make mia-full MIA_PROFILE=full-cpu` takes longer than a session. `save`
copies what a resume needs and cannot cheaply remake: every finished stage's weights and metrics,
the last.pt of a stage in flight (none where the stage has its model.pt), the run's config and
reports; it leaves out what is remade on resume from the kept files (the adversarial pool, which
is seeded and made again shard by shard against the kept source model), process files (claims,
pids) and what `--leave-out` names (a finished run's stage weights, say). It writes only files whose bytes changed, so a commit of the kept folder holds
the new stages alone. `restore` copies kept files into the run folder where the run lacks them
(a run's own files are newer than anything kept) and skips a kept last.pt where the run has
finished that stage. The run then resumes as usual (`--resume`).
"""
from __future__ import annotations

import argparse
import fnmatch
import logging
import shutil
from pathlib import Path

from training.checkpoint import LAST_FILE, MODEL_FILE

# remade on resume (the pool, against the kept source model) or meaningful only to live processes
LEFT_OUT = ("adversarial/*", "adversarial.pt", "*.claim", "pid", "*.pid", "*.tmp")
MAX_FILE_BYTES = 8 * 1024 * 1024
log = logging.getLogger(__name__)


def _left_out(rel: str, extra: tuple[str, ...] = ()) -> bool:
    return any(fnmatch.fnmatch(rel, pattern) for pattern in (*LEFT_OUT, *extra))


def kept_files(run: Path, leave_out: tuple[str, ...] = ()) -> list[Path]:
    """The run's files that `save` keeps, relative to the run folder, sorted; `leave_out` adds
    patterns (fnmatch on the relative path: `*` crosses folders) for what the run no longer needs,
    such as a finished run's stage weights."""
    run = Path(run)
    files = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run)
        if _left_out(rel.as_posix(), leave_out):
            continue
        if path.name == LAST_FILE and (path.parent / MODEL_FILE).exists():
            continue  # a finished stage: its model.pt and metrics are kept
        files.append(rel)
    return files


def save(run: Path, kept: Path, leave_out: tuple[str, ...] = ()) -> list[Path]:
    """Copy the run's kept files into `kept` where their bytes differ; drop kept last.pt files of
    stages since finished and kept files that `leave_out` now covers. Returns the files written."""
    run, kept = Path(run), Path(kept)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder")
    written = []
    for rel in kept_files(run, leave_out):
        src, dst = run / rel, kept / rel
        size = src.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{src} is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB a kept file may "
                             "have: keep runs whose stages are small, or add its pattern to LEFT_OUT if it is remade")
        if dst.exists() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(rel)
    for stale in kept.rglob(LAST_FILE):
        if (stale.parent / MODEL_FILE).exists():
            stale.unlink()
    for old in [p for p in kept.rglob("*") if p.is_file()]:
        if leave_out and _left_out(old.relative_to(kept).as_posix(), leave_out):
            old.unlink()
    return written


def restore(kept: Path, run: Path) -> list[Path]:
    """Copy kept files the run lacks into it. Returns the files copied."""
    kept, run = Path(kept), Path(run)
    if not kept.is_dir():
        raise FileNotFoundError(f"{kept} holds no kept run (`python -m training.keep save RUN {kept}` makes one)")
    copied = []
    for src in sorted(p for p in kept.rglob("*") if p.is_file()):
        rel = src.relative_to(kept)
        dst = run / rel
        if dst.exists() or (src.name == LAST_FILE and (dst.parent / MODEL_FILE).exists()):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy a run's finished stages into a kept folder (changed files only)")
    s.add_argument("run", type=Path)
    s.add_argument("kept", type=Path)
    s.add_argument("--leave-out", action="append", default=[], metavar="PATTERN",
                   help="also leave out (and drop from KEPT) files matching PATTERN, relative to RUN; repeatable")
    r = sub.add_parser("restore", help="copy a kept folder's files into a run folder where it lacks them")
    r.add_argument("kept", type=Path)
    r.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "save":
            files = save(args.run, args.kept, tuple(args.leave_out))
            log.info("kept %d changed file(s) of %s in %s", len(files), args.run, args.kept)
        else:
            files = restore(args.kept, args.run)
            log.info("restored %d file(s) from %s into %s", len(files), args.kept, args.run)
    except (FileNotFoundError, ValueError) as err:
        log.error("error: %s", err)
        return 2
    for rel in files:
        log.info("  %s", rel)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
