"""Issue 17: CPU microseconds per N-pixel query (model evaluation of one candidate), per model
and scorer: windowed (`LocalEvaluator`, 2D CNNs), per-slice (`SliceEvaluator`, volumized models
with independent slices) or a full forward pass.

    python -m bench.npixel_cost runs/vv-undefended:local runs/vv-slices-occ:local \\
        runs/vv-slices-occ:full runs/vv-reference:full

Targeted at class 0 on 20 test images, population 100, 3 generations: images already of class 0
stop early, the rest spend the whole budget; the figure is CPU time / queries spent.
"""
from __future__ import annotations

import sys
import time

import torch

import training.defenses  # noqa: F401  (registers 'volumetric')
from training.attacks import NPixel
from training.checkpoint import load_model
from training.data import DataConfig, load_splits


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    x = load_splits(DataConfig(name="fashion-mnist", limit_test=20)).test.x[:20]
    target = torch.zeros(20, dtype=torch.long)
    for item in argv if argv is not None else sys.argv[1:]:
        run, _, scorer = item.partition(":")
        model, _ = load_model(run)
        for n in (1, 3):
            attack = NPixel(model.eval(), pixels=n, popsize=100, steps=3, local_eval=scorer != "full", targeted=True)
            t0 = time.process_time()
            queries = attack.run(x, target).queries.sum().item()
            print(f"{run} scorer={scorer or 'local'} N={n}: {1e6 * (time.process_time() - t0) / queries:.0f} us/query")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
