"""The card's per-image outcomes, in shards that a long card writes as it goes and a later call
reads back (`ShardStore`), so a full card (all 10,000 test images) resumes where it stopped.

A shard file is `shard-<k>.npz`: per row, the served answer's correctness, the verdict and the
primary's correctness for each image of shard k, plus the row's label, kind, attack parameters
and seconds; and the key of what it measured (`shard_key`: the bundle's model weights, guard
thresholds, policy, action, the card config and the split). A file with another key is ignored
and rewritten; files are written whole or not at all (temporary file, then renamed).

Several processes may work on one card (`advguard evaluate --bundle ... --suite card --work-dir
DIR`, once per free core, beside `advguard bundle`): a process claims shard k before it
evaluates it (`shard-<k>.claim`, created exclusively, holding its pid and host) and the others
skip it and wait for its file; a claim whose process is gone is taken over.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serving.bundle import Bundle
from training.checkpoint import write_atomic
from training.claims import claim, release


@dataclass
class Served:
    """What the pipeline answered for a set of images."""

    correct: np.ndarray          # served answer right
    flagged: np.ndarray          # verdict ADVERSARIAL
    primary_correct: np.ndarray  # the primary alone right

    @staticmethod
    def concat(parts: list[Served]) -> Served:
        return Served(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("correct", "flagged", "primary_correct")))


@dataclass
class ShardRow:
    """One card row measured on one shard of images."""

    label: str
    kind: str
    params: dict
    served: Served
    seconds: float

    @staticmethod
    def merge(parts: list[ShardRow]) -> ShardRow:
        first = parts[0]
        if any(p.label != first.label for p in parts):
            raise ValueError(f"shards disagree on the row order: {[p.label for p in parts]}")
        return ShardRow(first.label, first.kind, first.params, Served.concat([p.served for p in parts]),
                        sum(p.seconds for p in parts))


def shard_key(bundle: Bundle, config, split: str) -> str:
    """What a shard's figures depend on, hashed: weights (the twins' SHA-256, which the ONNX files
    are exported from), thresholds, policy, action, the card config (but not n) and the split."""
    guard = bundle.guard
    detectors = [{"name": d["name"], "threshold": round(float(d["threshold"]), 6), "options": d.get("options", {})}
                 for d in guard.get("detectors", [])]
    card = {k: v for k, v in asdict(config).items()
            if k != "n" and not (k == "rows" and v == "all")}  # shards written before `rows` existed stay valid
    what = {"twins": sorted(t["sha256"] for t in bundle.raw.get("twins", [])),
            "models": sorted(m.sha256 for m in bundle.models if m.role not in ("primary", "fallback", "reference")),
            "detectors": detectors, "policy": guard.get("policy"), "action": guard.get("action"),
            "card": card, "split": split}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()


class ShardStore:
    """Finished shards of one card in `folder`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, k: int) -> Path:
        return self.folder / f"shard-{k:04d}.npz"

    def save(self, k: int, rows: list[ShardRow]) -> None:
        meta = {"key": self.key, "rows": [{"label": r.label, "kind": r.kind, "params": r.params, "seconds": r.seconds}
                                          for r in rows]}
        arrays = {f"{field}_{i}": getattr(r.served, field) for i, r in enumerate(rows)
                  for field in ("correct", "flagged", "primary_correct")}
        write_atomic(self.path(k), lambda f: np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays))

    def claim(self, k: int) -> bool:
        """Claim shard k for this process; False while another live process on this host holds it."""
        return claim(self.folder / f"shard-{k:04d}.claim")

    def release(self, k: int) -> None:
        release(self.folder / f"shard-{k:04d}.claim")

    def load(self, k: int) -> list[ShardRow] | None:
        """Shard k's rows, or None when it is absent or measured something else."""
        if not self.path(k).exists():
            return None
        with np.load(self.path(k), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta["key"] != self.key:
                return None
            return [ShardRow(r["label"], r["kind"], r["params"],
                             Served(*(data[f"{field}_{i}"] for field in ("correct", "flagged", "primary_correct"))),
                             r["seconds"]) for i, r in enumerate(meta["rows"])]

