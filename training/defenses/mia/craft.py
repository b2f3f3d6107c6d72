"""The adversarial images of paper 002's augmented set, made in shards that survive a stop.

- `craft_pool`: `size` images from a source ("target") model, the attacks interleaved (position
  p is clean image order[p mod n] attacked by attack p mod k), so that every prefix of the pool
  is balanced and the EAT cycles' growing shares (15% -> 25% -> 40% -> 50%) add to one another.
- `craft_per_attack`: every clean image attacked by every attack (the evaluation sets).

Each attack's images are cut into shards of `shard_size` in pool order. Shard j of attack a is
seeded `seed + 7919 a + 104729 j`, and GMA (Algorithm 1) makes the i-th image of its attack at
size Tr(eps)[i mod S], with GMA's own tries: a shard's images depend on nothing but the shard, so
a run that stopped and resumed makes the same pool as one that did not. With `folder`, each shard
is written as it is made (`training.checkpoint.save_atomic`: a file is whole or absent)
and a shard already there is loaded, never recomputed; a stop loses at most the shard in flight.
Each shard records its wall time (`seconds`): `training.defenses.mia.plan` reads the rates.
Several processes may share one folder: each claims a shard before making it
(`training.claims`), skips the shards others hold and waits for their files at the end.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from training.attacks import Attack
from training.checkpoint import save_atomic
from training.claims import claim, release
from training.data import Split
from training.defenses.mia.data import AdversarialSet, AttackSpec
from training.options import build_config

log = logging.getLogger(__name__)
ATTACK_SEED_STRIDE, SHARD_SEED_STRIDE = 7919, 104729
CLAIM_POLL_SECONDS = 10.0


def run_attack(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, batch_size: int,
               seed: int, offset: int = 0) -> torch.Tensor:
    """`spec` on (x, y) in batches; GMA's i-th image (counting from `offset`) at size Tr[i mod S]."""
    if spec.name == "gma" and len(x):
        from training.attacks.gma import GMAConfig, perturbation_grid

        sizes = perturbation_grid(build_config(GMAConfig, dict(spec.options)))
        out = torch.empty_like(x)
        slot = (offset + torch.arange(len(x))) % len(sizes)
        for s, eps in enumerate(sizes):
            idx = (slot == s).nonzero().squeeze(1)
            if len(idx):
                one = AttackSpec("gma", spec.options + (("values", str(eps)), ("exponents", "0")))
                out[idx] = _batched(one.build(model, seed=seed + s), x[idx], y[idx], batch_size)
        return out
    return _batched(spec.build(model, seed=seed), x, y, batch_size)


def _batched(attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    chunks = [attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks) if chunks else x[:0].clone()


@torch.no_grad()
def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Whether `model` (in eval mode for the call) misclassifies each image."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]
                     for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.bool)
    model.train(was)
    return out


def shard_folder(folder: Path, a: int, spec: AttackSpec) -> Path:
    return Path(folder) / f"{a}-{spec.name}"


def craft_attack(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, seed: int,
                 batch_size: int = 256, shard_size: int = 1000, folder: Path | None = None,
                 label: str = "") -> torch.Tensor:
    """Adversarial images of (x, y) by one attack, shard by shard (see the module doc)."""
    n = len(x)
    out = torch.empty_like(x)
    shards = (n + shard_size - 1) // shard_size
    paths = [Path(folder) / f"{j:05d}.pt" if folder is not None else None for j in range(shards)]
    done = sum(min(shard_size, n - j * shard_size) for j, p in enumerate(paths) if p is not None and p.exists())
    bar = tqdm(total=n, initial=done, desc=label or spec.name, unit="img", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0, disable=n == 0)

    def make(j: int) -> None:
        lo, hi = j * shard_size, min(n, (j + 1) * shard_size)
        began = time.perf_counter()
        out[lo:hi] = run_attack(model, spec, x[lo:hi], y[lo:hi], batch_size, seed + SHARD_SEED_STRIDE * j, offset=lo)
        seconds = time.perf_counter() - began
        if paths[j] is not None:
            save_atomic({"x": out[lo:hi].clone(), "seconds": seconds, "images": hi - lo}, paths[j])
        bar.update(hi - lo)
        log.info("%s shard %d/%d: %d images in %.1f s (%.3f s/image)", label or spec.name, j + 1, len(paths),
                 hi - lo, seconds, seconds / max(hi - lo, 1))

    def load(j: int) -> bool:
        if paths[j] is None or not paths[j].exists():
            return False
        out[j * shard_size:(j + 1) * shard_size] = torch.load(paths[j], map_location="cpu", weights_only=True)["x"]
        return True

    def claimed(j: int) -> bool:
        """Shard j made here under its claim (True), or left to the process that holds it."""
        if paths[j] is not None and not claim(paths[j].with_suffix(".claim")):
            return False
        try:
            if not load(j):  # written by another process just before our claim
                make(j)
        finally:
            if paths[j] is not None:
                release(paths[j].with_suffix(".claim"))
        return True

    elsewhere = [j for j in range(shards) if not load(j) and not claimed(j)]
    for j in elsewhere:  # made by the process that claimed it, or here if that process is gone
        while not load(j) and not claimed(j):
            time.sleep(CLAIM_POLL_SECONDS)
    bar.close()
    return out


def craft_pool(model: nn.Module, clean: Split, attacks: list[AttackSpec], size: int, seed: int = 0,
               batch_size: int = 256, shard_size: int = 1000, folder: Path | None = None,
               label: str = "pool") -> AdversarialSet:
    """`size` adversarial images from `clean` (a seeded order, cycling if size > len(clean)),
    attack `p mod k` for position p, all made against `model`; shards in `folder`/<a>-<name>/."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))
    position = torch.arange(size)
    source = order[position % len(clean)] if len(clean) else position[:0]
    attack = position % len(attacks)
    x = torch.empty((size, *clean.x.shape[1:]), dtype=clean.x.dtype)
    y = clean.y[source]
    for a, spec in enumerate(attacks):
        idx = (attack == a).nonzero().squeeze(1)
        x[idx] = craft_attack(model, spec, clean.x[source[idx]], y[idx], seed + ATTACK_SEED_STRIDE * a, batch_size,
                              shard_size, shard_folder(folder, a, spec) if folder is not None else None,
                              f"{label} {spec.name}")
    return AdversarialSet(x, y, source, attack, fooled(model, x, y), tuple(s.name for s in attacks))


def craft_per_attack(model: nn.Module, clean: Split, attacks: list[AttackSpec], seed: int = 0,
                     batch_size: int = 256, shard_size: int = 1000, folder: Path | None = None,
                     label: str = "test") -> AdversarialSet:
    """Every image of `clean` attacked by every attack (evaluation sets), grouped by attack."""
    xs = [craft_attack(model, spec, clean.x, clean.y, seed + ATTACK_SEED_STRIDE * a, batch_size, shard_size,
                       shard_folder(folder, a, spec) if folder is not None else None, f"{label} {spec.name}")
          for a, spec in enumerate(attacks)]
    n, k = len(clean), len(attacks)
    x = torch.cat(xs) if xs else clean.x[:0].clone()
    y = clean.y.repeat(k)
    return AdversarialSet(x, y, torch.arange(n).repeat(k), torch.arange(k).repeat_interleave(n),
                          fooled(model, x, y), tuple(s.name for s in attacks))
