"""Benchmark: our attacks against torchattacks', side by side in one run.

Prints the time ratio ours/torchattacks for PGD-40 (L-inf, 512 images) and for the 1-pixel
attack (64 images, torchattacks' OnePixel defaults: 10 generations, popsize 10, which its
scipy-style DE turns into 9 candidates for a 1-pixel grey image; ours runs the same 9
candidates x 10 generations, so both have the same query budget). Goals: PGD ratio <= 1.0;
OnePixel ratio <= 0.1 (10x faster); ours runs twice, scoring candidates in float32 (exact) and
in bfloat16 (approximate ranking, float32 success checks; see NPixel's docstring). After an untimed warm-up call of each on a few images,
each pair runs back to back `--repeats` times, alternating who goes first; the ratio is taken
between the medians (the minimum and every run are printed too).

    python -m bench.attacks --model runs/fmnist-cnn-default

Without --model it trains fmnist-cnn for 1 epoch on 10,000 images first (~1-2 min on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def _model(run: str | None, tmp: Path):
    from training.checkpoint import load_model

    if run:
        return load_model(run)[0]
    from training.data import DataConfig, load_splits
    from training.models import create_model, model_spec_for
    from training.trainer import TrainConfig, fit

    splits = load_splits(DataConfig(limit_train=10000, limit_test=1000))
    spec = model_spec_for("fmnist-cnn", splits)
    torch.manual_seed(0)
    model = create_model(spec)
    fit(model, spec, splits, TrainConfig(epochs=1, batch_size=128), tmp / "bench-model")
    return load_model(tmp / "bench-model")[0]


def _timed(fn) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds of this process (all threads) and the result of fn()."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def _pair(name: str, ours, theirs, n: int, n_warm: int, repeats: int
          ) -> tuple[dict[str, list[float]], dict[str, list[float]], object, object]:
    """Time ours(k) and theirs(k) (attacks on the first k images) side by side."""
    ours(n_warm)
    theirs(n_warm)
    t_ours: dict[str, list[float]] = {"wall": [], "cpu": []}
    t_theirs: dict[str, list[float]] = {"wall": [], "cpu": []}
    out_ours = out_theirs = None
    for r in range(repeats):
        order = [("ours", ours), ("theirs", theirs)]
        for who, fn in (order if r % 2 == 0 else order[::-1]):
            torch.manual_seed(r)
            t, cpu, out = _timed(lambda: fn(n))
            times = t_ours if who == "ours" else t_theirs
            times["wall"].append(t)
            times["cpu"].append(cpu)
            if who == "ours":
                out_ours = out
            else:
                out_theirs = out
            print(f"  {name} {who:6s} run {r + 1}: {t:7.2f} s wall, {cpu:7.2f} s CPU", flush=True)
    return t_ours, t_theirs, out_ours, out_theirs


def main(argv: list[str] | None = None) -> int:
    import torchattacks

    from training.attacks import PGD, NPixel, eval_mode
    from training.data import DataConfig, load_splits

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder (model.pt); default: train a small one")
    parser.add_argument("--pgd-images", type=int, default=512)
    parser.add_argument("--pixel-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["pgd", "onepixel"], default=None)
    args = parser.parse_args(argv)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args.model, Path(tmp))
    model.eval()
    test = load_splits(DataConfig(limit_test=max(args.pgd_images, args.pixel_images))).test
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {torch.get_num_threads()} "
          f"threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")

    def acc(x_adv: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad(), eval_mode(model):
            return (model(x_adv).argmax(1) == y).float().mean().item()

    rows = []
    if args.only in (None, "pgd"):
        x, y = test.x[: args.pgd_images], test.y[: args.pgd_images]
        kw = dict(eps=0.1, alpha=0.01, steps=40)

        def ours(k: int) -> torch.Tensor:
            return PGD(model, **kw)(x[:k], y[:k])

        def theirs(k: int) -> torch.Tensor:
            return torchattacks.PGD(model, random_start=True, **kw)(x[:k], y[:k])

        t_o, t_t, a_o, a_t = _pair("PGD-40", ours, theirs, len(x), 16, args.repeats)
        rows.append((f"PGD-40 Linf eps=0.1, {len(x)} images", t_o, t_t, f"robust acc ours {acc(a_o, y):.4f}, "
                     f"torchattacks {acc(a_t, y):.4f} (clean {acc(x, y):.4f})", 1.0))
    if args.only in (None, "onepixel"):
        x, y = test.x[: args.pixel_images], test.y[: args.pixel_images]

        for precision in ("float32", "bfloat16"):
            def ours_px(k: int, precision=precision):
                return NPixel(model, pixels=1, popsize=9, steps=10, precision=precision).run(x[:k], y[:k])

            def theirs_px(k: int) -> torch.Tensor:
                return torchattacks.OnePixel(model, pixels=1, steps=10, popsize=10)(x[:k], y[:k])

            t_o, t_t, r_o, a_t = _pair(f"OnePixel {precision}", ours_px, theirs_px, len(x), 4, args.repeats)
            rows.append((f"1-pixel DE 9 x (10+1) queries, {len(x)} images, ours scoring in {precision}", t_o, t_t,
                         f"accuracy after: ours {acc(r_o.x_adv, y):.4f} (mean queries "
                         f"{r_o.queries.float().mean():.1f}), torchattacks {acc(a_t, y):.4f} "
                         f"(clean {acc(x, y):.4f})", 0.1))
    print()
    print(f"{'benchmark (median wall time of runs)':72s} {'ours s':>8s} {'theirs s':>9s} {'ratio':>7s}  goal")
    for name, t_o, t_t, note, goal in rows:
        wall_o, wall_t = statistics.median(t_o["wall"]), statistics.median(t_t["wall"])
        ratio = wall_o / wall_t
        verdict = "met" if ratio <= goal else "NOT met"
        print(f"{name:72s} {wall_o:8.2f} {wall_t:9.2f} {ratio:7.3f}  <= {goal} {verdict}")
        cpu = statistics.median(t_o["cpu"]) / statistics.median(t_t["cpu"])
        print(f"    ratio of wall minima {min(t_o['wall']) / min(t_t['wall']):.3f}, of median CPU seconds "
              f"{cpu:.3f}; {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
