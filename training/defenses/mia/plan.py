"""`plan`: the stages of a `mia` run, their estimated cost on this machine, what is done.

Rates are measured, never assumed: an attack's seconds per image come from the run's own shards
when it has some (their recorded wall time), else from timing the attack now on a few images
against the source model (the trained one when stage 1 is done, else an untrained one: CW stops
early on a trained model less often, so that estimate runs low); a stage's seconds per image and
epoch come from the run's finished epochs of that architecture, else from timing a few training
batches now. Each figure says which. Estimates hold for the thread count this process has
(`OMP_NUM_THREADS`) and for the machine's current load.

Example: `print(plan(MIAConfig(profile="full-cpu"), TrainConfig(epochs=5), splits, Path("runs/mia-full")))`
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.checkpoint import LAST_FILE, MODEL_FILE, load_model, read_json
from training.data import Splits
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.craft import run_attack, shard_folder
from training.defenses.mia.stages import stage_done, stage_paths, stage_work
from training.defenses.mia.pool import SHARD_DIR, pool_sizes
from training.models import create_model, model_spec_for
from training.trainer import TrainConfig


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def _epochs_done(folder: Path) -> tuple[int, list[dict]]:
    """(epochs finished, their history) of a training stage folder."""
    if stage_done(folder):
        try:
            history = read_json(folder / "metrics.json").get("history", [])
            return max(len(history), 1), history
        except ValueError:
            pass
    if (folder / LAST_FILE).exists():
        try:
            state = torch.load(folder / LAST_FILE, map_location="cpu", weights_only=True)
            return int(state["epoch"]), list(state["history"])
        except (RuntimeError, EOFError, OSError, KeyError):
            pass
    return 0, []


def _train_rate(arch: str, splits: Splits, classes: int, batch: int,
                measured: list[tuple[str, float]]) -> tuple[float, str]:
    """Seconds per image-epoch of `arch`: from finished epochs (`measured`), else timed now."""
    done = [rate for name, rate in measured if name == arch]
    if done:
        return sum(done) / len(done), "from this run's epochs"
    model = create_model(model_spec_for(arch, splits, num_classes=classes)).train()
    opt = torch.optim.Adam(model.parameters())
    x, y = splits.train.x[:batch], splits.train.y[:batch] % classes
    began, steps = time.perf_counter(), 5
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - began) / (steps * len(x)), f"timed now, {steps} batches"


def _attack_rate(cfg: MIAConfig, a: int, spec, folder: Path, source, splits: Splits) -> tuple[float, str]:
    seconds = images = 0.0
    for split in ("train", "val", "test"):
        for shard in sorted((folder / split / shard_folder(Path("."), a, spec)).glob("*.pt")):
            state = torch.load(shard, map_location="cpu", weights_only=True)
            seconds, images = seconds + state.get("seconds", 0.0), images + state.get("images", 0)
    if images:
        return seconds / images, f"from {int(images)} images made"
    n = 25 if spec.name == "gma" else 32  # GMA: one image per size of its grid
    x, y = splits.train.x[:n], splits.train.y[:n]
    began = time.perf_counter()
    run_attack(source[0], spec, x, y, cfg.attack_batch, seed=0)
    return (time.perf_counter() - began) / n, f"timed now on {n} images, {source[1]} source"


def plan(config: MIAConfig, train: TrainConfig, splits: Splits, out: Path, model_name: str = "mia-target") -> str:
    """The stages of `advguard train --defense mia` into `out`, with estimated and done work."""
    cfg, out = config, Path(out)
    k = len(splits.labels)
    budget = cfg.budget()
    lines = [f"MIA plan for {out}: profile {cfg.profile} ({budget}), {torch.get_num_threads()} thread(s)",
             f"attacks: {', '.join(str(s) for s in cfg.attack_specs())}", ""]
    total, left = 0.0, 0.0
    measured: list[tuple[str, float]] = []
    paths = stage_paths(cfg)
    work = stage_work(cfg, len(splits.train), train.epochs, model_name)
    arch_of = {p: arch for p, (arch, _, _) in work.items()}
    sizes = {p: n for p, (_, n, _) in work.items()}
    epochs_of = {p: e for p, (_, _, e) in work.items()}
    progress = {}
    for path in sizes:
        done, history = _epochs_done(out / path)
        progress[path] = done
        measured += [(arch_of[path], h["seconds"] / sizes[path]) for h in history if h.get("seconds")]

    if cfg.source_run:
        source = (load_model(cfg.source_run)[0], "trained (source_run)")
    elif stage_done(out / "source"):
        source = (load_model(out / "source" / MODEL_FILE)[0], "trained")
    else:
        source = (create_model(model_spec_for(model_name, splits)).eval(), "untrained")

    def training_line(stage: str) -> str:
        nonlocal total, left
        arch = arch_of[stage]
        rate, how = _train_rate(arch, splits, 10 if stage == "source" else k + 1, train.batch_size, measured)
        cost = rate * sizes[stage] * epochs_of[stage]
        rest = cost * (1 - progress[stage] / epochs_of[stage])
        total, left = total + cost, left + max(rest, 0.0)
        state = "done" if stage_done(out / stage) else f"{progress[stage]}/{epochs_of[stage]} epochs"
        return (f"  {stage:<22} {arch:<10} {sizes[stage]:>7} images x {epochs_of[stage]} epochs  "
                f"{_hours(cost):>9}  ({rate * 1e3:.3f} ms/image-epoch, {how}); {state}")

    lines.append("1. source model" + (" (given: source_run)" if cfg.source_run else ""))
    lines += [training_line(s) for s in paths["source"]]
    lines.append("2. adversarial pool (shards of %d images per attack)" % cfg.shard_size)
    pool = pool_sizes(cfg, splits)
    folder = out / SHARD_DIR
    specs = cfg.attack_specs()
    for a, spec in enumerate(specs):
        rate, how = _attack_rate(cfg, a, spec, folder, source, splits)
        for split in ("train", "val", "test"):
            n = pool["test_per_attack"] if split == "test" else (pool[split] - a + len(specs) - 1) // len(specs)
            shards = (n + cfg.shard_size - 1) // cfg.shard_size
            made = sum(1 for _ in (folder / split / shard_folder(Path("."), a, spec)).glob("*.pt"))
            done_images = min(n, made * cfg.shard_size)
            cost = rate * n
            total, left = total + cost, left + rate * (n - done_images)
            lines.append(f"  {split:<5} {spec.name:<5} {n:>7} images  {_hours(cost):>9}  "
                         f"({rate:.4f} s/image, {how}); {made}/{shards} shards")
    lines.append(f"3. EAT cycles (shares {', '.join(f'{s:.0%}' for s in cfg.shares)})")
    lines += [training_line(s) for s in paths["eat"]]
    lines.append(f"4. bagged members (bootstraps of the {cfg.share:.0%} set)")
    lines += [training_line(s) for s in paths["members"]]
    lines.append("5. ensemble metrics: " + ("done (metrics.json)" if stage_done(out) else "minutes"))
    lines += ["", f"total {_hours(total)}, left {_hours(left)} (estimates from measured rates, see each line)"]
    return "\n".join(lines)
