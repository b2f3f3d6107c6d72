"""Data-parallel training helpers for `torchrun` (DDP) on CPU processes (gloo backend).

The entry point is on the command-line side (`advguard.cli.distributed`): it launches any
`advguard train --defense ...` command on N processes:

    torchrun --standalone --nproc_per_node 2 -m advguard.cli.distributed \\
        --defense pgd-at --model fmnist-cnn --epochs 10 --out runs/pgd-at

Every defence that trains through `training.defenses.common.train` then runs data-parallel:
each rank takes an equal shard of the training split and `batch_size / world_size` images per
step (the global batch is unchanged), gradients are averaged by DDP, rank 0 writes the run
folder (model.pt holds the unwrapped model, loadable by `load_model`), the other ranks keep
their resume points under `OUT/ranks/<rank>/` and remove them when the run completes.
Outside torchrun every helper here is a no-op.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from training.data import Split, Splits
from training.trainer import TrainConfig

BACKEND = "gloo"


def start(threads: int = 1) -> None:
    """Join the process group torchrun set up (gloo) and use `threads` intra-op threads."""
    dist.init_process_group(backend=BACKEND)
    torch.set_num_threads(max(1, threads))


def stop() -> None:
    """Leave the process group (a no-op outside DDP)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (attacks run on it: an input
    gradient through the wrapper would leave DDP's reducer waiting for parameter gradients)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any rank (e.g. an early-stop decision)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def replicas_in_sync(model: nn.Module) -> bool:
    """True when every rank holds exactly the same parameters and buffers (a digest compared
    across ranks); always True outside DDP."""
    if not is_distributed():
        return True
    flat = torch.cat([t.detach().double().flatten() for t in unwrap(model).state_dict().values()])
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64)
    digest = torch.stack([flat.sum(), (flat * weights).sum(), flat.pow(2).sum()])
    gathered = [torch.empty_like(digest) for _ in range(world_size())]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def shard(splits: Splits, config: TrainConfig) -> tuple[Splits, TrainConfig]:
    """This rank's share of the training split and per-rank batch size (identity outside DDP).

    Shards are equal (the remainder is dropped) so every rank takes the same number of steps.
    """
    n, r = world_size(), rank()
    if n == 1:
        return splits, config
    if config.batch_size < n:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the world size {n}")
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(config.seed))
    per_rank = len(order) // n
    idx = order[r * per_rank:(r + 1) * per_rank]
    train = Split(splits.train.x[idx], splits.train.y[idx])
    return replace(splits, train=train), replace(config, batch_size=config.batch_size // n)


def wrap(model: nn.Module) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun, else return the model unchanged."""
    return nn.parallel.DistributedDataParallel(model) if is_distributed() else model


def rank_dir(out_dir: Path) -> Path:
    """Where this rank's trainer writes: the run folder on rank 0, OUT/ranks/<rank> elsewhere."""
    return Path(out_dir) if rank() == 0 else Path(out_dir) / "ranks" / str(rank())


def finish(out_dir: Path) -> None:
    """Wait for every rank, then drop the other ranks' resume points (rank 0 only)."""
    if not is_distributed():
        return
    dist.barrier()
    if rank() == 0:
        shutil.rmtree(Path(out_dir) / "ranks", ignore_errors=True)
