"""`torchrun` entry point: any `advguard train --defense NAME ...` on every rank (DDP, gloo).

    torchrun --standalone --nproc_per_node 2 -m advguard.cli.distributed \\
        --defense pgd-at --model fmnist-cnn --epochs 10 --out runs/pgd-at

Takes exactly `advguard train`'s arguments; the helpers that make a defence data-parallel are
`training.distributed`'s.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from advguard.cli import train

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from training import distributed

    parser = argparse.ArgumentParser(prog="torchrun ... -m advguard.cli.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.defense == "standard":
        parser.error("runs defences (--defense NAME); standard training has no DDP path: "
                     "use `advguard train` or a defence")
    distributed.start(threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank = distributed.rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    try:
        log.info("DDP: %d processes, backend %s", distributed.world_size(), distributed.BACKEND)
        return train.run(args)
    finally:
        distributed.stop()


if __name__ == "__main__":
    sys.exit(main())
